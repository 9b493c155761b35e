/**
 * Messaging: identity routing, per-peer queues with TTL, keepalive, persistent storage and —
 * between peers that both speak our extensions — acknowledged delivery with deduplication and
 * a bounded in-flight window. Speaks snakeMQ protocol version 1 byte for byte with plain
 * snakeMQ 1.6 peers.
 *
 * @module
 */
import { EventEmitter } from 'node:events';
import { type Clock, type TimerHandle, systemClock } from './clock.js';
import {
  BadFrameError,
  ClosedError,
  DuplicateIdentityError,
  IncompatibleProtocolError,
  InvalidArgumentError,
  KeepaliveTimeoutError,
  NotIdentifiedError,
  QueueFullError,
  SnakeMQError,
} from './errors.js';
import type { ConnId } from './link.js';
import { type Logger, defaultLogger } from './logger.js';
import { FLAG_PERSISTENT, Message } from './message.js';
import { MAX_WIRE_PACKET_SIZE } from './packet-decoder.js';
import type { Packeter } from './packeter.js';
import {
  EXTENSION_VERSION,
  FEATURE_ACKS,
  FEATURE_FLOW,
  type Frame,
  MESSAGE_HEADER_SIZE,
  PROTOCOL_VERSION,
  decodeFrame,
  encodeAck,
  encodeHello,
  encodeIdentification,
  encodeIncompatibleProtocol,
  encodeMessageHeader,
  encodePing,
  encodePong,
  encodeProtocolVersion,
} from './protocol.js';
import { AWAITING_ACK, PeerQueue, type QItem, QUEUED, WRITING, uuidKey } from './queue.js';
import type { QueuesStorage, StoredItem } from './storage.js';

export { Message, FLAG_PERSISTENT };

/** Our own identity is at most this many characters (snakeMQ cuts its own there). */
export const MAX_IDENT_LENGTH = 50;

/** Why a message was dropped. */
export type DropReason = 'ttl' | 'queue-full' | 'too-large';

/** What happens when a peer's queue is at its limit. */
export type QueuePolicy = 'reject' | 'drop-oldest' | 'block';

/** Defaults of {@link MessagingOptions}. */
export const MESSAGING_DEFAULTS = {
  keepaliveInterval: 10_000,
  keepaliveWait: 5_000,
  queueLimit: 100_000,
  queueLimitBytes: 256 * 1024 * 1024,
  queuePolicy: 'reject' as QueuePolicy,
  maxInFlight: 1000,
  maxInFlightBytes: 16 * 1024 * 1024,
  extensions: true,
} as const;

/** Options of {@link Messaging}. All durations in milliseconds. */
export interface MessagingOptions {
  /** Where persistent messages (and the dedup window) are kept. Without it nothing persists. */
  storage?: QueuesStorage;
  /** Ping a connection after this long with nothing received; 0 turns keepalive off (default 10000). */
  keepaliveInterval?: number;
  /** Close a pinged connection when nothing arrives within this (default 5000). */
  keepaliveWait?: number;
  /** Messages per peer queue (default 100000). */
  queueLimit?: number;
  /** Body bytes per peer queue (default 256 MiB). */
  queueLimitBytes?: number;
  /**
   * At the limit: `'reject'` rejects `sendMessage` with `ERR_QUEUE_FULL` (default);
   * `'drop-oldest'` drops the oldest unsent message (reported as `message-drop`, reason
   * `'queue-full'`); `'block'` makes `sendMessage` wait until there is room.
   */
  queuePolicy?: QueuePolicy;
  /** Unacknowledged messages in flight per extension peer (default 1000). */
  maxInFlight?: number;
  /** Unacknowledged body bytes in flight per extension peer (default 16 MiB; one message always fits). */
  maxInFlightBytes?: number;
  /** Remembered received uuids per peer for deduplication (default max(2 × maxInFlight, 4096)). */
  dedupWindow?: number;
  /** Offer our extensions (acks, flow window) to peers (default true). */
  extensions?: boolean;
  clock?: Clock;
  logger?: Logger;
}

/** Typed events of {@link Messaging}. */
export interface MessagingEvents {
  /** A peer identified itself on a connection. */
  connect: [connId: ConnId, ident: string];
  /** An identified peer's connection is gone. */
  disconnect: [connId: ConnId, ident: string];
  /** A message arrived (after deduplication: each message once). */
  message: [connId: ConnId, ident: string, message: Message];
  /** A message's packet was fully written to the socket. */
  'message-sent': [connId: ConnId, ident: string, uuid: Buffer];
  /** A message left its queue for good: acknowledged, or written to a plain snakeMQ 1.6 peer. */
  'message-delivered': [ident: string, uuid: Buffer];
  /** A message was dropped without being delivered. */
  'message-drop': [ident: string, uuid: Buffer, reason: DropReason];
  /** A peer's queue fell below its limit after being full. */
  drain: [ident: string];
  /** A peer broke the protocol (its connection was closed) or storage failed. */
  error: [err: Error, connId: ConnId | undefined];
}

