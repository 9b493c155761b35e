/**
 * The packet decoder: a pure state machine that turns a byte stream into packets of the form
 * `[uint32 big-endian length][payload]`. It never sees a socket; running short of bytes is a
 * state, not an error. A length prefix above the limit is refused the moment its fourth byte
 * arrives, before anything is allocated for it.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { FrameTooLargeError, InvalidArgumentError } from './errors.js';

/** Default limit on one packet's payload: 64 MiB. */
export const DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024;
/** Bytes of the length prefix. */
export const PACKET_HEADER_SIZE = 4;
/** The largest payload a uint32 length prefix can announce. */
export const MAX_WIRE_PACKET_SIZE = 0xffffffff;

/** Where the decoder stands: reading a length prefix, or a payload. */
export type PacketDecoderState = 'header' | 'payload' | 'failed';

/**
 * Payloads up to this many bytes (1 MiB) that span chunks get their buffer at the announced
 * length as soon as their first bytes arrive; longer ones once a quarter of them has arrived.
 */
export const EAGER_ALLOC_LIMIT = 1024 * 1024;

/**
 * {@link PacketDecoder.readTarget} offers the rest of a payload in progress only when at least
 * this many bytes (16 KiB) of it are missing; shorter rests arrive faster through the
 * transport's own read buffer than through a buffer object made for one read.
 */
export const DIRECT_READ_MIN = 16 * 1024;

/** Validate a `maxPacketSize` option (payload bytes). */
export function checkMaxPacketSize(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > MAX_WIRE_PACKET_SIZE) {
    throw new InvalidArgumentError(`maxPacketSize must be an integer 0..${MAX_WIRE_PACKET_SIZE}, got ${v}`);
  }
  return v;
}

/**
 * Decodes length-prefixed packets.
 *
 * Payloads that arrive whole inside one chunk are returned as views of that chunk (no copy).
 * A payload spread over several chunks is copied, as its bytes arrive, into one buffer of its
 * announced length (each byte copied once, while the chunk is still in the CPU's cache). That
 * buffer is allocated when the payload's first bytes arrive if it is at most
 * {@link EAGER_ALLOC_LIMIT} bytes long; a longer payload is first kept as the chunks it arrived
 * in, and gets its buffer once a quarter of it has arrived, so a peer that announces a large
 * packet and stalls makes us hold at most four times what it sent (and never more than the
 * limit allows).
 */
export class PacketDecoder {
  /** Largest accepted payload in bytes; a packet of exactly this size is accepted. */
  readonly maxPacketSize: number;
  private readonly header = Buffer.alloc(PACKET_HEADER_SIZE);
  private headerFill = 0;
  /** Payload length of the packet in progress. */
  private expected = 0;
  /** Payload bytes of the packet in progress received so far. */
  private received = 0;
  /** Where the packet in progress is assembled (`expected` bytes), once allocated. */
  private target: Buffer | null = null;
  /** Chunks of a packet in progress that has no `target` yet (longer than EAGER_ALLOC_LIMIT). */
  private parts: Buffer[] = [];
  /** A view of `target` was handed out by {@link readTarget} and its bytes have not come back. */
  private offered = false;
  private state_: PacketDecoderState = 'header';
  private error: FrameTooLargeError | undefined;

  /** @param maxPacketSize payload limit in bytes (default {@link DEFAULT_MAX_PACKET_SIZE}) */
  constructor(maxPacketSize: number = DEFAULT_MAX_PACKET_SIZE) {
    this.maxPacketSize = checkMaxPacketSize(maxPacketSize);
  }

  /** Current state. */
  get state(): PacketDecoderState {
    return this.state_;
  }

  /**
   * Bytes of the packet in progress received so far (header bytes included). The memory held
   * for it may be more: see the class description.
   */
  get buffered(): number {
    return this.state_ === 'payload' ? PACKET_HEADER_SIZE + this.received : this.headerFill;
  }

  /**
   * Where the next bytes from the stream belong, for a transport that can read straight into
   * memory of our choosing: the unfilled rest of the payload in progress, when its buffer is
   * allocated and at least {@link DIRECT_READ_MIN} bytes are missing; otherwise `null`.
   *
   * Bytes read into it must be handed to the next {@link push}/{@link pushRaw} call as a view
   * of exactly the memory they were read into (starting at the returned view); the decoder
   * then finds them already in place and copies nothing. No second view is offered until that
   * call. Anything else pushed meanwhile is still decoded correctly: a chunk that is not
   * in place is copied as usual.
   */
  readTarget(): Buffer | null {
    const target = this.target;
    if (target === null || this.offered || this.state_ !== 'payload') return null;
    if (this.expected - this.received < DIRECT_READ_MIN) return null;
    this.offered = true;
    return target.subarray(this.received);
  }

  /**
   * Feed bytes. `onPacket` is called for every packet completed by them, in order.
   * @throws FrameTooLargeError when a length prefix exceeds `maxPacketSize`; the decoder is then
   *   `'failed'` and throws the same error on every later call.
   */
  push(chunk: Buffer, onPacket: (payload: Buffer) => void): void {
    this.pushRaw(chunk, (buf, start, end) => onPacket(start === 0 && end === buf.length ? buf : buf.subarray(start, end)));
  }

