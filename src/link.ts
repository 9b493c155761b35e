/**
 * Link: the socket layer. Any number of listeners and connectors; once connected there is no
 * difference between the sides. Connectors reconnect on their own. Link knows sockets and
 * connection ids, nothing of frames.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { closeSync, openSync } from 'node:fs';
import * as net from 'node:net';
import { devNull } from 'node:os';
import * as tls from 'node:tls';
import { type Clock, type TimerHandle, systemClock } from './clock.js';
import { Emitter } from './emitter.js';
import { ClosedError, InvalidArgumentError, SnakeMQError, TooManyOpenFilesError, isOutOfFiles } from './errors.js';
import { type Logger, defaultLogger } from './logger.js';

/** Connection id: unique within one Link for its lifetime. */
export type ConnId = string;

/** TLS settings of a listener or connector. Certificates are verified by default. */
export interface TlsConfig {
  /** Private key (PEM). */
  key?: string | Buffer;
  /** Certificate chain (PEM). */
  cert?: string | Buffer;
  /** Trusted CA certificates (PEM); Node's default roots when omitted. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Listener only: ask the connecting peer for a certificate and refuse it without a valid one. */
  requirePeerCert?: boolean;
  /**
   * Verify the peer's certificate against `ca` (default `true`). Set `false` only when you
   * really mean to accept any peer.
   */
  rejectUnauthorized?: boolean;
  /** Connector only: the server name to verify (SNI); defaults to the host. */
  servername?: string;
}

/** Where a listener listens. */
export interface ListenerOptions {
  /** Interface to bind; default `'127.0.0.1'`. */
  host?: string;
  /** Port; `0` picks a free one (read it back from the resolved {@link ListenerInfo}). */
  port: number;
  /** Serve TLS instead of plain TCP. */
  tls?: TlsConfig;
}

/** A listener that is listening. */
export interface ListenerInfo {
  /** Id to pass to {@link Link.removeListener}. */
  id: string;
  /** The bound address. */
  host: string;
  /** The bound port (the real one, also when 0 was asked). */
  port: number;
}

/** Defaults of {@link ConnectorOptions}, in milliseconds. */
export const DEFAULT_RECONNECT_INTERVAL = 1000;
export const DEFAULT_RECONNECT_MAX_INTERVAL = 30_000;
export const DEFAULT_RECONNECT_AFTER_LOSS_INTERVAL = 100;
export const DEFAULT_CONNECT_TIMEOUT = 10_000;

/** Where and how a connector connects. */
export interface ConnectorOptions {
  host: string;
  port: number;
  /** Connect with TLS. */
  tls?: TlsConfig;
  /** First wait before reconnecting after a failed attempt (refused, timed out), ms (default 1000). */
  reconnectInterval?: number;
  /** The wait doubles after each further failed attempt up to this, ms (default 30000). */
  reconnectMaxInterval?: number;
  /**
   * Wait before reconnecting after a connection that was up is lost, ms (default 100): a
   * dropped link comes back at once. When connections keep being lost less than
   * `reconnectInterval` after they were made (a peer that accepts and hangs up, a flaky
   * link), each such loss doubles this wait, up to `reconnectInterval`; a connection that
   * stayed up that long starts the count again.
   */
  reconnectAfterLossInterval?: number;
  /** Each wait is varied by up to ± this fraction at random (default 0.2). */
  reconnectJitter?: number;
  /** Give up one connection attempt after this long, ms (default 10000). */
  connectTimeout?: number;
}

/** What is known about an established connection. */
export interface ConnectionInfo {
  connId: ConnId;
  /** `'listener'` when accepted by one of our listeners, `'connector'` when we connected. */
  side: 'listener' | 'connector';
  /** Id of the listener or connector it belongs to. */
  ownerId: string;
  remoteAddress: string;
  remotePort: number;
  localAddress: string;
  localPort: number;
  tls: boolean;
}

/** The face shared by {@link Link} and {@link Throttle}: what the Packeter talks to. */
export type TransportEvents = {
  /** A connection is established (for TLS: after the handshake). */
  connect: [connId: ConnId, info: ConnectionInfo];
  /** A connection is gone; `reason` says why when it was not a clean close. */
  disconnect: [connId: ConnId, reason: Error | undefined];
  /** Bytes arrived. */
  recv: [connId: ConnId, data: Buffer];
  /** A connection whose `send()` returned `false` can take data again. */
  drain: [connId: ConnId];
  /** Something went wrong that is not tied to a call (a listener failed, a connect attempt failed). */
  error: [err: Error, connId: ConnId | undefined];
};

