/**
 * The message: a body of bytes with a 16-byte uuid, a time to live and flags.
 *
 * @module
 */
import { randomFillSync } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';
import { FLAG_PERSISTENT } from './protocol.js';

export { FLAG_PERSISTENT };

/** Options of a {@link Message}. */
export interface MessageOptions {
  /** 16-byte uuid; a random (v4) one when omitted. */
  uuid?: Uint8Array;
  /**
   * Time to live in milliseconds while the peer is not connected: `0` = deliver only if the
   * peer is connected now; `null` or omitted = forever. (snakeMQ's default is 0; ours is
   * infinite.) Travels on the wire in whole seconds.
   */
  ttl?: number | null;
  /** Flag bits (uint32); {@link FLAG_PERSISTENT} keeps the message in storage until delivered. */
  flags?: number;
}

/** A message to send or one received. Immutable. */
export class Message {
  /** The body. */
  readonly body: Buffer;
  /** 16-byte uuid. */
  readonly uuid: Buffer;
  /** Time to live in milliseconds, `null` = infinite. For a received message: as it came on the wire. */
  readonly ttl: number | null;
  /** Flag bits. */
  readonly flags: number;
  /** The uuid was drawn by {@link newUuid} for this message, which no queue has taken yet. */
  #fresh = false;

  /**
   * @param body bytes, or a string (encoded as UTF-8)
   * @throws InvalidArgumentError for a body that is not bytes/string, a uuid that is not 16
   *   bytes, a negative or non-finite TTL, or flags that are not a uint32.
   */
  constructor(body: Uint8Array | string, options: MessageOptions = {}) {
    if (typeof body === 'string') this.body = Buffer.from(body, 'utf8');
    else if (body instanceof Uint8Array) {
      this.body = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    } else throw new InvalidArgumentError('message body must be a Buffer, Uint8Array or string');
    const { uuid, ttl = null, flags = 0 } = options;
    if (uuid === undefined) {
      this.uuid = newUuid();
      this.#fresh = true;
    } else if (uuid instanceof Uint8Array && uuid.length === 16) this.uuid = Buffer.from(uuid);
    else throw new InvalidArgumentError('message uuid must be 16 bytes');
    if (ttl !== null && (typeof ttl !== 'number' || !(ttl >= 0) || !Number.isFinite(ttl))) {
      throw new InvalidArgumentError(`message ttl must be a non-negative number of ms or null, got ${ttl}`);
    }
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) {
      throw new InvalidArgumentError(`message flags must be a uint32, got ${flags}`);
    }
    this.ttl = ttl;
    this.flags = flags;
  }

  /** Whether {@link FLAG_PERSISTENT} is set. */
  get persistent(): boolean {
    return (this.flags & FLAG_PERSISTENT) !== 0;
  }

  /** The uuid as 32 lowercase hex digits. */
  get uuidHex(): string {
    return this.uuid.toString('hex');
  }

  /** @internal Build without validation (decoded from the wire or storage). */
  static fromTrusted(body: Buffer, uuid: Buffer, ttl: number | null, flags: number): Message {
    const m = Object.create(Message.prototype) as { -readonly [K in keyof Message]: Message[K] };
    m.body = body;
    m.uuid = uuid;
    m.ttl = ttl;
    m.flags = flags;
    return m as Message;
  }

  /**
   * @internal Whether the message's uuid was drawn by {@link newUuid} when it was constructed
   * and no queue has taken it before; marks it taken. Such a uuid (122 random bits) cannot
   * equal the uuid of any message queued so far (the bytes of a Message must not be changed).
   */
  static takeFresh(m: Message): boolean {
    if (!(#fresh in m) || !m.#fresh) return false;
    m.#fresh = false;
    return true;
  }
}

// Uuids are views of slabs of random bytes: one randomFillSync per 256 uuids instead of one per
// uuid (which cost over a quarter of the send path's CPU), and none of Node's shared Buffer pool
// (whose slabs the bodies of queued messages keep alive).
const SLAB_BYTES = 16 * 256;
let slab = new ArrayBuffer(0);
let slabOffset = SLAB_BYTES;

/** A fresh random 16-byte uuid (version 4, RFC 9562). */
export function newUuid(): Buffer {
  if (slabOffset === SLAB_BYTES) {
    slab = new ArrayBuffer(SLAB_BYTES);
    const bytes = new Uint8Array(slab);
    randomFillSync(bytes);
    for (let off = 0; off < SLAB_BYTES; off += 16) {
      bytes[off + 6] = (bytes[off + 6] & 0x0f) | 0x40;
      bytes[off + 8] = (bytes[off + 8] & 0x3f) | 0x80;
    }
    slabOffset = 0;
  }
  const out = Buffer.from(slab, slabOffset, 16);
  slabOffset += 16;
  return out;
}
