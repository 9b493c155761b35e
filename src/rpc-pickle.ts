/**
 * A strict pickle codec of our own, for RPC with Python snakeMQ 1.6 peers (whose RPC bodies
 * are `rpcreq`/`rpcrep` + a pickle). It reads only data, never code: nothing in a pickle is
 * ever run, imported or looked up.
 *
 * Decoding (protocols 0 to 5) carries exactly these Python types:
 *
 * | Python | JavaScript |
 * | --- | --- |
 * | `None` | `null` |
 * | `bool` | boolean |
 * | `int` | number when it is a safe integer, else BigInt (up to `maxBigIntBytes`) |
 * | `float` | number |
 * | `str` | string |
 * | `bytes`, `bytearray`, Python 2 `str` | Buffer |
 * | `list`, `tuple` | array |
 * | `dict` with `str`, `int` or `bytes` keys | plain object (keys as strings; `__proto__` an own property) |
 *
 * with the memo (`PUT`/`GET`/`MEMOIZE`) and `FRAME`s. Two `GLOBAL`+`REDUCE` forms that are
 * bytes in disguise are read as such (never run): `_codecs.encode(str, 'latin1')` (how Python 3
 * writes bytes under protocol 2 and below) and `bytearray(...)` / `bytes()`. For exceptions
 * only, {@link PickleCodec.decodeWithExceptions} reads any other `GLOBAL`/`STACK_GLOBAL`
 * followed by `REDUCE` of an args tuple as a {@link PickledException}: a plain description
 * (module, name, args). Everything else is an {@link RpcDecodeError}: other `GLOBAL`s, `BUILD`,
 * `INST`, `OBJ`, `NEWOBJ`, `PERSID`, `EXT*`, sets, out-of-band buffers, impossible lengths
 * (checked before anything is allocated), memo references out of range, nesting deeper than
 * `maxDepth`, more than `maxStackItems` values waiting on the stack or in the memo, truncated
 * input and trailing bytes.
 *
 * Encoding writes protocol 2 (read by Python 2.7 and 3) for the same types; a
 * {@link PickleTuple} becomes a tuple, a {@link PickledException} `module.name(*args)` (the RPC
 * layer sends only built-in exception names).
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { InvalidArgumentError } from './errors.js';
import type { RpcCodec } from './rpc-codec.js';
import { RpcDecodeError, RpcEncodeError } from './rpc-errors.js';

/** Defaults of {@link PickleCodecOptions}. */
export const PICKLE_CODEC_DEFAULTS = {
  maxDepth: 512,
  maxBigIntBytes: 1024,
  maxStackItems: 1_000_000,
} as const;

/** Options of {@link PickleCodec}. */
export interface PickleCodecOptions {
  /** Deepest nesting of lists/tuples/dicts accepted, both ways (default 512). */
  maxDepth?: number;
  /** Longest int accepted, in bytes of two's complement (default 1024 = 8192 bits). */
  maxBigIntBytes?: number;
  /** Most values waiting on the decoder's stack, and most memo entries (default 1,000,000). */
  maxStackItems?: number;
}

/** A tuple to encode (arrays are encoded as lists). Decoded tuples are arrays. */
export class PickleTuple {
  /** The items. */
  readonly items: readonly unknown[];
  constructor(items: readonly unknown[]) {
    this.items = items;
  }
}

const DOTTED_NAME = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

/**
 * What a pickle described as `module.name(*args)` — in practice an exception pickled by
 * reference. Only a description: nothing is imported, looked up or constructed.
 */
export class PickledException {
  /** The module, e.g. `'builtins'` (Python 2's `__builtin__` is read as `builtins`). */
  readonly module: string;
  /** The class name, e.g. `'ValueError'`. */
  readonly name: string;
  /** The arguments, e.g. `['bad value', 42]`. */
  readonly args: readonly unknown[];
  /** @throws InvalidArgumentError unless `module` and `name` are dotted Python identifiers */
  constructor(module: string, name: string, args: readonly unknown[]) {
    if (typeof module !== 'string' || !DOTTED_NAME.test(module) || typeof name !== 'string' || !DOTTED_NAME.test(name)) {
      throw new InvalidArgumentError(`not a Python module and name: ${String(module)}.${String(name)}`);
    }
    this.module = module;
    this.name = name;
    this.args = args;
  }
}

/** What {@link PickleCodec.decodeWithExceptions} gives. */
export interface PickleDecoded {
  /** The value. */
  value: unknown;
  /** How many {@link PickledException}s are in it. */
  exceptions: number;
}

// ------------------------------------------------------------------------------ opcodes

