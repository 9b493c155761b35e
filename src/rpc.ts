/**
 * RPC over messages: {@link RpcServer} exposes objects, {@link RpcClient} calls them through
 * proxies. Both sit on a {@link ReceiveHook} and know only messages; a peer can be server and
 * client at once, and any number of calls can be in flight (pipelined).
 *
 * Bodies keep snakeMQ's prefixes: requests start with `rpcreq`, replies with `rpcrep`; the rest
 * is the codec's encoding (MessagePack by default, see {@link MsgpackCodec}) of
 * - a request `{ command: 'call' | 'signal', object, method, args, req_id }` (`req_id`: 16 bytes),
 * - a reply `{ req_id, ok: true, return }` or `{ req_id, ok: false, error: { name, message,
 *   stack, code?, rpc? } }` (`rpc: true` marks errors of the RPC layer itself: unknown object or
 *   method, outcome unknown, bad request).
 *
 * With a plain Python snakeMQ 1.6 peer the bodies are pickles instead, laid out as snakeMQ's
 * `rpc.py` writes them (see {@link PickleCodec} and `rpc-python.ts`): by default
 * (`encoding: 'auto'`) a client pickles its requests to a peer that
 * {@link Messaging.peerSpeaksExtensions} reports as plain (a call queued while the peer is
 * away is encoded again when it connects, if it guessed wrong), and a server replies in the
 * encoding the request came in. `encoding: 'msgpack' | 'pickle'` forces one per client, proxy
 * or server. Python's keyword arguments reach a method only when it is registered to take them
 * (`registerObject(obj, name, { kwargs: ['method'] })`, as a trailing plain object), and are
 * sent only when given (`CallOptions.kwargs`).
 *
 * Delivery: a call's request message stays queued in Messaging until it is delivered, so a
 * call made before the server is up waits, then runs. A request that was delivered but not
 * answered when the peer reconnects is sent again (same request id, new message): the server
 * remembers request ids in a bounded cache and answers a duplicate with the cached reply
 * instead of running it twice; with a storage, the ids (and replies) are persisted, and a
 * request that was started but not answered before a crash is answered with
 * {@link OutcomeUnknownError}.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { EventEmitter } from 'node:events';
import { ClosedError, InvalidArgumentError } from './errors.js';
import type { ConnId } from './link.js';
import { copy16, readI32, readU16BE, readU32BE } from './bytes.js';
import { type Logger, defaultLogger } from './logger.js';
import { Message, newUuid } from './message.js';
import type { DropReason } from './messaging.js';
import type { HookMessaging, ReceiveHook } from './receive-hook.js';
import { MapShape, MsgpackCodec, type RpcCodec } from './rpc-codec.js';
import { PickleCodec, looksLikePickle } from './rpc-pickle.js';
import {
  type RpcEncoding,
  checkEncoding,
  decodePickleReply,
  decodePickleRequest,
  errorFromPython,
  findPickledReqId,
  pickleErrorReply,
  pickleOkReply,
  pickleRequestBody,
} from './rpc-python.js';
import {
  NotConnectedError,
  OutcomeUnknownError,
  PartialCallError,
  RemoteError,
  RpcDecodeError,
  RequestDroppedError,
  RpcBadRequestError,
  RpcCallError,
  UnknownMethodError,
  UnknownObjectError,
  type CallAbortReason,
} from './rpc-errors.js';
import type { QueuesStorage } from './storage.js';
import { UuidMap } from './uuid-map.js';

/** Bodies of RPC requests start with these bytes (snakeMQ's `REQUEST_PREFIX`). */
export const REQUEST_PREFIX: Buffer = Buffer.from('rpcreq', 'latin1');
/** Bodies of RPC replies start with these bytes (snakeMQ's `REPLY_PREFIX`). */
export const REPLY_PREFIX: Buffer = Buffer.from('rpcrep', 'latin1');

const PREFIX_LENGTH = 6;
const REQ_ID_LENGTH = 16;
const SIGNAL_MARK: unique symbol = Symbol.for('snakemq.rpc.signal');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFunction = (...args: any[]) => any;

let sharedCodec: RpcCodec | undefined;
function defaultCodec(): RpcCodec {
  sharedCodec ??= new MsgpackCodec();
  return sharedCodec;
}
let sharedPickle: PickleCodec | undefined;
function defaultPickle(): PickleCodec {
  sharedPickle ??= new PickleCodec();
  return sharedPickle;
}

/** Whether `t`, the first byte after a body's prefix, starts a MessagePack map (every envelope is one). */
function isMsgpackMapHead(t: number): boolean {
  return (t >= 0x80 && t <= 0x8f) || t === 0xde || t === 0xdf;
}

/**
 * Whether the body in `src[start..end)` from `ident` is read as a pickle under `encoding`: a
 * pickle header (protocol 2 and up) says so; a MessagePack map says not; anything else is a
 * pickle only from a plain snakeMQ 1.6 peer (Python 2 writes protocol 0 by default).
 */
function readAsPickle(encoding: RpcEncoding, m: HookMessaging, ident: string, src: Buffer, start: number, end: number): boolean {
  if (encoding !== 'auto') return encoding === 'pickle';
  const at = start + PREFIX_LENGTH;
  if (looksLikePickle(src, at, end)) return true;
  if (at < end && isMsgpackMapHead(src[at])) return false;
  return m.peerSpeaksExtensions?.(ident) === false;
}

/**
 * The codec when it is a {@link MsgpackCodec} with the stock `encode` and `decode` (so it can
 * encode behind a prefix and decode after one without extra copies or views).
 */
function prefixingCodec(codec: RpcCodec): MsgpackCodec | undefined {
  return codec instanceof MsgpackCodec && codec.encode === MsgpackCodec.prototype.encode && codec.decode === MsgpackCodec.prototype.decode
    ? codec
    : undefined;
}

/** `prefix` followed by the codec's encoding of `value`. */
function encodeBody(codec: RpcCodec, fast: MsgpackCodec | undefined, prefix: Buffer, value: unknown): Buffer {
  if (fast) return fast.encodePrefixed(prefix, value);
  const enc = codec.encode(value);
  return Buffer.concat([prefix, enc], PREFIX_LENGTH + enc.length);
}

// The envelopes' keys, in the order they are encoded (see the module doc).
const REQUEST_SHAPE = new MapShape(['command', 'object', 'method', 'args', 'req_id']);
const REQ_COMMAND = 0;
const REQ_OBJECT = 1;
const REQ_METHOD = 2;
const REQ_ARGS = 3;
const REQ_ID = 4;
/** A request as read: {@link REQUEST_SHAPE} and the keyword arguments, sent only when given. */
const REQUEST_READ_SHAPE = new MapShape(['command', 'object', 'method', 'args', 'req_id', 'kwargs']);
const REQ_KWARGS = 5;
/** A successful reply as encoded; decoded replies are read with {@link REPLY_SHAPE}. */
const REPLY_OK_SHAPE = new MapShape(['req_id', 'ok', 'return']);
const REPLY_SHAPE = new MapShape(['req_id', 'ok', 'return', 'error']);
const REP_ID = 0;
const REP_OK = 1;
const REP_RETURN = 2;
const REP_ERROR = 3;

// Envelopes as the MessagePack codec's own encoder writes them: the shape's keys in order, the
// request id a bin 8 of 16 bytes. Bodies laid out so are read by comparing the fixed bytes and
// decoding only the values (names, arguments, return value); any other body goes through the
// general decode (which gives the same values for these).

/** The bytes of a bin 8 header of a request id. */
const ID_BIN_HEAD = [0xc4, REQ_ID_LENGTH];
const REQ_KEYS = REQUEST_SHAPE.encodedKeys;
const REP_KEYS = REPLY_OK_SHAPE.encodedKeys;
/** A request after its prefix, up to the object name: a map of 5, `command`, the command, `object`. */
const REQUEST_CALL_HEAD = Buffer.concat([Buffer.from([0x85]), REQ_KEYS[REQ_COMMAND], Buffer.from('\xa4call', 'latin1'), REQ_KEYS[REQ_OBJECT]]);
const REQUEST_SIGNAL_HEAD = Buffer.concat([Buffer.from([0x85]), REQ_KEYS[REQ_COMMAND], Buffer.from('\xa6signal', 'latin1'), REQ_KEYS[REQ_OBJECT]]);
/** The end of a request: `req_id`, a bin 8 header, then the 16 bytes of the id. */
const REQUEST_TAIL = Buffer.concat([REQ_KEYS[REQ_ID], Buffer.from(ID_BIN_HEAD)]);
const REQUEST_TAIL_LENGTH = REQUEST_TAIL.length + REQ_ID_LENGTH;
/**
 * A success reply up to its return value, the request id (16 zero bytes here) included: the
 * prefix, a map of 3, `req_id`, the id, `ok`, true, `return`.
 */
const REPLY_OK_PREFIX = Buffer.concat([
  REPLY_PREFIX,
  Buffer.from([0x83]),
  REP_KEYS[REP_ID],
  Buffer.from(ID_BIN_HEAD),
  Buffer.alloc(REQ_ID_LENGTH),
  REP_KEYS[REP_OK],
  Buffer.from([0xc3]),
  REP_KEYS[REP_RETURN],
]);
/** The part of {@link REPLY_OK_PREFIX} after the request id. */
const REPLY_OK_TAIL: Buffer = Buffer.concat([REP_KEYS[REP_OK], Buffer.from([0xc3]), REP_KEYS[REP_RETURN]]);
/** Where the request id is in a success reply. */
const REPLY_ID_AT = REPLY_OK_PREFIX.length - REP_KEYS[REP_RETURN].length - 1 - REP_KEYS[REP_OK].length - REQ_ID_LENGTH;
/** The part of {@link REPLY_OK_PREFIX} before the request id. */
const REPLY_OK_HEAD: Buffer = REPLY_OK_PREFIX.subarray(0, REPLY_ID_AT);

/** {@link REQUEST_TAIL} followed by {@link REQ_ID_PLACEHOLDER}. */
const REQUEST_TAIL_PLACEHOLDER: Buffer = Buffer.concat([REQUEST_TAIL, Buffer.alloc(REQ_ID_LENGTH)]);

