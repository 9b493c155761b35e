/**
 * The RPC codec: turns call arguments, return values and RPC envelopes into bytes and back.
 *
 * The default, {@link MsgpackCodec}, is MessagePack through the `msgpackr` package (fast; a
 * compact binary format with native binary strings, so Buffers travel without base64). It
 * carries exactly these types, nothing else:
 *
 * `null`, `undefined`, booleans, numbers (`-0` arrives as `0`), strings, BigInts, Dates,
 * Buffers / Uint8Arrays (arriving as Buffers), arrays, and plain objects (prototype
 * `Object.prototype` or `null`; arriving with `Object.prototype`).
 *
 * Input from a peer is hostile until proven otherwise. Before msgpackr sees a body,
 * {@link scanMsgpack} walks its bytes without recursion and refuses (with
 * {@link RpcDecodeError}) anything outside that list: msgpackr's record definitions,
 * structured-clone references, Error/RegExp/Set/typed-array extensions and any unknown
 * extension, the reserved byte 0xc1, non-string map keys, nesting deeper than `maxDepth`,
 * BigInts longer than `maxBigIntBytes`, containers claiming more entries than there are
 * bytes, truncated input and trailing bytes. So msgpackr never constructs anything but the
 * types above, never recurses deeper than `maxDepth`, and never allocates for lengths the
 * body does not hold. A `__proto__` key is kept as an ordinary own property (as `JSON.parse`
 * does), never as a prototype: msgpackr itself would rename it to `__proto_`.
 *
 * Other codecs can be injected into {@link RpcServer} / {@link RpcClient}: anything with
 * {@link RpcCodec.encode} and {@link RpcCodec.decode}.
 *
 * @module
 */
import { Packr, Unpackr } from 'msgpackr';
import { InvalidArgumentError } from './errors.js';
import { RpcDecodeError, RpcEncodeError } from './rpc-errors.js';

/** Encodes values to bytes and back. `decode` must be safe on hostile bytes. */
export interface RpcCodec {
  /**
   * Encode a value.
   * @throws RpcEncodeError when the value holds something the codec cannot carry
   */
  encode(value: unknown): Buffer;
  /**
   * Decode bytes from a peer.
   * @throws RpcDecodeError when the bytes are not a valid encoding
   */
  decode(bytes: Buffer): unknown;
}

/** Defaults of {@link MsgpackCodecOptions}. */
export const MSGPACK_CODEC_DEFAULTS = {
  maxDepth: 512,
  maxBigIntBytes: 1024,
} as const;

/** Options of {@link MsgpackCodec}. */
export interface MsgpackCodecOptions {
  /** Deepest nesting of arrays/objects accepted, both ways (default 512). */
  maxDepth?: number;
  /** Longest BigInt beyond 64 bits, in bytes of two's complement (default 1024 = 8192 bits). */
  maxBigIntBytes?: number;
}

/** Extension types we let msgpackr decode (as int8). */
const EXT_UNDEFINED = 0;
const EXT_BIGINT = 0x42;
const EXT_TIMESTAMP = -1;

const PROTO_KEY = Buffer.from('__proto__', 'latin1');

/** What {@link scanMsgpack} found out about a valid body. */
export interface ScanResult {
  /** Some map has a `__proto__` key (needs the careful decode path). */
  protoKey: boolean;
}

/**
 * Check that `b` holds exactly one MessagePack value made only of the types the codec
 * carries. Iterative: hostile nesting cannot overflow the stack.
 *
 * @throws RpcDecodeError describing the first problem found
 */