const MARK = 0x28; // (
const STOP = 0x2e; // .
const POP = 0x30; // 0
const POP_MARK = 0x31; // 1
const DUP = 0x32; // 2
const FLOAT = 0x46; // F
const INT = 0x49; // I
const BININT = 0x4a; // J
const BININT1 = 0x4b; // K
const LONG = 0x4c; // L
const BININT2 = 0x4d; // M
const NONE = 0x4e; // N
const REDUCE = 0x52; // R
const STRING = 0x53; // S
const BINSTRING = 0x54; // T
const SHORT_BINSTRING = 0x55; // U
const UNICODE = 0x56; // V
const BINUNICODE = 0x58; // X
const APPEND = 0x61; // a
const GLOBAL = 0x63; // c
const DICT = 0x64; // d
const EMPTY_DICT = 0x7d; // }
const APPENDS = 0x65; // e
const GET = 0x67; // g
const BINGET = 0x68; // h
const LONG_BINGET = 0x6a; // j
const LIST = 0x6c; // l
const EMPTY_LIST = 0x5d; // ]
const PUT = 0x70; // p
const BINPUT = 0x71; // q
const LONG_BINPUT = 0x72; // r
const SETITEM = 0x73; // s
const TUPLE = 0x74; // t
const EMPTY_TUPLE = 0x29; // )
const SETITEMS = 0x75; // u
const BINFLOAT = 0x47; // G
const PROTO = 0x80;
const TUPLE1 = 0x85;
const TUPLE2 = 0x86;
const TUPLE3 = 0x87;
const NEWTRUE = 0x88;
const NEWFALSE = 0x89;
const LONG1 = 0x8a;
const LONG4 = 0x8b;
const BINBYTES = 0x42; // B
const SHORT_BINBYTES = 0x43; // C
const SHORT_BINUNICODE = 0x8c;
const BINUNICODE8 = 0x8d;
const BINBYTES8 = 0x8e;
const STACK_GLOBAL = 0x93;
const MEMOIZE = 0x94;
const FRAME = 0x95;
const BYTEARRAY8 = 0x96;

/** Names of the opcodes we refuse, for the error message. */
const REFUSED: Record<number, string> = {
  0x62: 'BUILD',
  0x69: 'INST',
  0x6f: 'OBJ',
  0x81: 'NEWOBJ',
  0x92: 'NEWOBJ_EX',
  0x50: 'PERSID',
  0x51: 'BINPERSID',
  0x82: 'EXT1',
  0x83: 'EXT2',
  0x84: 'EXT4',
  0x8f: 'EMPTY_SET',
  0x90: 'ADDITEMS',
  0x91: 'FROZENSET',
  0x97: 'NEXT_BUFFER',
  0x98: 'READONLY_BUFFER',
};

// What a stack (or memo) slot holds.
const K_SCALAR = 0;
const K_LIST = 1;
const K_TUPLE = 2;
const K_DICT = 3;
/** A `GLOBAL`/`STACK_GLOBAL` waiting for its `REDUCE`. */
const K_GLOBAL = 4;

class GlobalRef {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A name from the input, cut short and made printable for an error message. */
function clip(s: string): string {
  const t = s.slice(0, 80).replace(/[^\x20-\x7e]/g, '?');
  return s.length > 80 ? `${t}…` : t;
}

function fail(pos: number, what: string): never {
  throw new RpcDecodeError(`invalid pickle at byte ${pos}: ${what}`);
}

/** The JavaScript number or BigInt of a Python int. */
function intValue(v: bigint): number | bigint {
  return v >= -9007199254740991n && v <= 9007199254740991n ? Number(v) : v;
}

/** Little-endian two's complement `b[pos..pos+n)` as a BigInt. */
function readLong(b: Uint8Array, pos: number, n: number): bigint {
  if (n === 0) return 0n;
  let hex = '';
  for (let i = n - 1; i >= 0; i--) hex += (b[pos + i] < 16 ? '0' : '') + b[pos + i].toString(16);
  let v = BigInt(`0x${hex}`);
  if (b[pos + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
  return v;
}

/** Python's `float()` of a repr, in the forms a pickler writes. */
const FLOAT_TEXT = /^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|nan|infinity)$/i;
const INT_TEXT = /^[+-]?\d+$/;

/** The escapes of Python's `repr()` of a byte string, as protocol 0 `STRING` writes them. */
function unescapeString(s: string, pos: number): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) fail(pos, 'STRING with a non-latin-1 character');
    if (c !== 0x5c) {
      out.push(c);
      continue;
    }
    const e = s[++i];
    switch (e) {
      case 'n': out.push(10); break;
      case 'r': out.push(13); break;
      case 't': out.push(9); break;
      case '\\': out.push(0x5c); break;
      case "'": out.push(0x27); break;
      case '"': out.push(0x22); break;
      case 'a': out.push(7); break;
      case 'b': out.push(8); break;
      case 'f': out.push(12); break;
      case 'v': out.push(11); break;
      case 'x': {
        const h = s.slice(i + 1, i + 3);
        if (!/^[0-9a-fA-F]{2}$/.test(h)) fail(pos, 'bad \\x escape in STRING');
        out.push(parseInt(h, 16));
        i += 2;
        break;
      }
      default: {
        const o = /^[0-7]{1,3}/.exec(s.slice(i, i + 3));
        if (!o) fail(pos, 'bad escape in STRING');
        out.push(parseInt(o[0], 8) & 0xff);
        i += o[0].length - 1;
      }
    }
  }
  return Buffer.from(out);
}

