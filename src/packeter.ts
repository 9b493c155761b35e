/**
 * Packeter: length-prefixed packets over a {@link Transport} (a Link or a Throttle).
 * Knows frames, nothing of messages.
 *
 * Writes are coalesced: every packet sent in one turn of the event loop goes to the transport
 * in one write (small payloads joined, large ones passed along without copying). One
 * `setImmediate` flushes every connection that has output, however many there are (a hub
 * sending to thousands of peers in one turn pays for one, not one per connection). Backpressure
 * is honoured: when the transport's `send()` returns `false` the Packeter stops writing until
 * `drain`, and reports `writable(connId) === false` while more than `highWaterMark` bytes wait.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { EventEmitter } from 'node:events';
import { SnakeMQError, InvalidArgumentError } from './errors.js';
import type { ConnId, ConnectionInfo, Transport } from './link.js';
import { type Logger, defaultLogger } from './logger.js';
import {
  DEFAULT_MAX_PACKET_SIZE,
  MAX_WIRE_PACKET_SIZE,
  PACKET_HEADER_SIZE,
  PacketDecoder,
} from './packet-decoder.js';

/** Default per-connection write high-water mark: 1 MiB. */
export const DEFAULT_HIGH_WATER_MARK = 1024 * 1024;
/**
 * Payloads at least this large are written as they are instead of being copied into a batch.
 * A shorter payload is copied before `sendPacket` returns, so its memory may change at once.
 */
export const COPY_LIMIT = 16 * 1024;
/**
 * Small packets are copied, length prefix and all, into slabs of this size as they are sent; a
 * flush writes the parts of slabs filled for that connection since the last flush (no
 * per-packet allocation, no joining at flush time). Written bytes of a slab are never touched
 * again. One slab is filled for all connections of a Packeter, one stretch after the other (as
 * Node's Buffer pool is), so an idle connection holds no slab of its own.
 */
const SLAB_SIZE = 64 * 1024;

/** Placeholder packet callback of a connection being set up. */
const ignorePacket = (): void => {};

/** @internal Receives packets as `buf[start..end)`, see {@link Packeter.setPacketSink}. */
export type PacketSink = (connId: ConnId, buf: Buffer, start: number, end: number) => void;

/** Events of a {@link Packeter}. */
export interface PacketerEvents {
  connect: [connId: ConnId, info: ConnectionInfo];
  disconnect: [connId: ConnId, reason: Error | undefined];
  /** A whole packet arrived. `payload` may be a view of a larger buffer: copy it to keep it long. */
  packet: [connId: ConnId, payload: Buffer];
  /** The packet with this id was fully handed to the kernel. */
  'packet-sent': [connId: ConnId, packetId: number];
  /**
   * Every packet of this connection up to and including `lastPacketId` was fully handed to the
   * kernel: one event per write, after the `packet-sent` events of its packets.
   */
  'packets-sent': [connId: ConnId, lastPacketId: number];
  /** `writable(connId)` became true again. */
  drain: [connId: ConnId];
  /** A connection broke the framing (e.g. `ERR_FRAME_TOO_LARGE`); it has been closed. */
  error: [err: Error, connId: ConnId | undefined];
}

/** Options of a {@link Packeter}. */
export interface PacketerOptions {
  /** Largest accepted incoming payload in bytes (default 64 MiB; exactly this size is accepted). */
  maxPacketSize?: number;
  /** Bytes waiting to be written above which `writable()` is false (default 1 MiB). */
  highWaterMark?: number;
  logger?: Logger;
}