type Handler<A extends unknown[]> = (...args: A) => void;

/** The lower-layer interface the Packeter uses. */
export interface Transport {
  on<K extends keyof TransportEvents>(event: K, handler: Handler<TransportEvents[K]>): unknown;
  off<K extends keyof TransportEvents>(event: K, handler: Handler<TransportEvents[K]>): unknown;
  /**
   * Queue `data` (one buffer, or several written back to back) for writing on a connection. `cb` runs once the data was handed to the
   * kernel, or with an error when the connection died first. Returns `false` when the
   * connection's write buffer is above its high-water mark: wait for `drain`.
   */
  send(connId: ConnId, data: Buffer | Buffer[], cb?: (err?: Error | null) => void): boolean;
  /** Close one connection (a `disconnect` event follows). */
  closeConnection(connId: ConnId, reason?: Error): void;
  /** Bytes queued for writing on a connection and not yet handed to the kernel. */
  bufferedAmount(connId: ConnId): number;
  /**
   * Optional: let the consumer choose where a connection's incoming bytes are read to.
   * `provider` is called before each read of that connection. When it returns a buffer, the
   * transport may read at most that many bytes straight into it; bytes read there are handed
   * over as a view of that memory (starting where the returned buffer starts) in the next
   * `recv` of the connection, before `provider` is called again. When it returns `null` the
   * transport reads into memory of its own. `null` as `provider` stops asking.
   *
   * A transport may ignore the provider (the Link does for TLS connections); consumers must
   * decode correctly either way.
   */
  setReadTarget?(connId: ConnId, provider: ReadTargetProvider | null): void;
}

/** See {@link Transport.setReadTarget}. */
export type ReadTargetProvider = () => Buffer | null;

/** Options of a {@link Link}. */
export interface LinkOptions {
  clock?: Clock;
  logger?: Logger;
  /** Source of randomness for reconnect jitter (tests inject one). */
  random?: () => number;
}

interface Conn {
  id: ConnId;
  socket: net.Socket;
  info: ConnectionInfo;
  reason?: Error;
  /** Reads of a plain TCP connection; TLS connections are read through `'data'` events. */
  reader?: DirectReader;
}

/** Largest read buffer of the Link's own for plain TCP connections: 64 KiB, like Node's. */
export const READ_CHUNK_SIZE = 64 * 1024;
/** Smallest one: 4 KiB. */
export const MIN_READ_CHUNK_SIZE = 4 * 1024;

/** {@link SharedReadBuffer} shrinks after this many reads in a row that a smaller one would hold. */
const SHRINK_AFTER_READS = 64;

/**
 * The read buffer that all plain TCP connections of one Link read into, one read at a time,
 * so that an idle connection holds no read buffer of its own. Node asks for a connection's
 * next read buffer as soon as a read is done, so every idle connection points at this one:
 * bytes read into it are copied out before the next read can start, except that a read that
 * fills it is handed over as it is when no other connection points at it (a Link with one
 * busy connection copies nothing, as Node's own reads do not). Made at the first read; it
 * follows the traffic, twice the largest recent read rounded up to a power of two, between 4
 * and 64 KiB.
 */
class SharedReadBuffer {
  private buf: Buffer | null = null;
  private size = MIN_READ_CHUNK_SIZE;
  /** Reads in a row that would have fitted a smaller buffer. */
  private smallReads = 0;
  /** Number of the buffer now in `buf` (a new one gets the next), and how many readers point at it. */
  gen = 0;
  holders = 0;

  /** The buffer for a reader's next read; the reader now points at buffer number {@link gen}. */
  get(): Buffer {
    let buf = this.buf;
    if (buf === null || buf.length !== this.size) {
      buf = this.buf = Buffer.allocUnsafeSlow(this.size);
      this.gen++;
      this.holders = 0;
    }
    this.holders++;
    return buf;
  }

