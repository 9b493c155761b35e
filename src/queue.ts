/**
 * One peer's outgoing queue: FIFO items with snakeMQ's TTL rule (the TTL runs down only while
 * the peer is not connected), each with its wire sequence number, and the cursors of
 * acknowledged delivery. Pure: no I/O, time comes in as arguments.
 *
 * Memory: a queued message is no JavaScript object at all. Its packet as it goes on the wire
 * (length prefix, then the sequenced message frame of extension version 2: type byte, sequence
 * number, uuid, TTL, flags, body) is copied into a chunk of
 * queue memory when it is queued, right after the packet queued before it (so a run of them is
 * written to the socket as it lies, see {@link PeerQueue.packetEnd}), and its bookkeeping lives
 * in parallel typed arrays: the garbage collector sees a few arrays and chunk buffers per queue
 * however many messages wait, and the application's body and Message die young. Bodies of
 * {@link COPY_BODY_LIMIT} bytes or more are kept by reference instead of copied (only their
 * length prefix and frame head go into a chunk).
 *
 * Items are named by a sequence number (`seq`), stable for the life of the queue; the arrays
 * hold the items `head..end` at slots `seq - base`, removed items flagged and skipped until
 * the head passes them. That local seq is not the wire sequence number ({@link PeerQueue.wireSeq}),
 * which the sender draws per message, stores with persistent ones and which increases along
 * the queue (with gaps).
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { copy16, writeU32BE } from './bytes.js';
import type { Message } from './message.js';
import { PACKET_HEADER_SIZE } from './packet-decoder.js';
import { COPY_LIMIT } from './packeter.js';
import {
  FRAME_SEQ_MESSAGE,
  SEQ_MESSAGE_FLAGS_OFFSET,
  SEQ_MESSAGE_FRAME_HEAD_SIZE,
  SEQ_MESSAGE_SEQ_OFFSET,
  SEQ_MESSAGE_UUID_OFFSET,
  writeSeq,
} from './protocol.js';

/** Bytes of a queued frame before its body. */
export const FRAME_HEAD_SIZE = SEQ_MESSAGE_FRAME_HEAD_SIZE;

/** Item states (the low bits of an item's bits). */
export const QUEUED = 0;
export const WRITING = 1;
export const AWAITING_ACK = 2;
const STATE = 3;
/** Kept in storage (persistent flag and a storage present). */
const STORED = 4;
const REMOVED = 8;

/**
 * Bodies of at least this many bytes are kept by reference, not copied into a chunk (only the
 * length prefix and frame head are). The Packeter writes such a body as it is too.
 *
 * Chunk bytes are written once, when a message is queued, and never again except for the TTL,
 * filled in whenever the frame is sent; so chunk memory can be handed to the socket as it is.
 * (A TTL rewritten for a resend while the old connection's writes still drain changes one valid
 * value into another.)
 */
export const COPY_BODY_LIMIT = COPY_LIMIT - FRAME_HEAD_SIZE;
const MIN_CHUNK = 4 * 1024;
const MAX_CHUNK = 64 * 1024;
const MIN_SLOTS = 16;

/** A message removed by expiry: what the caller reports and deletes from storage. */
export interface RemovedItem {
  uuid: Buffer;
  stored: boolean;
}

/** Key of a uuid in maps: its bytes as a latin1 string. */
export function uuidKey(uuid: Buffer, off = 0): string {
  return uuid.toString('latin1', off, off + 16);
}

/** A `sendMessage` held by the 'block' policy. Waiters of a queue are served strictly in order. */
export interface Waiter {
  message: Message;
  resolve: (commit: Promise<void> | undefined) => void;
  reject: (err: Error) => void;
}

export class PeerQueue {
  readonly ident: string;
  /** First slot in use (items before it are gone). */
  head = 0;
  /** One past the last slot in use. */
  end = 0;
  /** First slot not yet handed to a connection. */
  sendCursor = 0;
  /** Seq of the item at slot 0. */
  private base = 0;
  private cap = 0;
  /** Per slot: number of the chunk holding the frame, its offset there, body length. */
  private chunkNo = new Int32Array(0);
  private offs = new Int32Array(0);
  private lens = new Int32Array(0);
  /**
   * Per slot: remaining TTL in ms (NaN = infinite): while the queue is connected, the
   * remaining time; while not, the remaining time as of `since` (so expiry = since + ttl).
   */
  private ttls = new Float64Array(0);
  /** Per slot: the wire sequence number. */
  private wseqs = new Float64Array(0);
  /** Per slot: state, stored and removed bits. */
  private bits = new Uint8Array(0);
  /** Chunks of frames; `chunks[k]` is chunk number `chunkBase + k`; the last one is being filled. */
  private chunks: Buffer[] = [];
  private chunkBase = 0;
  /** Bytes used of the last chunk. */
  private fill = 0;
  /** Bodies kept by reference (at least {@link COPY_BODY_LIMIT} bytes), by seq. */
  private large: Map<number, Buffer> | undefined;
  /**
   * Seqs of live items by uuid key, kept only once a queue needed a lookup by uuid (a message
   * whose uuid may repeat a queued one, or `cancelMessage`), and dropped when the queue empties.
   */
  index: Map<string, number> | undefined;
  /** Live items and their body bytes. */
  size = 0;
  bytes = 0;
  /** Items written or being written and not yet removed, and their body bytes. */
  inflight = 0;
  inflightBytes = 0;
  /** Live items with a finite TTL. */
  finite = 0;
  /** When the TTL started running down (the peer left); `null` while connected. */
  since: number | null;
  /** Senders blocked by the 'block' policy, in call order, from `lineHead`. */
  line: (Waiter | undefined)[] = [];
  lineHead = 0;
  /** A pump of this queue is scheduled. */
  pumpScheduled = false;

