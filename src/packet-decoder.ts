/**
 * The packet decoder: a pure state machine that turns a byte stream into packets of the form
 * `[uint32 big-endian length][payload]`. It never sees a socket; running short of bytes is a
 * state, not an error. A length prefix above the limit is refused the moment its fourth byte
 * arrives, before anything is allocated for it.
 *
 * @module
 */
import { FrameTooLargeError, InvalidArgumentError } from './errors.js';

/** Default limit on one packet's payload: 64 MiB. */
export const DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024;
/** Bytes of the length prefix. */
export const PACKET_HEADER_SIZE = 4;
/** The largest payload a uint32 length prefix can announce. */
export const MAX_WIRE_PACKET_SIZE = 0xffffffff;

/** Where the decoder stands: reading a length prefix, or a payload. */
export type PacketDecoderState = 'header' | 'payload' | 'failed';

const EMPTY = Buffer.alloc(0);

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
 * Payloads that arrive whole inside one chunk are returned as views of that chunk (no copy);
 * payloads spread over several chunks are joined into a new buffer once complete, so memory
 * held for a partial packet is only what has arrived.
 */
export class PacketDecoder {
  /** Largest accepted payload in bytes; a packet of exactly this size is accepted. */
  readonly maxPacketSize: number;
  private readonly header = Buffer.alloc(PACKET_HEADER_SIZE);
  private headerFill = 0;
  private expected = 0;
  private parts: Buffer[] = [];
  private received = 0;
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

  /** Bytes held for the packet in progress (header bytes included). */
  get buffered(): number {
    return this.state_ === 'payload' ? PACKET_HEADER_SIZE + this.received : this.headerFill;
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
   * its own, sparing a Buffer object per packet. `buf` is the chunk, or the joined parts of a
   * payload that spanned several chunks.
   */
  pushRaw(chunk: Buffer, onPacket: (buf: Buffer, start: number, end: number) => void): void {
    if (this.error) throw this.error;
    const n = chunk.length;
    let off = 0;
    while (off < n) {
      if (this.state_ === 'header') {
        let len: number;
        if (this.headerFill === 0 && n - off >= PACKET_HEADER_SIZE) {
          len = chunk.readUInt32BE(off);
          off += PACKET_HEADER_SIZE;
        } else {
          const take = Math.min(PACKET_HEADER_SIZE - this.headerFill, n - off);
          chunk.copy(this.header, this.headerFill, off, off + take);
          this.headerFill += take;
          off += take;
          if (this.headerFill < PACKET_HEADER_SIZE) return;
          this.headerFill = 0;
          len = this.header.readUInt32BE(0);
        }
        if (len > this.maxPacketSize) {
          this.state_ = 'failed';
          this.error = new FrameTooLargeError(len, this.maxPacketSize);
          throw this.error;
        }
        if (len === 0) {
          onPacket(EMPTY, 0, 0);
        } else if (n - off >= len) {
          const start = off;
          off += len;
          onPacket(chunk, start, off);
        } else {
          this.expected = len;
          this.parts.push(chunk.subarray(off));
          this.received = n - off;
          this.state_ = 'payload';
          return;
        }
      } else {
        const take = Math.min(this.expected - this.received, n - off);
        this.parts.push(chunk.subarray(off, off + take));
        this.received += take;
        off += take;
        if (this.received < this.expected) return;
        const payload = Buffer.concat(this.parts, this.expected);
        this.parts = [];
        this.received = 0;
        this.state_ = 'header';
        onPacket(payload, 0, payload.length);
      }
    }
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
