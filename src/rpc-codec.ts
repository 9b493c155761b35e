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
 * msgpackr's fixed cost per value is several times the cost of a small RPC envelope, so the
 * codec encodes and decodes the common types itself, with the same bytes and values as
 * msgpackr (see "own encoder" below); values with Dates or long BigInts, and everything
 * refused, still go through msgpackr and its checks.
 *
 * Other codecs can be injected into {@link RpcServer} / {@link RpcClient}: anything with
 * {@link RpcCodec.encode} and {@link RpcCodec.decode}.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { Packr, RESERVE_START_SPACE, Unpackr } from 'msgpackr';
import { readU16BE, readU32BE } from './bytes.js';
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
  /**
   * Some value is an extension other than `undefined` in its short form (a Date, a BigInt
   * beyond 64 bits): decoded by msgpackr rather than by the codec's own decoder.
   */
  extensions: boolean;
}

/** The four results, by `protoKey` (bit 0) and `extensions` (bit 1). */
const SCAN_RESULTS: readonly ScanResult[] = [
  Object.freeze({ protoKey: false, extensions: false }),
  Object.freeze({ protoKey: true, extensions: false }),
  Object.freeze({ protoKey: false, extensions: true }),
  Object.freeze({ protoKey: true, extensions: true }),
];

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
function scanExt(b: Uint8Array, pos: number, len: number, maxBigIntBytes: number, end: number): number {
  if (1 + len > end - pos) scanFail(pos, 'truncated');
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

/** {@link scanMsgpack} of `b.subarray(start, end)`, without making that view. */
function scanFrom(b: Uint8Array, start: number, maxDepth: number, maxBigIntBytes: number, end = b.length): ScanResult {
  let pos = start;
  scanStart = start;
  let sp = 0;
  let protoKey = false;
  let extensions = false;
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
        len = readU16BE(b, pos);
        pos += 2;
      } else if (t === 0xdb) {
        if (4 > end - pos) scanFail(pos, 'truncated');
        len = readU32BE(b, pos);
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
          len = readU16BE(b, pos);
          pos += 2;
          break;
        case 0xc6:
        case 0xdb:
          if (4 > end - pos) scanFail(pos, 'truncated');
          len = readU32BE(b, pos);
          pos += 4;
          break;
        case 0xc7:
          if (pos >= end) scanFail(pos, 'truncated');
          extensions = true;
          pos = scanExt(b, pos + 1, b[pos], maxBigIntBytes, end);
          break;
        case 0xc8:
          if (2 > end - pos) scanFail(pos, 'truncated');
          extensions = true;
          pos = scanExt(b, pos + 2, readU16BE(b, pos), maxBigIntBytes, end);
          break;
        case 0xc9:
          if (4 > end - pos) scanFail(pos, 'truncated');
          extensions = true;
          pos = scanExt(b, pos + 4, readU32BE(b, pos), maxBigIntBytes, end);
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
          // fixext 1 of type 0 is `undefined`, which the codec's own decoder reads
          if (pos < end && b[pos] !== EXT_UNDEFINED) extensions = true;
          pos = scanExt(b, pos, 1, maxBigIntBytes, end);
          break;
        case 0xd5:
          extensions = true;
          pos = scanExt(b, pos, 2, maxBigIntBytes, end);
          break;
        case 0xd6:
          extensions = true;
          pos = scanExt(b, pos, 4, maxBigIntBytes, end);
          break;
        case 0xd7:
          extensions = true;
          pos = scanExt(b, pos, 8, maxBigIntBytes, end);
          break;
        case 0xd8:
          extensions = true;
          pos = scanExt(b, pos, 16, maxBigIntBytes, end);
          break;
        case 0xdc:
          if (2 > end - pos) scanFail(pos, 'truncated');
          children = readU16BE(b, pos);
          pos += 2;
          break;
        case 0xdd:
          if (4 > end - pos) scanFail(pos, 'truncated');
          children = readU32BE(b, pos);
          pos += 4;
          break;
        case 0xde:
          if (2 > end - pos) scanFail(pos, 'truncated');
          children = readU16BE(b, pos) * 2;
          pos += 2;
          map = true;
          break;
        case 0xdf:
          if (4 > end - pos) scanFail(pos, 'truncated');
          children = readU32BE(b, pos) * 2;
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
        return SCAN_RESULTS[(protoKey ? 1 : 0) | (extensions ? 2 : 0)];
      }
      if (--remaining[sp - 1] > 0) break;
      sp--;
    }
  }
}