  constructor(ident: string, now: number) {
    this.ident = ident;
    this.since = now;
  }

  get connected(): boolean {
    return this.since === null;
  }

  /**
   * Append a message: `src[srcOff..srcOff + 16)` is its uuid, `wireSeq` its wire sequence
   * number (above every one queued before). Its TTL counts from `now` (read only for a finite
   * TTL while disconnected). Returns its seq.
   */
  push(src: Uint8Array, srcOff: number, body: Buffer, flags: number, ttl: number | null, stored: boolean, now: number, wireSeq: number): number {
    if (this.end === this.cap) this.makeRoom();
    const n = body.length;
    const byRef = n >= COPY_BODY_LIMIT;
    const need = PACKET_HEADER_SIZE + FRAME_HEAD_SIZE + (byRef ? 0 : n);
    let k = this.chunks.length - 1;
    let chunk = this.chunks[k];
    if (chunk === undefined || chunk.length - this.fill < need) {
      chunk = this.newChunk(need);
      k++;
    }
    writeU32BE(chunk, this.fill, FRAME_HEAD_SIZE + n);
    const off = this.fill + PACKET_HEADER_SIZE;
    chunk[off] = FRAME_SEQ_MESSAGE;
    writeSeq(chunk, off + SEQ_MESSAGE_SEQ_OFFSET, wireSeq);
    copy16(src, srcOff, chunk, off + SEQ_MESSAGE_UUID_OFFSET);
    // the TTL is written when the frame is sent
    writeU32BE(chunk, off + SEQ_MESSAGE_FLAGS_OFFSET, flags);
    if (!byRef) chunk.set(body, off + FRAME_HEAD_SIZE);
    this.fill += need;
    const s = this.end++;
    this.chunkNo[s] = this.chunkBase + k;
    this.offs[s] = off;
    this.lens[s] = n;
    let t = NaN;
    if (ttl !== null) {
      t = this.since !== null ? ttl + (now - this.since) : ttl;
      this.finite++;
    }
    this.ttls[s] = t;
    this.wseqs[s] = wireSeq;
    this.bits[s] = stored ? STORED : 0;
    const seq = this.base + s;
    if (byRef) (this.large ??= new Map()).set(seq, body);
    if (this.index !== undefined) this.index.set(this.key(s), seq);
    this.size++;
    this.bytes += n;
    return seq;
  }

  /** The slot of a live or removed item still in the arrays, or -1. */
  slotOf(seq: number): number {
    const s = seq - this.base;
    return s >= this.head && s < this.end ? s : -1;
  }

  seqOf(slot: number): number {
    return this.base + slot;
  }

  /** The item's wire sequence number. */
  wireSeq(slot: number): number {
    return this.wseqs[slot];
  }


  state(slot: number): number {
    return this.bits[slot] & STATE;
  }

  setState(slot: number, state: number): void {
    this.bits[slot] = (this.bits[slot] & ~STATE) | state;
  }

  isRemoved(slot: number): boolean {
    return (this.bits[slot] & REMOVED) !== 0;
  }

  /** Live and in flight (written or being written). */
  isInFlight(slot: number): boolean {
    const b = this.bits[slot];
    return (b & REMOVED) === 0 && (b & STATE) !== QUEUED;
  }

  isStored(slot: number): boolean {
    return (this.bits[slot] & STORED) !== 0;
  }

  bodyLength(slot: number): number {
    return this.lens[slot];
  }

  /** The item's TTL as kept (see `ttls`), `null` = infinite. */
  ttl(slot: number): number | null {
    const t = this.ttls[slot];
    return Number.isNaN(t) ? null : t;
  }

  /** Remaining TTL of an item at `now`, ms (`null` = infinite). */
  remaining(slot: number, now: number): number | null {
    const t = this.ttls[slot];
    if (Number.isNaN(t)) return null;
    return this.since === null ? t : t - (now - this.since);
  }