  /**
   * Like {@link push}, but hands each payload over as `buf[start..end)` instead of as a view of
   * its own, sparing a Buffer object per packet. `buf` is the chunk, or the buffer a payload that
   * spanned several chunks was assembled in.
   */
  pushRaw(chunk: Buffer, onPacket: (buf: Buffer, start: number, end: number) => void): void {
    if (this.error) throw this.error;
    this.offered = false;
    const n = chunk.length;
    let off = 0;
    if (this.state_ !== 'header' || this.headerFill !== 0) {
      off = this.resume(chunk, onPacket);
      if (off === n) return;
    }
    // Whole packets inside the chunk: handed over as views, nothing copied or allocated.
    while (n - off >= PACKET_HEADER_SIZE) {
      off = this.packet(chunk, off + PACKET_HEADER_SIZE, chunk.readUInt32BE(off), onPacket);
      if (off < 0) return;
    }
    if (off < n) {
      chunk.copy(this.header, 0, off, n);
      this.headerFill = n - off;
    }
  }

  /**
   * Continue the length prefix or payload in progress with the start of `chunk`. Returns the
   * offset where the rest of the chunk starts with a new packet, or `chunk.length`.
   */
  private resume(chunk: Buffer, onPacket: (buf: Buffer, start: number, end: number) => void): number {
    const n = chunk.length;
    let off = 0;
    if (this.state_ === 'header') {
      const take = Math.min(PACKET_HEADER_SIZE - this.headerFill, n);
      chunk.copy(this.header, this.headerFill, 0, take);
      this.headerFill += take;
      if (this.headerFill < PACKET_HEADER_SIZE) return n;
      this.headerFill = 0;
      off = this.packet(chunk, take, this.header.readUInt32BE(0), onPacket);
      return off < 0 ? n : off;
    }
    const take = Math.min(this.expected - this.received, n);
    const target = this.target;
    if (target !== null) {
      // Bytes read straight into the target (see readTarget) are already where they belong.
      if (chunk.buffer !== target.buffer || chunk.byteOffset !== target.byteOffset + this.received) {
        chunk.copy(target, this.received, 0, take);
      }
      this.received += take;
    } else {
      this.parts.push(take === n ? chunk : chunk.subarray(0, take));
      this.received += take;
      this.maybeAllocate();
    }
    if (this.received < this.expected) return n;
    const payload = this.target as Buffer;
    this.target = null;
    this.received = 0;
    this.state_ = 'header';
    onPacket(payload, 0, payload.length);
    return take;
  }

  /**
   * A packet of `len` payload bytes (its length prefix read) starts at `chunk[start]`: hand it
   * over if it is whole in the chunk and return the offset after it, else begin assembling it
   * and return -1.
   * @throws FrameTooLargeError when `len` is above the limit
   */
  private packet(chunk: Buffer, start: number, len: number, onPacket: (buf: Buffer, start: number, end: number) => void): number {
    if (len > this.maxPacketSize) this.fail(len);
    if (chunk.length - start < len) {
      this.begin(chunk, start, len);
      return -1;
    }
    onPacket(chunk, start, start + len);
    return start + len;
  }

  /** A payload of `len` bytes (limit checked) starts at `chunk[off]` and continues in later chunks. */
  private begin(chunk: Buffer, off: number, len: number): void {
    this.expected = len;
    this.received = chunk.length - off;
    this.state_ = 'payload';
    if (len <= EAGER_ALLOC_LIMIT) {
      const target = (this.target = Buffer.allocUnsafe(len));
      chunk.copy(target, 0, off);
    } else {
      this.parts.push(chunk.subarray(off));
      this.maybeAllocate();
    }
  }

  /** Refuse a length prefix above the limit: the decoder fails for good. */
  private fail(len: number): never {
    this.state_ = 'failed';
    this.error = new FrameTooLargeError(len, this.maxPacketSize);
    throw this.error;
  }

  /** Give a long payload in progress its buffer once a quarter of it has arrived. */
  private maybeAllocate(): void {
    if (this.received * 4 < this.expected) return;
    const target = Buffer.allocUnsafe(this.expected);
    let at = 0;
    for (const p of this.parts) {
      target.set(p, at);
      at += p.length;
    }
    this.parts = [];
    this.target = target;
  }
}

/** The 4-byte length prefix of a packet with `payloadLength` bytes. */
export function encodePacketHeader(payloadLength: number): Buffer {
  if (!Number.isInteger(payloadLength) || payloadLength < 0 || payloadLength > MAX_WIRE_PACKET_SIZE) {
    throw new InvalidArgumentError(`packet payload length ${payloadLength} does not fit a uint32`);
  }
  const h = Buffer.allocUnsafe(PACKET_HEADER_SIZE);
  h.writeUInt32BE(payloadLength, 0);
  return h;
}