  /**
   * `n` bytes were read into `buf` by a reader that pointed at buffer number `gen`; returns
   * them as memory of their own.
   */
  take(buf: Buffer, n: number, gen: number): Buffer {
    if (gen === this.gen) this.holders--;
    let data: Buffer;
    if (n === buf.length && buf === this.buf && this.holders === 0) {
      data = buf;
      this.buf = null;
    } else {
      data = Buffer.allocUnsafeSlow(n);
      buf.copy(data, 0, 0, n);
    }
    let size = MIN_READ_CHUNK_SIZE;
    if (n === buf.length) size = READ_CHUNK_SIZE;
    else while (size < 2 * n && size < READ_CHUNK_SIZE) size *= 2;
    // grow at once, shrink only after many small reads in a row (it serves many connections)
    if (size >= this.size) {
      this.size = size;
      this.smallReads = 0;
    } else if (++this.smallReads >= SHRINK_AFTER_READS) {
      this.size = size;
      this.smallReads = 0;
    }
    return data;
  }
}

/**
 * Reads one plain TCP socket through Node's `onread`: into the buffer the consumer's
 * {@link ReadTargetProvider} offers (so the kernel writes a large payload straight into the
 * memory it is delivered in), else into the Link's {@link SharedReadBuffer}.
 *
 * As with Node's own reads, delivered bytes never share memory with anything else.
 */
class DirectReader {
  provider: ReadTargetProvider | null = null;
  /** Where read bytes go once the connection is registered. */
  sink: ((data: Buffer) => void) | null = null;
  /** Called when `sink` or `provider` throws, before the error goes on. */
  onThrow: ((err: unknown) => void) | null = null;
  private readonly shared: SharedReadBuffer;
  /** Number of the shared buffer last handed to Node; -1 when it was the provider's. */
  private gen = -1;

  constructor(shared: SharedReadBuffer) {
    this.shared = shared;
  }

  /** Node's `onread.buffer`: the memory for the next read. */
  readonly buffer = (): Buffer => {
    let target: Buffer | null = null;
    if (this.provider !== null) {
      try {
        target = this.provider();
      } catch (err) {
        this.onThrow?.(err); // as in `callback`: Node would read on into memory handed over
        throw err;
      }
    }
    if (target !== null && target.length > 0) {
      this.gen = -1;
      return target;
    }
    const buf = this.shared.get();
    this.gen = this.shared.gen;
    return buf;
  };

  /** Node's `onread.callback`: `n` bytes were read to the start of `buf`; `true` reads on. */
  readonly callback = (n: number, read: Uint8Array): boolean => {
    // Only Buffers are handed to Node here: the provider's, or the shared one.
    const buf = read as Buffer;
    // The claim on the shared buffer ends here, before a sink can throw: a throw means Node asks
    // no next buffer (which would claim again), and release() must not count this one twice.
    const gen = this.gen;
    this.gen = -1;
    const data = gen < 0 ? (n === buf.length ? buf : buf.subarray(0, n)) : this.shared.take(buf, n, gen);
    if (this.sink !== null) {
      try {
        this.sink(data);
      } catch (err) {
        // Node would read on into the memory just handed over (it asks for the next buffer only
        // after we return), and where the stream stands is unknown: end the connection.
        this.onThrow?.(err);
        throw err;
      }
    }
    return true;
  };

  /** The socket is gone: it points at no shared buffer any more. */
  readonly release = (): void => {
    if (this.gen >= 0 && this.gen === this.shared.gen) this.shared.holders--;
    this.gen = -1;
  };

  /** Options for `net.connect()` / `new net.Socket()`. */
  get onread(): net.OnReadOpts {
    return { buffer: this.buffer, callback: this.callback };
  }
}

/**
 * An accepted socket (created paused, see `pauseOnConnect`) moved onto a new `net.Socket`
 * that reads through `reader`: Node's server has no `onread` option of its own. Falls back
 * to the accepted socket itself (read through `'data'` events) if its handle is not there.
 * The server no longer counts the connection (`getConnections()`, `maxConnections`), which
 * the Link uses neither of; it closes accepted connections itself.
 */