/** Python's `raw-unicode-escape` decoding (protocol 0 `UNICODE`): latin-1 with `\uXXXX` / `\UXXXXXXXX`. */
function rawUnicodeEscape(b: Uint8Array, start: number, end: number, pos: number): string {
  let s = '';
  for (let i = start; i < end; i++) {
    const c = b[i];
    if (c === 0x5c && i + 1 < end && (b[i + 1] === 0x75 || b[i + 1] === 0x55)) {
      const n = b[i + 1] === 0x75 ? 4 : 8;
      if (i + 2 + n > end) fail(pos, 'truncated \\u escape in UNICODE');
      const hex = Buffer.from(b.subarray(i + 2, i + 2 + n)).toString('latin1');
      if (!/^[0-9a-fA-F]+$/.test(hex)) fail(pos, 'bad \\u escape in UNICODE');
      const cp = parseInt(hex, 16);
      if (cp > 0x10ffff) fail(pos, 'code point out of range in UNICODE');
      s += String.fromCodePoint(cp);
      i += 1 + n;
    } else s += String.fromCharCode(c);
  }
  return s;
}

/** The Buffer a `module.name(*args)` call stands for when it is one of the bytes forms, else `undefined`. */
function bytesCall(module: string, name: string, args: unknown[]): Buffer | undefined {
  if (module === '_codecs' && name === 'encode') {
    if (args.length === 2 && typeof args[0] === 'string' && (args[1] === 'latin1' || args[1] === 'latin-1')) {
      const s = args[0];
      for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0xff) return undefined;
      return Buffer.from(s, 'latin1');
    }
    return undefined;
  }
  if (module !== 'builtins') return undefined;
  if (name === 'bytes' || name === 'bytearray') {
    if (args.length === 0) return Buffer.alloc(0);
    if (name === 'bytearray' && args.length === 1 && Buffer.isBuffer(args[0])) return args[0];
    if (name === 'bytearray' && args.length === 2 && typeof args[0] === 'string' && (args[1] === 'latin1' || args[1] === 'latin-1')) {
      return bytesCall('_codecs', 'encode', args);
    }
  }
  return undefined;
}

function setKey(obj: Record<string, unknown>, key: string, v: unknown, pos: number): void {
  if (Object.prototype.hasOwnProperty.call(obj, key)) fail(pos, `duplicate dict key ${JSON.stringify(key)}`);
  if (key === '__proto__') Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true });
  else obj[key] = v;
}

function dictKey(k: unknown, kind: number, pos: number): string {
  if (kind === K_SCALAR) {
    if (typeof k === 'string') return k;
    if (typeof k === 'number' && Number.isInteger(k)) return String(k);
    if (typeof k === 'bigint') return k.toString();
    if (Buffer.isBuffer(k)) return k.toString('utf8');
  }
  fail(pos, 'dict key is not a str, int or bytes');
}

/**
 * Decode one pickle in `b[start..end)`. `allowExceptions`: read `GLOBAL`+`REDUCE` as
 * {@link PickledException}s (counted) instead of refusing them.
 */