// ------------------------------------------------------------------------------ own encoder

// msgpackr's `pack()` has a fixed cost of about a microsecond per value (its buffer and
// record bookkeeping), several times the cost of encoding a small RPC envelope. The codec
// therefore encodes the common types itself: null, undefined, booleans, numbers, strings,
// Buffers / Uint8Arrays, arrays and plain objects, byte for byte as msgpackr does with the
// codec's options. A value holding anything else (a BigInt, a Date, or something that cannot
// be encoded at all) is encoded again from the start by msgpackr, whose checks and errors stay
// as they are.

/** Size of the working slab the encoder writes into; values are handed out as views of it. */
const ENC_SLAB_SIZE = 64 * 1024;
let encBuf: Buffer = Buffer.alloc(0);
let encView = new DataView(encBuf.buffer, encBuf.byteOffset, 0);
/** Where the value being encoded starts in `encBuf`, and where the next byte goes. */
let encStart = 0;
let encPos = 0;
/**
 * An encoding is in progress: a getter that encodes (re-entering the encoder) is handed to
 * msgpackr instead of writing into the middle of the outer value.
 */
let encBusy = false;

/** Make room for `n` more bytes, moving the value begun so far to a larger buffer if needed. */
function encRoom(n: number): void {
  if (encPos + n <= encBuf.length) return;
  const used = encPos - encStart;
  const next = Buffer.allocUnsafeSlow(Math.max(ENC_SLAB_SIZE, 2 * used + n));
  encBuf.copy(next, 0, encStart, encPos);
  encBuf = next;
  encView = new DataView(next.buffer, next.byteOffset, next.length);
  encStart = 0;
  encPos = used;
}

/**
 * `prefix` followed by the encoding of `value` (with a `shape`: of the map of the shape's keys
 * to `value`'s items) and by `suffix`, or `undefined` when the value holds something the
 * encoder leaves to msgpackr (or is nested deeper than `maxDepth`, counting from `depth`).
 */
function encodeOwn(
  prefix: Uint8Array | undefined,
  value: unknown,
  shape: MapShape | undefined,
  maxDepth: number,
  suffix?: Uint8Array,
  depth = 0,
): Buffer | undefined {
  if (encBusy) return undefined;
  encBusy = true;
  if (encBuf.length - encPos < 256) {
    encBuf = Buffer.allocUnsafeSlow(ENC_SLAB_SIZE);
    encView = new DataView(encBuf.buffer, encBuf.byteOffset, ENC_SLAB_SIZE);
    encPos = 0;
  }
  encStart = encPos;
  let done = false;
  try {
    if (prefix !== undefined) encBytes(prefix);
    done = shape === undefined ? encValue(value, depth, maxDepth) : encShaped(shape, value as readonly unknown[], maxDepth);
    if (done && suffix !== undefined) encBytes(suffix);
  } catch (err) {
    // nesting too deep for the stack: msgpackr's path gives the error (a getter's own error
    // is thrown again when msgpackr's path reads the property)
    if (!(err instanceof RangeError)) throw err;
  } finally {
    encBusy = false;
    if (!done) encPos = encStart;
  }
  if (!done) return undefined;
  const out = encBuf.subarray(encStart, encPos);
  if (encBuf.length > ENC_SLAB_SIZE) {
    // a large value had a buffer of its own: hand it out, or an exact copy if it is much larger
    const size = encBuf.length;
    encBuf = Buffer.alloc(0);
    encPos = encStart = 0;
    return out.length >= size - (size >>> 2) ? out : Buffer.from(out);
  }
  // the next value starts 8-byte aligned
  encPos = Math.min((encPos + 7) & ~7, encBuf.length);
  encStart = encPos;
  return out;
}

/**
 * Copy `bytes` to `encPos`. (A typed-array copy: a byte loop, even over 16 bytes, took several
 * times the instructions, `bytes` being sometimes a Buffer and sometimes a Uint8Array.)
 */
function encBytes(bytes: Uint8Array): void {
  const n = bytes.length;
  encRoom(n);
  encBuf.set(bytes, encPos);
  encPos += n;
}