  /** The chunk holding the item's frame, at {@link frameOffset}. */
  chunk(slot: number): Buffer {
    return this.chunks[this.chunkNo[slot] - this.chunkBase];
  }

  /** Where the item's frame starts in its {@link chunk}; its 4-byte length prefix precedes it. */
  frameOffset(slot: number): number {
    return this.offs[slot];
  }

  /**
   * Where the item's packet ends in its {@link chunk}: after its body, or after its frame head
   * when the body is kept by reference ({@link largeBody}). The next item's packet starts there
   * if it was queued into the same chunk.
   */
  packetEnd(slot: number): number {
    const n = this.lens[slot];
    return this.offs[slot] + FRAME_HEAD_SIZE + (n >= COPY_BODY_LIMIT ? 0 : n);
  }

  /**
   * The body kept by reference, or `undefined` when the body follows the frame head in the
   * chunk (a body shorter than {@link COPY_BODY_LIMIT}).
   */
  largeBody(slot: number): Buffer | undefined {
    return this.lens[slot] >= COPY_BODY_LIMIT ? this.large!.get(this.base + slot) : undefined;
  }

  /** The item's uuid as a new Buffer. */
  uuid(slot: number): Buffer {
    const b = Buffer.allocUnsafe(16);
    // Buffer#copy costs several times more for 16 bytes
    copy16(this.chunk(slot), this.offs[slot] + SEQ_MESSAGE_UUID_OFFSET, b, 0);
    return b;
  }

  /** The item's uuid as a map key. */
  key(slot: number): string {
    return uuidKey(this.chunk(slot), this.offs[slot] + SEQ_MESSAGE_UUID_OFFSET);
  }

  /** Remove an item (delivered, dropped or expired). Slots stay valid until the next push. */
  remove(slot: number): void {
    if (slot < this.head || slot >= this.end) return;
    const b = this.bits[slot];
    if ((b & REMOVED) !== 0) return;
    this.bits[slot] = b | REMOVED;
    const n = this.lens[slot];
    if (this.index !== undefined) this.index.delete(this.key(slot));
    if (n >= COPY_BODY_LIMIT) this.large!.delete(this.base + slot);
    this.size--;
    this.bytes -= n;
    if (!Number.isNaN(this.ttls[slot])) this.finite--;
    if ((b & STATE) !== QUEUED) {
      this.inflight--;
      this.inflightBytes -= n;
    }
    if (slot === this.head) this.trim();
  }

  /** The seq of the live item with the uuid at `off` of `buf`, or -1. */
  find(buf: Buffer, off: number): number {
    if (this.index === undefined) {
      if (this.size === 0) return -1;
      const index = new Map<string, number>();
      for (let s = this.head; s < this.end; s++) if ((this.bits[s] & REMOVED) === 0) index.set(this.key(s), this.base + s);
      this.index = index;
    }
    return this.index.get(uuidKey(buf, off)) ?? -1;
  }

  /** Slot of the next item to send (marked by the caller via {@link markWriting}), or -1. */
  peekUnsent(): number {
    const bits = this.bits;
    const end = this.end;
    let s = this.sendCursor;
    while (s < end && (bits[s] & REMOVED) !== 0) s++;
    this.sendCursor = s;
    return s < end ? s : -1;
  }

  /** Mark the item {@link peekUnsent} returned as being written. */
  markWriting(slot: number): void {
    this.bits[slot] = (this.bits[slot] & ~STATE) | WRITING;
    this.inflight++;
    this.inflightBytes += this.lens[slot];
    this.sendCursor = slot + 1;
  }

  /** The slot of the oldest item not in flight (for the drop-oldest policy), or -1. */
  oldestUnsent(): number {
    return this.peekUnsent();
  }

  /** The peer connected: freeze remaining TTLs. Returns the items that expired meanwhile. */
  connect(now: number): RemovedItem[] {
    const expired = this.since === null ? [] : this.expire(now);
    if (this.since !== null && this.finite > 0) {
      const elapsed = now - this.since;
      for (let s = this.head; s < this.end; s++) {
        if ((this.bits[s] & REMOVED) === 0 && !Number.isNaN(this.ttls[s])) this.ttls[s] -= elapsed;
      }
    }
    this.since = null;
    return expired;
  }

  /**
   * The peer left: everything in flight goes back to the unsent part (to be resent), and the
   * TTLs start running down from `now`.
   */
  disconnect(now: number): void {
    for (let s = this.head; s < this.sendCursor && s < this.end; s++) {
      if (this.isInFlight(s)) {
        this.bits[s] &= ~STATE;
        this.inflight--;
        this.inflightBytes -= this.lens[s];
      }
    }
    this.sendCursor = this.head;
    if (this.since === null) this.since = now;
  }

