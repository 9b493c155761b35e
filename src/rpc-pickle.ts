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
import { Buffer, isUtf8 } from 'node:buffer';
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

/** `b[start..end)` as a string when it is valid UTF-8 (short ASCII ones without a decoder call), else `undefined`. */
function utf8Text(b: Uint8Array, start: number, end: number): string | undefined {
  if (end - start <= 32) {
    let s = '';
    for (let i = start; i < end; i++) {
      const c = b[i];
      if (c >= 0x80) return slowUtf8(b, start, end);
      s += String.fromCharCode(c);
    }
    return s;
  }
  return slowUtf8(b, start, end);
}

function slowUtf8(b: Uint8Array, start: number, end: number): string | undefined {
  const view = Buffer.from(b.buffer, b.byteOffset + start, end - start);
  return isUtf8(view) ? view.toString('utf8') : undefined;
}

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
/** (each digit has one place to go: a run of digits cannot be split in many ways, so a failing match is linear) */
const FLOAT_TEXT = /^[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|inf|nan|infinity)$/i;
/** Longest FLOAT line accepted: repr() of any double is far shorter. */
const MAX_FLOAT_TEXT = 1024;
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
    if (c !== 0x5c) {
      s += String.fromCharCode(c);
      continue;
    }
    // as Python's raw-unicode-escape: a run of backslashes is literal, except that an odd-length
    // run followed by u or U ends in an escape
    let run = 1;
    while (i + run < end && b[i + run] === 0x5c) run++;
    const escapes = run % 2 === 1 && i + run < end && (b[i + run] === 0x75 || b[i + run] === 0x55);
    s += '\\'.repeat(escapes ? run - 1 : run);
    i += run - 1; // the run's last backslash
    if (!escapes) continue;
    const n = b[i + 1] === 0x75 ? 4 : 8;
    if (i + 2 + n > end) fail(pos, 'truncated \\u escape in UNICODE');
    const hex = Buffer.from(b.subarray(i + 2, i + 2 + n)).toString('latin1');
    if (!/^[0-9a-fA-F]+$/.test(hex)) fail(pos, 'bad \\u escape in UNICODE');
    const cp = parseInt(hex, 16);
    if (cp > 0x10ffff) fail(pos, 'code point out of range in UNICODE');
    s += String.fromCodePoint(cp);
    i += 1 + n;
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
 * The decoder of one pickle in `b[start..end)`: a stack machine over the opcodes, without
 * recursion. `allowExceptions`: read `GLOBAL`+`REDUCE` as {@link PickledException}s (counted)
 * instead of refusing them. Beside each stack and memo value it keeps its kind (to refuse
 * APPEND to a tuple, a GLOBAL inside data, ...) and, on the stack, its nesting depth.
 */
class Decoder {
  private readonly stack: unknown[] = [];
  private readonly kinds: number[] = [];
  private readonly depths: number[] = [];
  /** Values on the stack: `stack.length` may be larger (entries past `sp` are stale). */
  private sp = 0;
  private readonly marks: number[] = [];
  private readonly memo: unknown[] = [];
  private readonly memoKinds: number[] = [];
  private memoCount = 0;
  private exceptions = 0;
  /** A memoized container or exception was fetched again: depths may be stale, walk the result. */
  private shared = false;
  private pos: number;

  constructor(
    private readonly b: Uint8Array,
    private readonly start: number,
    private readonly end: number,
    private readonly maxDepth: number,
    private readonly maxBigIntBytes: number,
    private readonly maxItems: number,
    private readonly allowExceptions: boolean,
  ) {
    this.pos = start;
  }

  private rel(): number {
    return this.pos - this.start;
  }

  private fail(what: string): never {
    fail(this.rel(), what);
  }

  private need(n: number): void {
    if (n > this.end - this.pos) this.fail('truncated');
  }