/**
 * The bytes of a call's request body up to its arguments, as the codec's own encoder writes
 * them: the prefix, a map of 5, `command`, `call`, `object`, the object name, `method`, the
 * method name, `args`. A proxy method makes it once; each call then encodes only its arguments
 * (at the depth they have in the envelope) followed by {@link REQUEST_TAIL_PLACEHOLDER}.
 */
function requestHead(codec: MsgpackCodec, object: string, method: string): Buffer {
  return Buffer.concat([
    REQUEST_PREFIX,
    Buffer.from([0x85]),
    REQ_KEYS[REQ_COMMAND],
    codec.encode('call'),
    REQ_KEYS[REQ_OBJECT],
    codec.encode(object),
    REQ_KEYS[REQ_METHOD],
    codec.encode(method),
    REQ_KEYS[REQ_ARGS],
  ]);
}

/** Whether `body` holds `bytes` at `off`. */
function bytesAt(body: Buffer, off: number, bytes: Uint8Array): boolean {
  const n = bytes.length;
  if (off + n > body.length) return false;
  for (let i = 0; i < n; i++) if (body[off + i] !== bytes[i]) return false;
  return true;
}

/** The end of the MessagePack string whose header is at `pos`, when it is one and ends by `limit`; else -1. */
function stringEnd(body: Buffer, pos: number, limit: number): number {
  if (pos >= limit) return -1;
  const t = body[pos];
  let end: number;
  if (t >= 0xa0 && t <= 0xbf) end = pos + 1 + (t - 0xa0);
  else if (t === 0xd9 && pos + 2 <= limit) end = pos + 2 + body[pos + 1];
  else if (t === 0xda && pos + 3 <= limit) end = pos + 3 + readU16BE(body, pos + 1);
  else if (t === 0xdb && pos + 5 <= limit) end = pos + 5 + readU32BE(body, pos + 1);
  else return -1;
  return end <= limit ? end : -1;
}

/**
 * The request in `body[start..end)` when it is laid out as the codec's own encoder writes it
 * (see above), `undefined` otherwise or when a part does not decode (the general decode then
 * decides). The id is left where it is in the body. (Every part is checked to end by the tail, so no
 * byte after `end` decides anything.)
 */
function decodeOwnRequest(codec: MsgpackCodec, body: Buffer, start: number, end: number): WireRequest | undefined {
  const tail = end - REQUEST_TAIL_LENGTH;
  if (tail <= start + PREFIX_LENGTH || !bytesAt(body, tail, REQUEST_TAIL)) return undefined;
  let pos = start + PREFIX_LENGTH;
  let command: 'call' | 'signal';
  if (bytesAt(body, pos, REQUEST_CALL_HEAD)) {
    command = 'call';
    pos += REQUEST_CALL_HEAD.length;
  } else if (bytesAt(body, pos, REQUEST_SIGNAL_HEAD)) {
    command = 'signal';
    pos += REQUEST_SIGNAL_HEAD.length;
  } else return undefined;
  const objectEnd = stringEnd(body, pos, tail);
  if (objectEnd < 0 || !bytesAt(body, objectEnd, REQ_KEYS[REQ_METHOD])) return undefined;
  const methodAt = objectEnd + REQ_KEYS[REQ_METHOD].length;
  const methodEnd = stringEnd(body, methodAt, tail);
  if (methodEnd < 0 || !bytesAt(body, methodEnd, REQ_KEYS[REQ_ARGS])) return undefined;
  const argsAt = methodEnd + REQ_KEYS[REQ_ARGS].length;
  if (argsAt >= tail) return undefined;
  let object: unknown;
  let method: unknown;
  let args: unknown;
  try {
    object = codec.decodeRange(body, pos, objectEnd);
    method = codec.decodeRange(body, methodAt, methodEnd);
    args = codec.decodeRange(body, argsAt, tail, 1); // a value of the envelope map
  } catch (err) {
    if (err instanceof RpcDecodeError) return undefined;
    throw err;
  }
  if (typeof object !== 'string' || typeof method !== 'string' || !Array.isArray(args)) return undefined;
  return { command, object, method, args, idSrc: body, idAt: end - REQ_ID_LENGTH, kwargs: undefined, pickle: false };
}

/**
 * `prefix` followed by the codec's encoding of the plain object mapping `shape`'s keys to
 * `values` (the MessagePack codec encodes it without making the object).
 */
function encodeEnvelope(codec: RpcCodec, fast: MsgpackCodec | undefined, prefix: Buffer, shape: MapShape, values: unknown[]): Buffer {
  if (fast) return fast.encodeShapedPrefixed(prefix, shape, values);
  const obj: Record<string, unknown> = {};
  for (let i = 0; i < shape.keys.length; i++) obj[shape.keys[i]] = values[i];
  return encodeBody(codec, fast, prefix, obj);
}

/**
 * The values of `shape`'s keys (`undefined` when missing) in the plain object the codec
 * decodes from a body after its prefix; `undefined` when it is not a plain object.
 * @throws RpcDecodeError (or whatever the codec throws) for a body that does not decode
 */
function decodeEnvelope(codec: RpcCodec, fast: MsgpackCodec | undefined, body: Buffer, shape: MapShape): unknown[] | undefined {
  if (fast) return fast.decodeShapedAt(body, PREFIX_LENGTH, shape);
  const v = codec.decode(body.subarray(PREFIX_LENGTH));
  if (!isPlainObject(v)) return undefined;
  return shape.keys.map((k) => (Object.prototype.hasOwnProperty.call(v, k) ? v[k] : undefined));
}

// ------------------------------------------------------------------------------ signals

/**
 * Mark a server method as a signal (snakeMQ's `@as_signal`): its exceptions are never sent
 * back (they are reported on the server's `error` event), and if a client calls it as a
 * regular call the caller gets a {@link RemoteError} without details. Use as a wrapper
 * (`{ ping: rpcSignal(function () { ... }) }`) or as a standard method decorator
 * (`@rpcSignal ping() { ... }`). Returns the same function, marked.
 */
export function rpcSignal<F extends AnyFunction>(fn: F, context?: ClassMethodDecoratorContext): F {
  if (typeof fn !== 'function') throw new InvalidArgumentError('rpcSignal() takes a function');
  if (context !== undefined && context.kind !== 'method') throw new InvalidArgumentError('@rpcSignal decorates methods only');
  Object.defineProperty(fn, SIGNAL_MARK, { value: true, configurable: true });
  return fn;
}

/** Whether a function was marked with {@link rpcSignal}. */
export function isRpcSignal(fn: unknown): boolean {
  return typeof fn === 'function' && (fn as unknown as Record<symbol, unknown>)[SIGNAL_MARK] === true;
}

// ------------------------------------------------------------------------------ wire shapes

interface WireRequest {
  command: 'call' | 'signal';
  object: string;
  method: string;
  args: unknown[];
  /** The request id: `idSrc[idAt..idAt + 16)` (in the received body; a Buffer only when needed, see {@link reqIdOf}). */
  idSrc: Buffer;
  idAt: number;
  /** Keyword arguments (non-empty), when the request had any. */
  kwargs: Record<string, unknown> | undefined;
  /** The request came as a pickle (from a Python snakeMQ peer): the reply goes as one. */
  pickle: boolean;
}

/**
 * The arguments a method is called with: `req.args`, and the keyword arguments as a trailing
 * object when the method was registered to take them.
 * @throws TypeError for keyword arguments to a method that does not take them (as Python does)
 */
function callArgs(req: WireRequest, takesKwargs: boolean): unknown[] {
  if (takesKwargs) return [...req.args, req.kwargs ?? {}];
  if (req.kwargs !== undefined) {
    throw new TypeError(
      `${req.method}() got unexpected keyword arguments (${Object.keys(req.kwargs).join(', ')}); ` +
        'register the method with { kwargs: [...] } to receive them',
    );
  }
  return req.args;
}

/** A request's id as a Buffer: a view of the body, made only on the paths that need one. */
function reqIdOf(req: WireRequest): Buffer {
  return req.idAt === 0 && req.idSrc.length === REQ_ID_LENGTH ? req.idSrc : req.idSrc.subarray(req.idAt, req.idAt + REQ_ID_LENGTH);
}