/** {@link encValue} of the map of `shape`'s keys to `values`. */
function encShaped(shape: MapShape, values: readonly unknown[], maxDepth: number): boolean {
  const keys = shape.encodedKeys;
  const n = keys.length;
  encHeader(n, 0x80, 0xde);
  for (let i = 0; i < n; i++) {
    encBytes(keys[i]);
    if (!encValue(values[i], 1, maxDepth)) return false;
  }
  return true;
}

/** Encode `v` at `encPos`; false when it holds something left to msgpackr. */
function encValue(v: unknown, depth: number, maxDepth: number): boolean {
  switch (typeof v) {
    case 'string':
      encString(v);
      return true;
    case 'number':
      encNumber(v);
      return true;
    case 'boolean':
      encRoom(1);
      encBuf[encPos++] = v ? 0xc3 : 0xc2;
      return true;
    case 'undefined':
      // fixext 1, type 0, as msgpackr writes it
      encRoom(3);
      encBuf[encPos++] = 0xd4;
      encBuf[encPos++] = 0;
      encBuf[encPos++] = 0;
      return true;
    case 'object':
      break;
    default:
      return false;
  }
  if (v === null) {
    encRoom(1);
    encBuf[encPos++] = 0xc0;
    return true;
  }
  if (Array.isArray(v)) {
    if (depth >= maxDepth) return false;
    const n = v.length;
    encHeader(n, 0x90, 0xdc);
    for (let i = 0; i < n; i++) if (!encValue(v[i], depth + 1, maxDepth)) return false;
    return true;
  }
  if (v instanceof Uint8Array) {
    if (v.constructor !== Uint8Array && !Buffer.isBuffer(v)) return false;
    encBin(v);
    return true;
  }
  const proto = Object.getPrototypeOf(v);
  if ((proto !== Object.prototype && proto !== null) || depth >= maxDepth) return false;
  const obj = v as Record<string, unknown>;
  const keys = Object.keys(obj);
  const n = keys.length;
  encHeader(n, 0x80, 0xde);
  for (let i = 0; i < n; i++) {
    const k = keys[i];
    encString(k);
    if (!encValue(obj[k], depth + 1, maxDepth)) return false;
  }
  return true;
}

/** An array or map header: `fix | n` below 16, else as {@link encWide} from `t16`. */
function encHeader(n: number, fix: number, t16: number): void {
  encRoom(5);
  if (n < 0x10) encBuf[encPos++] = fix | n;
  else encWide(n, t16);
}

/**
 * `t8` and `n` in one byte when `n` fits, else as {@link encWide} from `t8 + 1`: uint 8/16/32
 * (`0xcc`), bin 8/16/32 (`0xc4`), str 8/16/32 (`0xd9`). Room for 5 bytes must be there.
 */
function encSized(n: number, t8: number): void {
  if (n < 0x100) {
    encBuf[encPos++] = t8;
    encBuf[encPos++] = n;
  } else encWide(n, t8 + 1);
}

/** `t16` and `n` in two bytes when it fits, else `t16 + 1` and four (big-endian). Room for 5 bytes must be there. */
function encWide(n: number, t16: number): void {
  if (n < 0x10000) {
    encBuf[encPos++] = t16;
    encBuf[encPos++] = n >>> 8;
    encBuf[encPos++] = n & 0xff;
  } else {
    encBuf[encPos++] = t16 + 1;
    encView.setUint32(encPos, n);
    encPos += 4;
  }
}

function encNumber(v: number): void {
  encRoom(9);
  const b = encBuf;
  if (v >>> 0 === v) {
    if (v < 0x80) b[encPos++] = v;
    else encSized(v, 0xcc);
  } else if (v >> 0 === v) {
    if (v >= -0x20) b[encPos++] = 0x100 + v;
    else if (v >= -0x80) {
      b[encPos++] = 0xd0;
      b[encPos++] = v + 0x100;
    } else if (v >= -0x8000) {
      b[encPos++] = 0xd1;
      encView.setInt16(encPos, v);
      encPos += 2;
    } else {
      b[encPos++] = 0xd2;
      encView.setInt32(encPos, v);
      encPos += 4;
    }
  } else {
    b[encPos++] = 0xcb;
    encView.setFloat64(encPos, v);
    encPos += 8;
  }
}

/**
 * A string as UTF-8 (short strings by hand, lone surrogates as three bytes each, as msgpackr
 * does; long ones by Node), with the smallest header that fits.
 */