  private push(v: unknown, kind: number, depth: number): void {
    const sp = this.sp;
    if (sp >= this.maxItems) this.fail(`more than ${this.maxItems} values on the stack`);
    if (depth > this.maxDepth) this.fail(`nested deeper than ${this.maxDepth}`);
    this.stack[sp] = v;
    this.kinds[sp] = kind;
    this.depths[sp] = depth;
    this.sp = sp + 1;
  }

  /** Where the open MARK starts (0 without one): nothing below it may be touched. */
  private floor(): number {
    const m = this.marks.length;
    return m === 0 ? 0 : this.marks[m - 1];
  }

  /** The index of the top value above the open MARK. */
  private top(what: string): number {
    const i = this.sp - 1;
    if (i < this.floor()) this.fail(`${what} with nothing on the stack`);
    return i;
  }

  private popMark(what: string): number {
    if (this.marks.length === 0) this.fail(`${what} without a MARK`);
    return this.marks.pop()!;
  }

  /** Drop the values from `n` up, releasing them. */
  private truncate(n: number): void {
    for (let i = n; i < this.sp; i++) this.stack[i] = undefined;
    this.sp = n;
  }

  private noGlobal(from: number, what: string): void {
    for (let i = from; i < this.sp; i++) if (this.kinds[i] === K_GLOBAL) this.fail(`a GLOBAL not followed by REDUCE (in ${what})`);
  }

  private maxDepthOf(from: number): number {
    let d = 0;
    for (let i = from; i < this.sp; i++) if (this.depths[i] > d) d = this.depths[i];
    return d;
  }

  private items(from: number): unknown[] {
    const out = new Array<unknown>(this.sp - from);
    for (let i = from; i < this.sp; i++) out[i - from] = this.stack[i];
    return out;
  }

  /** A line ending in `\n` from `pos` (the `\n` consumed), as latin-1. */
  private line(what: string): string {
    const b = this.b;
    let i = this.pos;
    while (i < this.end && b[i] !== 0x0a) i++;
    if (i >= this.end) this.fail(`truncated ${what}`);
    const s = Buffer.from(b.buffer, b.byteOffset + this.pos, i - this.pos).toString('latin1');
    this.pos = i + 1;
    return s;
  }

  /** A little-endian length of `n` bytes, checked against the bytes left. */
  private readLen(n: 1 | 2 | 4 | 8): number {
    this.need(n);
    const b = this.b;
    const p = this.pos;
    let len: number;
    if (n === 1) len = b[p];
    else if (n === 2) len = b[p] | (b[p + 1] << 8);
    else if (n === 4) len = readLenNoCheck(b, p);
    else len = readLenNoCheck(b, p + 4) * 0x100000000 + readLenNoCheck(b, p); // an impossible one is refused below, precision aside
    this.pos = p + n;
    if (len > this.end - this.pos) this.fail(`length ${len} beyond the ${this.end - this.pos} bytes left`);
    return len;
  }

  private text(len: number): string {
    const s = utf8Text(this.b, this.pos, this.pos + len);
    if (s === undefined) this.fail('invalid UTF-8 in a str');
    this.pos += len;
    return s;
  }

  private bytes(len: number): Buffer {
    const out = Buffer.allocUnsafe(len);
    out.set(this.b.subarray(this.pos, this.pos + len));
    this.pos += len;
    return out;
  }