/** A received message as yielded by the async iterator. */
export interface Received {
  connId: ConnId;
  ident: string;
  message: Message;
}

interface Conn {
  id: ConnId;
  ident?: string;
  /** Peer sent a hello before identifying. */
  ext: boolean;
  /** Features in use with this peer. */
  acks: boolean;
  flow: boolean;
  peerMaxPacket: number;
  lastRecv: number;
  pingAt: number;
  keepalive?: TimerHandle;
  /** Replaced by another connection of the same identity, or closing: ignore it. */
  dead: boolean;
  /** Items being written on this connection, in packet order. */
  writing: QItem[];
  writingHead: number;
  /** Received uuids to acknowledge. */
  pendingAcks: Buffer[];
  /** Received uuids to record in storage before acknowledging. */
  pendingSeen: Buffer[];
  ackScheduled: boolean;
}

interface SeenWindow {
  set: Set<string>;
  order: string[];
  head: number;
}

/** A `sendMessage` held by the 'block' policy. Waiters of a queue are served strictly in order. */
interface Waiter {
  /** Body bytes of the message it holds. */
  bytes: number;
  /** Told there is room; it stays at the head of the line until it has queued its message. */
  woken: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

function checkMs(name: string, v: number | undefined, dflt: number, min = 0): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) {
    throw new InvalidArgumentError(`${name} must be a number >= ${min}, got ${v}`);
  }
  return v;
}

/**
 * The messaging layer.
 *
 * @example
 * const link = new Link();
 * const messaging = new Messaging('alice', '', new Packeter(link));
 * messaging.on('message', (connId, ident, message) => console.log(ident, message.body));
 * await messaging.sendMessage('bob', new Message('hello', { ttl: 60_000 }));
 */
export class Messaging extends EventEmitter<MessagingEvents> {
  readonly identifier: string;
  readonly domain: string;
  readonly packeter: Packeter;
  readonly storage: QueuesStorage | undefined;
  /** Resolves once stored messages are loaded; rejects when loading failed. */
  readonly ready: Promise<void>;

  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly opts: Required<Omit<MessagingOptions, 'storage' | 'clock' | 'logger'>>;
  private readonly conns = new Map<ConnId, Conn>();
  private readonly identConn = new Map<string, Conn>();
  private readonly queues = new Map<string, PeerQueue>();
  private readonly seen = new Map<string, SeenWindow>();
  private readonly waiters = new Map<string, Waiter[]>();
  private readonly ttlTimers = new Map<string, { at: number; handle: TimerHandle }>();
  private readonly ownIdentFrame: Buffer;
  private readonly helloFrame: Buffer | undefined;
  private loaded = false;
  private closed = false;
  private iterators = new Set<(r: Received | null) => void>();
  /** Storage commits of received uuids whose acks wait for them. */
  private readonly seenCommits = new Set<Promise<void>>();

  /**
   * @param identifier our identity, at most 50 characters
   * @param domain kept for snakeMQ compatibility (unused on the wire)
   * @param packeter the packet layer to run over
   * @throws InvalidArgumentError for a bad identity or option
   */
  constructor(identifier: string, domain: string, packeter: Packeter, options: MessagingOptions = {}) {
    super();
    if (typeof identifier !== 'string' || identifier.length === 0 || identifier.length > MAX_IDENT_LENGTH) {
      throw new InvalidArgumentError(`identifier must be a string of 1..${MAX_IDENT_LENGTH} characters`);
    }
    this.identifier = identifier;
    this.domain = domain ?? '';
    this.packeter = packeter;
    this.storage = options.storage;
    this.clock = options.clock ?? systemClock;
    this.log = options.logger ?? defaultLogger();
    const maxInFlight = checkMs('maxInFlight', options.maxInFlight, MESSAGING_DEFAULTS.maxInFlight, 1);
    this.opts = {
      keepaliveInterval: checkMs('keepaliveInterval', options.keepaliveInterval, MESSAGING_DEFAULTS.keepaliveInterval),
      keepaliveWait: checkMs('keepaliveWait', options.keepaliveWait, MESSAGING_DEFAULTS.keepaliveWait),
      queueLimit: checkMs('queueLimit', options.queueLimit, MESSAGING_DEFAULTS.queueLimit, 1),
      queueLimitBytes: checkMs('queueLimitBytes', options.queueLimitBytes, MESSAGING_DEFAULTS.queueLimitBytes, 1),
      queuePolicy: options.queuePolicy ?? MESSAGING_DEFAULTS.queuePolicy,
      maxInFlight,
      maxInFlightBytes: checkMs('maxInFlightBytes', options.maxInFlightBytes, MESSAGING_DEFAULTS.maxInFlightBytes, 1),
      dedupWindow: checkMs('dedupWindow', options.dedupWindow, Math.max(2 * maxInFlight, 4096), 1),
      extensions: options.extensions ?? MESSAGING_DEFAULTS.extensions,
    };
    if (!['reject', 'drop-oldest', 'block'].includes(this.opts.queuePolicy)) {
      throw new InvalidArgumentError(`queuePolicy must be 'reject', 'drop-oldest' or 'block'`);
    }
    this.ownIdentFrame = encodeIdentification(identifier);
    this.helloFrame = this.opts.extensions
      ? encodeHello({
          extVersion: EXTENSION_VERSION,
          maxPacketSize: packeter.maxPacketSize,
          features: FEATURE_ACKS | FEATURE_FLOW,
        })
      : undefined;
    packeter.on('connect', this.onConnect);
    packeter.on('disconnect', this.onDisconnect);
    packeter.on('packet', this.onPacket);
    packeter.on('packet-sent', this.onPacketSent);
    packeter.on('drain', this.onDrain);
    this.ready = this.load();
    this.ready.catch(() => {});
  }