function decodePickle(
  b: Uint8Array,
  start: number,
  end: number,
  maxDepth: number,
  maxBigIntBytes: number,
  maxItems: number,
  allowExceptions: boolean,
): PickleDecoded {
  const stack: unknown[] = [];
  const kinds: number[] = [];
  const depths: number[] = [];
  const marks: number[] = [];
  const memo: unknown[] = [];
  const memoKinds: number[] = [];
  let memoCount = 0;
  let exceptions = 0;
  /** A memoized list/dict/tuple was fetched: depths may be stale, check the result by a walk. */
  let shared = false;
  let pos = start;
  const rel = (): number => pos - start;

  const need = (n: number): void => {
    if (n > end - pos) fail(rel(), 'truncated');
  };
  const push = (v: unknown, kind: number, depth: number): void => {
    if (stack.length >= maxItems) fail(rel(), `more than ${maxItems} values on the stack`);
    if (depth > maxDepth) fail(rel(), `nested deeper than ${maxDepth}`);
    stack.push(v);
    kinds.push(kind);
    depths.push(depth);
  };
  const top = (what: string): number => {
    const i = stack.length - 1;
    if (i < 0 || (marks.length > 0 && i < marks[marks.length - 1])) fail(rel(), `${what} with nothing on the stack`);
    return i;
  };
  const popMark = (what: string): number => {
    if (marks.length === 0) fail(rel(), `${what} without a MARK`);
    return marks.pop()!;
  };
  const noGlobal = (from: number, what: string): void => {
    for (let i = from; i < kinds.length; i++) if (kinds[i] === K_GLOBAL) fail(rel(), `a GLOBAL not followed by REDUCE (in ${what})`);
  };
  const truncate = (n: number): void => {
    stack.length = n;
    kinds.length = n;
    depths.length = n;
  };
  const maxDepthOf = (from: number): number => {
    let d = 0;
    for (let i = from; i < depths.length; i++) if (depths[i] > d) d = depths[i];
    return d;
  };
  /** A line ending in `\n` from `pos` (the `\n` consumed), as latin-1. */
  const line = (what: string): string => {
    let i = pos;
    while (i < end && b[i] !== 0x0a) i++;
    if (i >= end) fail(rel(), `truncated ${what}`);
    const s = Buffer.from(b.buffer, b.byteOffset + pos, i - pos).toString('latin1');
    pos = i + 1;
    return s;
  };
  const readLen = (n: 1 | 2 | 4 | 8): number => {
    need(n);
    let len: number;
    if (n === 1) len = b[pos];
    else if (n === 2) len = b[pos] | (b[pos + 1] << 8);
    else if (n === 4) len = (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16)) + b[pos + 3] * 0x1000000;
    else {
      const lo = (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16)) + b[pos + 3] * 0x1000000;
      const hi = (b[pos + 4] | (b[pos + 5] << 8) | (b[pos + 6] << 16)) + b[pos + 7] * 0x1000000;
      len = hi * 0x100000000 + lo; // an impossible one is refused below, precision aside
    }
    pos += n;
    if (len > end - pos) fail(rel(), `length ${len} beyond the ${end - pos} bytes left`);
    return len;
  };
  const text = (len: number): string => {
    let s: string;
    try {
      s = utf8.decode(b.subarray(pos, pos + len));
    } catch {
      fail(rel(), 'invalid UTF-8 in a str');
    }
    pos += len;
    return s;
  };
  const bytes = (len: number): Buffer => {
    const out = Buffer.allocUnsafe(len);
    out.set(b.subarray(pos, pos + len));
    pos += len;
    return out;
  };
  const memoIndex = (i: number): number => {
    if (!Number.isInteger(i) || i < 0 || i >= maxItems) fail(rel(), `memo index ${i} out of range`);
    return i;
  };
  const put = (i: number): void => {
    const t = top('PUT');
    memoIndex(i);
    if (memo[i] === undefined && memoKinds[i] === undefined) memoCount++;
    if (memoCount > maxItems) fail(rel(), `more than ${maxItems} memo entries`);
    memo[i] = stack[t];
    memoKinds[i] = kinds[t];
  };
  const get = (i: number): void => {
    memoIndex(i);
    const kind = memoKinds[i];
    if (kind === undefined) fail(rel(), `memo index ${i} was never stored`);
    const v = memo[i];
    // a container (or exception) met again: its depth here may be stale, the end result is walked
    if (kind === K_LIST || kind === K_DICT || kind === K_TUPLE || v instanceof PickledException) shared = true;
    push(v, kind, kind === K_SCALAR || kind === K_GLOBAL ? 0 : 1);
  };
  const pyInt = (s: string, what: string): number | bigint => {
    if (!INT_TEXT.test(s)) fail(rel(), `bad ${what}`);
    if (s.length > maxBigIntBytes * 2.5 + 2) fail(rel(), `int longer than ${maxBigIntBytes} bytes`);
    return intValue(BigInt(s));
  };
  const longValue = (n: number): number | bigint => {
    if (n > maxBigIntBytes) fail(rel(), `int of ${n} bytes (limit ${maxBigIntBytes})`);
    const v = n <= 6 ? Number(readLong(b, pos, n)) : intValue(readLong(b, pos, n));
    pos += n;
    return v;
  };
  const textIndex = (what: string): number => {
    const s = line(what);
    if (!/^\d{1,10}$/.test(s)) fail(rel(), `bad ${what} index`);
    return Number(s);
  };

  for (;;) {
    if (pos >= end) fail(rel(), 'truncated (no STOP)');
    const op = b[pos++];
    switch (op) {
      case PROTO: {
        need(1);
        const p = b[pos++];
        if (p > 5) fail(rel(), `unsupported pickle protocol ${p}`);
        break;
      }
      case FRAME:
        readLen(8); // the frame's bytes follow; we read them as they come
        break;
      case STOP: {
        if (marks.length > 0 || stack.length !== 1) fail(rel(), 'STOP with a stack that is not one value');
        if (pos !== end) fail(rel(), `${end - pos} bytes after STOP`);
        noGlobal(0, 'the result');
        const value = stack[0];
        if (shared) checkShared(value, maxDepth, Math.max(1_000_000, 8 * (end - start)), rel());
        return { value, exceptions };
      }
      case MARK:
        if (marks.length >= maxItems) fail(rel(), `more than ${maxItems} marks`);
        marks.push(stack.length);
        break;
      case POP:
        if (stack.length > 0 && (marks.length === 0 || stack.length > marks[marks.length - 1])) truncate(stack.length - 1);
        else truncate(popMark('POP'));
        break;
      case POP_MARK:
        truncate(popMark('POP_MARK'));
        break;
      case DUP: {
        const t = top('DUP');
        if (kinds[t] !== K_SCALAR || stack[t] instanceof PickledException) shared = true;
        push(stack[t], kinds[t], depths[t]);
        break;
      }
      case NONE:
        push(null, K_SCALAR, 0);
        break;
      case NEWTRUE:
        push(true, K_SCALAR, 0);
        break;
      case NEWFALSE:
        push(false, K_SCALAR, 0);
        break;
      case INT: {
        const s = line('INT');
        if (s === '01') push(true, K_SCALAR, 0);
        else if (s === '00') push(false, K_SCALAR, 0);
        else push(pyInt(s, 'INT'), K_SCALAR, 0);
        break;
      }
      case LONG: {
        const s = line('LONG');
        push(pyInt(s.endsWith('L') ? s.slice(0, -1) : s, 'LONG'), K_SCALAR, 0);
        break;
      }
      case BININT1:
        need(1);
        push(b[pos++], K_SCALAR, 0);
        break;
      case BININT2:
        need(2);
        push(b[pos] | (b[pos + 1] << 8), K_SCALAR, 0);
        pos += 2;
        break;
      case BININT:
        need(4);
        push(b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16) | (b[pos + 3] << 24), K_SCALAR, 0);
        pos += 4;
        break;
      case LONG1:
        push(longValue(readLen(1)), K_SCALAR, 0);
        break;
      case LONG4: {
        need(4);
        if (b[pos + 3] & 0x80) fail(rel(), 'LONG4 with a negative length');
        push(longValue(readLen(4)), K_SCALAR, 0);
        break;
      }
      case FLOAT: {
        const s = line('FLOAT');
        if (!FLOAT_TEXT.test(s)) fail(rel(), 'bad FLOAT');
        const low = s.toLowerCase().replace(/^[+-]/, '');
        const neg = s.startsWith('-');
        push(low === 'nan' ? NaN : low.startsWith('inf') ? (neg ? -Infinity : Infinity) : Number(s), K_SCALAR, 0);
        break;
      }
      case BINFLOAT:
        need(8);
        push(Buffer.from(b.buffer, b.byteOffset + pos, 8).readDoubleBE(0), K_SCALAR, 0);
        pos += 8;
        break;
      case BINUNICODE:
        push(text(readLen(4)), K_SCALAR, 0);
        break;
      case SHORT_BINUNICODE:
        push(text(readLen(1)), K_SCALAR, 0);
        break;
      case BINUNICODE8:
        push(text(readLen(8)), K_SCALAR, 0);
        break;
      case UNICODE: {
        const from = pos;
        line('UNICODE');
        push(rawUnicodeEscape(b, from, pos - 1, rel()), K_SCALAR, 0);
        break;
      }
      case STRING: {
        const s = line('STRING');
        const q = s[0];
        if (s.length < 2 || (q !== "'" && q !== '"') || s[s.length - 1] !== q) fail(rel(), 'STRING not quoted');
        push(unescapeString(s.slice(1, -1), rel()), K_SCALAR, 0);
        break;
      }
      case BINSTRING: {
        need(4);
        if (b[pos + 3] & 0x80) fail(rel(), 'BINSTRING with a negative length');
        push(bytes(readLen(4)), K_SCALAR, 0);
        break;
      }
      case SHORT_BINSTRING:
      case SHORT_BINBYTES:
        push(bytes(readLen(1)), K_SCALAR, 0);
        break;
      case BINBYTES:
        push(bytes(readLen(4)), K_SCALAR, 0);
        break;
      case BINBYTES8:
      case BYTEARRAY8:
        push(bytes(readLen(8)), K_SCALAR, 0);
        break;
      case EMPTY_LIST:
        push([], K_LIST, 1);
        break;
      case EMPTY_TUPLE:
        push([], K_TUPLE, 1);
        break;
      case EMPTY_DICT:
        push({}, K_DICT, 1);
        break;
      case LIST:
      case TUPLE: {
        const m = popMark(op === LIST ? 'LIST' : 'TUPLE');
        noGlobal(m, op === LIST ? 'a list' : 'a tuple');
        const items = stack.slice(m);
        const d = maxDepthOf(m) + 1;
        truncate(m);
        push(items, op === LIST ? K_LIST : K_TUPLE, d);
        break;
      }
      case TUPLE1:
      case TUPLE2:
      case TUPLE3: {
        const n = op - TUPLE1 + 1;
        const from = stack.length - n;
        if (from < 0 || (marks.length > 0 && from < marks[marks.length - 1])) fail(rel(), `TUPLE${n} with too few values`);
        noGlobal(from, 'a tuple');
        const items = stack.slice(from);
        const d = maxDepthOf(from) + 1;
        truncate(from);
        push(items, K_TUPLE, d);
        break;
      }
      case DICT: {
        const m = popMark('DICT');
        if ((stack.length - m) % 2 !== 0) fail(rel(), 'DICT with an odd number of values');
        noGlobal(m, 'a dict');
        const obj: Record<string, unknown> = {};
        for (let i = m; i < stack.length; i += 2) setKey(obj, dictKey(stack[i], kinds[i], rel()), stack[i + 1], rel());
        const d = maxDepthOf(m) + 1;
        truncate(m);
        push(obj, K_DICT, d);
        break;
      }
      case APPEND:
      case APPENDS: {
        const from = op === APPEND ? top('APPEND') : popMark('APPENDS');
        const at = from - 1;
        if (at < 0 || kinds[at] !== K_LIST || (marks.length > 0 && at < marks[marks.length - 1])) fail(rel(), 'APPEND to something that is not a list');
        noGlobal(from, 'a list');
        const list = stack[at] as unknown[];
        if (list.length + stack.length - from > maxItems) fail(rel(), `list longer than ${maxItems}`);
        for (let i = from; i < stack.length; i++) list.push(stack[i]);
        const d = Math.max(depths[at], maxDepthOf(from) + 1);
        if (d > maxDepth) fail(rel(), `nested deeper than ${maxDepth}`);
        depths[at] = d;
        truncate(from);
        break;
      }
      case SETITEM:
      case SETITEMS: {
        let from: number;
        if (op === SETITEM) {
          from = stack.length - 2;
          if (from < 0 || (marks.length > 0 && from < marks[marks.length - 1])) fail(rel(), 'SETITEM with too few values');
        } else {
          from = popMark('SETITEMS');
          if ((stack.length - from) % 2 !== 0) fail(rel(), 'SETITEMS with an odd number of values');
        }
        const at = from - 1;
        if (at < 0 || kinds[at] !== K_DICT || (marks.length > 0 && at < marks[marks.length - 1])) fail(rel(), 'SETITEM on something that is not a dict');
        noGlobal(from, 'a dict');
        const obj = stack[at] as Record<string, unknown>;
        for (let i = from; i < stack.length; i += 2) setKey(obj, dictKey(stack[i], kinds[i], rel()), stack[i + 1], rel());
        const d = Math.max(depths[at], maxDepthOf(from) + 1);
        if (d > maxDepth) fail(rel(), `nested deeper than ${maxDepth}`);
        depths[at] = d;
        truncate(from);
        break;
      }
      case PUT:
        put(textIndex('PUT'));
        break;
      case BINPUT:
        need(1);
        put(b[pos++]);
        break;
      case LONG_BINPUT: {
        need(4);
        if (b[pos + 3] & 0x80) fail(rel(), 'LONG_BINPUT with a negative index');
        const i = readLenNoCheck(b, pos);
        pos += 4;
        put(i);
        break;
      }
      case MEMOIZE:
        put(memoCount);
        break;
      case GET:
        get(textIndex('GET'));
        break;
      case BINGET:
        need(1);
        get(b[pos++]);
        break;
      case LONG_BINGET: {
        need(4);
        const i = readLenNoCheck(b, pos);
        pos += 4;
        get(i);
        break;
      }
      case GLOBAL: {
        const module = line('GLOBAL module');
        const name = line('GLOBAL name');
        push(new GlobalRef(module, name), K_GLOBAL, 0);
        break;
      }
      case STACK_GLOBAL: {
        const n = top('STACK_GLOBAL');
        if (n < 1 || (marks.length > 0 && n - 1 < marks[marks.length - 1])) fail(rel(), 'STACK_GLOBAL with too few values');
        const module = stack[n - 1];
        const name = stack[n];
        if (typeof module !== 'string' || typeof name !== 'string') fail(rel(), 'STACK_GLOBAL of values that are not strs');
        truncate(n - 1);
        push(new GlobalRef(module, name), K_GLOBAL, 0);
        break;
      }
      case REDUCE: {
        const a = top('REDUCE');
        if (a < 1 || (marks.length > 0 && a - 1 < marks[marks.length - 1])) fail(rel(), 'REDUCE with too few values');
        if (kinds[a - 1] !== K_GLOBAL) fail(rel(), 'REDUCE of something that is not a GLOBAL');
        if (kinds[a] !== K_TUPLE) fail(rel(), 'REDUCE with arguments that are not a tuple');
        const g = stack[a - 1] as GlobalRef;
        const args = stack[a] as unknown[];
        const d = depths[a];
        const module = g.module === '__builtin__' || g.module === 'exceptions' ? 'builtins' : g.module;
        truncate(a - 1);
        const asBytes = bytesCall(module, g.name, args);
        if (asBytes !== undefined) {
          push(asBytes, K_SCALAR, 0);
          break;
        }
        if (!allowExceptions) fail(rel(), `GLOBAL ${clip(g.module)}.${clip(g.name)} is refused (only data is accepted)`);
        if (!DOTTED_NAME.test(module) || !DOTTED_NAME.test(g.name)) fail(rel(), 'GLOBAL with a name that is not a Python identifier');
        exceptions++;
        push(new PickledException(module, g.name, args), K_SCALAR, d);
        break;
      }
      default: {
        const name = REFUSED[op];
        pos--;
        fail(rel(), name ? `opcode ${name} is refused (only data is accepted)` : `unknown opcode 0x${op.toString(16)}`);
      }
    }
  }
}