interface WireError {
  name: string;
  message: string;
  stack: string;
  code?: string;
  rpc?: boolean;
  object?: string;
  method?: string;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

function isReqId(v: unknown): v is Buffer {
  return Buffer.isBuffer(v) && v.length === REQ_ID_LENGTH;
}

/** Stands for the request id in a request body until the id is written in (see `requestMessage`). */
const REQ_ID_PLACEHOLDER = Buffer.alloc(REQ_ID_LENGTH);

/**
 * A small-integer key of a request id or message uuid: 30 of its (random) bits. Not unique:
 * the client keeps keys unique among its waiting calls and checks the whole id on lookups.
 */
function idKey(id: Buffer, off = 0): number {
  return readI32(id, off) & 0x3fffffff;
}

/** Whether the request id of call `p` is the one at `off` of `src`. */
function hasRequestId(p: PendingCall, src: Buffer, off: number): boolean {
  return p.r0 === readI32(src, off) && p.r1 === readI32(src, off + 4) && p.r2 === readI32(src, off + 8) && p.r3 === readI32(src, off + 12);
}

// The executor of the promises of calls: hands their resolve/reject out through these two
// (instead of a closure made per call).
let executorResolve: ((v: unknown) => void) | undefined;
let executorReject: ((err: Error) => void) | undefined;
function captureExecutor(resolve: (v: unknown) => void, reject: (err: Error) => void): void {
  executorResolve = resolve;
  executorReject = reject;
}

/**
 * Queue `message` for `ident` (through `queueMessage` when the messaging layer has it: no
 * promise made when it is queued at once) and hand a failure, thrown now or later, to
 * `fail(x, err)`.
 */
function queueOn<T>(m: HookMessaging, ident: string, message: Message, fail: (x: T, err: unknown) => void, x: T): void {
  if (m.queueMessage === undefined) {
    m.sendMessage(ident, message).catch((err: unknown) => fail(x, err));
    return;
  }
  let wait: Promise<void> | undefined;
  try {
    wait = m.queueMessage(ident, message);
  } catch (err) {
    fail(x, err);
    return;
  }
  wait?.catch((err: unknown) => fail(x, err));
}

function str(v: unknown, fallback = ''): string {
  return typeof v === 'string' ? v : fallback;
}

/** Find a callable data property on the object or its own prototypes (never Object's/Function's). */
function findMethod(obj: object, name: string): AnyFunction | undefined {
  if (name === 'constructor') return undefined;
  for (let p: object | null = obj; p !== null && p !== Object.prototype && p !== Function.prototype; p = Object.getPrototypeOf(p)) {
    const d = Object.getOwnPropertyDescriptor(p, name);
    if (d) return typeof d.value === 'function' ? (d.value as AnyFunction) : undefined;
  }
  return undefined;
}

// ------------------------------------------------------------------------------ server

/** Defaults of {@link RpcServerOptions}. */
export const RPC_SERVER_DEFAULTS = {
  transferExceptions: true,
  replyCacheSize: 10_000,
  replyCacheBytes: 64 * 1024 * 1024,
  storageKey: 'rpc',
} as const;

/** Options of {@link RpcServer}. */
export interface RpcServerOptions {
  /** The codec of snakemq peers (default: a shared {@link MsgpackCodec}). Both peers must use the same one. */
  codec?: RpcCodec;
  /**
   * `'auto'` (default): read each request as MessagePack (`codec`) or pickle (from a Python
   * snakeMQ peer) and reply in the same; `'msgpack'` / `'pickle'`: accept only that one.
   */
  encoding?: RpcEncoding;
  /** The pickle codec (default: a shared {@link PickleCodec}). */
  pickleCodec?: PickleCodec;
  /**
   * Send a method's exception back to the caller as a {@link RemoteError} with name, message
   * and stack (default true). When false the caller gets a RemoteError without details
   * (snakeMQ sends nothing and leaves the caller waiting) and the exception is reported on
   * the server's `error` event.
   */
  transferExceptions?: boolean;
  /**
   * Persist request ids and replies here, so a request re-sent after a server restart is
   * answered from the cache (or, if it had started but not finished, with
   * {@link OutcomeUnknownError}) instead of running again. Uses `getMeta`/`setMeta` with keys
   * starting with `storageKey`.
   */
  storage?: QueuesStorage;
  /** Prefix of the storage keys (default `'rpc'`); give each server sharing a storage its own. */
  storageKey?: string;
  /** Answered requests remembered for deduplication, in memory and in storage (default 10000). */
  replyCacheSize?: number;
  /** Bytes of cached replies kept in memory (default 64 MiB); older ones are still found in storage. */
  replyCacheBytes?: number;
  /** TTL of reply messages in ms (default `null`: kept until delivered). */
  replyTtl?: number | null;
  logger?: Logger;
}

/** Per-object options of {@link RpcServer.registerObject}. */
export interface RegisterOptions {
  /** Method names to treat as signals, as if marked with {@link rpcSignal}. */
  signals?: Iterable<string>;
  /**
   * Method names that take keyword arguments (Python's `f(1, x=2)`): they are called with the
   * positional arguments and then one plain object of the keyword arguments (`{}` when there
   * are none). Other methods called with keyword arguments fail with a `TypeError`.
   */
  kwargs?: Iterable<string>;
}

/** Events of {@link RpcServer}. */
export interface RpcServerEvents {
  /**
   * A request could not be decoded, a signal (or a method whose exception is not transferred)
   * threw, a reply could not be sent, or storage failed. `ident` is the requesting peer.
   */
  error: [err: Error, ident: string | undefined];
}

interface CacheEntry {
  /** The requesting peer, and its table (in `RpcServer.cache`) holding this entry. */
  ident: string;
  table: UuidMap<CacheEntry>;
  /** The request id as four little-endian int32 words. */
  id0: number;
  id1: number;
  id2: number;
  id3: number;
  done: boolean;
  /** Encoded reply body (with prefix) once answered; absent for signals. */
  reply: Buffer | undefined;
}

interface Registered {
  obj: object;
  signals: Set<string>;
  /** Methods taking keyword arguments; `undefined` when none. */
  kwargs: Set<string> | undefined;
}

const REC_STARTED = 1;
const REC_DONE = 2;
const SEQ_BLOCK = 1024;

/**
 * Persisted request ids: `<prefix>:id:<reqIdHex>:<ident>` holds `[1]` (started) or
 * `[2, ...reply]` (done); a ring of `replyCacheSize` slots `<prefix>:slot:<n>` names the id
 * records in arrival order so the oldest is deleted when its slot is reused; `<prefix>:seq`
 * holds the next slot sequence number (reserved in blocks).
 */
class PersistedIds {
  private seq = 0;
  private reserved = 0;
  private init: Promise<void> | undefined;
  private readonly slots = new Map<number, string>();

  constructor(
    private readonly storage: QueuesStorage,
    private readonly prefix: string,
    private readonly size: number,
  ) {}

  idKey(reqHex: string, ident: string): string {
    return `${this.prefix}:id:${reqHex}:${ident}`;
  }

  async lookup(idKey: string): Promise<{ done: false } | { done: true; reply: Buffer } | null> {
    const rec = await this.storage.getMeta(idKey);
    if (!rec || rec.length === 0) return null;
    if (rec[0] === REC_DONE) return { done: true, reply: Buffer.from(rec.subarray(1)) };
    return { done: false };
  }

  async start(idKey: string): Promise<void> {
    this.init ??= this.storage.getMeta(`${this.prefix}:seq`).then((b) => {
      const n = b ? Number(b.toString('latin1')) : 0;
      this.seq = this.reserved = Number.isSafeInteger(n) && n >= 0 ? n : 0;
    });
    await this.init;
    const writes: Promise<void>[] = [];
    if (this.seq >= this.reserved) {
      this.reserved = this.seq + SEQ_BLOCK;
      writes.push(this.storage.setMeta(`${this.prefix}:seq`, Buffer.from(String(this.reserved), 'latin1')));
    }
    const slot = this.seq++ % this.size;
    const slotKey = `${this.prefix}:slot:${slot}`;
    let old = this.slots.get(slot);
    this.slots.set(slot, idKey);
    if (old === undefined) old = (await this.storage.getMeta(slotKey))?.toString('utf8');
    if (old !== undefined && old !== idKey) writes.push(this.storage.setMeta(old, null));
    writes.push(this.storage.setMeta(slotKey, Buffer.from(idKey, 'utf8')));
    writes.push(this.storage.setMeta(idKey, Buffer.from([REC_STARTED])));
    await Promise.all(writes);
  }

  done(idKey: string, reply: Buffer): Promise<void> {
    return this.storage.setMeta(idKey, Buffer.concat([Buffer.from([REC_DONE]), reply]));
  }
}

/**
 * Exposes registered objects to RPC clients on other peers.
 *
 * @example
 * const server = new RpcServer(new ReceiveHook(messaging));
 * server.registerObject({ add: (a: number, b: number) => a + b }, 'calc');
 */
export class RpcServer extends EventEmitter<RpcServerEvents> {
  /** The hook the server listens on. */
  readonly receiveHook: ReceiveHook;
  /** Whether exceptions of regular calls go back to the caller (see {@link RpcServerOptions}). */
  transferExceptions: boolean;

  private readonly messaging: HookMessaging;
  private readonly codec: RpcCodec;
  private readonly fastCodec: MsgpackCodec | undefined;
  private readonly encoding: RpcEncoding;
  private readonly pickle: PickleCodec;
  private readonly objects = new Map<string, Registered>();
  /** Requests seen, by requesting peer, then request id. */
  private readonly cache = new Map<string, UuidMap<CacheEntry>>();
  /**
   * Answered entries, oldest first, for eviction: a ring of `doneCount` entries from
   * `doneHead` (grown as needed; it never holds more than `replyCacheSize`). Beside each entry
   * the ring keeps its table, request id words and reply length, so that evicting an entry
   * answered thousands of requests ago reads these arrays in order instead of the entry.
   */
  private doneOrder: (CacheEntry | undefined)[] = new Array<CacheEntry | undefined>(16).fill(undefined);
  private doneTables: (UuidMap<CacheEntry> | undefined)[] = new Array<UuidMap<CacheEntry> | undefined>(16).fill(undefined);
  private doneIds = new Int32Array(16 * 4);
  private doneLengths = new Float64Array(16);
  private doneHead = 0;
  private doneCount = 0;
  private cachedBytes = 0;
  private readonly cacheSize: number;
  private readonly cacheBytes: number;
  private readonly replyTtl: number | null;
  private readonly persisted: PersistedIds | undefined;
  private readonly pendingWrites = new Set<Promise<unknown>>();
  private readonly log: Logger;
  private closed = false;

  /**
   * Register on `receiveHook` for request bodies (`rpcreq` prefix).
   * @throws InvalidArgumentError for a bad option
   */
  constructor(receiveHook: ReceiveHook, options: RpcServerOptions = {}) {
    super();
    this.receiveHook = receiveHook;
    this.messaging = receiveHook.messaging;
    this.codec = options.codec ?? defaultCodec();
    this.fastCodec = prefixingCodec(this.codec);
    this.encoding = checkEncoding(options.encoding);
    this.pickle = options.pickleCodec ?? defaultPickle();
    this.transferExceptions = options.transferExceptions ?? RPC_SERVER_DEFAULTS.transferExceptions;
    this.cacheSize = options.replyCacheSize ?? RPC_SERVER_DEFAULTS.replyCacheSize;
    this.cacheBytes = options.replyCacheBytes ?? RPC_SERVER_DEFAULTS.replyCacheBytes;
    if (!Number.isInteger(this.cacheSize) || this.cacheSize < 1) {
      throw new InvalidArgumentError(`replyCacheSize must be an integer >= 1, got ${this.cacheSize}`);
    }
    if (typeof this.cacheBytes !== 'number' || !(this.cacheBytes >= 0)) {
      throw new InvalidArgumentError(`replyCacheBytes must be a number >= 0, got ${this.cacheBytes}`);
    }
    this.replyTtl = options.replyTtl ?? null;
    if (this.replyTtl !== null && !(this.replyTtl >= 0 && Number.isFinite(this.replyTtl))) {
      throw new InvalidArgumentError(`replyTtl must be null or a number of ms >= 0, got ${this.replyTtl}`);
    }
    if (options.storage) {
      this.persisted = new PersistedIds(options.storage, options.storageKey ?? RPC_SERVER_DEFAULTS.storageKey, this.cacheSize);
    }
    this.log = options.logger ?? defaultLogger();
    receiveHook.register(REQUEST_PREFIX, this.onRequest);
  }