function encString(s: string): void {
  const n = s.length;
  // the header is sized by the UTF-16 length (never more than the UTF-8 length) and moved
  // up if the bytes turn out to need a larger one
  const head = n < 0x20 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
  encRoom(5 + (n < 0x40 ? n * 3 : Buffer.byteLength(s, 'utf8')));
  const b = encBuf;
  const at = encPos + head;
  let len: number;
  if (n < 0x40) {
    let p = at;
    for (let i = 0; i < n; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) b[p++] = c;
      else if (c < 0x800) {
        b[p++] = (c >> 6) | 0xc0;
        b[p++] = (c & 0x3f) | 0x80;
      } else if ((c & 0xfc00) === 0xd800 && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        c = 0x10000 + ((c & 0x03ff) << 10) + (s.charCodeAt(++i) & 0x03ff);
        b[p++] = (c >> 18) | 0xf0;
        b[p++] = ((c >> 12) & 0x3f) | 0x80;
        b[p++] = ((c >> 6) & 0x3f) | 0x80;
        b[p++] = (c & 0x3f) | 0x80;
      } else {
        b[p++] = (c >> 12) | 0xe0;
        b[p++] = ((c >> 6) & 0x3f) | 0x80;
        b[p++] = (c & 0x3f) | 0x80;
      }
    }
    len = p - at;
  } else {
    len = b.write(s, at, 'utf8');
  }
  const need = len < 0x20 ? 1 : len < 0x100 ? 2 : len < 0x10000 ? 3 : 5;
  if (need > head) b.copyWithin(encPos + need, at, at + len);
  if (need === 1) b[encPos++] = 0xa0 | len;
  else encSized(len, 0xd9);
  encPos += len;
}

function encBin(v: Uint8Array): void {
  encRoom(5);
  encSized(v.length, 0xc4);
  encBytes(v);
}

// ------------------------------------------------------------------------------ own decoder

// Bodies the scan passed without extensions (see ScanResult) are decoded here: the scan has
// checked every length, nesting depth and map key, so this reads without bounds checks.
// Strings are decoded by Node (invalid UTF-8 becomes U+FFFD); short ASCII strings (map keys,
// method names) come from a small cache instead of being made again for every body.

let decBuf: Buffer = Buffer.alloc(0);
let decPos = 0;

/** Cached short ASCII strings, by a hash of their bytes. */
const STR_CACHE_SIZE = 1024;
const STR_CACHE_MAX = 24;
const strCache: (string | undefined)[] = new Array(STR_CACHE_SIZE).fill(undefined);

/** The value at `b[pos..]`, already checked by a scan that found no extensions. */
function decodeOwn(b: Buffer, pos: number): unknown {
  const outerBuf = decBuf;
  const outerPos = decPos;
  decBuf = b;
  decPos = pos;
  try {
    return decValue();
  } finally {
    // (a setter on Object.prototype could decode re-entrantly; and no body stays referenced)
    decBuf = outerBuf;
    decPos = outerPos;
  }
}

/**
 * The values of `shape`'s keys in the map at `b[pos..]` (already checked by a scan that found
 * no extensions), in the shape's order; `undefined` for a missing key; other keys are passed
 * over. `undefined` when the value is not a map.
 */
function decodeShapedOwn(b: Buffer, pos: number, shape: MapShape): unknown[] | undefined {
  const outerBuf = decBuf;
  const outerPos = decPos;
  decBuf = b;
  decPos = pos;
  try {
    const t = b[decPos++];
    const n = t >= 0x80 && t < 0x90 ? t - 0x80 : t === 0xde ? decU16() : t === 0xdf ? decU32() : -1;
    if (n < 0) return undefined;
    const keys = shape.utf8Keys;
    const values = new Array<unknown>(keys.length).fill(undefined);
    for (let i = 0; i < n; i++) {
      const h = b[decPos++];
      const len = h < 0xc0 ? h - 0xa0 : h === 0xd9 ? b[decPos++] : h === 0xda ? decU16() : decU32();
      const start = decPos;
      decPos += len;
      let found = -1;
      for (let k = 0; k < keys.length && found < 0; k++) {
        const key = keys[k];
        if (key.length !== len) continue;
        let j = 0;
        while (j < len && key[j] === b[start + j]) j++;
        if (j === len) found = k;
      }
      const v = decValue();
      if (found >= 0) values[found] = v;
    }
    return values;
  } finally {
    decBuf = outerBuf;
    decPos = outerPos;
  }
}