interface ConnState {
  id: ConnId;
  info: ConnectionInfo;
  decoder: PacketDecoder;
  /** Hands this connection's decoded packets on (made once per connection, not per chunk). */
  deliver: (buf: Buffer, start: number, end: number) => void;
  /** Buffers waiting for the next flush, before the open slab part. */
  out: Buffer[];
  /**
   * The slab holding this connection's open part: bytes `slabStart..slabEnd` of it wait for
   * the next flush, after `out` (`null` when there is no open part).
   */
  slab: Buffer | null;
  slabStart: number;
  slabEnd: number;
  /** Bytes waiting for the next flush (`out` and the open slab part). */
  outBytes: number;
  /**
   * Packet ids contained in `out`, in order, as runs of two numbers: the first id of a run and
   * how many consecutive ids it has.
   */
  outIds: number[];
  /** Transport refused more; wait for its drain. */
  blocked: boolean;
  /** The connection is in the Packeter's list of connections to flush. */
  scheduled: boolean;
  /** The application was told `writable() === false` and waits for `drain`. */
  needDrain: boolean;
  closed: boolean;
}

/**
 * Frames packets over a transport.
 *
 * @example
 * const packeter = new Packeter(link);
 * packeter.on('packet', (connId, payload) => ...);
 * const id = packeter.sendPacket(connId, Buffer.from('hello'));
 */
export class Packeter extends EventEmitter<PacketerEvents> {
  /** The transport below. */
  readonly transport: Transport;
  readonly maxPacketSize: number;
  readonly highWaterMark: number;
  private readonly log: Logger;
  private readonly conns = new Map<ConnId, ConnState>();
  private nextPacketId = 1;
  /**
   * @internal Counts received chunks: packets emitted with the same value arrived together
   * (so a listener can read the clock once per chunk).
   */
  chunksReceived = 0;
  private sink: PacketSink | undefined;
  /** The slab being filled, shared by all connections, and how much of it is used. */
  private slab: Buffer | null = null;
  private slabFill = 0;
  /** Connections with output waiting for the next flush, in the order they got it. */
  private dirty: ConnState[] = [];
  /** The one `setImmediate` that flushes {@link dirty} is pending. */
  private flushPending = false;

  constructor(transport: Transport, options: PacketerOptions = {}) {
    super();
    this.transport = transport;
    this.maxPacketSize = options.maxPacketSize ?? DEFAULT_MAX_PACKET_SIZE;
    this.highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    if (!Number.isInteger(this.highWaterMark) || this.highWaterMark < 1) {
      throw new InvalidArgumentError(`highWaterMark must be a positive integer, got ${this.highWaterMark}`);
    }
    new PacketDecoder(this.maxPacketSize); // validates the option
    this.log = options.logger ?? defaultLogger();
    transport.on('connect', this.onConnect);
    transport.on('disconnect', this.onDisconnect);
    transport.on('recv', this.onRecv);
    transport.on('drain', this.onDrain);
  }

  /**
   * Queue one packet. Returns its id; `packet-sent` with that id follows once it was written.
   * Packets to unknown or closed connections are dropped (their id never reports sent).
   * `payload` must not be modified until then.
   * @throws InvalidArgumentError when the payload is longer than a uint32 can announce.
   */
  sendPacket(connId: ConnId, payload: Uint8Array | Uint8Array[]): number {
    if (!Array.isArray(payload)) return this.enqueue(connId, payload.length, undefined, payload);
    let len = 0;
    for (const p of payload) len += p.length;
    return this.enqueue(connId, len, undefined, payload);
  }

  /**
   * Queue one packet whose payload is `head` followed by `body`: the same as
   * `sendPacket(connId, [head, body])`, except that `head` is copied before this returns (so a
   * caller may reuse it at once). `body` must not be modified until `packet-sent`.
   * @internal
   */
  sendPacketParts(connId: ConnId, head: Uint8Array | undefined, body: Uint8Array): number {
    return this.enqueue(connId, (head === undefined ? 0 : head.length) + body.length, head, body);
  }