  /**
   * Expose `obj` under `name`; its methods (own or inherited, not Object's) become callable.
   * Replaces an object registered under the same name.
   * @throws InvalidArgumentError when `name` is not a string or `obj` not an object/function
   */
  registerObject(obj: object, name: string, options: RegisterOptions = {}): void {
    if (typeof name !== 'string') throw new InvalidArgumentError('object name must be a string');
    if ((typeof obj !== 'object' && typeof obj !== 'function') || obj === null) {
      throw new InvalidArgumentError('registerObject() takes an object');
    }
    const kwargs = new Set(options.kwargs ?? []);
    this.objects.set(name, { obj, signals: new Set(options.signals ?? []), kwargs: kwargs.size > 0 ? kwargs : undefined });
  }

  /** Stop exposing the object registered under `name`. Returns whether there was one. */
  unregisterObject(name: string): boolean {
    return this.objects.delete(name);
  }

  /** Names of the registered objects. */
  registeredObjects(): string[] {
    return [...this.objects.keys()];
  }

  /**
   * Stop serving: unregister from the hook, send no further replies, and wait for pending
   * storage writes. Requests still running finish, unanswered.
   */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.receiveHook.unregister(REQUEST_PREFIX, this.onRequest);
    }
    while (this.pendingWrites.size) await Promise.allSettled([...this.pendingWrites]);
  }

  private report(err: unknown, ident: string | undefined): void {
    const e = err instanceof Error ? err : new Error(String(err));
    if (this.listenerCount('error') > 0) this.emit('error', e, ident);
    else this.log.warn(`rpc server: ${ident ? `request from ${ident}: ` : ''}${e.stack ?? e.message}`);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pendingWrites.add(p);
    const drop = (): void => void this.pendingWrites.delete(p);
    p.then(drop, drop);
    return p;
  }

  private readonly onRequest = (_connId: ConnId, ident: string, message: Message): void => {
    if (this.closed) return;
    const own =
      this.fastCodec === undefined || this.encoding === 'pickle'
        ? undefined
        : decodeOwnRequest(this.fastCodec, Message.bodySource(message), Message.bodyStart(message), Message.bodyEnd(message));
    if (own !== undefined) {
      this.accept(ident, own);
      return;
    }
    if (readAsPickle(this.encoding, this.messaging, ident, Message.bodySource(message), Message.bodyStart(message), Message.bodyEnd(message))) {
      this.onPickleRequest(ident, message);
      return;
    }
    let fields: unknown[] | undefined;
    try {
      fields = decodeEnvelope(this.codec, this.fastCodec, message.body, REQUEST_READ_SHAPE);
    } catch (err) {
      this.report(err, ident);
      return;
    }
    const reqId = fields?.[REQ_ID];
    if (fields === undefined || !isReqId(reqId)) {
      this.report(new RpcBadRequestError('request without a 16-byte req_id; dropped'), ident);
      return;
    }
    const command = fields[REQ_COMMAND];
    const object = fields[REQ_OBJECT];
    const method = fields[REQ_METHOD];
    const args = fields[REQ_ARGS];
    const kwargs = fields[REQ_KWARGS];
    const isCall = command === 'call';
    if (
      (command !== 'call' && command !== 'signal') ||
      typeof object !== 'string' ||
      typeof method !== 'string' ||
      !Array.isArray(args) ||
      (kwargs !== undefined && kwargs !== null && !isPlainObject(kwargs))
    ) {
      const err = new RpcBadRequestError('malformed request (command, object, method, args or kwargs)');
      if (isCall) this.sendReply(ident, this.errorReply(reqId, err, true));
      else this.report(err, ident);
      return;
    }
    const kw = isPlainObject(kwargs) && Object.keys(kwargs).length > 0 ? kwargs : undefined;
    this.accept(ident, { command, object, method, args, idSrc: reqId, idAt: 0, kwargs: kw, pickle: false });
  };

  /** A request read as a pickle (a Python snakeMQ client's): answered as one. */
  private onPickleRequest(ident: string, message: Message): void {
    const src = Message.bodySource(message);
    const start = Message.bodyStart(message) + PREFIX_LENGTH;
    const end = Message.bodyEnd(message);
    let r: ReturnType<typeof decodePickleRequest>;
    try {
      r = decodePickleRequest(this.pickle, src, start, end);
    } catch (err) {
      this.report(err, ident);
      // a Python caller waits for ever by default: if the body names its request id, say why
      const reqId = findPickledReqId(src, start, end);
      if (reqId !== undefined && err instanceof RpcDecodeError) {
        const e = new TypeError(`the request could not be read: ${err.message}`);
        this.sendReply(ident, this.errorReply(reqId, e, false, true));
      }
      return;
    }
    if (!r.ok) {
      if (r.reqId !== undefined) this.sendReply(ident, this.errorReply(r.reqId, r.error, true, true));
      else this.report(r.error, ident);
      return;
    }
    const q = r.request;
    // a signal has no request id in snakeMQ: its message's uuid tells repeats apart
    const idSrc = q.reqId ?? Message.uuidSource(message);
    const idAt = q.reqId === undefined ? Message.uuidOffset(message) : 0;
    this.accept(ident, { command: q.command, object: q.object, method: q.method, args: q.args, idSrc, idAt, kwargs: q.kwargs, pickle: true });
  }

  /** A well-formed request: answer a duplicate from the cache, run a new one. */
  private accept(ident: string, req: WireRequest): void {
    const src = req.idSrc;
    const at = req.idAt;
    const isCall = req.command === 'call';
    const id0 = readI32(src, at);
    const id1 = readI32(src, at + 4);
    const id2 = readI32(src, at + 8);
    const id3 = readI32(src, at + 12);
    let table = this.cache.get(ident);
    if (table === undefined) {
      table = new UuidMap<CacheEntry>();
      this.cache.set(ident, table);
    }
    const entry: CacheEntry = { ident, table, id0, id1, id2, id3, done: false, reply: undefined };
    const known = table.add4(id0, id1, id2, id3, entry);
    if (known) {
      // a duplicate: answer from the cache, or let the running one answer
      if (known.done && known.reply && isCall) this.sendReply(ident, known.reply);
      return;
    }
    if (this.persisted && isCall) {
      this.persistedRun(ident, entry, req).catch((err) => {
        // storage failed before the request ran: forget it, so a re-send can try again
        if (!entry.done) this.forget(entry);
        this.report(err, ident);
      });
    } else {
      this.run(ident, entry, req);
    }
  }

  private async persistedRun(ident: string, entry: CacheEntry, req: WireRequest): Promise<void> {
    const store = this.persisted!;
    const idKey = store.idKey(req.idSrc.toString('hex', req.idAt, req.idAt + REQ_ID_LENGTH), ident);
    const rec = await this.track(store.lookup(idKey));
    if (rec?.done) {
      this.finish(entry, rec.reply);
      this.sendReply(ident, rec.reply);
      return;
    }
    if (rec) {
      const reply = this.errorReply(reqIdOf(req), new OutcomeUnknownError(), true, req.pickle);
      this.finish(entry, reply);
      await this.track(store.done(idKey, reply)).catch((err) => this.report(err, ident));
      this.sendReply(ident, reply);
      return;
    }
    await this.track(store.start(idKey));
    const reply = await this.execute(ident, req);
    if (!reply) return;
    this.finish(entry, reply);
    // recorded before it is sent: a re-send after a crash finds the reply, not "started"
    await this.track(store.done(idKey, reply)).catch((err) => this.report(err, ident));
    this.sendReply(ident, reply);
  }

  /**
   * The registered object and method a request names, and whether the method is a signal.
   * @throws UnknownObjectError, UnknownMethodError
   */
  private lookup(req: WireRequest): { obj: object; fn: AnyFunction; signal: boolean; kw: boolean } {
    const reg = this.objects.get(req.object);
    if (!reg) throw new UnknownObjectError(req.object);
    const fn = findMethod(reg.obj, req.method);
    if (!fn) throw new UnknownMethodError(req.object, req.method);
    return { obj: reg.obj, fn, signal: isRpcSignal(fn) || reg.signals.has(req.method), kw: reg.kwargs !== undefined && reg.kwargs.has(req.method) };
  }

  /**
   * Run a request that is not persisted and send its reply. A method returning a value that is
   * not a promise (or thenable) is answered at once; otherwise once it settles.
   */
  private run(ident: string, entry: CacheEntry, req: WireRequest): void {
    let markedSignal = false;
    let result: unknown;
    try {
      const { obj, fn, signal, kw } = this.lookup(req);
      markedSignal = signal;
      result = fn.apply(obj, kw || req.kwargs !== undefined ? callArgs(req, kw) : req.args);
      if (result instanceof Promise) {
        this.runAsync(ident, entry, req, result, markedSignal);
        return;
      }
      if ((typeof result === 'object' && result !== null) || typeof result === 'function') {
        const then = (result as { then?: unknown }).then;
        if (typeof then === 'function') {
          const thenable = result;
          this.runAsync(ident, entry, req, new Promise((res, rej) => void Reflect.apply(then, thenable, [res, rej])), markedSignal);
          return;
        }
      }
    } catch (err) {
      this.answer(ident, entry, this.failureReply(ident, req, err, markedSignal));
      return;
    }
    this.answer(ident, entry, this.successReply(req, result));
  }

  private runAsync(ident: string, entry: CacheEntry, req: WireRequest, pending: Promise<unknown>, markedSignal: boolean): void {
    pending.then(
      (result) => this.answer(ident, entry, this.successReply(req, result)),
      (err: unknown) => this.answer(ident, entry, this.failureReply(ident, req, err, markedSignal)),
    );
  }

  private answer(ident: string, entry: CacheEntry, reply: Buffer | undefined): void {
    try {
      this.finish(entry, reply);
      if (reply) this.sendReply(ident, reply);
    } catch (err) {
      this.report(err, ident);
    }
  }

  /** Run the method; the encoded reply for a call, `undefined` for a signal. Never throws. */
  private async execute(ident: string, req: WireRequest): Promise<Buffer | undefined> {
    let markedSignal = false;
    let result: unknown;
    try {
      const { obj, fn, signal, kw } = this.lookup(req);
      markedSignal = signal;
      result = await fn.apply(obj, kw || req.kwargs !== undefined ? callArgs(req, kw) : req.args);
    } catch (err) {
      return this.failureReply(ident, req, err, markedSignal);
    }
    return this.successReply(req, result);
  }

  /** The reply to a call that returned `result`; `undefined` for a signal. Never throws. */
  private successReply(req: WireRequest, result: unknown): Buffer | undefined {
    if (req.command !== 'call') return undefined;
    if (req.pickle) {
      try {
        return pickleOkReply(this.pickle, REPLY_PREFIX, reqIdOf(req), result);
      } catch (err) {
        return this.errorReply(reqIdOf(req), err, false, true);
      }
    }
    if (this.fastCodec) {
      // the envelope's fixed bytes as a prefix, then the request id written in (the body is a
      // buffer of our own); if the value does not encode, the general path gives the error
      let body: Buffer | undefined;
      try {
        body = this.fastCodec.encodePrefixed(REPLY_OK_PREFIX, result, 1); // a value of the envelope map
      } catch {
        body = undefined;
      }
      if (body !== undefined) {
        copy16(req.idSrc, req.idAt, body, REPLY_ID_AT);
        return body;
      }
    }
    try {
      return encodeEnvelope(this.codec, this.fastCodec, REPLY_PREFIX, REPLY_OK_SHAPE, [reqIdOf(req), true, result]);
    } catch (err) {
      return this.errorReply(reqIdOf(req), err, false);
    }
  }

  /** The reply to a call that threw `err`; `undefined` for a signal (reported instead). Never throws. */
  private failureReply(ident: string, req: WireRequest, err: unknown, markedSignal: boolean): Buffer | undefined {
    if (req.command !== 'call') {
      this.report(err, ident);
      return undefined;
    }
    if (err instanceof UnknownObjectError || err instanceof UnknownMethodError) return this.errorReply(reqIdOf(req), err, true, req.pickle);
    if (this.transferExceptions && !markedSignal) return this.errorReply(reqIdOf(req), err, false, req.pickle);
    this.report(err, ident);
    return this.errorReply(
      reqIdOf(req),
      { name: 'Error', message: 'the remote method failed (exception details are not transferred)', stack: '' },
      false,
      req.pickle,
    );
  }

  private encode(value: unknown): Buffer {
    return encodeBody(this.codec, this.fastCodec, REPLY_PREFIX, value);
  }

  /** The encoded reply of a call that failed with `err`; a pickle (for a Python caller) when `pickle`. */
  private errorReply(reqId: Buffer, err: unknown, rpc: boolean, pickle = false): Buffer {
    const isObj = (typeof err === 'object' && err !== null) || typeof err === 'function';
    // a thrown value may have throwing getters: read each field defensively
    const get = (k: string): unknown => {
      try {
        return isObj ? (err as Record<string, unknown>)[k] : undefined;
      } catch {
        return undefined;
      }
    };
    let fallback: string;
    try {
      fallback = isObj ? 'non-standard exception' : String(err);
    } catch {
      fallback = 'non-standard exception';
    }
    const code = get('code');
    const error: WireError = {
      name: str(get('name'), 'Error'),
      message: str(get('message'), fallback),
      stack: str(get('stack')),
    };
    if (pickle) return pickleErrorReply(this.pickle, REPLY_PREFIX, reqId, error, err);
    if (typeof code === 'string') error.code = code;
    if (rpc) error.rpc = true;
    if (err instanceof UnknownObjectError) error.object = err.objectName;
    if (err instanceof UnknownMethodError) {
      error.object = err.objectName;
      error.method = err.methodName;
    }
    try {
      return this.encode({ req_id: reqId, ok: false, error });
    } catch {
      // cannot happen with string fields; stay safe anyway
      return this.encode({ req_id: reqId, ok: false, error: { name: 'Error', message: 'unencodable error', stack: '' } });
    }
  }

  /** Mark answered, remember the reply, evict the oldest answered entries over the bounds. */
  private finish(entry: CacheEntry, reply: Buffer | undefined): void {
    if (entry.done) return;
    entry.done = true;
    entry.reply = reply;
    const length = reply?.length ?? 0;
    this.cachedBytes += length;
    if (this.doneCount === this.doneOrder.length) this.growDone();
    const ring = this.doneOrder;
    const tables = this.doneTables;
    const ids = this.doneIds;
    const lengths = this.doneLengths;
    const last = ring.length - 1; // a power of two, less one
    let at = (this.doneHead + this.doneCount) & last;
    ring[at] = entry;
    tables[at] = entry.table;
    lengths[at] = length;
    at <<= 2;
    ids[at] = entry.id0;
    ids[at + 1] = entry.id1;
    ids[at + 2] = entry.id2;
    ids[at + 3] = entry.id3;
    this.doneCount++;
    while (this.doneCount > this.cacheSize || (this.cachedBytes > this.cacheBytes && this.doneCount > 0)) {
      const h = this.doneHead;
      const old = ring[h]!;
      const table = tables[h]!;
      ring[h] = undefined;
      tables[h] = undefined;
      this.doneHead = (h + 1) & last;
      this.doneCount--;
      this.cachedBytes -= lengths[h]!;
      const q = h << 2;
      if (table.deleteIf4(ids[q]!, ids[q + 1]!, ids[q + 2]!, ids[q + 3]!, old)) this.dropIfEmpty(old, table);
    }
  }

  /** Double the ring of answered entries, oldest first again. */
  private growDone(): void {
    const n = this.doneOrder.length;
    const ring = new Array<CacheEntry | undefined>(n * 2).fill(undefined);
    const tables = new Array<UuidMap<CacheEntry> | undefined>(n * 2).fill(undefined);
    const ids = new Int32Array(n * 2 * 4);
    const lengths = new Float64Array(n * 2);
    for (let i = 0; i < this.doneCount; i++) {
      const from = (this.doneHead + i) & (n - 1);
      ring[i] = this.doneOrder[from];
      tables[i] = this.doneTables[from];
      lengths[i] = this.doneLengths[from]!;
      ids.set(this.doneIds.subarray(from * 4, from * 4 + 4), i * 4);
    }
    this.doneOrder = ring;
    this.doneTables = tables;
    this.doneIds = ids;
    this.doneLengths = lengths;
    this.doneHead = 0;
  }

  /** Remove an entry from the cache (nothing when it is not there). */
  private forget(entry: CacheEntry): void {
    const { table, id0, id1, id2, id3 } = entry;
    if (table.deleteIf4(id0, id1, id2, id3, entry)) this.dropIfEmpty(entry, table);
  }

  /** Drop `table`, which held `entry`, once it is empty. */
  private dropIfEmpty(entry: CacheEntry, table: UuidMap<CacheEntry>): void {
    if (table.size === 0 && this.cache.get(entry.ident) === table) this.cache.delete(entry.ident);
  }

  private sendReply(ident: string, body: Buffer): void {
    if (this.closed) return;
    // A Message that draws its own uuid lets Messaging skip the duplicate-uuid index.
    queueOn(this.messaging, ident, Message.fresh(body, this.replyTtl), this.replyFailed, ident);
  }

  private readonly replyFailed = (ident: string, err: unknown): void => this.report(err, ident);
}