/** The uint32 little-endian at `pos` (the caller checked there are 4 bytes). */
function readLenNoCheck(b: Uint8Array, pos: number): number {
  return (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16)) + b[pos + 3] * 0x1000000;
}

/**
 * A value whose containers may be shared (memo fetches): walk it without recursion and refuse
 * nesting deeper than `maxDepth` (which is also what a cycle gives) or more than `budget` visits.
 */
function checkShared(value: unknown, maxDepth: number, budget: number, pos: number): void {
  const items: unknown[] = [value];
  const levels: number[] = [0];
  let visits = 0;
  while (items.length > 0) {
    const v = items.pop();
    const level = levels.pop()!;
    if (++visits > budget) fail(pos, `more than ${budget} values once shared parts are counted`);
    let children: unknown[] | undefined;
    if (Array.isArray(v)) children = v;
    else if (v instanceof PickledException) children = v.args as unknown[];
    else if (typeof v === 'object' && v !== null && !Buffer.isBuffer(v)) children = Object.values(v);
    if (children === undefined) continue;
    if (level + 1 > maxDepth) fail(pos, `nested deeper than ${maxDepth} (a cycle?)`);
    for (const c of children) {
      items.push(c);
      levels.push(level + 1);
    }
  }
}

// ------------------------------------------------------------------------------ encoder