  private memoIndex(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.maxItems) this.fail(`memo index ${i} out of range`);
    return i;
  }

  private put(i: number): void {
    const t = this.top('PUT');
    this.memoIndex(i);
    if (this.memoKinds[i] === undefined && ++this.memoCount > this.maxItems) this.fail(`more than ${this.maxItems} memo entries`);
    this.memo[i] = this.stack[t];
    this.memoKinds[i] = this.kinds[t];
  }

  private get(i: number): void {
    this.memoIndex(i);
    const kind = this.memoKinds[i];
    if (kind === undefined) this.fail(`memo index ${i} was never stored`);
    const v = this.memo[i];
    if (kind === K_LIST || kind === K_DICT || kind === K_TUPLE || v instanceof PickledException) this.shared = true;
    this.push(v, kind, kind === K_SCALAR || kind === K_GLOBAL ? 0 : 1);
  }

  private pyInt(s: string, what: string): number | bigint {
    if (!INT_TEXT.test(s)) this.fail(`bad ${what}`);
    if (s.length > this.maxBigIntBytes * 2.5 + 2) this.fail(`int longer than ${this.maxBigIntBytes} bytes`);
    return intValue(BigInt(s));
  }

  private longValue(n: number): number | bigint {
    if (n > this.maxBigIntBytes) this.fail(`int of ${n} bytes (limit ${this.maxBigIntBytes})`);
    const v = n <= 6 ? Number(readLong(this.b, this.pos, n)) : intValue(readLong(this.b, this.pos, n));
    this.pos += n;
    return v;
  }

  private textIndex(what: string): number {
    const s = this.line(what);
    if (!/^\d{1,10}$/.test(s)) this.fail(`bad ${what} index`);
    return Number(s);
  }

  /** The container at `at` (just below `from`) must be of `kind`, above the open MARK. */
  private containerAt(at: number, kind: number, what: string): void {
    if (at < 0 || this.kinds[at] !== kind || at < this.floor()) this.fail(what);
  }

  private setItems(obj: Record<string, unknown>, from: number): void {
    for (let i = from; i < this.sp; i += 2) setKey(obj, dictKey(this.stack[i], this.kinds[i], this.rel()), this.stack[i + 1], this.rel());
  }

  /** Raise the recorded depth of the container at `at` for children from `from` up. */
  private deepen(at: number, from: number): void {
    const d = Math.max(this.depths[at], this.maxDepthOf(from) + 1);
    if (d > this.maxDepth) this.fail(`nested deeper than ${this.maxDepth}`);
    this.depths[at] = d;
  }

  /** Run to `STOP`. @throws RpcDecodeError */
  run(): PickleDecoded {
    const b = this.b;
    for (;;) {
      if (this.pos >= this.end) this.fail('truncated (no STOP)');
      const op = b[this.pos++];
      switch (op) {
        case PROTO: {
          this.need(1);
          const p = b[this.pos++];
          if (p > 5) this.fail(`unsupported pickle protocol ${p}`);
          break;
        }
        case FRAME:
          this.readLen(8); // the frame's bytes follow; they are read as they come
          break;
        case STOP: {
          if (this.marks.length > 0 || this.sp !== 1) this.fail('STOP with a stack that is not one value');
          if (this.pos !== this.end) this.fail(`${this.end - this.pos} bytes after STOP`);
          this.noGlobal(0, 'the result');
          const value = this.stack[0];
          if (this.shared) checkShared(value, this.maxDepth, Math.max(1_000_000, 8 * (this.end - this.start)), this.rel());
          return { value, exceptions: this.exceptions };
        }
        case MARK:
          if (this.marks.length >= this.maxItems) this.fail(`more than ${this.maxItems} marks`);
          this.marks.push(this.sp);
          break;
        case POP:
          if (this.sp > this.floor()) this.truncate(this.sp - 1);
          else this.truncate(this.popMark('POP'));
          break;
        case POP_MARK:
          this.truncate(this.popMark('POP_MARK'));
          break;
        case DUP: {
          const t = this.top('DUP');
          if (this.kinds[t] !== K_SCALAR || this.stack[t] instanceof PickledException) this.shared = true;
          this.push(this.stack[t], this.kinds[t], this.depths[t]);
          break;
        }
        case NONE:
          this.push(null, K_SCALAR, 0);
          break;
        case NEWTRUE:
          this.push(true, K_SCALAR, 0);
          break;
        case NEWFALSE:
          this.push(false, K_SCALAR, 0);
          break;
        case INT: {
          const s = this.line('INT');
          if (s === '01') this.push(true, K_SCALAR, 0);
          else if (s === '00') this.push(false, K_SCALAR, 0);
          // (Python reads INT with strtol base 0: a leading zero means octal, 0x hex; refused)
          else if (/^[+-]?0./.test(s)) this.fail('INT with a leading zero');
          else this.push(this.pyInt(s, 'INT'), K_SCALAR, 0);
          break;
        }
        case LONG: {
          const s = this.line('LONG');
          this.push(this.pyInt(s.endsWith('L') ? s.slice(0, -1) : s, 'LONG'), K_SCALAR, 0);
          break;
        }
        case BININT1:
          this.need(1);
          this.push(b[this.pos++], K_SCALAR, 0);
          break;
        case BININT2:
          this.need(2);
          this.push(b[this.pos] | (b[this.pos + 1] << 8), K_SCALAR, 0);
          this.pos += 2;
          break;
        case BININT: {
          this.need(4);
          const p = this.pos;
          this.push(b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24), K_SCALAR, 0);
          this.pos += 4;
          break;
        }
        case LONG1:
          this.push(this.longValue(this.readLen(1)), K_SCALAR, 0);
          break;
        case LONG4:
          this.need(4);
          if (b[this.pos + 3] & 0x80) this.fail('LONG4 with a negative length');
          this.push(this.longValue(this.readLen(4)), K_SCALAR, 0);
          break;
        case FLOAT: {
          const s = this.line('FLOAT');
          if (s.length > MAX_FLOAT_TEXT || !FLOAT_TEXT.test(s)) this.fail('bad FLOAT');
          const low = s.toLowerCase().replace(/^[+-]/, '');
          const neg = s.startsWith('-');
          this.push(low === 'nan' ? NaN : low.startsWith('inf') ? (neg ? -Infinity : Infinity) : Number(s), K_SCALAR, 0);
          break;
        }
        case BINFLOAT:
          this.need(8);
          this.push(Buffer.from(b.buffer, b.byteOffset + this.pos, 8).readDoubleBE(0), K_SCALAR, 0);
          this.pos += 8;
          break;
        case BINUNICODE:
          this.push(this.text(this.readLen(4)), K_SCALAR, 0);
          break;
        case SHORT_BINUNICODE:
          this.push(this.text(this.readLen(1)), K_SCALAR, 0);
          break;
        case BINUNICODE8:
          this.push(this.text(this.readLen(8)), K_SCALAR, 0);
          break;
        case UNICODE: {
          const from = this.pos;
          this.line('UNICODE');
          this.push(rawUnicodeEscape(b, from, this.pos - 1, this.rel()), K_SCALAR, 0);
          break;
        }
        case STRING: {
          const s = this.line('STRING');
          const q = s[0];
          if (s.length < 2 || (q !== "'" && q !== '"') || s[s.length - 1] !== q) this.fail('STRING not quoted');
          this.push(unescapeString(s.slice(1, -1), this.rel()), K_SCALAR, 0);
          break;
        }
        case BINSTRING:
          this.need(4);
          if (b[this.pos + 3] & 0x80) this.fail('BINSTRING with a negative length');
          this.push(this.bytes(this.readLen(4)), K_SCALAR, 0);
          break;
        case SHORT_BINSTRING:
        case SHORT_BINBYTES:
          this.push(this.bytes(this.readLen(1)), K_SCALAR, 0);
          break;
        case BINBYTES:
          this.push(this.bytes(this.readLen(4)), K_SCALAR, 0);
          break;
        case BINBYTES8:
        case BYTEARRAY8:
          this.push(this.bytes(this.readLen(8)), K_SCALAR, 0);
          break;
        case EMPTY_LIST:
          this.push([], K_LIST, 1);
          break;
        case EMPTY_TUPLE:
          this.push([], K_TUPLE, 1);
          break;
        case EMPTY_DICT:
          this.push({}, K_DICT, 1);
          break;
        case LIST:
        case TUPLE: {
          const m = this.popMark(op === LIST ? 'LIST' : 'TUPLE');
          this.noGlobal(m, op === LIST ? 'a list' : 'a tuple');
          const items = this.items(m);
          const d = this.maxDepthOf(m) + 1;
          this.truncate(m);
          this.push(items, op === LIST ? K_LIST : K_TUPLE, d);
          break;
        }
        case TUPLE1:
        case TUPLE2:
        case TUPLE3: {
          const n = op - TUPLE1 + 1;
          const from = this.sp - n;
          if (from < this.floor()) this.fail(`TUPLE${n} with too few values`);
          this.noGlobal(from, 'a tuple');
          const items = this.items(from);
          const d = this.maxDepthOf(from) + 1;
          this.truncate(from);
          this.push(items, K_TUPLE, d);
          break;
        }
        case DICT: {
          const m = this.popMark('DICT');
          if ((this.sp - m) % 2 !== 0) this.fail('DICT with an odd number of values');
          this.noGlobal(m, 'a dict');
          const obj: Record<string, unknown> = {};
          this.setItems(obj, m);
          const d = this.maxDepthOf(m) + 1;
          this.truncate(m);
          this.push(obj, K_DICT, d);
          break;
        }
        case APPEND:
        case APPENDS: {
          const from = op === APPEND ? this.top('APPEND') : this.popMark('APPENDS');
          this.containerAt(from - 1, K_LIST, 'APPEND to something that is not a list');
          this.noGlobal(from, 'a list');
          const list = this.stack[from - 1] as unknown[];
          if (list.length + this.sp - from > this.maxItems) this.fail(`list longer than ${this.maxItems}`);
          for (let i = from; i < this.sp; i++) list.push(this.stack[i]);
          this.deepen(from - 1, from);
          this.truncate(from);
          break;
        }
        case SETITEM:
        case SETITEMS: {
          let from: number;
          if (op === SETITEM) {
            from = this.sp - 2;
            if (from < this.floor()) this.fail('SETITEM with too few values');
          } else {
            from = this.popMark('SETITEMS');
            if ((this.sp - from) % 2 !== 0) this.fail('SETITEMS with an odd number of values');
          }
          this.containerAt(from - 1, K_DICT, 'SETITEM on something that is not a dict');
          this.noGlobal(from, 'a dict');
          this.setItems(this.stack[from - 1] as Record<string, unknown>, from);
          this.deepen(from - 1, from);
          this.truncate(from);
          break;
        }
        case PUT:
          this.put(this.textIndex('PUT'));
          break;
        case BINPUT:
          this.need(1);
          this.put(b[this.pos++]);
          break;
        case LONG_BINPUT: {
          this.need(4);
          if (b[this.pos + 3] & 0x80) this.fail('LONG_BINPUT with a negative index');
          const i = readLenNoCheck(b, this.pos);
          this.pos += 4;
          this.put(i);
          break;
        }
        case MEMOIZE:
          this.put(this.memoCount);
          break;
        case GET:
          this.get(this.textIndex('GET'));
          break;
        case BINGET:
          this.need(1);
          this.get(b[this.pos++]);
          break;
        case LONG_BINGET: {
          this.need(4);
          const i = readLenNoCheck(b, this.pos);
          this.pos += 4;
          this.get(i);
          break;
        }
        case GLOBAL: {
          const module = this.line('GLOBAL module');
          const name = this.line('GLOBAL name');
          this.push(new GlobalRef(module, name), K_GLOBAL, 0);
          break;
        }
        case STACK_GLOBAL: {
          const n = this.top('STACK_GLOBAL');
          if (n - 1 < this.floor()) this.fail('STACK_GLOBAL with too few values');
          const module = this.stack[n - 1];
          const name = this.stack[n];
          if (typeof module !== 'string' || typeof name !== 'string') this.fail('STACK_GLOBAL of values that are not strs');
          this.truncate(n - 1);
          this.push(new GlobalRef(module, name), K_GLOBAL, 0);
          break;
        }
        case REDUCE:
          this.reduce();
          break;
        default: {
          const name = REFUSED[op];
          this.pos--;
          this.fail(name ? `opcode ${name} is refused (only data is accepted)` : `unknown opcode 0x${op.toString(16)}`);
        }
      }
    }
  }

  /** `REDUCE`: bytes in disguise, an exception's description (where allowed), or refused. */
  private reduce(): void {
    const a = this.top('REDUCE');
    if (a - 1 < this.floor()) this.fail('REDUCE with too few values');
    if (this.kinds[a - 1] !== K_GLOBAL) this.fail('REDUCE of something that is not a GLOBAL');
    if (this.kinds[a] !== K_TUPLE) this.fail('REDUCE with arguments that are not a tuple');
    const g = this.stack[a - 1] as GlobalRef;
    const args = this.stack[a] as unknown[];
    const d = this.depths[a];
    const module = g.module === '__builtin__' || g.module === 'exceptions' ? 'builtins' : g.module;
    this.truncate(a - 1);
    const asBytes = bytesCall(module, g.name, args);
    if (asBytes !== undefined) {
      this.push(asBytes, K_SCALAR, 0);
      return;
    }
    if (!this.allowExceptions) this.fail(`GLOBAL ${clip(g.module)}.${clip(g.name)} is refused (only data is accepted)`);
    if (!DOTTED_NAME.test(module) || !DOTTED_NAME.test(g.name)) this.fail('GLOBAL with a name that is not a Python identifier');
    this.exceptions++;
    this.push(new PickledException(module, g.name, args), K_SCALAR, d);
  }
}

