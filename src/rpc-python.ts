/**
 * RPC envelopes as Python snakeMQ 1.6's `rpc.py` writes them (after the `rpcreq` / `rpcrep`
 * prefix, a pickle), read and written with our {@link PickleCodec}:
 *
 * - a request `{command: 'call' | 'signal', object, method, args: tuple, kwargs: dict, req_id:
 *   16 bytes}` (a signal has no `req_id`);
 * - a reply `{ok: True, return, req_id}` or `{ok: False, exception, exception_format, req_id}`,
 *   the exception pickled by reference (`module.Class(*args)`).
 *
 * What we send a Python caller for an error of ours: `UnknownObjectError` and
 * `UnknownMethodError` as snakeMQ's own `snakemq.rpc.NoInstanceError(object)` /
 * `NoMethodError(method)` (what a Python server sends, so `except NoMethodError` keeps
 * working); any other error as the built-in exception of its `name` when that is one of
 * {@link PYTHON_SAFE_EXCEPTIONS} (`ValueError`, `TypeError`, `KeyError`, ...), else as
 * `RuntimeError('<name>: <message>')`; `exception_format` carries our stack.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { InvalidArgumentError } from './errors.js';
import { PickleCodec, PickledException, PickleTuple } from './rpc-pickle.js';
import { RemoteError, RpcBadRequestError, UnknownMethodError, UnknownObjectError } from './rpc-errors.js';

/**
 * Which encoding RPC bodies use. `'auto'` (the default): MessagePack (the `codec` option) with
 * snakemq peers, pickle with plain snakeMQ 1.6 peers (see {@link Messaging.peerSpeaksExtensions});
 * a server replies in the encoding the request came in. `'msgpack'` / `'pickle'` force one.
 */
export type RpcEncoding = 'auto' | 'msgpack' | 'pickle';

/** @throws InvalidArgumentError unless `v` is an {@link RpcEncoding} (or undefined: `'auto'`) */
export function checkEncoding(v: unknown, what = 'encoding'): RpcEncoding {
  if (v === undefined) return 'auto';
  if (v !== 'auto' && v !== 'msgpack' && v !== 'pickle') {
    throw new InvalidArgumentError(`${what} must be 'auto', 'msgpack' or 'pickle', got ${String(v)}`);
  }
  return v;
}

/** Built-in exception names (in Python 2.7 and 3 alike) that a Python caller gets as they are. */
export const PYTHON_SAFE_EXCEPTIONS: ReadonlySet<string> = new Set([
  'ArithmeticError',
  'AssertionError',
  'AttributeError',
  'BufferError',
  'EOFError',
  'EnvironmentError',
  'Exception',
  'FloatingPointError',
  'IOError',
  'ImportError',
  'IndexError',
  'KeyError',
  'LookupError',
  'MemoryError',
  'NameError',
  'NotImplementedError',
  'OSError',
  'OverflowError',
  'ReferenceError',
  'RuntimeError',
  'TypeError',
  'UnicodeError',
  'ValueError',
  'ZeroDivisionError',
]);

const REQ_ID_LENGTH = 16;

