/**
 * Errors of the RPC layer ({@link RpcServer}, {@link RpcClient}, the RPC codec). Each is a
 * {@link SnakeMQError} with a stable `code`.
 *
 * | code | class | raised where |
 * | --- | --- | --- |
 * | `ERR_RPC_REMOTE` | {@link RemoteError} | caller: the remote method threw |
 * | `ERR_RPC_UNKNOWN_OBJECT` | {@link UnknownObjectError} | caller: no object registered under that name |
 * | `ERR_RPC_UNKNOWN_METHOD` | {@link UnknownMethodError} | caller: the object has no such method |
 * | `ERR_RPC_OUTCOME_UNKNOWN` | {@link OutcomeUnknownError} | caller: the server started the request but crashed before answering |
 * | `ERR_RPC_NOT_CONNECTED` | {@link NotConnectedError} | caller: timeout/abort before the request was ever sent |
 * | `ERR_RPC_PARTIAL_CALL` | {@link PartialCallError} | caller: timeout/abort after the request was sent, before the reply |
 * | `ERR_RPC_REQUEST_DROPPED` | {@link RequestDroppedError} | caller: messaging dropped the request (too large, queue full) |
 * | `ERR_RPC_ENCODE` | {@link RpcEncodeError} | a value the codec cannot carry (local) |
 * | `ERR_RPC_DECODE` | {@link RpcDecodeError} | bytes from the peer that do not decode (remote) |
 * | `ERR_RPC_BAD_REQUEST` | {@link RpcBadRequestError} | a decoded body that is not a request/reply (remote) |
 *
 * @module
 */
import { SnakeMQError } from './errors.js';

/** Why a call gave up waiting. */
export type CallAbortReason = 'timeout' | 'aborted';

/**
 * The remote method threw. `remoteName`, `remoteMessage`, `remoteStack` (snakeMQ's
 * `__remote_traceback__`) and `remoteCode` describe the remote error; `stack` is the caller's.
 */
export class RemoteError extends SnakeMQError {
  /** `name` of the remote error, e.g. `'TypeError'`. */
  readonly remoteName: string;
  /** `message` of the remote error. */
  readonly remoteMessage: string;
  /** The remote stack trace as text (`''` when the server did not send it). */
  readonly remoteStack: string;
  /** The remote error's `code` property when it was a string, else `undefined`. */
  readonly remoteCode: string | undefined;
  /**
   * A Python exception's `args` (from a Python snakeMQ peer, e.g. `['bad value', 42]` for
   * `ValueError('bad value', 42)`); `undefined` from snakemq peers.
   */
  readonly remoteArgs: readonly unknown[] | undefined;
  /** A Python exception's module, e.g. `'builtins'` or `'myservice'`; `undefined` from snakemq peers. */
  readonly remoteModule: string | undefined;

  constructor(
    remoteName: string,
    remoteMessage: string,
    remoteStack: string,
    remoteCode?: string,
    python?: { args: readonly unknown[]; module: string },
  ) {
    super('ERR_RPC_REMOTE', `${remoteName}: ${remoteMessage}`, { fault: 'remote' });
    this.remoteName = remoteName;
    this.remoteMessage = remoteMessage;
    this.remoteStack = remoteStack;
    this.remoteCode = remoteCode;
    this.remoteArgs = python?.args;
    this.remoteModule = python?.module;
  }
}

/** The server has no object registered under the requested name. */
export class UnknownObjectError extends SnakeMQError {
  /** The requested object name. */
  readonly objectName: string;
  constructor(objectName: string) {
    super('ERR_RPC_UNKNOWN_OBJECT', `no RPC object registered as ${JSON.stringify(objectName)}`);
    this.objectName = objectName;
  }
}

/** The registered object has no callable method of the requested name. */
export class UnknownMethodError extends SnakeMQError {
  /** The object name. */
  readonly objectName: string;
  /** The requested method name. */
  readonly methodName: string;
  constructor(objectName: string, methodName: string) {
    super('ERR_RPC_UNKNOWN_METHOD', `RPC object ${JSON.stringify(objectName)} has no method ${JSON.stringify(methodName)}`);
    this.objectName = objectName;
    this.methodName = methodName;
  }
}

/**
 * The server had started this request (it persisted the request id) but stopped before it
 * recorded a reply: the method may or may not have run, in whole or in part.
 */
export class OutcomeUnknownError extends SnakeMQError {
  constructor(message = 'the server started this request but stopped before answering; it may or may not have run') {
    super('ERR_RPC_OUTCOME_UNKNOWN', message, { fault: 'remote' });
  }
}

/** Base of the errors of a call that gave up waiting (snakeMQ's `CallError`). */
export class RpcCallError extends SnakeMQError {
  /** `'timeout'` or `'aborted'` (then `cause` holds the signal's reason). */
  readonly reason: CallAbortReason;
  /** Destination identity. */
  readonly ident: string;
  constructor(code: string, message: string, reason: CallAbortReason, ident: string, cause?: unknown) {
    super(code, message, { cause });
    this.reason = reason;
    this.ident = ident;
  }
}

/**
 * The call timed out (or was aborted) before its request was ever written to the peer: it
 * certainly did not run there. snakeMQ's `NotConnected`.
 */
export class NotConnectedError extends RpcCallError {
  constructor(reason: CallAbortReason, ident: string, cause?: unknown) {
    super(
      'ERR_RPC_NOT_CONNECTED',
      `${reason === 'timeout' ? 'timed out' : 'aborted'} before the request reached ${JSON.stringify(ident)}`,
      reason,
      ident,
      cause,
    );
  }
}

/**
 * The call timed out (or was aborted) after its request was sent but before a reply came: it
 * may have run. snakeMQ's `PartialCall`.
 */
export class PartialCallError extends RpcCallError {
  constructor(reason: CallAbortReason, ident: string, cause?: unknown) {
    super(
      'ERR_RPC_PARTIAL_CALL',
      `${reason === 'timeout' ? 'timed out' : 'aborted'} waiting for the reply of ${JSON.stringify(ident)}; the request was sent`,
      reason,
      ident,
      cause,
    );
  }
}

/** Messaging dropped the request message (`too-large`, or `queue-full` under `drop-oldest`). */
export class RequestDroppedError extends SnakeMQError {
  /** The messaging drop reason. */
  readonly reason: string;
  constructor(ident: string, reason: string) {
    super('ERR_RPC_REQUEST_DROPPED', `the request to ${JSON.stringify(ident)} was dropped by messaging (${reason})`);
    this.reason = reason;
  }
}

/** A value cannot be encoded by the RPC codec (unsupported type, nested too deep, a cycle). */
export class RpcEncodeError extends SnakeMQError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_RPC_ENCODE', message, options);
  }
}

/** Bytes received from a peer are not a valid encoding (malformed, forbidden type, too deep). */
export class RpcDecodeError extends SnakeMQError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_RPC_DECODE', message, { ...options, fault: 'remote' });
  }
}

/** A decoded RPC body is not a well-formed request or reply. */
export class RpcBadRequestError extends SnakeMQError {
  constructor(message: string) {
    super('ERR_RPC_BAD_REQUEST', message, { fault: 'remote' });
  }
}