/** Decode one pickle in `b[start..end)` (see {@link Decoder}). */
function decodePickle(
  b: Uint8Array,
  start: number,
  end: number,
  maxDepth: number,
  maxBigIntBytes: number,
  maxItems: number,
  allowExceptions: boolean,
): PickleDecoded {
  return new Decoder(b, start, end, maxDepth, maxBigIntBytes, maxItems, allowExceptions).run();
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
    const len = s.length;
    if (len <= 64) {
      // short ASCII strings byte by byte (most names and keys), without the UTF-8 writer
      this.ensure(5 + len);
      const buf = this.buf;
      const at = this.pos + 5;
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[at + i] = c;
      }
      if (i === len) {
        buf[this.pos] = BINUNICODE;
        buf[this.pos + 1] = len;
        buf[this.pos + 2] = 0;
        buf[this.pos + 3] = 0;
        buf[this.pos + 4] = 0;
        this.pos = at + len;
        return;
      }
    }
    const n = Buffer.byteLength(s, 'utf8');
    this.ensure(5 + n);
    this.buf[this.pos++] = BINUNICODE;
    this.buf.writeUInt32LE(n, this.pos);
    this.pos += 4;
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }
  /** A `str` of the latin-1 characters of `b` (each byte a code point), as UTF-8. */
  latin1Str(b: Uint8Array): void {
    let n = b.length;
    for (let i = 0; i < b.length; i++) if (b[i] >= 0x80) n++;
    this.ensure(5 + n);
    const buf = this.buf;
    buf[this.pos] = BINUNICODE;
    buf.writeUInt32LE(n, this.pos + 1);
    let at = this.pos + 5;
    for (let i = 0; i < b.length; i++) {
      const c = b[i];
      if (c < 0x80) buf[at++] = c;
      else {
        buf[at++] = 0xc0 | (c >> 6);
        buf[at++] = 0x80 | (c & 0x3f);
      }
    }
    this.pos = at;
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
    w.latin1Str(v);
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
