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
import { Packr, RESERVE_START_SPACE, Unpackr } from 'msgpackr';
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

const MIN_INT64 = -(2n ** 63n);
const MAX_UINT64_EXCL = 2n ** 64n;
/** Largest msgpackr working buffer whose views {@link MsgpackCodec.encodePrefixed} returns as they are. */
const SHARE_LIMIT = 64 * 1024;
/** Values up to this size are decoded from a copy in {@link scratch}. */
const SCRATCH_SIZE = 16 * 1024;
let scratch: Buffer | undefined;

/** What {@link scanMsgpack} found out about a valid body. */
export interface ScanResult {
  /** Some map has a `__proto__` key (needs the careful decode path). */
  protoKey: boolean;
}

const SCAN_PROTO: ScanResult = Object.freeze({ protoKey: true });
const SCAN_PLAIN: ScanResult = Object.freeze({ protoKey: false });

// The scan's stack, reused (the scan is synchronous and calls nothing that could re-enter it):
// items still to read in the open container at each depth (maps count keys and values), and
// whether that container is a map. Grown on demand, up to the deepest maxDepth (10,000).
let scanRemaining = new Float64Array(64);
let scanIsMap = new Uint8Array(64);

/** Where the value being scanned starts in its buffer (error positions are relative to it). */
let scanStart = 0;

function scanFail(pos: number, what: string): never {
  throw new RpcDecodeError(`invalid MessagePack at byte ${pos - scanStart}: ${what}`);
}

/** Check an extension whose type byte is at `pos`, with `len` data bytes; the position after it. */
function scanExt(b: Uint8Array, pos: number, len: number, maxBigIntBytes: number): number {
  if (1 + len > b.length - pos) scanFail(pos, 'truncated');
  const type = (b[pos] << 24) >> 24;
  switch (type) {
    case EXT_UNDEFINED:
      if (len !== 1) scanFail(pos + 1, 'bad undefined extension');
      break;
    case EXT_TIMESTAMP:
      if (len !== 1 && len !== 4 && len !== 8 && len !== 12) scanFail(pos + 1, 'bad timestamp extension');
      break;
    case EXT_BIGINT:
      if (len < 1 || len > maxBigIntBytes) scanFail(pos + 1, `BigInt of ${len} bytes (limit ${maxBigIntBytes})`);
      break;
    default:
      scanFail(pos + 1, `extension type ${type} is not accepted`);
  }
  return pos + 1 + len;
}

/**
 * Check that `b` holds exactly one MessagePack value made only of the types the codec
 * carries. Iterative: hostile nesting cannot overflow the stack.
 *
 * @throws RpcDecodeError describing the first problem found
 */
export function scanMsgpack(b: Uint8Array, maxDepth: number, maxBigIntBytes: number): ScanResult {
  return scanFrom(b, 0, maxDepth, maxBigIntBytes);
}