  // ---------------------------------------------------------------- public API

  /**
   * Queue a message for a peer. Resolves once it is queued and, if persistent (and a storage
   * is configured), committed to storage. Messages to one peer go out in call order.
   * A TTL-0 message to a peer that is not connected is dropped at once (`message-drop`,
   * reason `'ttl'`) and never stored; the promise still resolves.
   *
   * @throws InvalidArgumentError (`ERR_SEND_TO_SELF` when `ident` is our own identity)
   * @throws QueueFullError under the `'reject'` policy when the peer's queue is full
   * @throws ClosedError after {@link close}
   */
  async sendMessage(ident: string, message: Message): Promise<void> {
    if (typeof ident !== 'string' || ident.length === 0 || Buffer.byteLength(ident) > 255) {
      throw new InvalidArgumentError('destination identity must be a string of 1..255 UTF-8 bytes');
    }
    if (ident === this.identifier) throw new InvalidArgumentError('cannot send a message to oneself', 'ERR_SEND_TO_SELF');
    if (!(message instanceof Message)) throw new InvalidArgumentError('message must be a Message');
    if (this.closed) throw new ClosedError('messaging');
    if (!this.loaded) await this.ready;
    if (this.closed) throw new ClosedError('messaging');
    const q = this.queue(ident);
    if (message.ttl === 0 && !q.connected) {
      this.emit('message-drop', ident, message.uuid, 'ttl');
      return;
    }
    // The limit check and the push below run in one synchronous stretch (no await between
    // them unless this call must wait), so concurrent calls cannot all pass the check at once.
    const waiter = this.makeRoom(q, message.body.length);
    if (waiter) await this.takeTurn(q, waiter);
    let commit: Promise<void> | undefined;
    try {
      commit = this.enqueue(ident, q, message);
    } finally {
      if (waiter) this.leaveLine(q, waiter);
    }
    if (commit) await commit;
  }

  /** Push a message into its queue (and storage); synchronous. Returns the storage commit, if any. */
  private enqueue(ident: string, q: PeerQueue, message: Message): Promise<void> | undefined {
    if (this.closed) throw new ClosedError('messaging');
    const now = this.clock.now();
    const stored = !!this.storage && (message.flags & FLAG_PERSISTENT) !== 0;
    const item: QItem = {
      uuid: message.uuid,
      key: uuidKey(message.uuid),
      body: message.body,
      flags: message.flags,
      ttl: message.ttl,
      stored,
      state: QUEUED,
      packetId: 0,
      removed: false,
    };
    if (q.byKey.has(item.key)) throw new InvalidArgumentError('a message with this uuid is already queued', 'ERR_DUPLICATE_UUID');
    q.push(item, now);
    let commit: Promise<void> | undefined;
    if (stored) {
      commit = this.storage!.push([{ queue: ident, uuid: item.uuid, ttl: message.ttl, flags: item.flags, body: item.body }]);
    }
    this.schedulePump(ident);
    if (!q.connected) this.armTtl(q);
    return commit;
  }