class Writer {
  buf = Buffer.allocUnsafe(256);
  pos = 0;
  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
  byte(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  u32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(v, this.pos);
    this.pos += 4;
  }
  raw(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  str(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.ensure(5 + n);
    this.buf[this.pos++] = BINUNICODE;
    this.buf.writeUInt32LE(n, this.pos);
    this.pos += 4;
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }
  result(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

const CODECS_ENCODE = Buffer.from('c_codecs\nencode\n', 'latin1');

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  const ctor = (v as { constructor?: { name?: unknown } }).constructor;
  return typeof ctor?.name === 'string' && ctor.name ? ctor.name : 'object';
}

function encodeLong(w: Writer, v: bigint, maxBigIntBytes: number): void {
  // little-endian two's complement, shortest form
  const bytes: number[] = [];
  let x = v;
  for (;;) {
    const byte = Number(x & 0xffn);
    bytes.push(byte);
    x >>= 8n;
    if ((x === 0n && (byte & 0x80) === 0) || (x === -1n && (byte & 0x80) !== 0)) break;
  }
  if (v === 0n) bytes.length = 0;
  if (bytes.length > maxBigIntBytes) throw new RpcEncodeError(`int longer than ${maxBigIntBytes} bytes`);
  if (bytes.length < 256) {
    w.byte(LONG1);
    w.byte(bytes.length);
  } else {
    w.byte(LONG4);
    w.u32(bytes.length);
  }
  w.raw(Uint8Array.from(bytes));
}

function encodeNumber(w: Writer, v: number, maxBigIntBytes: number): void {
  if (Number.isSafeInteger(v) && !Object.is(v, -0)) {
    if (v >= 0 && v < 0x100) {
      w.byte(BININT1);
      w.byte(v);
    } else if (v >= 0 && v < 0x10000) {
      w.byte(BININT2);
      w.byte(v & 0xff);
      w.byte(v >>> 8);
    } else if (v >= -0x80000000 && v <= 0x7fffffff) {
      w.ensure(5);
      w.buf[w.pos++] = BININT;
      w.buf.writeInt32LE(v, w.pos);
      w.pos += 4;
    } else encodeLong(w, BigInt(v), maxBigIntBytes);
    return;
  }
  w.ensure(9);
  w.buf[w.pos++] = BINFLOAT;
  w.buf.writeDoubleBE(v, w.pos);
  w.pos += 8;
}

function encodeTuple(w: Writer, items: readonly unknown[], depth: number, c: PickleCodec): void {
  const n = items.length;
  if (n === 0) {
    w.byte(EMPTY_TUPLE);
    return;
  }
  if (n > 3) w.byte(MARK);
  for (let i = 0; i < n; i++) encodeValue(w, items[i], depth + 1, c, `[${i}]`);
  w.byte(n > 3 ? TUPLE : TUPLE1 + n - 1);
}

function encodeValue(w: Writer, v: unknown, depth: number, c: PickleCodec, path: string): void {
  switch (typeof v) {
    case 'undefined':
      w.byte(NONE);
      return;
    case 'boolean':
      w.byte(v ? NEWTRUE : NEWFALSE);
      return;
    case 'number':
      encodeNumber(w, v, c.maxBigIntBytes);
      return;
    case 'bigint':
      encodeLong(w, v, c.maxBigIntBytes);
      return;
    case 'string':
      w.str(v);
      return;
    case 'object':
      break;
    default:
      throw new RpcEncodeError(`cannot encode a ${typeof v} as a pickle (at ${path})`);
  }
  if (v === null) {
    w.byte(NONE);
    return;
  }
  if (v instanceof Uint8Array) {
    if (v.constructor !== Uint8Array && !Buffer.isBuffer(v)) {
      throw new RpcEncodeError(`cannot encode a ${describe(v)} (at ${path}); use a Uint8Array or Buffer`);
    }
    // Python 3's own protocol-2 form of bytes, which Python 2 reads as str
    w.raw(CODECS_ENCODE);
    w.str(Buffer.from(v.buffer, v.byteOffset, v.length).toString('latin1'));
    w.str('latin1');
    w.byte(TUPLE2);
    w.byte(REDUCE);
    return;
  }
  if (depth >= c.maxDepth) throw new RpcEncodeError(`value nested deeper than ${c.maxDepth} at ${path} (a cycle?)`);
  if (Array.isArray(v)) {
    w.byte(EMPTY_LIST);
    if (v.length === 0) return;
    w.byte(MARK);
    for (let i = 0; i < v.length; i++) encodeValue(w, v[i], depth + 1, c, `${path}[${i}]`);
    w.byte(APPENDS);
    return;
  }
  if (v instanceof PickleTuple) {
    encodeTuple(w, v.items, depth, c);
    return;
  }
  if (v instanceof PickledException) {
    w.byte(GLOBAL);
    // Python 3 maps __builtin__ to builtins for protocol 2 (fix_imports); Python 2 needs it
    w.raw(Buffer.from(`${v.module === 'builtins' ? '__builtin__' : v.module}\n${v.name}\n`, 'latin1'));
    encodeTuple(w, v.args, depth, c);
    w.byte(REDUCE);
    return;
  }
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) {
    throw new RpcEncodeError(`cannot encode a ${describe(v)} as a pickle (at ${path}); only plain objects, arrays and Buffers`);
  }
  const obj = v as Record<string, unknown>;
  const keys = Object.keys(obj);
  w.byte(EMPTY_DICT);
  if (keys.length === 0) return;
  w.byte(MARK);
  for (const k of keys) {
    w.str(k);
    encodeValue(w, obj[k], depth + 1, c, `${path}.${k}`);
  }
  w.byte(SETITEMS);
}

// ------------------------------------------------------------------------------ codec

/**
 * The pickle codec: see the module doc. Safe on hostile bytes: every problem is an
 * {@link RpcDecodeError}, and nothing is allocated for lengths the input does not hold.
 */
export class PickleCodec implements RpcCodec {
  /** Deepest nesting accepted. */
  readonly maxDepth: number;
  /** Longest int accepted, in bytes. */
  readonly maxBigIntBytes: number;
  /** Most values waiting on the stack or in the memo. */
  readonly maxStackItems: number;