/** {@link scanMsgpack} of `b.subarray(start)`, without making that view. */
function scanFrom(b: Uint8Array, start: number, maxDepth: number, maxBigIntBytes: number): ScanResult {
  const end = b.length;
  let pos = start;
  scanStart = start;
  let sp = 0;
  let protoKey = false;
  let remaining = scanRemaining;
  let isMap = scanIsMap;
  for (;;) {
    const expectKey = sp > 0 && isMap[sp - 1] === 1 && (remaining[sp - 1] & 1) === 0;
    if (pos >= end) scanFail(pos, 'truncated');
    const t = b[pos++];
    let children = 0;
    let map = false;
    if (expectKey) {
      let len: number;
      if (t >= 0xa0 && t <= 0xbf) len = t - 0xa0;
      else if (t === 0xd9) {
        if (pos >= end) scanFail(pos, 'truncated');
        len = b[pos++];
      } else if (t === 0xda) {
        if (2 > end - pos) scanFail(pos, 'truncated');
        len = (b[pos] << 8) | b[pos + 1];
        pos += 2;
      } else if (t === 0xdb) {
        if (4 > end - pos) scanFail(pos, 'truncated');
        len = b[pos] * 0x1000000 + ((b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]);
        pos += 4;
      } else scanFail(pos, 'map key is not a string');
      if (len > end - pos) scanFail(pos, 'truncated');
      if (
        len === 9 &&
        b[pos] === 0x5f && // __proto__
        b[pos + 1] === 0x5f &&
        b[pos + 2] === 0x70 &&
        b[pos + 3] === 0x72 &&
        b[pos + 4] === 0x6f &&
        b[pos + 5] === 0x74 &&
        b[pos + 6] === 0x6f &&
        b[pos + 7] === 0x5f &&
        b[pos + 8] === 0x5f
      ) {
        protoKey = true;
      }
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
      if (len > end - pos) scanFail(pos, 'truncated');
      pos += len;
    } else {
      let len = -1; // bytes of a str/bin body to skip
      switch (t) {
        case 0xc0: // nil
        case 0xc2: // false
        case 0xc3: // true
          break;
        case 0xc1:
          return scanFail(pos, 'reserved byte 0xc1');
        case 0xc4:
        case 0xd9:
          if (pos >= end) scanFail(pos, 'truncated');
          len = b[pos++];
          break;
        case 0xc5:
        case 0xda:
          if (2 > end - pos) scanFail(pos, 'truncated');
          len = (b[pos] << 8) | b[pos + 1];
          pos += 2;
          break;
        case 0xc6:
        case 0xdb:
          if (4 > end - pos) scanFail(pos, 'truncated');
          len = b[pos] * 0x1000000 + ((b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]);
          pos += 4;
          break;
        case 0xc7:
          if (pos >= end) scanFail(pos, 'truncated');
          pos = scanExt(b, pos + 1, b[pos], maxBigIntBytes);
          break;
        case 0xc8:
          if (2 > end - pos) scanFail(pos, 'truncated');
          pos = scanExt(b, pos + 2, (b[pos] << 8) | b[pos + 1], maxBigIntBytes);
          break;
        case 0xc9:
          if (4 > end - pos) scanFail(pos, 'truncated');
          pos = scanExt(b, pos + 4, b[pos] * 0x1000000 + ((b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]), maxBigIntBytes);
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          len = 4;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          len = 8;
          break;
        case 0xcc:
        case 0xd0:
          len = 1;
          break;
        case 0xcd:
        case 0xd1:
          len = 2;
          break;
        case 0xd4:
          pos = scanExt(b, pos, 1, maxBigIntBytes);
          break;
        case 0xd5:
          pos = scanExt(b, pos, 2, maxBigIntBytes);
          break;
        case 0xd6:
          pos = scanExt(b, pos, 4, maxBigIntBytes);
          break;
        case 0xd7:
          pos = scanExt(b, pos, 8, maxBigIntBytes);
          break;
        case 0xd8:
          pos = scanExt(b, pos, 16, maxBigIntBytes);
          break;
        case 0xdc:
          if (2 > end - pos) scanFail(pos, 'truncated');
          children = (b[pos] << 8) | b[pos + 1];
          pos += 2;
          break;
        case 0xdd:
          if (4 > end - pos) scanFail(pos, 'truncated');
          children = b[pos] * 0x1000000 + ((b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]);
          pos += 4;
          break;
        case 0xde:
          if (2 > end - pos) scanFail(pos, 'truncated');
          children = ((b[pos] << 8) | b[pos + 1]) * 2;
          pos += 2;
          map = true;
          break;
        case 0xdf:
          if (4 > end - pos) scanFail(pos, 'truncated');
          children = (b[pos] * 0x1000000 + ((b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3])) * 2;
          pos += 4;
          map = true;
          break;
        default:
          return scanFail(pos, `unknown token 0x${t.toString(16)}`);
      }
      if (len >= 0) {
        if (len > end - pos) scanFail(pos, 'truncated');
        pos += len;
      }
    }
    if (children > 0) {
      if (sp >= maxDepth) scanFail(pos, `nested deeper than ${maxDepth}`);
      // every entry takes at least one byte: refuse impossible counts before anyone allocates
      if (children > end - pos) scanFail(pos, `container claims ${map ? children / 2 : children} entries, more than the bytes left`);
      if (sp === remaining.length) {
        const r = new Float64Array(sp * 2);
        r.set(remaining);
        const m = new Uint8Array(sp * 2);
        m.set(isMap);
        scanRemaining = remaining = r;
        scanIsMap = isMap = m;
      }
      remaining[sp] = children;
      isMap[sp] = map ? 1 : 0;
      sp++;
      continue;
    }
    // an item is complete: close every container it completes
    for (;;) {
      if (sp === 0) {
        if (pos !== end) scanFail(pos, `${end - pos} trailing bytes`);
        return protoKey ? SCAN_PROTO : SCAN_PLAIN;
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
    if (!this.valid(value, 0)) this.refuse(value);
    try {
      return this.packr.pack(value);
    } catch (err) {
      throw new RpcEncodeError(`cannot encode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /**
   * @internal `prefix` followed by {@link encode}'s bytes, in one buffer (the RPC layer's
   * bodies), without encoding into a separate buffer first. Same checks and errors as `encode`.
   */
  encodePrefixed(prefix: Uint8Array, value: unknown): Buffer {
    const n = prefix.length;
    if (!this.valid(value, 0)) this.refuse(value);
    let out: Buffer;
    try {
      out = this.packr.pack(value, RESERVE_START_SPACE | n) as Buffer;
    } catch (err) {
      throw new RpcEncodeError(`cannot encode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    // msgpackr hands out views of its working buffer; keep only small ones (like Node's own
    // buffer pool), never a view that would pin a large working buffer in memory
    if (out.buffer.byteLength > SHARE_LIMIT) out = Buffer.from(out);
    for (let i = 0; i < n; i++) out[i] = prefix[i];
    return out;
  }

  /** @throws RpcDecodeError for bytes that are not one valid value of the carried types */
  decode(bytes: Buffer): unknown {
    return this.decodeAt(bytes, 0);
  }

  /**
   * @internal {@link decode} of `body.subarray(offset)` (the RPC layer's bodies after their
   * prefix). Small values are decoded from a copy in a reused buffer: msgpackr caches a
   * DataView on every buffer it reads, which would otherwise be made (and stuck on a new
   * view) for every value.
   */
  decodeAt(body: Buffer, offset: number): unknown {
    const { protoKey } = scanFrom(body, offset, this.maxDepth, this.maxBigIntBytes);
    const unpackr = protoKey ? this.mapUnpackr : this.unpackr;
    let v: unknown;
    try {
      const len = body.length - offset;
      if (len <= SCRATCH_SIZE) {
        scratch ??= Buffer.allocUnsafeSlow(SCRATCH_SIZE);
        body.copy(scratch, 0, offset);
        // nothing decoded refers to the scratch bytes: binaries are copied (copyBuffers)
        v = unpackr.unpack(scratch, len);
      } else {
        v = unpackr.unpack(offset === 0 ? body : body.subarray(offset));
      }
      return protoKey ? this.fromMaps(v) : v;
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

  /** Whether {@link check} would accept `v`: the same walk without building paths. */
  private valid(v: unknown, depth: number): boolean {
    switch (typeof v) {
      case 'undefined':
      case 'boolean':
      case 'number':
      case 'string':
        return true;
      case 'bigint':
        return (v >= MIN_INT64 && v < MAX_UINT64_EXCL) || this.bigIntFits(v);
      case 'object':
        break;
      default:
        return false;
    }
    if (v === null) return true;
    if (Array.isArray(v)) {
      if (depth >= this.maxDepth) return false;
      for (let i = 0; i < v.length; i++) if (!this.valid(v[i], depth + 1)) return false;
      return true;
    }
    const proto = Object.getPrototypeOf(v);
    if (proto === Object.prototype || proto === null) {
      if (v instanceof Uint8Array || v instanceof Date) return this.leafValid(v);
      if (depth >= this.maxDepth) return false;
      const obj = v as Record<string, unknown>;
      const keys = Object.keys(obj);
      for (let i = 0; i < keys.length; i++) if (!this.valid(obj[keys[i]], depth + 1)) return false;
      return true;
    }
    return this.leafValid(v);
  }

  /** {@link valid} for an object that is not an array or a plain object. */
  private leafValid(v: object): boolean {
    if (v instanceof Uint8Array) return v.constructor === Uint8Array || Buffer.isBuffer(v);
    return v instanceof Date;
  }

  private bigIntFits(v: bigint): boolean {
    // msgpackr writes two's complement in 8-byte words: count generously, so that whatever
    // passes here also passes the peer's decode check
    return Math.ceil(((v < 0n ? -v : v).toString(16).length / 2 + 1) / 8) * 8 + 8 <= this.maxBigIntBytes;
  }

  /** Throw the error {@link check} gives for a value {@link valid} refused. */
  private refuse(value: unknown): never {
    this.check(value, 0, '$');
    throw new RpcEncodeError('cannot encode the value');
  }

  private check(v: unknown, depth: number, path: string): void {
    switch (typeof v) {
      case 'undefined':
      case 'boolean':
      case 'number':
      case 'string':
        return;
      case 'bigint':
        if (v >= MIN_INT64 && v < MAX_UINT64_EXCL) return;
        if (!this.bigIntFits(v)) throw new RpcEncodeError(`BigInt at ${path} is longer than ${this.maxBigIntBytes} bytes`);
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