function adoptAccepted(accepted: net.Socket, reader: DirectReader): net.Socket {
  const internal = accepted as unknown as { _handle: object | null };
  const handle = internal._handle;
  if (handle === null || typeof handle !== 'object') {
    accepted.resume();
    return accepted;
  }
  internal._handle = null; // so that destroying the husk leaves the handle open
  accepted.destroy();
  return new net.Socket({ handle, readable: true, writable: true, onread: reader.onread } as net.SocketConstructorOpts);
}

interface Listener {
  id: string;
  server: net.Server;
  sockets: Set<net.Socket>;
}

interface Connector {
  id: string;
  opts: Required<Omit<ConnectorOptions, 'tls'>> & { tls?: TlsConfig };
  /** Failed attempts since the last connection was made. */
  attempt: number;
  /** Connections in a row lost less than `reconnectInterval` after they were made. */
  shortLosses: number;
  /** When the current connection was made (clock time). */
  upSince: number;
  timer?: TimerHandle;
  socket?: net.Socket;
  connId?: ConnId;
}

/**
 * @internal A connector's wait before its next attempt, ms, before jitter. After a failed
 * attempt (`failedAttempts` of them in a row, counting that one from 0): `reconnectInterval`
 * doubled per earlier failure, up to `reconnectMaxInterval`. After a connection that was up is
 * lost (`failedAttempts` undefined): `reconnectAfterLossInterval`, doubled for each earlier
 * short-lived connection in a row (`shortLosses` counts this loss too when it was short), up to
 * `reconnectInterval`. So losing a link costs a short wait, a peer that keeps hanging up is
 * retried no faster than once per `reconnectInterval`, and only failed attempts back off further.
 */
export function reconnectWait(
  o: Pick<Required<ConnectorOptions>, 'reconnectInterval' | 'reconnectMaxInterval' | 'reconnectAfterLossInterval'>,
  failedAttempts: number | undefined,
  shortLosses: number,
): number {
  if (failedAttempts === undefined) {
    const doublings = Math.min(Math.max(0, shortLosses - 1), 30);
    return Math.min(o.reconnectInterval, o.reconnectAfterLossInterval * 2 ** doublings);
  }
  return Math.min(o.reconnectMaxInterval, o.reconnectInterval * 2 ** Math.min(failedAttempts, 30));
}

/** Error for a failed connection attempt (reported on `error`, then retried). */
export class ConnectError extends SnakeMQError {
  constructor(host: string, port: number, cause: unknown) {
    super('ERR_CONNECT', `cannot connect to ${host}:${port}: ${(cause as Error)?.message ?? cause}`, {
      cause,
      fault: 'remote',
    });
  }
}

function positive(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new InvalidArgumentError(`${name} must be a non-negative number of milliseconds, got ${v}`);
  }
  return v;
}

/**
 * Listeners and connectors over TCP or TLS. Emits {@link TransportEvents}.
 *
 * @example
 * const link = new Link();
 * const { port } = await link.addListener({ port: 0 });
 * link.on('recv', (connId, data) => console.log(connId, data));
 */
export class Link extends Emitter<TransportEvents> implements Transport {
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly random: () => number;
  private readonly conns = new Map<ConnId, Conn>();
  private readonly listeners_ = new Map<string, Listener>();
  private readonly connectors = new Map<string, Connector>();
  private readonly readBuffer = new SharedReadBuffer();
  /** The process was found out of file descriptors after an accept (reset when a connection closes). */
  private outOfFiles = false;
  private nextId = 1;
  private closed = false;

  constructor(options: LinkOptions = {}) {
    super();
    this.clock = options.clock ?? systemClock;
    this.log = options.logger ?? defaultLogger();
    this.random = options.random ?? Math.random;
  }