  /** @throws InvalidArgumentError for a bad option */
  constructor(options: PickleCodecOptions = {}) {
    const {
      maxDepth = PICKLE_CODEC_DEFAULTS.maxDepth,
      maxBigIntBytes = PICKLE_CODEC_DEFAULTS.maxBigIntBytes,
      maxStackItems = PICKLE_CODEC_DEFAULTS.maxStackItems,
    } = options;
    if (!Number.isInteger(maxDepth) || maxDepth < 1 || maxDepth > 10_000) {
      throw new InvalidArgumentError(`maxDepth must be an integer 1..10000, got ${maxDepth}`);
    }
    if (!Number.isInteger(maxBigIntBytes) || maxBigIntBytes < 8) {
      throw new InvalidArgumentError(`maxBigIntBytes must be an integer >= 8, got ${maxBigIntBytes}`);
    }
    if (!Number.isInteger(maxStackItems) || maxStackItems < 16) {
      throw new InvalidArgumentError(`maxStackItems must be an integer >= 16, got ${maxStackItems}`);
    }
    this.maxDepth = maxDepth;
    this.maxBigIntBytes = maxBigIntBytes;
    this.maxStackItems = maxStackItems;
  }

  /**
   * A protocol 2 pickle of `value`.
   * @throws RpcEncodeError for a value (or a part of it) of a type the codec does not carry, an
   *   int longer than `maxBigIntBytes`, or nesting deeper than `maxDepth` (also what a cycle gives)
   */
  encode(value: unknown): Buffer {
    const w = new Writer();
    w.byte(PROTO);
    w.byte(2);
    encodeValue(w, value, 0, this, '$');
    w.byte(STOP);
    return w.result();
  }