export function scanMsgpack(b: Uint8Array, maxDepth: number, maxBigIntBytes: number): ScanResult {
  const end = b.length;
  let pos = 0;
  // remaining[i]: items still to read in the open container at depth i+1 (maps count keys and values)
  const remaining: number[] = [];
  const isMap: boolean[] = [];
  let sp = 0;
  let protoKey = false;
  const fail = (what: string): never => {
    throw new RpcDecodeError(`invalid MessagePack at byte ${pos}: ${what}`);
  };
  const need = (n: number): void => {
    if (n > end - pos) fail('truncated');
  };
  const u8 = (): number => {
    need(1);
    return b[pos++];
  };
  const u16 = (): number => {
    need(2);
    const v = (b[pos] << 8) | b[pos + 1];
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = b[pos] * 0x1000000 + ((b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]);
    pos += 4;
    return v;
  };
  const ext = (len: number): void => {
    need(1 + len);
    const type = (b[pos] << 24) >> 24;
    pos++;
    switch (type) {
      case EXT_UNDEFINED:
        if (len !== 1) fail('bad undefined extension');
        break;
      case EXT_TIMESTAMP:
        if (len !== 1 && len !== 4 && len !== 8 && len !== 12) fail('bad timestamp extension');
        break;
      case EXT_BIGINT:
        if (len < 1 || len > maxBigIntBytes) fail(`BigInt of ${len} bytes (limit ${maxBigIntBytes})`);
        break;
      default:
        fail(`extension type ${type} is not accepted`);
    }
    pos += len;
  };

  for (;;) {
    const expectKey = sp > 0 && isMap[sp - 1] && (remaining[sp - 1] & 1) === 0;
    const t = u8();
    let children = 0;
    let map = false;
    if (expectKey) {
      let len: number;
      if (t >= 0xa0 && t <= 0xbf) len = t - 0xa0;
      else if (t === 0xd9) len = u8();
      else if (t === 0xda) len = u16();
      else if (t === 0xdb) len = u32();
      else return fail('map key is not a string');
      need(len);
      if (len === 9 && PROTO_KEY.equals(b.subarray(pos, pos + 9))) protoKey = true;
      pos += len;
    } else if (t < 0x80 || t >= 0xe0) {
      // positive / negative fixint
    } else if (t < 0x90) {
      children = (t - 0x80) * 2;
      map = true;
    } else if (t < 0xa0) {
      children = t - 0x90;
    } else if (t < 0xc0) {
      const len = t - 0xa0;
      need(len);
      pos += len;
    } else {
      switch (t) {
        case 0xc0: // nil
        case 0xc2: // false
        case 0xc3: // true
          break;
        case 0xc1:
          return fail('reserved byte 0xc1');
        case 0xc4:
        case 0xd9: {
          const len = u8();
          need(len);
          pos += len;
          break;
        }
        case 0xc5:
        case 0xda: {
          const len = u16();
          need(len);
          pos += len;
          break;
        }
        case 0xc6:
        case 0xdb: {
          const len = u32();
          need(len);
          pos += len;
          break;
        }
        case 0xc7:
          ext(u8());
          break;
        case 0xc8:
          ext(u16());
          break;
        case 0xc9:
          ext(u32());
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          need(4);
          pos += 4;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          need(8);
          pos += 8;
          break;
        case 0xcc:
        case 0xd0:
          need(1);
          pos += 1;
          break;
        case 0xcd:
        case 0xd1:
          need(2);
          pos += 2;
          break;
        case 0xd4:
          ext(1);
          break;
        case 0xd5:
          ext(2);
          break;
        case 0xd6:
          ext(4);
          break;
        case 0xd7:
          ext(8);
          break;
        case 0xd8:
          ext(16);
          break;
        case 0xdc:
          children = u16();
          break;
        case 0xdd:
          children = u32();
          break;
        case 0xde:
          children = u16() * 2;
          map = true;
          break;
        case 0xdf:
          children = u32() * 2;
          map = true;
          break;
        default:
          return fail(`unknown token 0x${t.toString(16)}`);
      }
    }
    if (children > 0) {
      if (sp >= maxDepth) fail(`nested deeper than ${maxDepth}`);
      // every entry takes at least one byte: refuse impossible counts before anyone allocates
      if (children > end - pos) fail(`container claims ${map ? children / 2 : children} entries, more than the bytes left`);
      remaining[sp] = children;
      isMap[sp] = map;
      sp++;
      continue;
    }
    // an item is complete: close every container it completes
    for (;;) {
      if (sp === 0) {
        if (pos !== end) fail(`${end - pos} trailing bytes`);
        return { protoKey };
      }
      if (--remaining[sp - 1] > 0) break;
      sp--;
    }
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  const ctor = (v as { constructor?: { name?: unknown } }).constructor;
  return typeof ctor?.name === 'string' && ctor.name ? ctor.name : 'object';
}

/** The default codec: MessagePack via msgpackr, with hostile-input checks. See the module doc. */
export class MsgpackCodec implements RpcCodec {
  /** Deepest nesting accepted. */
  readonly maxDepth: number;
  /** Longest BigInt accepted, in bytes. */
  readonly maxBigIntBytes: number;
  private readonly packr: Packr;
  private readonly unpackr: Unpackr;
  private readonly mapUnpackr: Unpackr;

  /** @throws InvalidArgumentError for a bad option */
  constructor(options: MsgpackCodecOptions = {}) {
    const { maxDepth = MSGPACK_CODEC_DEFAULTS.maxDepth, maxBigIntBytes = MSGPACK_CODEC_DEFAULTS.maxBigIntBytes } = options;
    if (!Number.isInteger(maxDepth) || maxDepth < 1 || maxDepth > 10_000) {
      throw new InvalidArgumentError(`maxDepth must be an integer 1..10000, got ${maxDepth}`);
    }
    if (!Number.isInteger(maxBigIntBytes) || maxBigIntBytes < 8) {
      throw new InvalidArgumentError(`maxBigIntBytes must be an integer >= 8, got ${maxBigIntBytes}`);
    }
    this.maxDepth = maxDepth;
    this.maxBigIntBytes = maxBigIntBytes;
    const common = {
      useRecords: false,
      moreTypes: false,
      structuredClone: false,
      bundleStrings: false,
      int64AsType: 'bigint' as const,
      copyBuffers: true,
    };
    this.packr = new Packr({ ...common, mapsAsObjects: true, useBigIntExtension: true, variableMapSize: true });
    this.unpackr = new Unpackr({ ...common, mapsAsObjects: true });
    this.mapUnpackr = new Unpackr({ ...common, mapsAsObjects: false });
  }

  /**
   * @throws RpcEncodeError for a value (or a part of it) of a type the codec does not carry, a
   *   BigInt longer than `maxBigIntBytes`, or nesting deeper than `maxDepth` (which is also
   *   what a cycle gives)
   */
  encode(value: unknown): Buffer {
    this.check(value, 0, '$');
    try {
      return this.packr.pack(value);
    } catch (err) {
      throw new RpcEncodeError(`cannot encode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /** @throws RpcDecodeError for bytes that are not one valid value of the carried types */
  decode(bytes: Buffer): unknown {
    const { protoKey } = scanMsgpack(bytes, this.maxDepth, this.maxBigIntBytes);
    try {
      if (!protoKey) return this.unpackr.unpack(bytes);
      return this.fromMaps(this.mapUnpackr.unpack(bytes));
    } catch (err) {
      if (err instanceof RpcDecodeError) throw err;
      throw new RpcDecodeError(`cannot decode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /** Maps (string keys, checked by the scan) to plain objects, `__proto__` as an own property. */
  private fromMaps(v: unknown): unknown {
    if (v instanceof Map) {
      const o: Record<string, unknown> = {};
      for (const [k, x] of v) {
        const val = this.fromMaps(x);
        if (k === '__proto__') Object.defineProperty(o, k, { value: val, enumerable: true, writable: true, configurable: true });
        else o[k as string] = val;
      }
      return o;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) v[i] = this.fromMaps(v[i]);
    }
    return v;
  }

  private check(v: unknown, depth: number, path: string): void {
    switch (typeof v) {
      case 'undefined':
      case 'boolean':
      case 'number':
      case 'string':
        return;
      case 'bigint':
        if (v >= -(2n ** 63n) && v < 2n ** 64n) return;
        // msgpackr writes two's complement in 8-byte words: count generously, so that whatever
        // passes here also passes the peer's decode check
        if (Math.ceil(((v < 0n ? -v : v).toString(16).length / 2 + 1) / 8) * 8 + 8 > this.maxBigIntBytes) {
          throw new RpcEncodeError(`BigInt at ${path} is longer than ${this.maxBigIntBytes} bytes`);
        }
        return;
      case 'object':
        break;
      default:
        throw new RpcEncodeError(`cannot encode a ${typeof v} (at ${path})`);
    }
    if (v === null) return;
    if (v instanceof Uint8Array) {
      if (v.constructor === Uint8Array || Buffer.isBuffer(v)) return;
      throw new RpcEncodeError(`cannot encode a ${describe(v)} (at ${path}); use a Uint8Array or Buffer`);
    }
    if (v instanceof Date) return;
    if (depth >= this.maxDepth) throw new RpcEncodeError(`value nested deeper than ${this.maxDepth} at ${path} (a cycle?)`);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) this.check(v[i], depth + 1, `${path}[${i}]`);
      return;
    }
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      throw new RpcEncodeError(`cannot encode a ${describe(v)} (at ${path}); only plain objects, arrays, Buffers and Dates`);
    }
    const obj = v as Record<string, unknown>;
    for (const k of Object.keys(obj)) this.check(obj[k], depth + 1, `${path}.${k}`);
  }
}