  /**
   * Queue `count` packets that `data` holds whole, length prefixes included, back to back.
   * Returns the id of the first; the others follow it in order (`first + 1`, …). `data` of
   * {@link COPY_LIMIT} bytes or more is written as it is: it must not be modified until
   * `packet-sent` reports its last packet (a TTL rewritten in place for a resend on another
   * connection being the one harmless exception its caller makes); shorter data is copied now.
   * The caller vouches for the framing.
   * @internal
   */
  sendFramedPackets(connId: ConnId, data: Buffer, count: number): number {
    const first = this.nextPacketId;
    this.nextPacketId += count;
    const c = this.conns.get(connId);
    if (!c || c.closed || count === 0) return first;
    if (data.length >= COPY_LIMIT) this.keep(c, data);
    else this.copyIn(c, data);
    c.outBytes += data.length;
    this.addIds(c, first, count);
    this.schedule(connId, c);
    return first;
  }

  /** Check the length, number the packet and queue it (dropped for unknown or closed connections). */
  private enqueue(connId: ConnId, len: number, head: Uint8Array | undefined, body: Uint8Array | Uint8Array[]): number {
    if (len > MAX_WIRE_PACKET_SIZE) {
      throw new InvalidArgumentError(`packet payload of ${len} bytes does not fit a uint32 length`);
    }
    const id = this.nextPacketId++;
    const c = this.conns.get(connId);
    if (!c || c.closed) return id;
    this.put(c, len, head, body);
    return this.queued(connId, c, id, len);
  }