// ------------------------------------------------------------------------------ client

/** Options of one call. */
export interface CallOptions {
  /**
   * Give up after this many ms with {@link NotConnectedError} (request never sent) or
   * {@link PartialCallError} (sent, no reply). `null` waits forever. Default: the method's
   * `setTimeout()`, else the client's `timeout`.
   */
  timeout?: number | null;
  /** Give up when aborted, with the same two errors (`reason: 'aborted'`, `cause`: the signal's reason). */
  signal?: AbortSignal;
  /**
   * Keyword arguments (a plain object) for a Python method (`f(*args, **kwargs)`); a snakemq
   * server hands them to methods registered to take them. Sent only when given.
   */
  kwargs?: Record<string, unknown>;
}

/** Options of {@link RpcClient.getProxy}. */
export interface ProxyOptions {
  /** The encoding of this proxy's requests (default: the client's `encoding`). */
  encoding?: RpcEncoding;
}

/** Options of {@link RpcClient}. */
export interface RpcClientOptions {
  /** The codec of snakemq peers (default: a shared {@link MsgpackCodec}). Both peers must use the same one. */
  codec?: RpcCodec;
  /**
   * `'auto'` (default): requests to plain snakeMQ 1.6 peers (Python) are pickles, to snakemq
   * peers MessagePack (`codec`); `'msgpack'` / `'pickle'`: always that one (a proxy may force
   * its own). Replies are read in whichever encoding they come in.
   */
  encoding?: RpcEncoding;
  /** The pickle codec (default: a shared {@link PickleCodec}). */
  pickleCodec?: PickleCodec;
  /** Default timeout of regular calls in ms (default `null`: wait forever, like snakeMQ). */
  timeout?: number | null;
  /** See {@link RpcClient.exceptionHandler}. */
  exceptionHandler?: ((err: Error) => unknown) | null;
  logger?: Logger;
}

/** Events of {@link RpcClient}. */
export interface RpcClientEvents {
  /** A reply from `ident` could not be decoded or was malformed; it was dropped. */
  error: [err: Error, ident: string];
}

/** What a call needs to be encoded again (made only for a call to a peer that was not connected). */
interface CallParts {
  method: string;
  args: unknown[];
  kwargs: Record<string, unknown> | undefined;
}

