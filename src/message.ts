/**
 * The message: a body of bytes with a 16-byte uuid, a time to live and flags.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { randomFillSync } from 'node:crypto';
import { type InspectOptionsStylized, inspect } from 'node:util';
import { InvalidArgumentError } from './errors.js';
import { FLAG_PERSISTENT, MESSAGE_HEADER_SIZE } from './protocol.js';

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

/** Marks the constructor call of {@link Message.fromWire}, whose fields wait in `trusted`. */
const TRUSTED: MessageOptions = Object.freeze({});
/** Marks the constructor call of {@link Message.fresh}, whose TTL waits in `trusted`. */
const FRESH: MessageOptions = Object.freeze({});
const EMPTY = Buffer.alloc(0);
/** The body passed by {@link Message.fromWire}: the body is made from the frame when read. */
const LAZY = Buffer.alloc(0);
const trusted = { src: EMPTY as Buffer, off: 0, ttl: null as number | null, flags: 0, bodyEnd: 0 };

/** A message to send or one received. Immutable. */
export class Message {
  /**
   * The body, or `undefined` for a received message whose body has not been read: it is then
   * `#src[#off + MESSAGE_HEADER_SIZE .. #bodyEnd)`, in the frame after the uuid, TTL and flags.
   */
  #body: Buffer | undefined;
  #bodyEnd: number;
  /** Time to live in milliseconds, `null` = infinite. For a received message: as it came on the wire. */
  readonly ttl: number | null;
  /** Flag bits. */
  readonly flags: number;
  /**
   * Where the uuid's 16 bytes are: `#src[#off..]`, a slab of random bytes or of received
   * frames shared with other messages. A Buffer of its own is made only when {@link uuid} is
   * read, so sending or receiving a message creates no uuid object.
   */
  #src: Buffer;
  #off: number;
  /** The Buffer handed out by {@link uuid}, once read. */
  #uuid: Buffer | undefined;
  /** The uuid was drawn by {@link newUuid} for this message and no queue has taken it yet. */
  #fresh: boolean;

  /**
   * @param body bytes, or a string (encoded as UTF-8)
   * @throws InvalidArgumentError for a body that is not bytes/string, a uuid that is not 16
   *   bytes, a negative or non-finite TTL, or flags that are not a uint32.
   */
  constructor(body: Uint8Array | string, options: MessageOptions = {}) {
    if (options === TRUSTED) {
      // fromWire: the fields as they are, no validation (same shape as below)
      this.#body = body === LAZY ? undefined : (body as Buffer);
      this.#bodyEnd = trusted.bodyEnd;
      this.ttl = trusted.ttl;
      this.flags = trusted.flags;
      this.#src = trusted.src;
      this.#off = trusted.off;
      this.#uuid = undefined;
      this.#fresh = false;
      return;
    }
    if (options === FRESH) {
      // fresh: the body as it is, a new uuid (same shape as below)
      this.#body = body as Buffer;
      this.#bodyEnd = 0;
      this.ttl = trusted.ttl;
      this.flags = 0;
      this.#off = drawRandom16();
      this.#src = slab;
      this.#uuid = undefined;
      this.#fresh = true;
      return;
    }
    if (typeof body === 'string') this.#body = Buffer.from(body, 'utf8');
    else if (body instanceof Uint8Array) {
      this.#body = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    } else throw new InvalidArgumentError('message body must be a Buffer, Uint8Array or string');
    this.#bodyEnd = 0;
    const { uuid, ttl = null, flags = 0 } = options;
    if (ttl !== null && (typeof ttl !== 'number' || !(ttl >= 0) || !Number.isFinite(ttl))) {
      throw new InvalidArgumentError(`message ttl must be a non-negative number of ms or null, got ${ttl}`);
    }
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) {
      throw new InvalidArgumentError(`message flags must be a uint32, got ${flags}`);
    }
    this.ttl = ttl;
    this.flags = flags;
    if (uuid === undefined) {
      this.#off = drawRandom16();
      this.#src = slab;
      this.#uuid = undefined;
      this.#fresh = true;
    } else if (uuid instanceof Uint8Array && uuid.length === 16) {
      this.#src = Buffer.from(uuid);
      this.#off = 0;
      this.#uuid = this.#src;
      this.#fresh = false;
    } else throw new InvalidArgumentError('message uuid must be 16 bytes');
  }

