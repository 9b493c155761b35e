/**
 * Every error snakemq raises or reports is a {@link SnakeMQError} with a stable `code` string.
 * Compare `err.code`, not messages: codes never change between versions, messages may.
 *
 * `fault` says whose fault it was (h11's habit): `'remote'` when the peer broke the protocol
 * (the connection to that peer is closed, nothing else is affected), `'local'` when the caller
 * did something wrong.
 *
 * @module
 */

/** Who caused an error: the peer on the other end of a connection, or this process's caller. */
export type ErrorFault = 'remote' | 'local';

/** Base class of every snakemq error. */
export class SnakeMQError extends Error {
  /** Stable machine-readable code, e.g. `'ERR_FRAME_TOO_LARGE'`. */
  readonly code: string;
  /** Whose fault it was. */
  readonly fault: ErrorFault;

  constructor(code: string, message: string, options?: { cause?: unknown; fault?: ErrorFault }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.fault = options?.fault ?? 'local';
  }
}

/** A length prefix announced a packet larger than `maxPacketSize`; refused before allocating. */
export class FrameTooLargeError extends SnakeMQError {
  /** The announced payload length in bytes. */
  readonly length: number;
  /** The limit in force, in bytes. */
  readonly maxPacketSize: number;
  constructor(length: number, maxPacketSize: number) {
    super('ERR_FRAME_TOO_LARGE', `packet of ${length} bytes exceeds maxPacketSize ${maxPacketSize}`, {
      fault: 'remote',
    });
    this.length = length;
    this.maxPacketSize = maxPacketSize;
  }
}

/** A frame from the peer could not be decoded (too short, bad UTF-8 identity, ...). */
export class BadFrameError extends SnakeMQError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_BAD_FRAME', message, { ...options, fault: 'remote' });
  }
}

/** The peer speaks another protocol version (or told us ours is incompatible). */
export class IncompatibleProtocolError extends SnakeMQError {
  constructor(message: string) {
    super('ERR_INCOMPATIBLE_PROTOCOL', message, { fault: 'remote' });
  }
}

/** The peer sent a message (or another frame that needs an identity) before identifying. */
export class NotIdentifiedError extends SnakeMQError {
  constructor(message = 'message frame received before identification') {
    super('ERR_NOT_IDENTIFIED', message, { fault: 'remote' });
  }
}

/** A second connection claimed an identity that is already connected; it was closed. */
export class DuplicateIdentityError extends SnakeMQError {
  readonly ident: string;
  constructor(ident: string) {
    super('ERR_DUPLICATE_IDENTITY', `identity ${JSON.stringify(ident)} is already connected`, {
      fault: 'remote',
    });
    this.ident = ident;
  }
}

/** The peer stayed silent past keepalive interval + wait; the connection was closed. */
export class KeepaliveTimeoutError extends SnakeMQError {
  constructor(ms: number) {
    super('ERR_KEEPALIVE_TIMEOUT', `nothing received for ${ms} ms`, { fault: 'remote' });
  }
}

/** A per-peer queue is at its limit and the policy is `'reject'`. */
export class QueueFullError extends SnakeMQError {
  readonly ident: string;
  readonly limit: number;
  constructor(ident: string, limit: number) {
    super('ERR_QUEUE_FULL', `queue for ${JSON.stringify(ident)} is full (${limit} messages)`);
    this.ident = ident;
    this.limit = limit;
  }
}

/** An argument or option is invalid (wrong type, out of range, sending to oneself, ...). */
export class InvalidArgumentError extends SnakeMQError {
  constructor(message: string, code = 'ERR_INVALID_ARGUMENT') {
    super(code, message);
  }
}

/** The object was closed; the operation cannot run. */
export class ClosedError extends SnakeMQError {
  constructor(what = 'object') {
    super('ERR_CLOSED', `${what} is closed`);
  }
}

/** A wait was cancelled through an `AbortSignal`. */
export class AbortError extends SnakeMQError {
  constructor(options?: { cause?: unknown }) {
    super('ERR_ABORTED', 'operation aborted', options);
  }
}

/** A storage backend failed. `cause` holds the driver's error. */
export class StorageError extends SnakeMQError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STORAGE', message, options);
  }
}

/**
 * The process ran out of file descriptors (`EMFILE`, or the system as a whole: `ENFILE`) when
 * accepting or opening a connection. Reported on the Link's `error` event; the listener keeps
 * listening (the connection it could not take is dropped) and a connector retries as after any
 * failed attempt. Raise the limit (`ulimit -n`, systemd's `LimitNOFILE`) for a process that
 * holds many connections: each one takes a descriptor.
 */
export class TooManyOpenFilesError extends SnakeMQError {
  /** What ran out: `'accept'` (a listener), `'connect'` (a connector) or `'listen'`. */
  readonly syscall: 'accept' | 'connect' | 'listen';
  /** `'EMFILE'` (this process's limit) or `'ENFILE'` (the system's). */
  readonly errno: 'EMFILE' | 'ENFILE';
  constructor(syscall: 'accept' | 'connect' | 'listen', cause: NodeJS.ErrnoException) {
    const errno = cause.code === 'ENFILE' ? 'ENFILE' : 'EMFILE';
    const whose = errno === 'ENFILE' ? "the system's" : "this process's";
    super('ERR_TOO_MANY_OPEN_FILES', `${syscall}: out of file descriptors (${errno}, ${whose} limit); raise it with ulimit -n or systemd's LimitNOFILE`, {
      cause,
    });
    this.syscall = syscall;
    this.errno = errno;
  }
}

/** Whether `err` is a system error for running out of file descriptors (EMFILE, ENFILE). */
export function isOutOfFiles(err: unknown): err is NodeJS.ErrnoException {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'EMFILE' || code === 'ENFILE';
}