interface PendingCall {
  ident: string;
  /** The remote object's name. */
  object: string;
  /** The request is a pickle. */
  pickle: boolean;
  /**
   * Set when the encoding was guessed (`'auto'`, the peer not connected): the parts to encode
   * the request again with when the peer connects and turns out to want the other encoding.
   */
  redo: CallParts | undefined;
  /**
   * The request id, also the uuid of the first attempt's message: `reqSrc[reqOff..reqOff + 16)`
   * (memory that is never changed), and its four little-endian int32 words.
   */
  reqSrc: Buffer;
  reqOff: number;
  r0: number;
  r1: number;
  r2: number;
  r3: number;
  /** {@link idKey} of the request id: the call's key in `calls`. */
  key: number;
  body: Buffer;
  deadline: number | null;
  /** Uuid of the message of the current attempt; `undefined` for the first one (the request id). */
  msgUuid: Buffer | undefined;
  /** {@link idKey} of `msgUuid`: the call's key in `resent` once it is set. */
  msgKey: number;
  /** A request message of this call was written to the peer (ever). */
  sent: boolean;
  /** The current attempt's message was written to the peer. */
  written: boolean;
  /** The current attempt's message left the queue for good (acknowledged/written). */
  delivered: boolean;
  /**
   * Written on a connection that has since been replaced and not yet acknowledged: Messaging
   * re-sends it, but a restarted peer may acknowledge it as a duplicate without handing it to
   * its RPC server, so once it is acknowledged we send the request again.
   */
  resendWhenDelivered: boolean;
  timer: NodeJS.Timeout | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  resolve: (v: unknown) => void;
  reject: (err: Error) => void;
}

/** Controls of a remote method on a proxy (snakeMQ's `RemoteMethod`). */
export interface RemoteMethodControls<A extends unknown[], R> {
  /**
   * Make calls of this method signals: fire-and-forget messages with this TTL in ms (default
   * 0, snakeMQ's: only if the peer is connected now), resolving with `undefined` once queued.
   * `asSignal(null)` makes them regular calls again. Returns the method.
   */
  asSignal(ttl?: number | null): RemoteMethod<A, R>;
  /** Timeout of regular calls of this method in ms; `null` = the client's default. Returns the method. */
  setTimeout(ms: number | null): RemoteMethod<A, R>;
  /** A function calling this method with per-call options (timeout, AbortSignal). */
  withOptions(options: CallOptions): (...args: A) => Promise<R>;
  /** The signal TTL, or `null` when calls are regular. */
  readonly signalTtl: number | null;
  /** The per-method timeout, or `null`. */
  readonly timeout: number | null;
}

/** A remote method: call it like the method, get a promise. */
export type RemoteMethod<A extends unknown[], R> = ((...args: A) => Promise<R>) & RemoteMethodControls<A, R>;

/**
 * A proxy of a remote object: every method of `T` as a {@link RemoteMethod}. The names
 * `then`, `toJSON`, `toString`, `valueOf` and `constructor` are not forwarded (so `await proxy`
 * does nothing remote); call such methods with {@link RpcClient.call}.
 */
export type RpcProxy<T> = {
  readonly [K in keyof T as K extends string ? (T[K] extends AnyFunction ? K : never) : never]: T[K] extends AnyFunction
    ? RemoteMethod<Parameters<T[K]>, Awaited<ReturnType<T[K]>>>
    : never;
};

const RESERVED = new Set(['then', 'toJSON', 'toString', 'valueOf', 'constructor', '__proto__']);

/** @throws InvalidArgumentError unless `v` is undefined or a plain object */
function checkKwargs(v: unknown): Record<string, unknown> | undefined {
  if (v === undefined) return undefined;
  if (!isPlainObject(v)) throw new InvalidArgumentError('kwargs must be a plain object');
  return v;
}

function checkMs(what: string, v: number | null | undefined, allowNull = true): void {
  if (v === undefined || (v === null && allowNull)) return;
  if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) {
    throw new InvalidArgumentError(`${what} must be ${allowNull ? 'null or ' : ''}a number of ms >= 0, got ${v}`);
  }
}

/**
 * Calls methods of objects registered on {@link RpcServer}s of other peers.
 *
 * @example
 * const client = new RpcClient(new ReceiveHook(messaging));
 * const calc = client.getProxy<{ add(a: number, b: number): number }>('server', 'calc');
 * console.log(await calc.add(1, 2)); // 3
 */
export class RpcClient extends EventEmitter<RpcClientEvents> {
  /** The hook the client listens on. */
  readonly receiveHook: ReceiveHook;
  /**
   * snakeMQ's `exception_handler`: when set, a proxy or `call()` failure that is not a
   * timeout/abort ({@link RpcCallError}) is passed to it instead of rejecting, and the call
   * resolves with whatever it returns (a throw rejects with that).
   */
  exceptionHandler: ((err: Error) => unknown) | null;
  /** Default timeout of regular calls in ms, `null` = none. */
  timeout: number | null;

  private readonly messaging: HookMessaging;
  private readonly codec: RpcCodec;
  private readonly fastCodec: MsgpackCodec | undefined;
  private readonly encoding: RpcEncoding;
  private readonly pickle: PickleCodec;
  /** Peers last seen as plain snakeMQ 1.6 peers (true) or snakemq peers (false); the 1024 last. */
  private readonly lastPlain = new Map<string, boolean>();
  /**
   * Waiting calls by {@link idKey} of their request id (unique among them). The first
   * attempt's message has the request id as its uuid, so this also finds calls by message
   * uuid; later attempts' messages are in `resent` by their uuid's key (unique in there).
   */
  private readonly calls = new Map<number, PendingCall>();
  private readonly resent = new Map<number, PendingCall>();
  private readonly log: Logger;
  private closed = false;
  /** Stops the messaging layer's delivery observer, when it has one (else events are used). */
  private readonly stopObserving: (() => void) | undefined;

  /**
   * Register on `receiveHook` for reply bodies (`rpcrep` prefix) and on its messaging for
   * connects, drops and delivery (through its delivery observer when it has one, else the
   * `message-sent` / `message-delivered` events).
   * @throws InvalidArgumentError for a bad option
   */
  constructor(receiveHook: ReceiveHook, options: RpcClientOptions = {}) {
    super();
    checkMs('timeout', options.timeout);
    this.receiveHook = receiveHook;
    this.messaging = receiveHook.messaging;
    this.codec = options.codec ?? defaultCodec();
    this.fastCodec = prefixingCodec(this.codec);
    this.encoding = checkEncoding(options.encoding);
    this.pickle = options.pickleCodec ?? defaultPickle();
    this.timeout = options.timeout ?? null;
    this.exceptionHandler = options.exceptionHandler ?? null;
    this.log = options.logger ?? defaultLogger();
    receiveHook.register(REPLY_PREFIX, this.onReply);
    this.messaging.on('connect', this.onConnect);
    if (this.messaging.observeDelivery) {
      this.stopObserving = this.messaging.observeDelivery({ sent: this.onSentAt, delivered: this.onDeliveredAt });
    } else {
      this.messaging.on('message-sent', this.onSent);
      this.messaging.on('message-delivered', this.onDelivered);
    }
    this.messaging.on('message-drop', this.onDrop);
  }

  /** Number of regular calls waiting for their reply. */
  get pendingCalls(): number {
    return this.calls.size;
  }

  /**
   * A proxy of the object registered as `name` on peer `remoteIdent`. Methods are created on
   * first access and kept, so `asSignal()`/`setTimeout()` stick to the proxy.
   * @throws InvalidArgumentError for names that are not strings or a bad option
   */
  getProxy<T = Record<string, AnyFunction>>(remoteIdent: string, name: string, options: ProxyOptions = {}): RpcProxy<T> {
    if (typeof remoteIdent !== 'string' || typeof name !== 'string') {
      throw new InvalidArgumentError('getProxy(remoteIdent, name) takes two strings');
    }
    const encoding = options.encoding === undefined ? this.encoding : checkEncoding(options.encoding);
    const methods = new Map<string, RemoteMethod<unknown[], unknown>>();
    const label = `[RpcProxy ${remoteIdent}/${name}]`;
    const target = Object.create(null) as object;
    return new Proxy(target, {
      get: (_t, prop) => {
        if (typeof prop === 'symbol') return prop === Symbol.toStringTag ? 'RpcProxy' : undefined;
        if (RESERVED.has(prop)) return prop === 'toString' ? () => label : undefined;
        let m = methods.get(prop);
        if (!m) {
          m = this.remoteMethod(remoteIdent, name, prop, encoding);
          methods.set(prop, m);
        }
        return m;
      },
      set: () => false,
      defineProperty: () => false,
      deleteProperty: () => false,
    }) as RpcProxy<T>;
  }

  private remoteMethod(ident: string, object: string, method: string, encoding: RpcEncoding): RemoteMethod<unknown[], unknown> {
    let signalTtl: number | null = null;
    let timeout: number | null = null;
    // the start of this method's MessagePack request bodies (made on the first call)
    const fast = encoding === 'pickle' ? undefined : this.fastCodec;
    let head: Buffer | undefined;
    const invoke = (args: unknown[], options: CallOptions): Promise<unknown> => {
      if (signalTtl !== null) return this.withHandler(this.signal(ident, object, method, args, signalTtl, { encoding, kwargs: options.kwargs }));
      const o = { timeout: timeout ?? undefined, ...options };
      if (fast) head ??= requestHead(fast, object, method);
      return this.doCall(ident, object, method, args, o.timeout, o.signal, head, encoding, o.kwargs);
    };
    const fn = ((...args: unknown[]) => {
      if (signalTtl !== null) return this.withHandler(this.signal(ident, object, method, args, signalTtl, { encoding }));
      if (fast) head ??= requestHead(fast, object, method);
      return this.doCall(ident, object, method, args, timeout ?? undefined, undefined, head, encoding);
    }) as RemoteMethod<unknown[], unknown>;
    Object.defineProperties(fn, {
      name: { value: method },
      signalTtl: { get: () => signalTtl, enumerable: true },
      timeout: { get: () => timeout, enumerable: true },
    });
    fn.asSignal = (ttl: number | null = 0) => {
      checkMs('signal ttl', ttl);
      signalTtl = ttl;
      return fn;
    };
    fn.setTimeout = (ms: number | null) => {
      checkMs('timeout', ms);
      timeout = ms;
      return fn;
    };
    fn.withOptions = (options: CallOptions) => (...args: unknown[]) => invoke(args, options);
    return fn;
  }