  /** Remove and return the items whose TTL ran out at `now` (only while disconnected). */
  expire(now: number): RemovedItem[] {
    if (this.since === null || this.finite === 0) return [];
    const elapsed = now - this.since;
    const seqs: number[] = [];
    const out: RemovedItem[] = [];
    for (let s = this.head; s < this.end; s++) {
      const b = this.bits[s];
      if ((b & REMOVED) === 0 && (b & STATE) === QUEUED && this.ttls[s] - elapsed <= 0) {
        seqs.push(this.base + s);
        out.push({ uuid: this.uuid(s), stored: (b & STORED) !== 0 });
      }
    }
    for (const seq of seqs) {
      const s = this.slotOf(seq);
      if (s >= 0) this.remove(s);
    }
    return out;
  }

  /** When the next item expires (absolute clock ms), or `null`. */
  nextExpiry(): number | null {
    if (this.since === null || this.finite === 0) return null;
    let min = Infinity;
    for (let s = this.head; s < this.end; s++) {
      if ((this.bits[s] & REMOVED) === 0 && this.ttls[s] < min) min = this.ttls[s];
    }
    return min === Infinity ? null : this.since + min;
  }

  /** Uuids and remaining TTLs (at `now`, at least 0) of the live stored items with a finite TTL. */
  storedTtls(now: number): { uuid: Buffer; ttl: number }[] {
    const out: { uuid: Buffer; ttl: number }[] = [];
    for (let s = this.head; s < this.end; s++) {
      const b = this.bits[s];
      if ((b & REMOVED) === 0 && (b & STORED) !== 0 && !Number.isNaN(this.ttls[s])) {
        out.push({ uuid: this.uuid(s), ttl: Math.max(0, this.remaining(s, now)!) });
      }
    }
    return out;
  }

  /** Room for one more slot: move the live slots to the front when half is free, else grow. */
  private makeRoom(): void {
    const h = this.head;
    if (h > 0 && h * 2 >= this.end) {
      const end = this.end;
      this.chunkNo.copyWithin(0, h, end);
      this.offs.copyWithin(0, h, end);
      this.lens.copyWithin(0, h, end);
      this.ttls.copyWithin(0, h, end);
      this.wseqs.copyWithin(0, h, end);
      this.bits.copyWithin(0, h, end);
      this.base += h;
      this.end -= h;
      this.sendCursor -= h;
      this.head = 0;
      return;
    }
    this.resize(Math.max(MIN_SLOTS, this.cap * 2));
  }

  private resize(cap: number): void {
    const n = Math.min(this.end, cap);
    const grow = <T extends Int32Array | Float64Array | Uint8Array>(a: T, b: T): T => {
      b.set(a.subarray(0, n));
      return b;
    };
    this.chunkNo = grow(this.chunkNo, new Int32Array(cap));
    this.offs = grow(this.offs, new Int32Array(cap));
    this.lens = grow(this.lens, new Int32Array(cap));
    this.ttls = grow(this.ttls, new Float64Array(cap));
    this.wseqs = grow(this.wseqs, new Float64Array(cap));
    this.bits = grow(this.bits, new Uint8Array(cap));
    this.cap = cap;
  }

  /** Start a chunk of at least `need` bytes; larger ones as more chunks are in use. */
  private newChunk(need: number): Buffer {
    const size = Math.max(need, Math.min(MAX_CHUNK, MIN_CHUNK << Math.min(this.chunks.length, 4)));
    const chunk = Buffer.allocUnsafeSlow(size);
    this.chunks.push(chunk);
    this.fill = 0;
    return chunk;
  }

  /** Advance the head past removed items; release chunks no item needs any more. */
  private trim(): void {
    const bits = this.bits;
    const end = this.end;
    let h = this.head;
    while (h < end && (bits[h] & REMOVED) !== 0) h++;
    this.head = h;
    if (this.sendCursor < h) this.sendCursor = h;
    if (h === end) {
      // Empty: keep the chunk being filled if it is a small one (appending goes on after what
      // it holds), and small arrays, so a queue that empties after every few messages does not
      // allocate anew each time, and one that once held a burst does not keep its memory.
      this.base += end;
      this.head = this.end = this.sendCursor = 0;
      this.index = undefined;
      this.large = undefined;
      const n = this.chunks.length;
      const last = this.chunks[n - 1];
      this.chunkBase += n;
      this.chunks = [];
      if (last !== undefined && last.length <= MIN_CHUNK) {
        this.chunks.push(last);
        this.chunkBase--;
      } else this.fill = 0;
      if (this.cap > 256) this.resize(MIN_SLOTS);
      return;
    }
    const drop = this.chunkNo[h] - this.chunkBase;
    if (drop > 0) {
      this.chunks.splice(0, drop);
      this.chunkBase += drop;
    }
  }
}