  /** Append a packet to a connection's output: small parts copied into the slab, large ones kept. */
  private put(c: ConnState, len: number, head: Uint8Array | undefined, body: Uint8Array | Uint8Array[]): void {
    const copied = len < COPY_LIMIT;
    const slab = this.slabWithRoom(c, PACKET_HEADER_SIZE + (copied ? len : head === undefined ? 0 : head.length));
    let off = c.slabEnd;
    slab.writeUInt32BE(len, off);
    off += PACKET_HEADER_SIZE;
    if (head !== undefined) {
      slab.set(head, off);
      off += head.length;
    }
    if (copied) {
      if (Array.isArray(body)) {
        for (const p of body) {
          slab.set(p, off);
          off += p.length;
        }
      } else {
        slab.set(body, off);
        off += body.length;
      }
      c.slabEnd = this.slabFill = off;
      return;
    }
    c.slabEnd = this.slabFill = off;
    for (const p of Array.isArray(body) ? body : [body]) {
      if (p.length === 0) continue;
      // a small part of a large packet is copied too
      if (p.length < COPY_LIMIT) this.copyIn(c, p);
      else this.keep(c, Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.length));
    }
  }

  /**
   * The shared slab, or a new one, with room for `need` more bytes at `slabFill`, which the
   * connection's open part ends at (a part of its own is started there when its open part is
   * elsewhere). The caller writes there and moves `c.slabEnd` and `slabFill` on together.
   */
  private slabWithRoom(c: ConnState, need: number): Buffer {
    let slab = this.slab;
    if (slab === null || slab.length - this.slabFill < need) {
      slab = this.slab = Buffer.allocUnsafeSlow(Math.max(SLAB_SIZE, need));
      this.slabFill = 0;
    }
    if (c.slab !== slab || c.slabEnd !== this.slabFill) {
      this.seal(c);
      c.slab = slab;
      c.slabStart = c.slabEnd = this.slabFill;
    }
    return slab;
  }

  /** Append `bytes` to the connection's output by copying them into the slab. */
  private copyIn(c: ConnState, bytes: Uint8Array): void {
    this.slabWithRoom(c, bytes.length).set(bytes, c.slabEnd);
    c.slabEnd = this.slabFill = c.slabEnd + bytes.length;
  }

  /** Append `buf` to the connection's output as it is (after what the slab holds so far). */
  private keep(c: ConnState, buf: Buffer): void {
    this.seal(c);
    c.out.push(buf);
  }

  /** Move the open slab part to `out`; the connection then holds no slab. */
  private seal(c: ConnState): void {
    if (c.slab !== null) {
      if (c.slabEnd > c.slabStart) c.out.push(c.slab.subarray(c.slabStart, c.slabEnd));
      c.slab = null;
      c.slabStart = c.slabEnd = 0;
    }
  }

  private queued(connId: ConnId, c: ConnState, id: number, len: number): number {
    c.outBytes += PACKET_HEADER_SIZE + len;
    this.addIds(c, id, 1);
    this.schedule(connId, c);
    return id;
  }

  /** Note `count` packets with ids from `first` on as queued in `out` (see `outIds`). */
  private addIds(c: ConnState, first: number, count: number): void {
    const ids = c.outIds;
    const n = ids.length;
    if (n > 0 && ids[n - 2] + ids[n - 1] === first) ids[n - 1] += count;
    else ids.push(first, count);
  }

  /**
   * Flush a connection's output once the current I/O phase is over: it joins the list of
   * connections to flush, which one pending `setImmediate` walks.
   */
  private schedule(_connId: ConnId, c: ConnState): void {
    if (!c.scheduled && !c.blocked) {
      c.scheduled = true;
      this.dirty.push(c);
      if (!this.flushPending) {
        this.flushPending = true;
        setImmediate(this.flushDirty);
      }
    }
  }

  /**
   * Bytes queued on a connection and not yet handed to the kernel (ours plus the transport's).
   */
  bufferedAmount(connId: ConnId): number {
    const c = this.conns.get(connId);
    return c ? c.outBytes + this.transport.bufferedAmount(connId) : 0;
  }

  /**
   * How many more bytes a connection takes before `writable()` turns false (0 when it is
   * already false or the connection is unknown). Does not arm `drain`: call `writable()` for that.
   */
  writableBytes(connId: ConnId): number {
    const c = this.conns.get(connId);
    if (!c || c.closed) return 0;
    const room = this.highWaterMark - c.outBytes - this.transport.bufferedAmount(connId);
    return room > 0 ? room : 0;
  }

  /**
   * Whether a connection takes more packets without growing past `highWaterMark`. When this
   * returns false, a `drain` event follows once it is true again.
   */
  writable(connId: ConnId): boolean {
    const c = this.conns.get(connId);
    if (!c || c.closed) return false;
    if (this.bufferedAmount(connId) < this.highWaterMark) return true;
    c.needDrain = true;
    return false;
  }

  /**
   * @internal Have every received packet handed to `sink` as `buf[start..end)` (before the
   * `packet` listeners), sparing a Buffer object per packet; the layer above uses this instead
   * of a `packet` listener. One sink per Packeter: returns false when another one is set.
   */
  setPacketSink(sink: PacketSink | undefined, previous?: PacketSink): boolean {
    if (sink !== undefined && this.sink !== undefined) return false;
    if (sink === undefined && this.sink !== previous) return false;
    this.sink = sink;
    return true;
  }

  /** What the transport told about a connection when it was established, or `undefined`. */
  connectionInfo(connId: ConnId): ConnectionInfo | undefined {
    return this.conns.get(connId)?.info;
  }

  /** Whether a connection is known and open. */
  isConnected(connId: ConnId): boolean {
    const c = this.conns.get(connId);
    return !!c && !c.closed;
  }

  /** Close a connection (its `disconnect` follows). Packets queued but not written are dropped. */
  closeConnection(connId: ConnId, reason?: Error): void {
    const c = this.conns.get(connId);
    if (c) {
      this.flush(connId, c); // let already-queued packets (e.g. a last protocol frame) leave
      c.closed = true;
    }
    this.transport.closeConnection(connId, reason);
  }

  private readonly onConnect = (connId: ConnId, info: ConnectionInfo): void => {
    const c: ConnState = {
      id: connId,
      info,
      decoder: new PacketDecoder(this.maxPacketSize),
      deliver: ignorePacket,
      out: [],
      slab: null,
      slabStart: 0,
      slabEnd: 0,
      outBytes: 0,
      outIds: [],
      blocked: false,
      scheduled: false,
      needDrain: false,
      closed: false,
    };
    c.deliver = this.deliverer(connId, c);
    this.conns.set(connId, c);
    // Let the transport read the rest of a long payload straight into the buffer it is
    // assembled in (no copy on our side); see PacketDecoder.readTarget.
    const decoder = c.decoder;
    this.transport.setReadTarget?.(connId, () => (c.closed ? null : decoder.readTarget()));
    this.emit('connect', connId, info);
  };

  private readonly onDisconnect = (connId: ConnId, reason: Error | undefined): void => {
    if (!this.conns.delete(connId)) return;
    this.emit('disconnect', connId, reason);
  };

  private readonly onRecv = (connId: ConnId, data: Buffer): void => {
    const c = this.conns.get(connId);
    if (!c || c.closed) return;
    this.chunksReceived++;
    try {
      c.decoder.pushRaw(data, c.deliver);
    } catch (err) {
      if (!(err instanceof SnakeMQError)) throw err;
      // The layer above closed the connection while this chunk was being decoded (e.g. on a
      // broken frame): the rest of the chunk is ignored, a too-large length prefix included.
      // Throwing here would escape from the socket's data handler and crash the process.
      if (c.closed) return;
      this.log.debug(`packeter ${connId}: ${err.message}`);
      this.closeConnection(connId, err);
      if (this.listenerCount('error') > 0) this.emit('error', err, connId);
    }
  };

  /** The decoder's packet callback of one connection: the sink first, then `packet` listeners. */
  private deliverer(connId: ConnId, c: ConnState): ConnState['deliver'] {
    return (buf, start, end) => {
      if (c.closed) return;
      // Looked up per packet: a listener may come or go while a chunk is being decoded.
      const sink = this.sink;
      if (sink !== undefined) sink(connId, buf, start, end);
      if (!c.closed && this.listenerCount('packet') > 0) this.emit('packet', connId, buf.subarray(start, end));
    };
  }

  private readonly onDrain = (connId: ConnId): void => {
    const c = this.conns.get(connId);
    if (!c) return;
    c.blocked = false;
    this.flush(connId, c);
    this.maybeDrain(connId, c);
  };

  /**
   * Flush every connection of {@link dirty}, in the order they got output. Output queued while
   * this runs (by a `drain` listener) is flushed by the next one.
   */
  private readonly flushDirty = (): void => {
    this.flushPending = false;
    const list = this.dirty;
    this.dirty = [];
    let i = 0;
    try {
      for (; i < list.length; i++) {
        const c = list[i];
        c.scheduled = false;
        // (a connection gone meanwhile, or replaced under the same id, is skipped)
        if (this.conns.get(c.id) !== c) continue;
        this.flush(c.id, c);
        this.maybeDrain(c.id, c);
      }
    } finally {
      // A listener threw: the connections not reached yet are flushed by the next one.
      if (++i < list.length) {
        for (; i < list.length; i++) {
          const c = list[i];
          c.scheduled = false;
          this.schedule(c.id, c);
        }
      }
    }
  };

  private maybeDrain(connId: ConnId, c: ConnState): void {
    if (c.needDrain && !c.closed && this.bufferedAmount(connId) < this.highWaterMark) {
      c.needDrain = false;
      this.emit('drain', connId);
    }
  }

  private flush(connId: ConnId, c: ConnState): void {
    if (c.blocked || c.closed || c.outIds.length === 0) return;
    this.seal(c);
    const ids = c.outIds;
    const out = c.out;
    c.out = [];
    c.outIds = [];
    c.outBytes = 0;
    // Packets are in slab parts and large buffers already: write them as they are.
    const ok = this.transport.send(connId, out.length === 1 ? out[0] : out, (err) => {
      if (err) return;
      if (this.listenerCount('packet-sent') > 0) {
        for (let i = 0; i < ids.length; i += 2) for (let id = ids[i]; id < ids[i] + ids[i + 1]; id++) this.emit('packet-sent', connId, id);
      }
      this.emit('packets-sent', connId, ids[ids.length - 2] + ids[ids.length - 1] - 1);
    });
    if (!ok) c.blocked = true;
  }
}