  /**
   * Start listening. Resolves with the bound address once listening.
   * @throws InvalidArgumentError for a bad port; rejects with the bind error (e.g. EADDRINUSE), or
   *   TooManyOpenFilesError when the process is out of file descriptors.
   */
  async addListener(options: ListenerOptions): Promise<ListenerInfo> {
    if (this.closed) throw new ClosedError('link');
    const host = options.host ?? '127.0.0.1';
    if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
      throw new InvalidArgumentError(`port must be an integer 0..65535, got ${options.port}`);
    }
    const id = `l${this.nextId++}`;
    const sockets = new Set<net.Socket>();
    let server: net.Server;
    if (options.tls) {
      const t = options.tls;
      server = tls.createServer({
        key: t.key,
        cert: t.cert,
        ca: t.ca,
        requestCert: t.requirePeerCert ?? false,
        rejectUnauthorized: t.rejectUnauthorized ?? true,
      });
      server.on('secureConnection', (s: tls.TLSSocket) => this.accept(id, s, sockets, true));
      server.on('tlsClientError', (err, s) => {
        this.log.debug(`listener ${id}: TLS handshake refused: ${err.message}`);
        s.destroy();
      });
      // Track raw sockets too, so close() can destroy those still in the handshake.
      server.on('connection', (s: net.Socket) => {
        this.checkFiles();
        sockets.add(s);
        s.once('close', () => sockets.delete(s));
      });
    } else {
      server = net.createServer({ pauseOnConnect: true }, (accepted) => {
        this.checkFiles();
        const reader = new DirectReader(this.readBuffer);
        const s = adoptAccepted(accepted, reader);
        if (s !== accepted) s.once('close', reader.release);
        this.accept(id, s, sockets, false, s === accepted ? undefined : reader);
      });
    }
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error): void => reject(isOutOfFiles(err) ? new TooManyOpenFilesError('listen', err) : err);
      server.once('error', fail);
      server.listen(options.port, host, () => {
        server.off('error', fail);
        resolve();
      });
    });
    // Errors of a listening server are accept errors; it goes on listening. Out of file
    // descriptors, the connection it could not take is dropped (by libuv) and reported typed.
    server.on('error', (err) => this.emitError(isOutOfFiles(err) ? new TooManyOpenFilesError('accept', err) : err, undefined));
    const addr = server.address() as net.AddressInfo;
    this.listeners_.set(id, { id, server, sockets });
    if (this.closed) {
      server.close();
      throw new ClosedError('link');
    }
    this.log.debug(`listener ${id} on ${addr.address}:${addr.port}`);
    return { id, host: addr.address, port: addr.port };
  }

  /** Stop a listener and close the connections it accepted. Resolves when it is closed. */
  async removeListener(id: string): Promise<void> {
    const l = this.listeners_.get(id);
    if (!l) return;
    this.listeners_.delete(id);
    const done = new Promise<void>((resolve) => l.server.close(() => resolve()));
    for (const s of l.sockets) s.destroy();
    for (const c of [...this.conns.values()]) {
      if (c.info.side === 'listener' && c.info.ownerId === id) c.socket.destroy();
    }
    await done;
  }

  /**
   * Start a connector: it connects now and reconnects after every refusal or loss until
   * removed. Returns its id.
   */
  addConnector(options: ConnectorOptions): string {
    if (this.closed) throw new ClosedError('link');
    if (typeof options.host !== 'string' || !options.host) {
      throw new InvalidArgumentError('connector host must be a non-empty string');
    }
    if (!Number.isInteger(options.port) || options.port <= 0 || options.port > 65535) {
      throw new InvalidArgumentError(`connector port must be an integer 1..65535, got ${options.port}`);
    }
    const id = `k${this.nextId++}`;
    const c: Connector = {
      id,
      attempt: 0,
      shortLosses: 0,
      upSince: 0,
      opts: {
        host: options.host,
        port: options.port,
        tls: options.tls,
        reconnectInterval: positive('reconnectInterval', options.reconnectInterval, DEFAULT_RECONNECT_INTERVAL),
        reconnectMaxInterval: positive(
          'reconnectMaxInterval',
          options.reconnectMaxInterval,
          DEFAULT_RECONNECT_MAX_INTERVAL,
        ),
        reconnectAfterLossInterval: positive(
          'reconnectAfterLossInterval',
          options.reconnectAfterLossInterval,
          DEFAULT_RECONNECT_AFTER_LOSS_INTERVAL,
        ),
        reconnectJitter: Math.min(1, positive('reconnectJitter', options.reconnectJitter, 0.2)),
        connectTimeout: positive('connectTimeout', options.connectTimeout, DEFAULT_CONNECT_TIMEOUT),
      },
    };
    this.connectors.set(id, c);
    this.dial(c);
    return id;
  }

  /** Stop a connector: no more reconnects, and its connection (if any) is closed. */
  removeConnector(id: string): void {
    const c = this.connectors.get(id);
    if (!c) return;
    this.connectors.delete(id);
    if (c.timer) this.clock.clearTimeout(c.timer);
    c.socket?.destroy();
  }

  /** Ids of the established connections. */
  connectionIds(): ConnId[] {
    return [...this.conns.keys()];
  }

  /** What is known about an established connection, or `undefined`. */
  connectionInfo(connId: ConnId): ConnectionInfo | undefined {
    return this.conns.get(connId)?.info;
  }

  /**
   * The peer's certificate of a TLS connection (Node's `getPeerCertificate()` object, like
   * snakeMQ's `getpeercert()`), or `null` for plain TCP, unknown ids, or no certificate.
   */
  getPeerCertificate(connId: ConnId): tls.PeerCertificate | null {
    const c = this.conns.get(connId);
    if (!c || !(c.socket instanceof tls.TLSSocket)) return null;
    const cert = c.socket.getPeerCertificate();
    return cert && Object.keys(cert).length > 0 ? cert : null;
  }

  send(connId: ConnId, data: Buffer | Buffer[], cb?: (err?: Error | null) => void): boolean {
    const c = this.conns.get(connId);
    if (!c || c.socket.destroyed) {
      if (cb) queueMicrotask(() => cb(new ClosedError(`connection ${connId}`)));
      return false;
    }
    if (!Array.isArray(data)) return c.socket.write(data, cb);
    // Several buffers: cork so Node hands them to the kernel in one writev.
    if (data.length === 0) {
      if (cb) queueMicrotask(() => cb(null));
      return !c.socket.writableNeedDrain;
    }
    const s = c.socket;
    s.cork();
    let ok = true;
    for (let i = 0; i < data.length; i++) ok = s.write(data[i], i === data.length - 1 ? cb : undefined);
    s.uncork();
    return ok;
  }

  bufferedAmount(connId: ConnId): number {
    return this.conns.get(connId)?.socket.writableLength ?? 0;
  }

  /** See {@link Transport.setReadTarget}; plain TCP connections use the provider, TLS ones do not. */
  setReadTarget(connId: ConnId, provider: ReadTargetProvider | null): void {
    const reader = this.conns.get(connId)?.reader;
    if (reader) reader.provider = provider;
  }

  closeConnection(connId: ConnId, reason?: Error): void {
    const c = this.conns.get(connId);
    if (!c) return;
    if (reason && !c.reason) c.reason = reason;
    // Give written data a chance to leave (e.g. an incompatible-protocol frame), then force.
    c.socket.end();
    const t = this.clock.setTimeout(() => c.socket.destroy(), 1000);
    c.socket.once('close', () => this.clock.clearTimeout(t));
  }

  /**
   * Close every listener, connector and connection and cancel every timer. Resolves once the
   * listeners are closed; nothing of this Link keeps the process alive afterwards.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const id of [...this.connectors.keys()]) this.removeConnector(id);
    const waits = [...this.listeners_.keys()].map((id) => this.removeListener(id));
    for (const c of [...this.conns.values()]) c.socket.destroy();
    await Promise.all(waits);
  }

  /**
   * After a connection was accepted: whether the process has a file descriptor left. libuv
   * drops (accepts and closes at once) the connections it has no descriptor for and tells
   * Node nothing, so the accept that takes the last one is where a listener learns it is full:
   * reported as {@link TooManyOpenFilesError} (`'accept'`), once until a connection closes.
   * The probe opens and closes the null device (two system calls).
   */
  private checkFiles(): void {
    if (this.outOfFiles) return;
    let fd: number;
    try {
      fd = openSync(devNull, 'r');
    } catch (err) {
      if (!isOutOfFiles(err)) return;
      this.outOfFiles = true;
      this.emitError(new TooManyOpenFilesError('accept', err), undefined);
      return;
    }
    closeSync(fd);
  }

  private emitError(err: Error, connId: ConnId | undefined): void {
    if (this.listenerCount('error') > 0) this.emit('error', err, connId);
    else this.log.debug(`link error (no listener): ${err.message}`);
  }

  private accept(
    listenerId: string,
    socket: net.Socket,
    sockets: Set<net.Socket>,
    isTls: boolean,
    reader?: DirectReader,
  ): void {
    if (this.closed || !this.listeners_.has(listenerId)) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    this.register(socket, 'listener', listenerId, isTls, reader);
  }

  private dial(c: Connector): void {
    c.timer = undefined;
    if (this.closed || !this.connectors.has(c.id)) return;
    const { host, port, tls: t, connectTimeout } = c.opts;
    let socket: net.Socket;
    let reader: DirectReader | undefined;
    const onConnected = (): void => {
      this.clock.clearTimeout(timeout);
      socket.off('error', onFail);
      c.attempt = 0;
      if (!this.connectors.has(c.id)) {
        socket.destroy();
        return;
      }
      c.connId = this.register(socket, 'connector', c.id, !!t, reader);
      c.upSince = this.clock.now();
      socket.once('close', () => {
        c.socket = undefined;
        c.connId = undefined;
        c.shortLosses = this.clock.now() - c.upSince < c.opts.reconnectInterval ? c.shortLosses + 1 : 0;
        this.scheduleReconnect(c, true);
      });
    };
    const onFail = (err: Error): void => {
      this.clock.clearTimeout(timeout);
      socket.destroy();
      c.socket = undefined;
      this.log.debug(`connector ${c.id} ${host}:${port}: ${err.message}`);
      this.emitError(isOutOfFiles(err) ? new TooManyOpenFilesError('connect', err) : new ConnectError(host, port, err), undefined);
      this.scheduleReconnect(c);
    };
    if (t) {
      socket = tls.connect({
        host,
        port,
        key: t.key,
        cert: t.cert,
        ca: t.ca,
        rejectUnauthorized: t.rejectUnauthorized ?? true,
        servername: t.servername ?? (net.isIP(host) ? undefined : host),
      });
      socket.once('secureConnect', onConnected);
    } else {
      reader = new DirectReader(this.readBuffer);
      socket = net.connect({ host, port, onread: reader.onread });
      socket.once('close', reader.release);
      socket.once('connect', onConnected);
    }
    c.socket = socket;
    socket.once('error', onFail);
    const timeout = this.clock.setTimeout(() => onFail(new Error(`timed out after ${connectTimeout} ms`)), connectTimeout);
  }

  /** Wait for the next attempt: `lost` after a connection that was up, else after a failed attempt. */
  private scheduleReconnect(c: Connector, lost = false): void {
    if (this.closed || !this.connectors.has(c.id) || c.timer) return;
    const base = reconnectWait(c.opts, lost ? undefined : c.attempt, c.shortLosses);
    const delay = Math.max(0, base * (1 + c.opts.reconnectJitter * (this.random() * 2 - 1)));
    if (!lost) c.attempt++;
    c.timer = this.clock.setTimeout(() => this.dial(c), delay);
  }

  private register(
    socket: net.Socket,
    side: 'listener' | 'connector',
    ownerId: string,
    isTls: boolean,
    reader: DirectReader | undefined,
  ): ConnId {
    const connId = `c${this.nextId++}`;
    socket.setNoDelay(true);
    const info: ConnectionInfo = {
      connId,
      side,
      ownerId,
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      localAddress: socket.localAddress ?? '',
      localPort: socket.localPort ?? 0,
      tls: isTls,
    };
    const conn: Conn = { id: connId, socket, info, reader };
    this.conns.set(connId, conn);
    const onData = (data: Buffer): void => {
      if (this.conns.has(connId)) this.emit('recv', connId, data);
    };
    if (reader) {
      reader.sink = onData;
      reader.onThrow = (err) => {
        if (!conn.reason) conn.reason = err instanceof Error ? err : new Error(String(err));
        socket.destroy();
      };
    } else {
      socket.on('data', onData);
    }
    socket.on('drain', () => this.emit('drain', connId));
    socket.on('error', (err) => {
      if (!conn.reason) conn.reason = err;
    });
    socket.once('close', () => {
      this.conns.delete(connId);
      this.outOfFiles = false;
      this.log.debug(`disconnect ${connId}${conn.reason ? `: ${conn.reason.message}` : ''}`);
      this.emit('disconnect', connId, conn.reason);
    });
    this.log.debug(`connect ${connId} (${side} ${ownerId}) ${info.remoteAddress}:${info.remotePort}`);
    this.emit('connect', connId, info);
    return connId;
  }
}