  /**
   * Call `method` of the object `object` on peer `ident` and resolve with its return value.
   * Waits for the peer to connect; re-sends after a reconnect if the request was delivered
   * but not answered.
   *
   * @throws RemoteError the remote method threw
   * @throws UnknownObjectError / UnknownMethodError nothing of that name on the server
   * @throws OutcomeUnknownError the server crashed while running this request
   * @throws NotConnectedError / PartialCallError timeout or abort, before / after the request was sent
   * @throws RequestDroppedError messaging dropped the request (e.g. larger than the peer accepts)
   * @throws RpcEncodeError an argument the codec cannot carry
   * @throws ClosedError the client was closed
   */
  call(ident: string, object: string, method: string, args: unknown[] = [], options: CallOptions = {}): Promise<unknown> {
    return this.doCall(ident, object, method, args, options.timeout, options.signal, undefined, this.encoding, options.kwargs);
  }

  /**
   * Send a signal: a request that gets no reply, with its own TTL in ms (`null` = until
   * delivered). Resolves once the message is queued; exceptions stay on the server. Its
   * encoding follows the peer when connected, else how the peer was last seen (MessagePack for
   * a peer never seen), unless `options.encoding` forces one.
   *
   * @throws RpcEncodeError an argument the codec cannot carry
   * @throws ClosedError the client was closed
   */
  async signal(
    ident: string,
    object: string,
    method: string,
    args: unknown[] = [],
    ttl: number | null = 0,
    options: { encoding?: RpcEncoding; kwargs?: Record<string, unknown> } = {},
  ): Promise<void> {
    if (this.closed) throw new ClosedError('rpc client');
    checkMs('signal ttl', ttl);
    const pickle = this.pickleFor(ident, options.encoding === undefined ? this.encoding : checkEncoding(options.encoding));
    const body = this.encodeRequest('signal', object, method, args, newUuid(), pickle, checkKwargs(options.kwargs));
    await this.messaging.sendMessage(ident, new Message(body, { ttl }));
  }

  /**
   * Whether a request to `ident` is a pickle under `encoding`: `'auto'` asks Messaging whether
   * the peer is a plain snakeMQ 1.6 peer, or (when it is not connected) how it was last seen.
   */
  private pickleFor(ident: string, encoding: RpcEncoding): boolean {
    if (encoding !== 'auto') return encoding === 'pickle';
    const ext = this.messaging.peerSpeaksExtensions?.(ident);
    return ext === undefined ? this.lastPlain.get(ident) === true : !ext;
  }

  /**
   * Stop: reject waiting calls with `ERR_CLOSED` and detach from the hook and messaging.
   * Queued request messages stay in Messaging.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.receiveHook.unregister(REPLY_PREFIX, this.onReply);
    this.messaging.off('connect', this.onConnect);
    if (this.stopObserving) this.stopObserving();
    else {
      this.messaging.off('message-sent', this.onSent);
      this.messaging.off('message-delivered', this.onDelivered);
    }
    this.messaging.off('message-drop', this.onDrop);
    for (const p of [...this.calls.values()]) this.settle(p, new ClosedError('rpc client'));
  }

  /** A call's promise, rejected with `err` (through the exception handler, like every call failure). */
  private failedCall(err: unknown): Promise<unknown> {
    return this.withHandler(Promise.reject(err));
  }

  private async withHandler<T>(p: Promise<T>): Promise<T | unknown> {
    try {
      return await p;
    } catch (err) {
      const h = this.exceptionHandler;
      if (!h || err instanceof RpcCallError || !(err instanceof Error)) throw err;
      return h(err);
    }
  }

  private encodeRequest(
    command: 'call' | 'signal',
    object: string,
    method: string,
    args: unknown[],
    reqId: Buffer,
    pickle = false,
    kwargs?: Record<string, unknown>,
  ): Buffer {
    if (typeof object !== 'string' || typeof method !== 'string') throw new InvalidArgumentError('object and method must be strings');
    if (!Array.isArray(args)) throw new InvalidArgumentError('args must be an array');
    if (pickle) return pickleRequestBody(this.pickle, REQUEST_PREFIX, command, object, method, args, kwargs, command === 'call' ? reqId : undefined);
    if (kwargs !== undefined) {
      return encodeEnvelope(this.codec, this.fastCodec, REQUEST_PREFIX, REQUEST_READ_SHAPE, [command, object, method, args, reqId, kwargs]);
    }
    return encodeEnvelope(this.codec, this.fastCodec, REQUEST_PREFIX, REQUEST_SHAPE, [command, object, method, args, reqId]);
  }

  private doCall(
    ident: string,
    object: string,
    method: string,
    args: unknown[],
    timeoutOption: number | null | undefined,
    signal: AbortSignal | undefined,
    head: Buffer | undefined,
    encoding: RpcEncoding,
    kwargsOption?: Record<string, unknown>,
  ): Promise<unknown> {
    if (this.closed) return this.failedCall(new ClosedError('rpc client'));
    const timeout = timeoutOption === undefined ? this.timeout : timeoutOption;
    let kwargs: Record<string, unknown> | undefined;
    try {
      if (timeout !== null) checkMs('timeout', timeout);
      if (kwargsOption !== undefined) kwargs = checkKwargs(kwargsOption);
    } catch (err) {
      return this.failedCall(err);
    }
    if (signal?.aborted) return this.failedCall(new NotConnectedError('aborted', ident, signal.reason));
    // the codec pick: forced, or by what Messaging knows of the peer (guessed while it is away)
    let pickle = encoding === 'pickle';
    let guessed = false;
    if (encoding === 'auto') {
      const ext = this.messaging.peerSpeaksExtensions?.(ident);
      if (ext === undefined) {
        guessed = true;
        pickle = this.lastPlain.get(ident) === true;
      } else pickle = !ext;
    }
    let message: Message;
    try {
      message = this.requestMessage(object, method, args, timeout === null ? null : Math.max(1, timeout), pickle ? undefined : head, pickle, kwargs);
    } catch (err) {
      return this.failedCall(err);
    }
    const src = Message.uuidSource(message);
    const off = Message.uuidOffset(message);
    const promise = new Promise(captureExecutor);
    const p: PendingCall = {
      ident,
      object,
      pickle,
      redo: guessed ? { method, args, kwargs } : undefined,
      reqSrc: src,
      reqOff: off,
      r0: readI32(src, off),
      r1: readI32(src, off + 4),
      r2: readI32(src, off + 8),
      r3: readI32(src, off + 12),
      key: idKey(src, off),
      body: message.body,
      deadline: timeout === null ? null : Date.now() + timeout,
      msgUuid: undefined,
      msgKey: 0,
      sent: false,
      written: false,
      delivered: false,
      resendWhenDelivered: false,
      timer: undefined,
      signal,
      onAbort: undefined,
      resolve: executorResolve!,
      reject: executorReject!,
    };
    executorResolve = executorReject = undefined;
    this.calls.set(p.key, p);
    if (timeout !== null) p.timer = setTimeout(() => this.giveUp(p, 'timeout'), timeout);
    if (signal) {
      p.onAbort = () => this.giveUp(p, 'aborted', signal.reason);
      signal.addEventListener('abort', p.onAbort, { once: true });
    }
    this.send(p, message);
    return promise;
  }

  /**
   * The first message of a new call: its uuid is the request id, whose key is not used by
   * another waiting call.
   *
   * With the MessagePack codec, the message draws its own uuid (which spares Messaging its
   * duplicate-uuid check) and the uuid is then written into the body, whose last 16 bytes are
   * the request id (REQUEST_SHAPE ends with it; a 16-byte Buffer is always a bin 8). The body
   * is a buffer of our own that nobody has seen yet.
   */
  private requestMessage(
    object: string,
    method: string,
    args: unknown[],
    ttl: number | null,
    head: Buffer | undefined,
    pickle: boolean,
    kwargs: Record<string, unknown> | undefined,
  ): Message {
    if (this.fastCodec && !pickle && kwargs === undefined) {
      // with the method's head (see requestHead), only the arguments are encoded
      let body = head === undefined || !Array.isArray(args) ? undefined : this.fastCodec.encodeFramed(head, args, REQUEST_TAIL_PLACEHOLDER, 1);
      body ??= this.encodeRequest('call', object, method, args, REQ_ID_PLACEHOLDER);
      const at = body.length - REQ_ID_LENGTH;
      if (body[at - 2] === 0xc4 && body[at - 1] === REQ_ID_LENGTH) {
        for (;;) {
          const message = Message.fresh(body, ttl);
          const src = Message.uuidSource(message);
          const off = Message.uuidOffset(message);
          if (this.calls.has(idKey(src, off))) continue;
          copy16(src, off, body, at);
          return message;
        }
      }
    }
    for (;;) {
      const reqId = newUuid();
      if (this.calls.has(idKey(reqId))) continue;
      return Message.fromTrusted(this.encodeRequest('call', object, method, args, reqId, pickle, kwargs), reqId, ttl, 0);
    }
  }

  /**
   * A call whose encoding was guessed while its peer was away, now that the peer connected
   * and wants the other one: take its request back from the queue (it has not been written)
   * and queue it again encoded right, with the same request id.
   */
  private reencode(p: PendingCall, parts: CallParts, pickle: boolean): void {
    const reqId = Buffer.from(p.reqSrc.subarray(p.reqOff, p.reqOff + REQ_ID_LENGTH));
    if (p.msgUuid !== undefined || this.messaging.cancelMessage?.(p.ident, reqId) !== true) return;
    let body: Buffer;
    try {
      body = this.encodeRequest('call', p.object, parts.method, parts.args, reqId, pickle, parts.kwargs);
    } catch (err) {
      this.settle(p, err);
      return;
    }
    p.pickle = pickle;
    p.body = body;
    const ttl = p.deadline === null ? null : Math.max(1, p.deadline - Date.now());
    this.send(p, Message.fromTrusted(body, reqId, ttl, 0));
  }