  /**
   * The body. Like {@link uuid} an accessor, made when first read for a received message: a
   * spread (`{...message}`) or `structuredClone` does not copy it, and deep-equality checks do
   * not compare it; compare `message.body` itself.
   */
  get body(): Buffer {
    return (this.#body ??= this.#src.subarray(this.#off + MESSAGE_HEADER_SIZE, this.#bodyEnd));
  }

  /** 16-byte uuid. */
  get uuid(): Buffer {
    return (this.#uuid ??= this.#src.subarray(this.#off, this.#off + 16));
  }

  /** Whether {@link FLAG_PERSISTENT} is set. */
  get persistent(): boolean {
    return (this.flags & FLAG_PERSISTENT) !== 0;
  }

  /** The uuid as 32 lowercase hex digits. */
  get uuidHex(): string {
    return this.#src.toString('hex', this.#off, this.#off + 16);
  }

  /** @internal Build without validation (decoded from storage): `uuid` is 16 bytes of its own. */
  static fromTrusted(body: Buffer, uuid: Buffer, ttl: number | null, flags: number): Message {
    return Message.trustedOf(body, uuid, 0, 0, ttl, flags);
  }

  /**
   * @internal Build without validation from a received frame in `src`: uuid, TTL and flags at
   * `off`, then the body up to `bodyEnd` (nothing is copied; the body view is made when read).
   */
  static fromWire(src: Buffer, off: number, bodyEnd: number, ttl: number | null, flags: number): Message {
    return Message.trustedOf(LAZY, src, off, bodyEnd, ttl, flags);
  }

  private static trustedOf(body: Buffer, src: Buffer, off: number, bodyEnd: number, ttl: number | null, flags: number): Message {
    trusted.src = src;
    trusted.off = off;
    trusted.bodyEnd = bodyEnd;
    trusted.ttl = ttl;
    trusted.flags = flags;
    const m = new Message(body, TRUSTED);
    trusted.src = EMPTY;
    return m;
  }

  /**
   * @internal The buffer holding the body, from {@link bodyStart} to {@link bodyEnd}, without
   * making a view of it (not to be changed).
   */
  static bodySource(m: Message): Buffer {
    // (a message-like object of another copy of this class: its body as it says)
    if (!(#body in m)) return (m as { body: Buffer }).body;
    return m.#body ?? m.#src;
  }

  /** @internal */
  static bodyStart(m: Message): number {
    return #body in m && m.#body === undefined ? m.#off + MESSAGE_HEADER_SIZE : 0;
  }

  /** @internal */
  static bodyEnd(m: Message): number {
    if (!(#body in m)) return (m as { body: Buffer }).body.length;
    return m.#body === undefined ? m.#bodyEnd : m.#body.length;
  }

  /**
   * @internal `new Message(body, { ttl })` without validation: `body` is a Buffer and `ttl` a
   * valid TTL (null or a finite number >= 0), both checked by the caller.
   */
  static fresh(body: Buffer, ttl: number | null): Message {
    trusted.ttl = ttl;
    return new Message(body, FRESH);
  }

  /**
   * @internal Whether the message's uuid was drawn by {@link newUuid} when it was constructed
   * and no queue has taken it before; marks it taken. Such a uuid (122 random bits) cannot
   * equal the uuid of any message queued so far (the bytes of a Message must not be changed).
   */
  static takeFresh(m: Message): boolean {
    if (!m.#fresh) return false;
    m.#fresh = false;
    return true;
  }

  /** @internal The buffer holding the uuid's 16 bytes, at {@link uuidOffset} (not to be changed). */
  static uuidSource(m: Message): Buffer {
    return m.#src;
  }

  /** @internal */
  static uuidOffset(m: Message): number {
    return m.#off;
  }

  /** What `JSON.stringify` shows: body, uuid, ttl and flags. */
  toJSON(): { body: Buffer; uuid: Buffer; ttl: number | null; flags: number } {
    return { body: this.body, uuid: this.uuid, ttl: this.ttl, flags: this.flags };
  }

  /** What `console.log` and `util.inspect` show. */
  [inspect.custom](_depth: number, options: InspectOptionsStylized, inspectFn: typeof inspect): string {
    return `Message ${inspectFn({ uuid: this.uuidHex, ttl: this.ttl, flags: this.flags, body: this.body }, options)}`;
  }
}

// Uuids are drawn from slabs of random bytes: one randomFillSync per 256 uuids instead of one per
// uuid (which cost over a quarter of the send path's CPU), and none of Node's shared Buffer pool
// (whose slabs the bodies of queued messages keep alive).
const SLAB_BYTES = 16 * 256;
let slab = Buffer.alloc(0);
let slabOffset = SLAB_BYTES;

/** The offset in `slab` (refilled when used up) of 16 fresh random bytes: a version 4 uuid. */
function drawRandom16(): number {
  if (slabOffset === SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    randomFillSync(slab);
    for (let off = 0; off < SLAB_BYTES; off += 16) {
      slab[off + 6] = (slab[off + 6] & 0x0f) | 0x40;
      slab[off + 8] = (slab[off + 8] & 0x3f) | 0x80;
    }
    slabOffset = 0;
  }
  slabOffset += 16;
  return slabOffset - 16;
}

/** A fresh random 16-byte uuid (version 4, RFC 9562). */
export function newUuid(): Buffer {
  const off = drawRandom16();
  return slab.subarray(off, off + 16);
}