function decValue(): unknown {
  const b = decBuf;
  const t = b[decPos++];
  if (t < 0x80) return t;
  if (t < 0x90) return decMap(t - 0x80);
  if (t < 0xa0) return decArray(t - 0x90);
  if (t < 0xc0) return decString(t - 0xa0);
  if (t >= 0xe0) return t - 0x100;
  let v: unknown;
  switch (t) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return decBin(b[decPos++]);
    case 0xc5:
      return decBin(decU16());
    case 0xc6:
      return decBin(decU32());
    case 0xca:
      v = b.readFloatBE(decPos);
      decPos += 4;
      return v;
    case 0xcb:
      v = b.readDoubleBE(decPos);
      decPos += 8;
      return v;
    case 0xcc:
      return b[decPos++];
    case 0xcd:
      return decU16();
    case 0xce:
      return decU32();
    case 0xcf:
      // 64-bit integers arrive as BigInts (int64AsType 'bigint')
      v = b.readBigUInt64BE(decPos);
      decPos += 8;
      return v;
    case 0xd0:
      return (b[decPos++] << 24) >> 24;
    case 0xd1:
      return (decU16() << 16) >> 16;
    case 0xd2:
      return decU32() | 0;
    case 0xd3:
      v = b.readBigInt64BE(decPos);
      decPos += 8;
      return v;
    case 0xd4:
      // fixext 1 of type 0 (the scan let no other extension through): undefined
      decPos += 2;
      return undefined;
    case 0xd9:
      return decString(b[decPos++]);
    case 0xda:
      return decString(decU16());
    case 0xdb:
      return decString(decU32());
    case 0xdc:
      return decArray(decU16());
    case 0xdd:
      return decArray(decU32());
    case 0xde:
      return decMap(decU16());
    case 0xdf:
      return decMap(decU32());
  }
  // unreachable after a scan
  throw new RpcDecodeError(`unexpected token 0x${t.toString(16)}`);
}

function decU16(): number {
  const b = decBuf;
  const v = readU16BE(b, decPos);
  decPos += 2;
  return v;
}

function decU32(): number {
  const b = decBuf;
  const v = readU32BE(b, decPos);
  decPos += 4;
  return v;
}

function decArray(n: number): unknown[] {
  const a = new Array<unknown>(n);
  for (let i = 0; i < n; i++) a[i] = decValue();
  return a;
}

function decMap(n: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const b = decBuf;
  for (let i = 0; i < n; i++) {
    // keys are strings (checked by the scan)
    const t = b[decPos++];
    const k = decString(t < 0xc0 ? t - 0xa0 : t === 0xd9 ? b[decPos++] : t === 0xda ? decU16() : decU32());
    const v = decValue();
    if (k === '__proto__') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
    else o[k] = v;
  }
  return o;
}

function decString(len: number): string {
  const b = decBuf;
  const start = decPos;
  const end = (decPos += len);
  if (len > STR_CACHE_MAX) return b.toString('utf8', start, end);
  if (len === 0) return '';
  let h = len;
  for (let i = start; i < end; i++) {
    const c = b[i];
    if (c >= 0x80) return b.toString('utf8', start, end);
    h = (h * 31 + c) | 0;
  }
  const slot = h & (STR_CACHE_SIZE - 1);
  const cached = strCache[slot];
  if (cached !== undefined && cached.length === len) {
    let i = 0;
    while (i < len && cached.charCodeAt(i) === b[start + i]) i++;
    if (i === len) return cached;
  }
  const s = b.toString('latin1', start, end);
  strCache[slot] = s;
  return s;
}

/** A copy of `len` bytes (decoded Buffers never share memory with the body). */
function decBin(len: number): Buffer {
  const out = Buffer.allocUnsafe(len);
  const start = decPos;
  decPos += len;
  if (len <= 32) for (let i = 0; i < len; i++) out[i] = decBuf[start + i];
  else decBuf.copy(out, 0, start, start + len);
  return out;
}

/**
 * @internal The string keys of a map that is encoded and decoded often (the RPC layer's
 * envelopes), with their encodings made once. See {@link MsgpackCodec.encodeShapedPrefixed}
 * and {@link MsgpackCodec.decodeShapedAt}.
 */