  /** Queue the request message of a call again, as a new message. */
  private attempt(p: PendingCall): void {
    const ttl = p.deadline === null ? null : Math.max(1, p.deadline - Date.now());
    this.forgetResent(p);
    let message: Message;
    do message = new Message(p.body, { ttl });
    while (this.resent.has(idKey(message.uuid)));
    p.msgUuid = message.uuid;
    p.msgKey = idKey(p.msgUuid);
    this.resent.set(p.msgKey, p);
    this.send(p, message);
  }

  /** Take a call's current attempt out of `resent` (where only later attempts are). */
  private forgetResent(p: PendingCall): void {
    if (p.msgUuid !== undefined && this.resent.get(p.msgKey) === p) this.resent.delete(p.msgKey);
  }

  /** Queue `message` as the current attempt of `p`. */
  private send(p: PendingCall, message: Message): void {
    p.written = false;
    p.delivered = false;
    p.resendWhenDelivered = false;
    queueOn(this.messaging, p.ident, message, this.sendFailed, p);
  }

  private readonly sendFailed = (p: PendingCall, err: unknown): void => {
    if (this.calls.get(p.key) === p) this.settle(p, err);
  };

  /** The waiting call whose current attempt is the message whose uuid is at `off` of `src`. */
  private byMessage(src: Buffer, off: number): PendingCall | undefined {
    if (this.calls.size === 0) return undefined;
    const key = idKey(src, off);
    const p = this.calls.get(key);
    if (p !== undefined && p.msgUuid === undefined && hasRequestId(p, src, off)) return p;
    if (this.resent.size === 0) return undefined;
    const r = this.resent.get(key);
    return r !== undefined && bytesAt(src, off, r.msgUuid!) ? r : undefined;
  }

  private giveUp(p: PendingCall, reason: CallAbortReason, cause?: unknown, dropped = false): void {
    if (this.calls.get(p.key) !== p) return;
    if (!p.sent && !dropped) {
      // take the request back if Messaging can; if it is already being written, it was sent
      const uuid = p.msgUuid ?? p.reqSrc.subarray(p.reqOff, p.reqOff + REQ_ID_LENGTH);
      const cancelled = this.messaging.cancelMessage?.(p.ident, uuid);
      if (cancelled === false) p.sent = true;
    }
    this.settle(p, p.sent ? new PartialCallError(reason, p.ident, cause) : new NotConnectedError(reason, p.ident, cause));
  }

  private settle(p: PendingCall, err: unknown, value?: unknown): void {
    if (this.calls.get(p.key) !== p) return;
    this.calls.delete(p.key);
    this.forgetResent(p);
    if (p.timer) clearTimeout(p.timer);
    if (p.onAbort) p.signal!.removeEventListener('abort', p.onAbort);
    if (err) this.rejectCall(p, err);
    else p.resolve(value);
  }

  /** Reject a call, or hand the error to {@link exceptionHandler} (as it is at that point) and resolve with its result. */
  private rejectCall(p: PendingCall, err: unknown): void {
    if (err instanceof RpcCallError || !(err instanceof Error)) {
      p.reject(err as Error);
      return;
    }
    // the handler runs a microtask later, as it would behind an `await` of the failed call
    queueMicrotask(() => {
      const h = this.exceptionHandler;
      if (!h) {
        p.reject(err);
        return;
      }
      try {
        p.resolve(h(err));
      } catch (e) {
        p.reject(e as Error);
      }
    });
  }

  private readonly onConnect = (_connId: ConnId, ident: string): void => {
    const ext = this.messaging.peerSpeaksExtensions?.(ident);
    if (ext !== undefined) {
      this.lastPlain.delete(ident);
      this.lastPlain.set(ident, !ext);
      if (this.lastPlain.size > 1024) this.lastPlain.delete(this.lastPlain.keys().next().value!);
    }
    // Requests delivered but unanswered may have been lost with a server that stopped:
    // send them again (the server answers duplicates from its cache).
    for (const p of this.calls.values()) {
      if (p.ident !== ident) continue;
      if (p.redo !== undefined && ext !== undefined) {
        const parts = p.redo;
        p.redo = undefined;
        if (!p.sent && p.pickle === ext) this.reencode(p, parts, !ext);
      }
      if (p.delivered) this.attempt(p);
      else if (p.written) p.resendWhenDelivered = true;
    }
  };

  private readonly onSent = (connId: ConnId, ident: string, uuid: Buffer): void => {
    this.onSentAt(connId, ident, uuid, 0);
  };

  private readonly onDelivered = (ident: string, uuid: Buffer): void => {
    this.onDeliveredAt(ident, uuid, 0);
  };

  private readonly onSentAt = (_connId: ConnId, _ident: string, src: Buffer, off: number): void => {
    const p = this.byMessage(src, off);
    if (p) p.sent = p.written = true;
  };

  private readonly onDeliveredAt = (_ident: string, src: Buffer, off: number): void => {
    const p = this.byMessage(src, off);
    if (!p) return;
    p.sent = p.written = true;
    p.delivered = true;
    if (p.resendWhenDelivered) this.attempt(p);
  };

  private readonly onDrop = (ident: string, uuid: Buffer, reason: DropReason): void => {
    const p = this.byMessage(uuid, 0);
    if (!p) return;
    if (reason === 'ttl') this.giveUp(p, 'timeout', undefined, true);
    else this.settle(p, new RequestDroppedError(ident, reason));
  };

  private readonly onReply = (_connId: ConnId, ident: string, message: Message): void => {
    const fast = this.fastCodec;
    // the body's bytes where they lie (a received body's view is made only if read)
    const src = Message.bodySource(message);
    const start = Message.bodyStart(message);
    const end = Message.bodyEnd(message);
    const valueAt = start + REPLY_OK_PREFIX.length;
    if (
      fast !== undefined &&
      valueAt < end &&
      bytesAt(src, start, REPLY_OK_HEAD) &&
      bytesAt(src, start + REPLY_ID_AT + REQ_ID_LENGTH, REPLY_OK_TAIL)
    ) {
      // a success reply laid out as the codec's own encoder writes it
      let value: unknown;
      let decoded = true;
      try {
        value = fast.decodeRange(src, valueAt, end, 1); // a value of the envelope map
      } catch (err) {
        if (!(err instanceof RpcDecodeError)) throw err;
        decoded = false;
      }
      if (decoded) {
        const p = this.pendingCall(ident, src, start + REPLY_ID_AT);
        if (p) this.settle(p, null, value);
        return;
      }
    }
    // read by what the reply is (a proxy may have forced either encoding on its requests)
    if (readAsPickle('auto', this.messaging, ident, src, start, end)) {
      this.onPickleReply(ident, src, start, end);
      return;
    }
    let rep: unknown[] | undefined;
    try {
      rep = decodeEnvelope(this.codec, this.fastCodec, message.body, REPLY_SHAPE);
    } catch (err) {
      this.report(err as Error, ident);
      return;
    }
    const reqId = rep?.[REP_ID];
    const ok = rep?.[REP_OK];
    if (rep === undefined || !isReqId(reqId) || typeof ok !== 'boolean') {
      this.report(new RpcBadRequestError('malformed RPC reply; dropped'), ident);
      return;
    }
    const p = this.pendingCall(ident, reqId, 0);
    if (!p) return; // late, duplicate, or not ours
    if (ok) {
      this.settle(p, null, rep[REP_RETURN]);
      return;
    }
    this.settle(p, this.remoteError(rep[REP_ERROR]));
  };

  /** A reply read as a pickle (from a Python snakeMQ server). */
  private onPickleReply(ident: string, src: Buffer, start: number, end: number): void {
    let rep: ReturnType<typeof decodePickleReply>;
    let failure: Error | undefined;
    try {
      rep = decodePickleReply(this.pickle, src, start + PREFIX_LENGTH, end);
    } catch (err) {
      rep = undefined;
      failure = err as Error;
    }
    if (rep === undefined) {
      failure ??= new RpcBadRequestError('malformed pickled RPC reply (a Python object we do not read?); dropped');
      this.report(failure, ident);
      // the call it answers, if its id can be found, fails now instead of waiting for ever
      const reqId = findPickledReqId(src, start + PREFIX_LENGTH, end);
      const p = reqId === undefined ? undefined : this.pendingCall(ident, reqId, 0);
      if (p) this.settle(p, failure);
      return;
    }
    const p = this.pendingCall(ident, rep.reqId, 0);
    if (!p) return; // late, duplicate, or not ours
    if (rep.ok) this.settle(p, null, rep.value);
    else this.settle(p, errorFromPython(rep.exception, rep.format, p.object));
  }

  /** The waiting call to `ident` whose request id is at `off` of `src`, or `undefined`. */
  private pendingCall(ident: string, src: Buffer, off: number): PendingCall | undefined {
    const p = this.calls.get(idKey(src, off));
    return p !== undefined && p.ident === ident && hasRequestId(p, src, off) ? p : undefined;
  }

  private remoteError(raw: unknown): Error {
    const e = isPlainObject(raw) ? raw : {};
    const name = str(e.name, 'Error');
    const message = str(e.message);
    const code = typeof e.code === 'string' ? e.code : undefined;
    if (e.rpc === true) {
      switch (code) {
        case 'ERR_RPC_UNKNOWN_OBJECT':
          return new UnknownObjectError(str(e.object));
        case 'ERR_RPC_UNKNOWN_METHOD':
          return new UnknownMethodError(str(e.object), str(e.method));
        case 'ERR_RPC_OUTCOME_UNKNOWN':
          return new OutcomeUnknownError(message || undefined);
        case 'ERR_RPC_BAD_REQUEST':
          return new RpcBadRequestError(message);
      }
    }
    return new RemoteError(name, message, str(e.stack), code);
  }

  private report(err: Error, ident: string): void {
    if (this.listenerCount('error') > 0) this.emit('error', err, ident);
    else this.log.warn(`rpc client: reply from ${ident}: ${err.message}`);
  }
}