/** A Python 2 `str` (bytes) where a text is expected, as UTF-8; a string as it is. */
function text(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  return undefined;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

function own(o: Record<string, unknown>, k: string): unknown {
  return Object.prototype.hasOwnProperty.call(o, k) ? o[k] : undefined;
}

function isReqId(v: unknown): v is Buffer {
  return Buffer.isBuffer(v) && v.length === REQ_ID_LENGTH;
}

/** A request read from a pickle. */
export interface PickleRequest {
  command: 'call' | 'signal';
  object: string;
  method: string;
  args: unknown[];
  /** The keyword arguments; `undefined` when the request had none (or an empty dict). */
  kwargs: Record<string, unknown> | undefined;
  /** The request id; `undefined` for a signal without one (Python sends none). */
  reqId: Buffer | undefined;
}

/** What {@link decodePickleRequest} found: a request, or why not (with the id to answer, if any). */
export type PickleRequestResult =
  | { ok: true; request: PickleRequest }
  | { ok: false; error: RpcBadRequestError; reqId: Buffer | undefined };

/**
 * The request pickled in `src[start..end)`.
 * @throws RpcDecodeError when the bytes are not a pickle of data
 */
export function decodePickleRequest(codec: PickleCodec, src: Uint8Array, start: number, end: number): PickleRequestResult {
  const v = codec.decodeRange(src, start, end, false).value;
  if (!isPlainObject(v)) return { ok: false, error: new RpcBadRequestError('pickled request is not a dict'), reqId: undefined };
  const command = text(own(v, 'command'));
  const rawId = own(v, 'req_id');
  const reqId = isReqId(rawId) ? rawId : undefined;
  const object = text(own(v, 'object'));
  const method = text(own(v, 'method'));
  const args = own(v, 'args');
  const kwargs = own(v, 'kwargs');
  if (command === 'call' && reqId === undefined) {
    return { ok: false, error: new RpcBadRequestError('call without a 16-byte req_id; dropped'), reqId: undefined };
  }
  if (
    (command !== 'call' && command !== 'signal') ||
    object === undefined ||
    method === undefined ||
    !Array.isArray(args) ||
    (kwargs !== undefined && kwargs !== null && !isPlainObject(kwargs))
  ) {
    return {
      ok: false,
      error: new RpcBadRequestError('malformed request (command, object, method, args or kwargs)'),
      reqId: command === 'call' ? reqId : undefined,
    };
  }
  const kw = isPlainObject(kwargs) && Object.keys(kwargs).length > 0 ? kwargs : undefined;
  return { ok: true, request: { command, object, method, args, kwargs: kw, reqId } };
}

/** `rpcreq` + the pickle of a request as Python's `RpcClient` writes it (always with `kwargs`). */
export function pickleRequestBody(
  codec: PickleCodec,
  prefix: Buffer,
  command: 'call' | 'signal',
  object: string,
  method: string,
  args: readonly unknown[],
  kwargs: Record<string, unknown> | undefined,
  reqId: Buffer | undefined,
): Buffer {
  const req: Record<string, unknown> = { command, object, method, args: new PickleTuple(args), kwargs: kwargs ?? {} };
  if (reqId !== undefined) req.req_id = reqId;
  return Buffer.concat([prefix, codec.encode(req)]);
}

/** `rpcrep` + the pickle of a success reply. @throws RpcEncodeError when `value` cannot be pickled */
export function pickleOkReply(codec: PickleCodec, prefix: Buffer, reqId: Buffer, value: unknown): Buffer {
  return Buffer.concat([prefix, codec.encode({ ok: true, return: value, req_id: reqId })]);
}

/** The Python exception a caller gets for `err` (see the module doc). */
export function pythonException(err: { name: string; message: string }, original: unknown): PickledException {
  if (original instanceof UnknownObjectError) return new PickledException('snakemq.rpc', 'NoInstanceError', [original.objectName]);
  if (original instanceof UnknownMethodError) return new PickledException('snakemq.rpc', 'NoMethodError', [original.methodName]);
  if (PYTHON_SAFE_EXCEPTIONS.has(err.name)) return new PickledException('builtins', err.name, [err.message]);
  return new PickledException('builtins', 'RuntimeError', [`${err.name}: ${err.message}`]);
}

/** `rpcrep` + the pickle of an exception reply. Never throws (the fields are strings). */
export function pickleErrorReply(
  codec: PickleCodec,
  prefix: Buffer,
  reqId: Buffer,
  err: { name: string; message: string; stack: string },
  original: unknown,
): Buffer {
  return Buffer.concat([
    prefix,
    codec.encode({ req_id: reqId, ok: false, exception: pythonException(err, original), exception_format: err.stack }),
  ]);
}

/**
 * Longest message made of a Python exception's arguments, in characters. The arguments come
 * from the peer, and through the pickle memo one large string can stand in many places at
 * almost no cost: the text is cut here, never built whole (`remoteArgs` keeps the values).
 */
export const MAX_REMOTE_MESSAGE = 4096;

/** Append a Python-ish text of an exception argument to `out`, while `out.left` characters are left. */
function appendArg(v: unknown, out: { parts: string[]; left: number }): void {
  if (out.left <= 0) return;
  let s: string;
  if (typeof v === 'string') s = `'${v.length > out.left ? v.slice(0, out.left) : v}'`;
  else if (typeof v === 'bigint' || typeof v === 'number') s = String(v);
  else if (v === null) s = 'None';
  else if (v === true) s = 'True';
  else if (v === false) s = 'False';
  else if (Buffer.isBuffer(v)) s = `b'${v.subarray(0, out.left).toString('latin1')}'`;
  else if (Array.isArray(v)) {
    appendList(v, '[', ']', out);
    return;
  } else s = typeof v;
  out.parts.push(s);
  out.left -= s.length;
}

function appendList(items: readonly unknown[], open: string, close: string, out: { parts: string[]; left: number }): void {
  out.parts.push(open);
  out.left -= open.length;
  for (let i = 0; i < items.length && out.left > 0; i++) {
    if (i > 0) {
      out.parts.push(', ');
      out.left -= 2;
    }
    appendArg(items[i], out);
  }
  out.parts.push(close);
  out.left -= close.length;
}

/** `str(exc)` in Python: the one argument, nothing, or the tuple of them; cut at {@link MAX_REMOTE_MESSAGE}. */
export function exceptionMessage(args: readonly unknown[]): string {
  if (args.length === 0) return '';
  const out = { parts: [] as string[], left: MAX_REMOTE_MESSAGE };
  if (args.length === 1 && typeof args[0] === 'string') out.parts.push(args[0].slice(0, MAX_REMOTE_MESSAGE + 1));
  else if (args.length === 1) appendArg(args[0], out);
  else appendList(args, '(', ')', out);
  const text = out.parts.join('');
  return text.length > MAX_REMOTE_MESSAGE ? `${text.slice(0, MAX_REMOTE_MESSAGE)}…` : text;
}

/** The error a call gets for a Python exception reply. */
export function errorFromPython(exc: unknown, format: unknown, objectName: string): Error {
  const stack = typeof format === 'string' ? format : Buffer.isBuffer(format) ? format.toString('utf8') : '';
  if (!(exc instanceof PickledException)) {
    return new RemoteError('Exception', 'the remote exception could not be read', stack);
  }
  const a0 = text(exc.args[0]);
  if (exc.module === 'snakemq.rpc' && exc.name === 'NoInstanceError' && a0 !== undefined) return new UnknownObjectError(a0);
  if (exc.module === 'snakemq.rpc' && exc.name === 'NoMethodError' && a0 !== undefined) return new UnknownMethodError(objectName, a0);
  return new RemoteError(exc.name, exceptionMessage(exc.args), stack, undefined, { args: exc.args, module: exc.module });
}

const REQ_ID_KEY = Buffer.from('req_id', 'latin1');

/**
 * The request id of a pickled request or reply that did not decode, found by its bytes: the
 * key `req_id` (as Python writes it, maybe memoized) followed by 16 bytes (`SHORT_BINBYTES` or
 * Python 2's `SHORT_BINSTRING`). `undefined` when there is none. Only a hint: the caller uses it
 * to answer (or fail) that one request with the decode error instead of leaving it waiting,
 * and an id that does not name a request of that peer changes nothing.
 */
export function findPickledReqId(src: Uint8Array, start: number, end: number): Buffer | undefined {
  const hay = Buffer.from(src.buffer, src.byteOffset + start, end - start);
  for (let at = hay.indexOf(REQ_ID_KEY); at >= 0; at = hay.indexOf(REQ_ID_KEY, at + 1)) {
    let i = at + REQ_ID_KEY.length;
    if (hay[i] === 0x94) i += 1; // MEMOIZE
    else if (hay[i] === 0x71) i += 2; // BINPUT n
    else if (hay[i] === 0x72) i += 5; // LONG_BINPUT n
    if ((hay[i] === 0x43 || hay[i] === 0x55) && hay[i + 1] === REQ_ID_LENGTH && i + 2 + REQ_ID_LENGTH <= hay.length) {
      return Buffer.from(hay.subarray(i + 2, i + 2 + REQ_ID_LENGTH));
    }
  }
  return undefined;
}

/** A reply read from a pickle. */
export type PickleReply =
  | { ok: true; reqId: Buffer; value: unknown }
  | { ok: false; reqId: Buffer; exception: unknown; format: unknown };

/**
 * The reply pickled in `src[start..end)`; `undefined` when it is not a well-formed reply (no
 * 16-byte `req_id`, no boolean `ok`, or a described object anywhere but as the exception).
 * @throws RpcDecodeError when the bytes are not a pickle of data (and exceptions)
 */
export function decodePickleReply(codec: PickleCodec, src: Uint8Array, start: number, end: number): PickleReply | undefined {
  const { value: v, exceptions } = codec.decodeRange(src, start, end, true);
  if (!isPlainObject(v)) return undefined;
  const reqId = own(v, 'req_id');
  const ok = own(v, 'ok');
  if (!isReqId(reqId) || typeof ok !== 'boolean') return undefined;
  if (ok) return exceptions === 0 ? { ok, reqId, value: own(v, 'return') } : undefined;
  const exception = own(v, 'exception');
  if (exceptions !== (exception instanceof PickledException ? 1 : 0)) return undefined;
  return { ok, reqId, exception, format: own(v, 'exception_format') };
}