  /**
   * The value of one pickle (protocols 0–5) made only of the carried types; no globals.
   * @throws RpcDecodeError for anything else (see the module doc)
   */
  decode(bytes: Buffer): unknown {
    return this.decodeRange(bytes, 0, bytes.length, false).value;
  }

  /**
   * {@link decode}, but a `GLOBAL`/`STACK_GLOBAL` + `REDUCE` of an args tuple is read as a
   * {@link PickledException} (counted in `exceptions`) instead of refused. Nothing is run.
   * @throws RpcDecodeError like {@link decode}
   */
  decodeWithExceptions(bytes: Buffer, offset = 0): PickleDecoded {
    return this.decodeRange(bytes, offset, bytes.length, true);
  }

  /**
   * @internal One pickle in `body[offset..end)` (the RPC layer's bodies after their prefix).
   * @throws RpcDecodeError like {@link decode}
   * @throws InvalidArgumentError when `offset..end` is not a range of `body`
   */
  decodeRange(body: Uint8Array, offset: number, end: number, allowExceptions: boolean): PickleDecoded {
    if (!(offset >= 0 && offset <= end && end <= body.length)) {
      throw new InvalidArgumentError(`decodeRange: ${offset}..${end} is not within ${body.length} bytes`);
    }
    try {
      return decodePickle(body, offset, end, this.maxDepth, this.maxBigIntBytes, this.maxStackItems, allowExceptions);
    } catch (err) {
      if (err instanceof RpcDecodeError) throw err;
      // not expected (every check is explicit); a RangeError of a huge value is the one way
      throw new RpcDecodeError(`cannot decode pickle: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }
}

/** Whether a body's bytes after its prefix start like a pickle of protocol 2 or later (`PROTO` and a version). */
export function looksLikePickle(body: Uint8Array, offset: number, end = body.length): boolean {
  return end - offset >= 3 && body[offset] === PROTO && body[offset + 1] >= 2 && body[offset + 1] <= 5;
}