  /**
   * Take back a queued message that has not started being written (and delete it from
   * storage). Returns `true` when it was removed; `false` when it is unknown, already
   * delivered, or already on its way (written or being written).
   */
  cancelMessage(ident: string, uuid: Uint8Array): boolean {
    const q = this.queues.get(ident);
    if (!q || !(uuid instanceof Uint8Array) || uuid.length !== 16) return false;
    const item = q.byKey.get(uuidKey(Buffer.from(uuid.buffer, uuid.byteOffset, 16)));
    if (!item || item.state !== QUEUED) return false;
    this.removeItem(q, item);
    return true;
  }

  /** Whether a peer with this identity is connected and identified. */
  isConnected(ident: string): boolean {
    return this.identConn.has(ident);
  }

  /** Identities of the connected peers. */
  connectedPeers(): string[] {
    return [...this.identConn.keys()];
  }

  /** The connection id of an identified peer, or `undefined`. */
  connectionOf(ident: string): ConnId | undefined {
    return this.identConn.get(ident)?.id;
  }

  /** Number of messages queued for a peer (not yet delivered, in flight included). */
  queueSize(ident: string): number {
    return this.queues.get(ident)?.size ?? 0;
  }

  /** Received messages as an async iterable; iteration ends when Messaging closes. */
  messages(): AsyncIterableIterator<Received> {
    const buffer: Received[] = [];
    let wake: ((r: IteratorResult<Received>) => void) | undefined;
    let done = this.closed;
    const push = (r: Received | null): void => {
      if (r === null) {
        done = true;
        this.iterators.delete(push);
        this.off('message', onMessage);
        if (wake) {
          const w = wake;
          wake = undefined;
          w({ value: undefined, done: true });
        }
        return;
      }
      if (wake) {
        const w = wake;
        wake = undefined;
        w({ value: r, done: false });
      } else buffer.push(r);
    };
    const onMessage = (connId: ConnId, ident: string, message: Message): void => push({ connId, ident, message });
    if (!done) {
      this.iterators.add(push);
      this.on('message', onMessage);
    }
    const it: AsyncIterableIterator<Received> = {
      next: () => {
        if (buffer.length) return Promise.resolve({ value: buffer.shift()!, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (wake = resolve));
      },
      return: () => {
        push(null);
        buffer.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  /** Async iteration over received messages: `for await (const { ident, message } of messaging)`. */
  [Symbol.asyncIterator](): AsyncIterableIterator<Received> {
    return this.messages();
  }

  /**
   * Stop: cancel timers, write the remaining TTLs of stored messages back to storage, reject
   * waiting senders with `ERR_CLOSED`, end async iterators, and detach from the packeter.
   * Connections stay open (close the Link for that); the storage is not closed (it is yours).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.packeter.off('connect', this.onConnect);
    this.packeter.off('disconnect', this.onDisconnect);
    this.packeter.off('packet', this.onPacket);
    this.packeter.off('packet-sent', this.onPacketSent);
    this.packeter.off('drain', this.onDrain);
    for (const c of this.conns.values()) if (c.keepalive) this.clock.clearTimeout(c.keepalive);
    for (const t of this.ttlTimers.values()) this.clock.clearTimeout(t.handle);
    this.ttlTimers.clear();
    for (const ws of this.waiters.values()) for (const w of ws) w.reject(new ClosedError('messaging'));
    this.waiters.clear();
    for (const it of [...this.iterators]) it(null);
    await this.ready.catch(() => {});
    // Received messages already handed to the application: record them and acknowledge them
    // now, so a peer does not resend what we have (and the caller may close storage after us).
    for (const c of this.conns.values()) if (c.ident !== undefined && this.storage) this.flushSeen(c, c.ident);
    await Promise.all([...this.seenCommits]);
    for (const c of this.conns.values()) this.flushAcks(c);
    const writes: Promise<void>[] = [];
    for (const q of this.queues.values()) {
      const p = this.writeBackTtls(q);
      if (p) writes.push(p);
    }
    await Promise.all(writes).catch((err) => this.reportError(err, undefined));
  }

  // ---------------------------------------------------------------- loading

  private async load(): Promise<void> {
    try {
      if (!this.storage) return;
      const [items, seen] = await Promise.all([this.storage.load(), this.storage.loadSeen()]);
      const now = this.clock.now();
      for (const s of items) this.queue(s.queue).push(this.itemFromStorage(s), now);
      for (const [peer, uuids] of seen) {
        const w = this.seenWindow(peer);
        for (const u of uuids) this.rememberSeen(w, uuidKey(u));
      }
      for (const q of this.queues.values()) this.armTtl(q);
      this.log.debug(`messaging ${this.identifier}: loaded ${items.length} stored messages`);
    } finally {
      this.loaded = true;
      for (const ident of this.identConn.keys()) this.schedulePump(ident);
    }
  }

  private itemFromStorage(s: StoredItem): QItem {
    return {
      uuid: s.uuid,
      key: uuidKey(s.uuid),
      body: s.body,
      flags: s.flags,
      ttl: s.ttl,
      stored: true,
      state: QUEUED,
      packetId: 0,
      removed: false,
    };
  }

  // ---------------------------------------------------------------- queues

  private queue(ident: string): PeerQueue {
    let q = this.queues.get(ident);
    if (!q) {
      q = new PeerQueue(ident, this.clock.now());
      if (this.identConn.has(ident)) q.connect(this.clock.now());
      this.queues.set(ident, q);
    }
    return q;
  }

  private full(q: PeerQueue, extraBytes: number): boolean {
    return q.size >= this.opts.queueLimit || (q.size > 0 && q.bytes + extraBytes > this.opts.queueLimitBytes);
  }

  /**
   * Apply the queue policy before queueing `bytes` more. Synchronous: throws under 'reject',
   * drops under 'drop-oldest'; under 'block' returns a waiter when this call must wait (the
   * queue is full, or earlier calls are already waiting: they go first).
   */
  private makeRoom(q: PeerQueue, bytes: number): Waiter | undefined {
    switch (this.opts.queuePolicy) {
      case 'reject':
        if (this.full(q, bytes)) throw new QueueFullError(q.ident, this.opts.queueLimit);
        return undefined;
      case 'drop-oldest':
        while (this.full(q, bytes)) {
          const victim = q.oldestUnsent();
          if (!victim) throw new QueueFullError(q.ident, this.opts.queueLimit);
          this.removeItem(q, victim);
          this.emit('message-drop', q.ident, victim.uuid, 'queue-full');
        }
        return undefined;
      case 'block': {
        let ws = this.waiters.get(q.ident);
        if (!ws?.length && !this.full(q, bytes)) return undefined;
        if (!ws) this.waiters.set(q.ident, (ws = []));
        const w: Waiter = { bytes, woken: false, resolve: () => {}, reject: () => {} };
        ws.push(w);
        return w;
      }
    }
  }

  /**
   * Wait until `w` is at the head of its queue's line and its message fits. It stays at the
   * head (so later calls cannot overtake it) until the caller queues its message and calls
   * {@link leaveLine}; on failure it leaves the line here.
   */
  private async takeTurn(q: PeerQueue, w: Waiter): Promise<void> {
    try {
      for (;;) {
        await new Promise<void>((resolve, reject) => {
          w.resolve = resolve;
          w.reject = reject;
          this.wakeWaiter(q);
        });
        if (this.closed) throw new ClosedError('messaging');
        if (!this.full(q, w.bytes)) return;
        w.woken = false;
      }
    } catch (err) {
      this.leaveLine(q, w);
      throw err;
    }
  }

  /** Remove a waiter from its queue's line and let the next one go if it fits. */
  private leaveLine(q: PeerQueue, w: Waiter): void {
    const ws = this.waiters.get(q.ident);
    const i = ws ? ws.indexOf(w) : -1;
    if (i >= 0) ws!.splice(i, 1);
    if (ws?.length === 0) this.waiters.delete(q.ident);
    this.wakeWaiter(q);
  }

  /** Let the first blocked sender of a queue go when its message fits. */
  private wakeWaiter(q: PeerQueue): void {
    const head = this.waiters.get(q.ident)?.[0];
    if (!head || head.woken || this.full(q, head.bytes)) return;
    head.woken = true;
    head.resolve();
  }

  /** Remove an item from its queue and storage; wake blocked senders when there is room. */
  private removeItem(q: PeerQueue, item: QItem): void {
    const wasFull = this.full(q, 0);
    q.remove(item);
    if (item.stored) {
      this.storage!.delete([{ queue: q.ident, uuid: item.uuid }]).catch((err) => this.reportError(err, undefined));
    }
    this.afterRemoval(q, wasFull);
  }

  /** Items left a queue: wake the first blocked sender, and report `drain` if it was full. */
  private afterRemoval(q: PeerQueue, wasFull: boolean): void {
    this.wakeWaiter(q);
    if (wasFull && !this.full(q, 0)) this.emit('drain', q.ident);
  }

  private armTtl(q: PeerQueue): void {
    if (this.closed) return;
    const at = q.nextExpiry();
    const cur = this.ttlTimers.get(q.ident);
    if (cur && (at === null || cur.at !== at)) {
      this.clock.clearTimeout(cur.handle);
      this.ttlTimers.delete(q.ident);
    } else if (cur) return;
    if (at === null) return;
    const handle = this.clock.setTimeout(() => {
      this.ttlTimers.delete(q.ident);
      this.expire(q);
    }, Math.max(0, at - this.clock.now()));
    this.ttlTimers.set(q.ident, { at, handle });
  }

  private expire(q: PeerQueue): void {
    const wasFull = this.full(q, 0);
    const expired = q.expire(this.clock.now());
    if (expired.length) {
      const stored = expired.filter((it) => it.stored).map((it) => ({ queue: q.ident, uuid: it.uuid }));
      if (stored.length) this.storage!.delete(stored).catch((err) => this.reportError(err, undefined));
      for (const it of expired) this.emit('message-drop', q.ident, it.uuid, 'ttl');
      this.afterRemoval(q, wasFull);
    }
    this.armTtl(q);
  }

  private writeBackTtls(q: PeerQueue): Promise<void> | undefined {
    if (!this.storage || q.finite === 0) return;
    const now = this.clock.now();
    const updates = [];
    for (const it of q.live()) {
      if (it.stored && it.ttl !== null) updates.push({ queue: q.ident, uuid: it.uuid, ttl: Math.max(0, q.remaining(it, now)!) });
    }
    return updates.length ? this.storage.updateTtls(updates) : undefined;
  }

  // ---------------------------------------------------------------- connections

  private readonly onConnect = (connId: ConnId): void => {
    const now = this.clock.now();
    const c: Conn = {
      id: connId,
      ext: false,
      acks: false,
      flow: false,
      peerMaxPacket: MAX_WIRE_PACKET_SIZE,
      lastRecv: now,
      pingAt: 0,
      dead: false,
      writing: [],
      writingHead: 0,
      pendingAcks: [],
      pendingSeen: [],
      ackScheduled: false,
    };
    this.conns.set(connId, c);
    this.packeter.sendPacket(connId, encodeProtocolVersion(PROTOCOL_VERSION));
    if (this.helloFrame) this.packeter.sendPacket(connId, this.helloFrame);
    this.packeter.sendPacket(connId, this.ownIdentFrame);
    this.armKeepalive(c);
  };

  private readonly onDisconnect = (connId: ConnId): void => {
    const c = this.conns.get(connId);
    if (!c) return;
    this.conns.delete(connId);
    if (c.keepalive) this.clock.clearTimeout(c.keepalive);
    this.detach(c);
  };

  /** Forget an identified connection: requeue what was in flight, start TTLs, report it. */
  private detach(c: Conn): void {
    const ident = c.ident;
    c.dead = true;
    if (ident === undefined || this.identConn.get(ident) !== c) return;
    this.identConn.delete(ident);
    const q = this.queues.get(ident);
    if (q) {
      q.disconnect(this.clock.now());
      this.armTtl(q);
    }
    this.log.debug(`messaging ${this.identifier}: ${ident} disconnected (${c.id})`);
    this.emit('disconnect', c.id, ident);
  }

  private closeConn(c: Conn, err: SnakeMQError): void {
    this.log.debug(`messaging ${this.identifier}: closing ${c.id}: ${err.message}`);
    this.detach(c);
    this.packeter.closeConnection(c.id, err);
    this.reportError(err, c.id);
  }

  private reportError(err: Error, connId: ConnId | undefined): void {
    if (this.listenerCount('error') > 0) this.emit('error', err, connId);
    else this.log.warn(`messaging ${this.identifier}: ${err.message}`);
  }

  private armKeepalive(c: Conn): void {
    const interval = this.opts.keepaliveInterval;
    if (interval <= 0 || this.closed) return;
    const fire = (): void => {
      c.keepalive = undefined;
      if (c.dead || !this.conns.has(c.id) || this.closed) return;
      const now = this.clock.now();
      if (c.pingAt && c.lastRecv < c.pingAt) {
        if (now - c.pingAt >= this.opts.keepaliveWait) {
          this.closeConn(c, new KeepaliveTimeoutError(now - c.lastRecv));
          return;
        }
        c.keepalive = this.clock.setTimeout(fire, c.pingAt + this.opts.keepaliveWait - now);
        return;
      }
      c.pingAt = 0;
      const idle = now - c.lastRecv;
      if (idle >= interval) {
        this.packeter.sendPacket(c.id, encodePing());
        c.pingAt = now;
        c.keepalive = this.clock.setTimeout(fire, this.opts.keepaliveWait);
      } else {
        c.keepalive = this.clock.setTimeout(fire, interval - idle);
      }
    };
    c.keepalive = this.clock.setTimeout(fire, interval);
  }

  private readonly onPacket = (connId: ConnId, payload: Buffer): void => {
    const c = this.conns.get(connId);
    if (!c || c.dead) return;
    c.lastRecv = this.clock.now();
    let f: Frame;
    try {
      f = decodeFrame(payload);
    } catch (err) {
      this.closeConn(c, err instanceof SnakeMQError ? err : new BadFrameError(String(err), { cause: err }));
      return;
    }
    switch (f.kind) {
      case 'message':
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError());
        return this.onMessage(c, c.ident, f.uuid, f.ttlMs, f.flags, f.body);
      case 'ack':
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError('ack frame received before identification'));
        return this.onAck(c, c.ident, f.uuids);
      case 'ping':
        this.packeter.sendPacket(connId, encodePong());
        return;
      case 'pong':
        return;
      case 'version':
        if (f.version !== PROTOCOL_VERSION) {
          this.packeter.sendPacket(connId, encodeIncompatibleProtocol());
          this.closeConn(c, new IncompatibleProtocolError(`peer speaks protocol version ${f.version}, we speak ${PROTOCOL_VERSION}`));
        }
        return;
      case 'incompatible':
        // snakeMQ only reports this; the peer closes.
        this.reportError(new IncompatibleProtocolError('peer reports our protocol version as incompatible'), connId);
        return;
      case 'hello':
        if (c.ident === undefined && this.opts.extensions && f.extVersion >= 1) {
          c.ext = true;
          c.acks = (f.features & FEATURE_ACKS) !== 0;
          c.flow = (f.features & FEATURE_FLOW) !== 0;
          c.peerMaxPacket = f.maxPacketSize;
        }
        return;
      case 'ident':
        return this.onIdent(c, f.ident);
      case 'unknown':
        return;
    }
  };

  private onIdent(c: Conn, ident: string): void {
    if (c.ident !== undefined) {
      this.log.debug(`messaging ${this.identifier}: ${c.id} identified again as ${ident}; ignored`);
      return;
    }
    const other = this.identConn.get(ident);
    if (other) {
      // Two connections to one peer. Extension peers keep, on both sides alike, the one
      // opened by the peer with the smaller identity; otherwise the first one stays.
      const mine = this.packeter.connectionInfo(c.id)?.side;
      const keepNew =
        c.ext &&
        other.ext &&
        mine !== undefined &&
        this.packeter.connectionInfo(other.id)?.side !== mine &&
        (mine === 'connector') === this.identifier < ident;
      if (!keepNew) {
        c.ident = ident;
        c.dead = true;
        this.closeConn(c, new DuplicateIdentityError(ident));
        return;
      }
      this.closeConn(other, new DuplicateIdentityError(ident));
    }
    c.ident = ident;
    this.identConn.set(ident, c);
    const q = this.queue(ident);
    const wasFull = this.full(q, 0);
    const expired = q.connect(this.clock.now());
    const tt = this.ttlTimers.get(ident);
    if (tt) {
      this.clock.clearTimeout(tt.handle);
      this.ttlTimers.delete(ident);
    }
    if (expired.length) {
      const stored = expired.filter((it) => it.stored).map((it) => ({ queue: ident, uuid: it.uuid }));
      if (stored.length) this.storage!.delete(stored).catch((err) => this.reportError(err, undefined));
      for (const it of expired) this.emit('message-drop', ident, it.uuid, 'ttl');
      this.afterRemoval(q, wasFull);
    }
    this.writeBackTtls(q)?.catch((err) => this.reportError(err, undefined));
    this.log.debug(`messaging ${this.identifier}: ${ident} connected (${c.id}${c.ext ? ', extensions' : ''})`);
    this.emit('connect', c.id, ident);
    this.schedulePump(ident);
  }

  // ---------------------------------------------------------------- sending

  private pumpScheduled = new Set<string>();

  private schedulePump(ident: string): void {
    if (!this.identConn.has(ident) || this.pumpScheduled.has(ident)) return;
    this.pumpScheduled.add(ident);
    queueMicrotask(() => {
      this.pumpScheduled.delete(ident);
      this.pump(ident);
    });
  }

  private pump(ident: string): void {
    if (!this.loaded || this.closed) return;
    const c = this.identConn.get(ident);
    const q = this.queues.get(ident);
    if (!c || !q || c.dead) return;
    const p = this.packeter;
    const windowed = c.acks;
    for (;;) {
      if (windowed && (q.inflight >= this.opts.maxInFlight || (q.inflight > 0 && q.inflightBytes >= this.opts.maxInFlightBytes))) return;
      if (!p.writable(c.id)) return;
      const item = q.peekUnsent();
      if (!item) return;
      if (item.body.length + 1 + MESSAGE_HEADER_SIZE > c.peerMaxPacket) {
        q.sendCursor++;
        this.removeItem(q, item);
        this.emit('message-drop', ident, item.uuid, 'too-large');
        continue;
      }
      const header = encodeMessageHeader({ uuid: item.uuid, ttlMs: item.ttl, flags: item.flags });
      const id = p.sendPacket(c.id, [header, item.body]);
      q.markWriting(item, id);
      c.writing.push(item);
    }
  }

  private readonly onPacketSent = (connId: ConnId, packetId: number): void => {
    const c = this.conns.get(connId);
    if (!c || c.ident === undefined) return;
    const ident = c.ident;
    const q = this.queues.get(ident);
    const w = c.writing;
    while (c.writingHead < w.length && w[c.writingHead].packetId <= packetId) {
      const item = w[c.writingHead++];
      if (item.removed || item.state !== WRITING || item.packetId > packetId) continue;
      this.emit('message-sent', connId, ident, item.uuid);
      if (c.acks) {
        item.state = AWAITING_ACK;
      } else if (q) {
        this.removeItem(q, item);
        this.emit('message-delivered', ident, item.uuid);
      }
    }
    if (c.writingHead === w.length) {
      c.writing = [];
      c.writingHead = 0;
    } else if (c.writingHead > 4096) {
      c.writing = w.slice(c.writingHead);
      c.writingHead = 0;
    }
    if (!c.acks) this.schedulePump(ident);
  };

  private readonly onDrain = (connId: ConnId): void => {
    const c = this.conns.get(connId);
    if (c?.ident !== undefined) this.pump(c.ident);
  };

  private onAck(c: Conn, ident: string, uuids: Buffer[]): void {
    const q = this.queues.get(ident);
    if (!q) return;
    for (const u of uuids) {
      const item = q.byKey.get(uuidKey(u));
      if (!item || item.state === QUEUED) continue;
      this.removeItem(q, item);
      this.emit('message-delivered', ident, item.uuid);
    }
    this.schedulePump(ident);
  }

  // ---------------------------------------------------------------- receiving

  private onMessage(c: Conn, ident: string, uuid: Buffer, ttl: number | null, flags: number, body: Buffer): void {
    if (!c.acks) {
      this.emit('message', c.id, ident, Message.fromTrusted(Buffer.from(body), Buffer.from(uuid), ttl, flags));
      return;
    }
    const w = this.seenWindow(ident);
    const key = uuidKey(uuid);
    const u = Buffer.from(uuid);
    if (w.set.has(key)) {
      this.queueAck(c, u);
      return;
    }
    this.emit('message', c.id, ident, Message.fromTrusted(Buffer.from(body), u, ttl, flags));
    this.rememberSeen(w, key);
    if (this.storage) this.queueSeen(c, ident, u);
    else this.queueAck(c, u);
  }

  /** Record received uuids in storage, one call per connection and turn; ack once committed. */
  private queueSeen(c: Conn, ident: string, uuid: Buffer): void {
    c.pendingSeen.push(uuid);
    if (c.pendingSeen.length === 1) setImmediate(() => void this.flushSeen(c, ident));
  }

  private flushSeen(c: Conn, ident: string): Promise<void> | undefined {
    const uuids = c.pendingSeen;
    if (uuids.length === 0) return undefined;
    c.pendingSeen = [];
    const commit = this.storage!.addSeen(ident, uuids, this.opts.dedupWindow).then(
      () => {
        for (const u of uuids) this.queueAck(c, u);
      },
      (err) => this.reportError(err, c.id),
    );
    this.seenCommits.add(commit);
    void commit.finally(() => this.seenCommits.delete(commit));
    return commit;
  }

  private seenWindow(ident: string): SeenWindow {
    let w = this.seen.get(ident);
    if (!w) {
      w = { set: new Set(), order: [], head: 0 };
      this.seen.set(ident, w);
    }
    return w;
  }

  private rememberSeen(w: SeenWindow, key: string): void {
    if (w.set.has(key)) return;
    w.set.add(key);
    w.order.push(key);
    while (w.set.size > this.opts.dedupWindow) w.set.delete(w.order[w.head++]);
    if (w.head > 4096 && w.head * 2 > w.order.length) {
      w.order = w.order.slice(w.head);
      w.head = 0;
    }
  }

  private queueAck(c: Conn, uuid: Buffer): void {
    if (c.dead || !this.conns.has(c.id)) return;
    c.pendingAcks.push(uuid);
    if (c.pendingAcks.length >= 1024) this.flushAcks(c);
    else if (!c.ackScheduled) {
      c.ackScheduled = true;
      setImmediate(() => this.flushAcks(c));
    }
  }

  private flushAcks(c: Conn): void {
    c.ackScheduled = false;
    if (c.pendingAcks.length === 0 || c.dead || !this.conns.has(c.id)) return;
    const uuids = c.pendingAcks;
    c.pendingAcks = [];
    this.packeter.sendPacket(c.id, encodeAck(uuids));
  }
}