export class MapShape {
  /** The keys, in the order they are encoded. */
  readonly keys: readonly string[];
  /** @internal Each key's MessagePack encoding (header and UTF-8). */
  readonly encodedKeys: readonly Buffer[];
  /** @internal Each key's UTF-8 bytes. */
  readonly utf8Keys: readonly Buffer[];

  constructor(keys: readonly string[]) {
    this.keys = [...keys];
    this.utf8Keys = this.keys.map((k) => Buffer.from(k, 'utf8'));
    this.encodedKeys = this.utf8Keys.map((u) => {
      if (u.length >= 0x20) throw new InvalidArgumentError('MapShape keys are shorter than 32 bytes');
      return Buffer.concat([Buffer.from([0xa0 | u.length]), u]);
    });
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  const ctor = (v as { constructor?: { name?: unknown } }).constructor;
  return typeof ctor?.name === 'string' && ctor.name ? ctor.name : 'object';
}

/** The default codec: MessagePack via msgpackr, with hostile-input checks. See the module doc. */
/** msgpackr's options shared by packing and unpacking: plain MessagePack, no records or extras. */
const MSGPACKR_COMMON = {
  useRecords: false,
  moreTypes: false,
  structuredClone: false,
  bundleStrings: false,
  int64AsType: 'bigint' as const,
  copyBuffers: true,
};
/** @internal How the codec configures msgpackr (the tests compare our encoding with it). */
export const MSGPACKR_PACK_OPTIONS = { ...MSGPACKR_COMMON, mapsAsObjects: true, useBigIntExtension: true, variableMapSize: true };
/** @internal */
export const MSGPACKR_UNPACK_OPTIONS = { ...MSGPACKR_COMMON, mapsAsObjects: true };

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
    this.packr = new Packr(MSGPACKR_PACK_OPTIONS);
    this.unpackr = new Unpackr(MSGPACKR_UNPACK_OPTIONS);
    this.mapUnpackr = new Unpackr({ ...MSGPACKR_UNPACK_OPTIONS, mapsAsObjects: false });
  }

  /**
   * @throws RpcEncodeError for a value (or a part of it) of a type the codec does not carry, a
   *   BigInt longer than `maxBigIntBytes`, or nesting deeper than `maxDepth` (which is also
   *   what a cycle gives)
   */
  encode(value: unknown): Buffer {
    const own = encodeOwn(undefined, value, undefined, this.maxDepth);
    if (own !== undefined) return own;
    this.checkValue(value);
    try {
      return this.packr.pack(value);
    } catch (err) {
      throw new RpcEncodeError(`cannot encode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /**
   * @internal `prefix` followed by {@link encode}'s bytes, in one buffer (the RPC layer's
   * bodies), without encoding into a separate buffer first. Same checks and errors as `encode`,
   * the nesting counted as if `value` sat `depth` levels deep (where the prefix puts it inside
   * an envelope).
   */
  encodePrefixed(prefix: Uint8Array, value: unknown, depth = 0): Buffer {
    const own = encodeOwn(prefix, value, undefined, this.maxDepth, undefined, depth);
    if (own !== undefined) return own;
    const n = prefix.length;
    this.checkValue(value, depth);
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

  /**
   * @internal `prefix`, the encoding of `value` as if it were nested `depth` levels deep, then
   * `suffix`, in one buffer; `undefined` when `value` holds something only msgpackr encodes (a
   * Date, a long BigInt) or something that cannot be encoded (the caller then encodes the
   * whole value it is part of the usual way, with the usual errors). The RPC layer writes the
   * fixed parts of its envelopes around the arguments this way.
   */
  encodeFramed(prefix: Uint8Array, value: unknown, suffix: Uint8Array, depth: number): Buffer | undefined {
    return encodeOwn(prefix, value, undefined, this.maxDepth, suffix, depth);
  }

  /**
   * @internal {@link encodePrefixed} of the plain object mapping `shape`'s keys to `values`
   * (in the shape's order), without making that object.
   */
  encodeShapedPrefixed(prefix: Uint8Array, shape: MapShape, values: readonly unknown[]): Buffer {
    const own = encodeOwn(prefix, values, shape, this.maxDepth);
    if (own !== undefined) return own;
    const obj: Record<string, unknown> = {};
    for (let i = 0; i < shape.keys.length; i++) obj[shape.keys[i]] = values[i];
    return this.encodePrefixed(prefix, obj);
  }

  /**
   * @internal The values of `shape`'s keys (`undefined` for a missing one; other keys are
   * ignored) in the map that {@link decodeAt} would decode from `body` at `offset`, without
   * making that object; `undefined` when the value is not a map.
   * @throws RpcDecodeError like {@link decodeAt}
   */
  decodeShapedAt(body: Buffer, offset: number, shape: MapShape): unknown[] | undefined {
    const { protoKey, extensions } = scanFrom(body, offset, this.maxDepth, this.maxBigIntBytes);
    if (extensions) {
      const v = this.decodeWithMsgpackr(body, offset, protoKey);
      if (typeof v !== 'object' || v === null || Array.isArray(v) || Buffer.isBuffer(v) || v instanceof Date) return undefined;
      const obj = v as Record<string, unknown>;
      return shape.keys.map((k) => (Object.prototype.hasOwnProperty.call(obj, k) ? obj[k] : undefined));
    }
    try {
      return decodeShapedOwn(body, offset, shape);
    } catch (err) {
      if (err instanceof RpcDecodeError) throw err;
      throw new RpcDecodeError(`cannot decode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /** @throws RpcDecodeError for bytes that are not one valid value of the carried types */
  decode(bytes: Buffer): unknown {
    return this.decodeAt(bytes, 0);
  }

  /**
   * @internal {@link decode} of `body.subarray(offset)` (the RPC layer's bodies after their
   * prefix), without making that view.
   */
  decodeAt(body: Buffer, offset: number): unknown {
    return this.decodeRange(body, offset, body.length);
  }

  /**
   * @internal {@link decode} of `body.subarray(offset, end)`, without making that view: the
   * bytes there must be exactly one value. (The RPC layer decodes the parts of an envelope
   * laid out as its own encoder writes it this way, with `depth` the level they sit at in the
   * envelope, so that nesting is limited exactly as when the whole envelope is decoded.)
   * @throws RpcDecodeError like {@link decode}
   * @throws InvalidArgumentError when `offset..end` is not a range of `body`
   */
  decodeRange(body: Buffer, offset: number, end: number, depth = 0): unknown {
    if (!(offset >= 0 && offset <= end && end <= body.length)) {
      throw new InvalidArgumentError(`decodeRange: ${offset}..${end} is not within ${body.length} bytes`);
    }
    const { protoKey, extensions } = scanFrom(body, offset, this.maxDepth - depth, this.maxBigIntBytes, end);
    if (extensions) return this.decodeWithMsgpackr(body, offset, protoKey, end);
    try {
      return decodeOwn(body, offset);
    } catch (err) {
      // not expected after the scan (a stack overflow on very deep nesting is the one way)
      if (err instanceof RpcDecodeError) throw err;
      throw new RpcDecodeError(`cannot decode: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /**
   * The value at `body[offset..]`, already scanned, decoded by msgpackr (for the extensions).
   * Small values are decoded from a copy in a reused buffer: msgpackr caches a DataView on
   * every buffer it reads, which would otherwise be made (and stuck on a new view) each time.
   */
  private decodeWithMsgpackr(body: Buffer, offset: number, protoKey: boolean, end = body.length): unknown {
    const unpackr = protoKey ? this.mapUnpackr : this.unpackr;
    let v: unknown;
    try {
      const len = end - offset;
      if (len <= SCRATCH_SIZE) {
        scratch ??= Buffer.allocUnsafeSlow(SCRATCH_SIZE);
        body.copy(scratch, 0, offset, end);
        // nothing decoded refers to the scratch bytes: binaries are copied (copyBuffers)
        v = unpackr.unpack(scratch, len);
      } else {
        v = unpackr.unpack(offset === 0 && end === body.length ? body : body.subarray(offset, end));
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

  /** @throws RpcEncodeError unless msgpackr may encode `value` (see {@link encode}) */
  private checkValue(value: unknown, depth = 0): void {
    let ok: boolean;
    try {
      ok = this.valid(value, depth);
    } catch (err) {
      if (err instanceof RangeError) throw new RpcEncodeError(`value nested too deeply: ${err.message}`, { cause: err });
      throw err;
    }
    if (!ok) this.refuse(value);
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
