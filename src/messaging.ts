/**
 * Messaging: identity routing, per-peer queues with TTL, keepalive, persistent storage and —
 * between peers that both speak our extensions — acknowledged delivery with deduplication and
 * a bounded in-flight window. Speaks snakeMQ protocol version 1 byte for byte with plain
 * snakeMQ 1.6 peers.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { EventEmitter } from 'node:events';
import { readI32, readU32BE, writeI32, writeU32BE } from './bytes.js';
import { type Clock, type TimerHandle, systemClock } from './clock.js';
import { type Deadline, Deadlines, KEEPALIVE_RESOLUTION_MS } from './deadlines.js';
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
import { MAX_WIRE_PACKET_SIZE, PACKET_HEADER_SIZE } from './packet-decoder.js';
import type { Packeter } from './packeter.js';
import {
  EXTENSION_VERSION,
  FEATURE_ACKS,
  FEATURE_FLOW,
  FRAME_ACK,
  FRAME_MESSAGE,
  type Frame,
  MESSAGE_FLAGS_OFFSET,
  MESSAGE_FRAME_HEAD_SIZE,
  MESSAGE_HEADER_SIZE,
  MESSAGE_TTL_OFFSET,
  MESSAGE_UUID_OFFSET,
  PROTOCOL_VERSION,
  TTL_INFINITE_WIRE,
  decodeFrame,
  encodeHello,
  encodeIdentification,
  encodeIncompatibleProtocol,
  encodePing,
  encodePong,
  encodeProtocolVersion,
  ttlMsToWire,
} from './protocol.js';
import { AWAITING_ACK, PeerQueue, QUEUED, type RemovedItem, type SeenIndex, SeenWindow, WRITING, uuidKey } from './queue.js';
import type { ItemKey, QueuesStorage } from './storage.js';

export { Message, FLAG_PERSISTENT };

/** Our own identity is at most this many characters (snakeMQ cuts its own there). */
export const MAX_IDENT_LENGTH = 50;

/** Why a message was dropped. */
export type DropReason = 'ttl' | 'queue-full' | 'too-large';

/** What happens when a peer's queue is at its limit. */
export type QueuePolicy = 'reject' | 'drop-oldest' | 'block';

/**
 * Dedup windows loaded from storage are all kept this long (ms) after loading, whatever
 * `dedupIdlePeers` says: the peers connected before a restart resend their unacknowledged
 * messages once they are back, and need their windows then.
 */
export const LOADED_WINDOWS_GRACE_MS = 60_000;

/** Defaults of {@link MessagingOptions}. */
export const MESSAGING_DEFAULTS = {
  keepaliveInterval: 10_000,
  keepaliveWait: 5_000,
  queueLimit: 100_000,
  queueLimitBytes: 256 * 1024 * 1024,
  queuePolicy: 'reject' as QueuePolicy,
  maxInFlight: 8192,
  maxInFlightBytes: 16 * 1024 * 1024,
  initialInFlight: 64,
  initialInFlightBytes: 16 * 1024,
  dedupIdlePeers: 4096,
  extensions: true,
} as const;

/** Options of {@link Messaging}. All durations in milliseconds. */
export interface MessagingOptions {
  /** Where persistent messages (and the dedup window) are kept. Without it nothing persists. */
  storage?: QueuesStorage;
  /**
   * Ping a connection after this long with nothing received; 0 turns keepalive off (default
   * 10000). On connections accepted by a listener of ours, after this × {@link LISTENER_KEEPALIVE_FACTOR}.
   */
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
  /**
   * Unacknowledged messages in flight per extension peer (default 8192). A window of a few
   * thousand keeps the sender writing while acks of earlier messages travel back; at 1000 the
   * two sides took turns and 100-byte throughput was about a third lower.
   */
  maxInFlight?: number;
  /** Unacknowledged body bytes in flight per extension peer (default 16 MiB; one message always fits). */
  maxInFlightBytes?: number;
  /**
   * Slow start: on every new connection to an extension peer, at most this many messages are in
   * flight at first (default 64); each acknowledged message then raises the allowance by one
   * (so it doubles every round trip) up to {@link maxInFlight}. A link that drops every few KB
   * still moves new messages each time, instead of spending every connection rewriting a
   * whole window that the peer already has and never getting its acknowledgements back.
   */
  initialInFlight?: number;
  /** Slow start in body bytes (default 16 KiB), raised by the acknowledged bytes up to {@link maxInFlightBytes}. */
  initialInFlightBytes?: number;
  /**
   * Remembered received uuids per peer for deduplication: at least twice the in-flight window
   * of the peers that send to us (default max(2 × maxInFlight, 2 × 8192), so that peers with the
   * default window are covered whatever our own).
   */
  dedupWindow?: number;
  /**
   * Dedup windows kept for peers that are not connected (default 4096; `Infinity`: all).
   * Past that, the window of the peer that left longest ago is forgotten, in storage too, so
   * that peers coming and going under ever new identities cannot grow memory. A forgotten peer
   * that comes back and re-sends messages it had not seen acknowledged gets those delivered
   * again: at most one in-flight window of them. Windows loaded from storage are kept for
   * {@link LOADED_WINDOWS_GRACE_MS} after loading, whatever their number, so that the peers
   * connected before a restart can come back first.
   */
  dedupIdlePeers?: number;
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

/**
 * @internal Told what `message-sent` and `message-delivered` tell (see
 * {@link Messaging.observeDelivery}); the uuid is `src[off..off + 16)`, valid during the call.
 */
export interface DeliveryObserver {
  sent(connId: ConnId, ident: string, src: Buffer, off: number): void;
  delivered(ident: string, src: Buffer, off: number): void;
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
  /**
   * The in-flight allowance of this connection (slow start): messages and body bytes, from
   * `initialInFlight*` up by what is acknowledged, to `maxInFlight*`.
   */
  window: number;
  windowBytes: number;
  flow: boolean;
  peerMaxPacket: number;
  lastRecv: number;
  pingAt: number;
  /** When keepalive looks at this connection next (in {@link Messaging}'s one keepalive heap). */
  keepalive?: Deadline<Conn>;
  /** Ping after this long with nothing received (see {@link LISTENER_KEEPALIVE_FACTOR}). */
  keepaliveAfter: number;
  /** Replaced by another connection of the same identity, or closing: ignore it. */
  dead: boolean;
  /**
   * The items being written on this connection, in packet order, as runs of three numbers
   * from `writingHead` on: the seq of a run's first item, its packet id, and how many items
   * follow with consecutive seqs and packet ids.
   */
  writing: number[];
  writingHead: number;
  /**
   * The ack frame being gathered: type byte then `ackCount` uuids. Kept for the next frame
   * once sent (the Packeter copies it); it grows from 64 uuids to {@link ACKS_PER_FRAME}.
   */
  ackBuf: Buffer | null;
  ackCount: number;
  /** Received uuids to record in storage before acknowledging. */
  pendingSeen: Buffer[];
  ackScheduled: boolean;
  /** The dedup window of the identified peer. */
  seen: SeenWindow | undefined;
  /**
   * Received messages of this connection still to be looked up in the dedup window, and the
   * lookup set (built on the first of them; `null` once none is left or the window was empty).
   */
  checkLeft: number;
  seenIndex: SeenIndex | null | undefined;
  /**
   * Received messages (of an ack peer) waiting to be handed to the application, from
   * `backlogHead`: see {@link DELIVERIES_PER_SLICE}.
   */
  backlog: (Message | undefined)[];
  backlogHead: number;
  /** A slice of the backlog is scheduled. */
  sliceScheduled: boolean;
  /** Messages handed over in the turn numbered `turn`. */
  turnDelivered: number;
  turn: number;
}

/**
 * The side of a connection that accepted it pings after `keepaliveInterval` × this with
 * nothing received, the connecting side after `keepaliveInterval`. So between two peers with
 * the same interval only the connecting side ever pings and the listening one only answers:
 * one packet each way per interval, where equal deadlines on both sides made both ping at once
 * (a hub with thousands of connections pays for every packet).
 */
export const LISTENER_KEEPALIVE_FACTOR = 1.1;

/** Uuids per ack frame at most (an ack frame is sent at the latest on the next turn). */
const ACKS_PER_FRAME = 1024;
/** Received message bodies and uuids are copied into slabs of this size (like Node's Buffer pool). */
const RX_SLAB_SIZE = 8 * 1024;
/** The uuids of an ack frame handed to message-delivered listeners are copied this many bytes at a time. */
const ACK_COPY_BYTES = 16 * 256;
const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY = Buffer.alloc(0);
/**
 * @internal Received messages of an ack peer handed to the application per connection in one
 * stretch (a turn of the event loop); the rest wait for the next turns, a slice per turn, each
 * after what the application sent meanwhile (replies, acks) has been handed to the packeter,
 * whose write comes first. So two busy peers work at once instead of taking turns over whole
 * batches: RPC with 1000 calls in flight ran about twice as fast. Only ack peers are sliced:
 * their in-flight window bounds what can wait (and {@link BACKLOG_LIMIT} bounds it anyway); a
 * plain snakeMQ peer's messages are all handed over as they arrive.
 */
export const DELIVERIES_PER_SLICE = 256;
/**
 * @internal At most this many received messages wait per connection: a peer that sends past
 * its window makes the whole backlog be handed over at once (bounded memory).
 */
export const BACKLOG_LIMIT = 16 * DELIVERIES_PER_SLICE;

const noop = (): void => {};

/** An integer >= 0 or `Infinity`. */
function checkCount(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !(v === Infinity || (Number.isInteger(v) && v >= 0))) {
    throw new InvalidArgumentError(`${name} must be an integer >= 0 or Infinity, got ${v}`);
  }
  return v;
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
  /** Peers with a window in `seen` and no connection, the one gone longest first. */
  private readonly idleSeen = new Set<string>();
  /** Windows are not forgotten before this time (see {@link LOADED_WINDOWS_GRACE_MS}). */
  private trimFrom = 0;
  private trimTimer: TimerHandle | undefined;
  private trimQueued = false;
  /** The next TTL expiry of each queue whose TTLs run down, on one timer. */
  private readonly ttls: Deadlines<PeerQueue>;
  private readonly ttlTimers = new Map<string, Deadline<PeerQueue>>();
  /** The keepalive checks of all connections, on one timer. */
  private readonly keepalives: Deadlines<Conn>;
  private readonly ownIdentFrame: Buffer;
  private readonly helloFrame: Buffer | undefined;
  private loaded = false;
  private closed = false;
  /** Packets come through the packeter's sink (else through `packet` events). */
  private readonly sinkSet: boolean;
  private iterators = new Set<(r: Received | null) => void>();
  /** Storage writes of dedup windows (received uuids, whose acks wait for them; forgotten windows), awaited by close(). */
  private readonly seenCommits = new Set<Promise<void>>();
  /** See {@link observeDelivery} (copy-on-write). */
  private observers: DeliveryObserver[] = [];

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
    const maxInFlightBytes = checkMs('maxInFlightBytes', options.maxInFlightBytes, MESSAGING_DEFAULTS.maxInFlightBytes, 1);
    this.opts = {
      keepaliveInterval: checkMs('keepaliveInterval', options.keepaliveInterval, MESSAGING_DEFAULTS.keepaliveInterval),
      keepaliveWait: checkMs('keepaliveWait', options.keepaliveWait, MESSAGING_DEFAULTS.keepaliveWait),
      queueLimit: checkMs('queueLimit', options.queueLimit, MESSAGING_DEFAULTS.queueLimit, 1),
      queueLimitBytes: checkMs('queueLimitBytes', options.queueLimitBytes, MESSAGING_DEFAULTS.queueLimitBytes, 1),
      queuePolicy: options.queuePolicy ?? MESSAGING_DEFAULTS.queuePolicy,
      maxInFlight,
      maxInFlightBytes,
      // (an allowance above the maximum is the maximum)
      initialInFlight: Math.min(maxInFlight, checkMs('initialInFlight', options.initialInFlight, MESSAGING_DEFAULTS.initialInFlight, 1)),
      initialInFlightBytes: Math.min(
        maxInFlightBytes,
        checkMs('initialInFlightBytes', options.initialInFlightBytes, MESSAGING_DEFAULTS.initialInFlightBytes, 1),
      ),
      dedupWindow: checkMs('dedupWindow', options.dedupWindow, Math.max(2 * maxInFlight, 2 * MESSAGING_DEFAULTS.maxInFlight), 1),
      dedupIdlePeers: checkCount('dedupIdlePeers', options.dedupIdlePeers, MESSAGING_DEFAULTS.dedupIdlePeers),
      extensions: options.extensions ?? MESSAGING_DEFAULTS.extensions,
    };
    if (!['reject', 'drop-oldest', 'block'].includes(this.opts.queuePolicy)) {
      throw new InvalidArgumentError(`queuePolicy must be 'reject', 'drop-oldest' or 'block'`);
    }
    this.keepalives = new Deadlines<Conn>(this.clock, this.onKeepalive, {
      resolution: Math.min(KEEPALIVE_RESOLUTION_MS, this.opts.keepaliveInterval / 16, this.opts.keepaliveWait / 16),
    });
    this.ttls = new Deadlines<PeerQueue>(this.clock, this.onTtl);
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
    this.sinkSet = packeter.setPacketSink(this.onPacket);
    if (!this.sinkSet) packeter.on('packet', this.onPacketEvent);
    packeter.on('packets-sent', this.onPacketsSent);
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
  sendMessage(ident: string, message: Message): Promise<void> {
    try {
      return this.queueMessage(ident, message) ?? RESOLVED;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * @internal {@link sendMessage} for callers that send many messages (the RPC layer): the same
   * checks and effects, but it returns `undefined` when the message was queued at once and
   * there is nothing to wait for (no storage commit, no blocked queue, storage loaded), and it
   * throws instead of rejecting. Otherwise it returns the promise `sendMessage` would.
   * @throws like {@link sendMessage} rejects
   */
  queueMessage(ident: string, message: Message): Promise<void> | undefined {
    if (typeof ident !== 'string' || ident.length === 0 || (ident.length > 85 && Buffer.byteLength(ident) > 255)) {
      throw new InvalidArgumentError('destination identity must be a string of 1..255 UTF-8 bytes');
    }
    if (ident === this.identifier) throw new InvalidArgumentError('cannot send a message to oneself', 'ERR_SEND_TO_SELF');
    if (!(message instanceof Message)) throw new InvalidArgumentError('message must be a Message');
    if (this.closed) throw new ClosedError('messaging');
    if (!this.loaded) return this.sendWhenLoaded(ident, message);
    return this.send(ident, message);
  }

  /**
   * @internal Have `observer` told what `message-sent` and `message-delivered` tell, at the
   * same moments, without a uuid Buffer made per message: the uuid is handed over as
   * `src[off..off + 16)`, valid only during the call (copy it to keep it). Returns the function
   * that stops it. Observers must not remove queued messages while they are told.
   */
  observeDelivery(observer: DeliveryObserver): () => void {
    this.observers = [...this.observers, observer];
    return () => {
      this.observers = this.observers.filter((o) => o !== observer);
    };
  }

  private async sendWhenLoaded(ident: string, message: Message): Promise<void> {
    await this.ready;
    if (this.closed) throw new ClosedError('messaging');
    return this.send(ident, message);
  }

  /**
   * Apply the queue policy and queue the message, or line it up under 'block'; may throw.
   * `undefined` when it was queued and nothing is left to wait for.
   */
  private send(ident: string, message: Message): Promise<void> | undefined {
    const q = this.queue(ident);
    if (message.ttl === 0 && !q.connected) {
      this.emit('message-drop', ident, message.uuid, 'ttl');
      return undefined;
    }
    // The limit check and the push below run in one synchronous stretch, so concurrent calls
    // cannot all pass the check at once.
    const bytes = message.body.length;
    switch (this.opts.queuePolicy) {
      case 'reject':
        if (this.full(q, bytes)) throw new QueueFullError(q.ident, this.opts.queueLimit);
        break;
      case 'drop-oldest':
        while (this.full(q, bytes)) {
          const victim = q.oldestUnsent();
          if (victim < 0) throw new QueueFullError(q.ident, this.opts.queueLimit);
          const uuid = q.uuid(victim);
          this.removeItem(q, victim);
          this.emit('message-drop', q.ident, uuid, 'queue-full');
        }
        break;
      case 'block':
        // Earlier calls already waiting go first; the line only ever holds calls whose head
        // does not fit (room that appears is handed out at once, see wakeWaiters).
        if (q.lineHead < q.line.length || this.full(q, bytes)) return this.wait(q, message);
        break;
    }
    const commit = this.enqueue(ident, q, message);
    return commit === undefined ? undefined : commit.then(noop);
  }

  /** Line a call up under the 'block' policy; {@link wakeWaiters} queues it when there is room. */
  private wait(q: PeerQueue, message: Message): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      q.line.push({ message, resolve, reject });
    });
  }

  /** Push a message into its queue (and storage); synchronous. Returns the storage commit, if any. */
  private enqueue(ident: string, q: PeerQueue, message: Message): Promise<void> | undefined {
    if (this.closed) throw new ClosedError('messaging');
    const src = Message.uuidSource(message);
    const off = Message.uuidOffset(message);
    // A uuid drawn for this message and never queued before cannot be queued already; any
    // other one is looked up (which makes the queue keep an index until it empties).
    if ((!Message.takeFresh(message) || q.index !== undefined) && q.find(src, off) >= 0) {
      throw new InvalidArgumentError('a message with this uuid is already queued', 'ERR_DUPLICATE_UUID');
    }
    const stored = this.storage !== undefined && (message.flags & FLAG_PERSISTENT) !== 0;
    const ttl = message.ttl;
    q.push(src, off, message.body, message.flags, ttl, stored, ttl !== null && q.since !== null ? this.clock.now() : 0);
    let commit: Promise<void> | undefined;
    if (stored) {
      commit = this.storage!.push([{ queue: ident, uuid: message.uuid, ttl, flags: message.flags, body: message.body }]);
    }
    if (!q.pumpScheduled) this.schedulePump(q);
    if (q.since !== null) this.armTtl(q);
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
    const slot = q.slotOf(q.find(Buffer.from(uuid.buffer, uuid.byteOffset, 16), 0));
    if (slot < 0 || q.isRemoved(slot) || q.state(slot) !== QUEUED) return false;
    this.removeItem(q, slot);
    return true;
  }

  /** Whether a peer with this identity is connected and identified. */
  isConnected(ident: string): boolean {
    return this.identConn.has(ident);
  }

  /**
   * Whether the connected peer `ident` speaks our extensions: `true` when it sent a hello
   * before identifying (a snakemq peer), `false` for a plain snakeMQ 1.6 peer (or any peer
   * while our own `extensions` option is off, since then neither side uses them), `undefined`
   * when no peer of that identity is connected. The RPC layer picks its codec by this.
   */
  peerSpeaksExtensions(ident: string): boolean | undefined {
    return this.identConn.get(ident)?.ext;
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
   * Messages received and not yet handed over (bursts are handed over in slices) are handed
   * over first; if a `message` listener throws there, `close()` still closes and then rejects
   * with that error.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    // messages received and not yet handed over are handed over first; a listener that throws
    // there does not stop the closing (close() rejects with its error once closed)
    let failed = false;
    let first: unknown;
    for (const c of this.conns.values()) {
      if (c.dead || c.backlogHead === c.backlog.length) continue;
      try {
        this.drainBacklog(c);
      } catch (err) {
        if (!failed) first = err;
        failed = true;
      }
    }
    this.closed = true;
    this.rxSrc = null; // (the last received chunk)
    this.packeter.off('connect', this.onConnect);
    this.packeter.off('disconnect', this.onDisconnect);
    if (this.sinkSet) this.packeter.setPacketSink(undefined, this.onPacket);
    else this.packeter.off('packet', this.onPacketEvent);
    this.packeter.off('packets-sent', this.onPacketsSent);
    this.packeter.off('drain', this.onDrain);
    this.keepalives.clear();
    this.ttls.clear();
    this.ttlTimers.clear();
    if (this.trimTimer) this.clock.clearTimeout(this.trimTimer);
    for (const q of this.queues.values()) {
      const line = q.line;
      const from = q.lineHead;
      q.line = [];
      q.lineHead = 0;
      for (let i = from; i < line.length; i++) line[i]!.reject(new ClosedError('messaging'));
    }
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
    if (failed) throw first;
  }

  // ---------------------------------------------------------------- loading

  private async load(): Promise<void> {
    try {
      if (!this.storage) return;
      const [items, seen] = await Promise.all([this.storage.load(), this.storage.loadSeen()]);
      const now = this.clock.now();
      for (const s of items) this.queue(s.queue).push(s.uuid, 0, s.body, s.flags, s.ttl, true, now);
      for (const [peer, uuids] of seen) {
        const w = this.seenWindow(peer);
        for (const u of uuids) {
          if (u.length === 16) w.add(readI32(u, 0), readI32(u, 4), readI32(u, 8), readI32(u, 12));
        }
        if (!this.identConn.has(peer)) this.idleSeen.add(peer);
      }
      if (seen.size > 0 && !this.closed) {
        this.trimFrom = now + LOADED_WINDOWS_GRACE_MS;
        this.trimTimer = this.clock.setTimeout(() => {
          this.trimTimer = undefined;
          this.queueTrim();
        }, LOADED_WINDOWS_GRACE_MS);
      }
      for (const q of this.queues.values()) this.armTtl(q);
      this.log.debug(`messaging ${this.identifier}: loaded ${items.length} stored messages`);
    } finally {
      this.loaded = true;
      // Lookup sets made before the stored windows were in: make them again from the windows.
      for (const c of this.conns.values()) if (c.checkLeft > 0) c.seenIndex = undefined;
      for (const ident of this.identConn.keys()) {
        const q = this.queues.get(ident);
        if (q) this.schedulePump(q);
      }
    }
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
   * Queue the messages of blocked senders, in call order, as long as the first one fits. The
   * line is left holding only calls whose first one does not fit.
   */
  private wakeWaiters(q: PeerQueue): void {
    const line = q.line;
    while (q.lineHead < line.length) {
      const w = line[q.lineHead]!;
      if (this.full(q, w.message.body.length)) break;
      line[q.lineHead++] = undefined;
      let commit: Promise<void> | undefined;
      try {
        commit = this.enqueue(q.ident, q, w.message);
      } catch (err) {
        w.reject(err as Error);
        continue;
      }
      w.resolve(commit === undefined ? undefined : commit.then(noop));
    }
    if (q.lineHead === line.length) {
      if (line.length > 0) {
        q.line = [];
        q.lineHead = 0;
      }
    } else if (q.lineHead > 1024 && q.lineHead * 2 > line.length) {
      q.line = line.slice(q.lineHead);
      q.lineHead = 0;
    }
  }

  /**
   * Remove an item (by slot) from its queue and storage; wake blocked senders when there is
   * room. Slots of the queue may move afterwards.
   */
  private removeItem(q: PeerQueue, slot: number): void {
    const wasFull = this.full(q, 0);
    if (q.isStored(slot)) this.deleteStored([{ queue: q.ident, uuid: q.uuid(slot) }]);
    q.remove(slot);
    this.afterRemoval(q, wasFull);
  }

  private deleteStored(keys: ItemKey[]): void {
    if (keys.length) this.storage!.delete(keys).catch((err) => this.reportError(err, undefined));
  }

  /** Items left a queue: queue blocked senders' messages that fit, and report `drain` if it was full. */
  private afterRemoval(q: PeerQueue, wasFull: boolean): void {
    const drained = wasFull && !this.full(q, 0);
    if (q.lineHead < q.line.length) this.wakeWaiters(q);
    if (drained) this.emit('drain', q.ident);
  }

  /** Have the queue's next TTL expiry (if any) scheduled. */
  private armTtl(q: PeerQueue): void {
    if (this.closed) return;
    const at = q.nextExpiry();
    let cur = this.ttlTimers.get(q.ident);
    if (cur && (cur.value !== q || at === null)) {
      this.ttls.delete(cur);
      this.ttlTimers.delete(q.ident);
      cur = undefined;
    }
    if (at === null) return;
    if (!cur) {
      cur = this.ttls.entry(q);
      this.ttlTimers.set(q.ident, cur);
    }
    if (cur.at !== at) this.ttls.set(cur, at);
  }

  private readonly onTtl = (q: PeerQueue): void => {
    if (this.ttlTimers.get(q.ident)?.value === q) this.ttlTimers.delete(q.ident);
    this.expire(q);
  };

  private expire(q: PeerQueue): void {
    const wasFull = this.full(q, 0);
    this.dropExpired(q, q.expire(this.clock.now()), wasFull);
    this.armTtl(q);
  }

  /** Items removed because their TTL ran out: delete them from storage and report them. */
  private dropExpired(q: PeerQueue, expired: RemovedItem[], wasFull: boolean): void {
    if (expired.length === 0) return;
    this.deleteStored(expired.filter((it) => it.stored).map((it) => ({ queue: q.ident, uuid: Buffer.from(it.uuid) })));
    for (const it of expired) this.emit('message-drop', q.ident, it.uuid, 'ttl');
    this.afterRemoval(q, wasFull);
  }

  private writeBackTtls(q: PeerQueue): Promise<void> | undefined {
    if (!this.storage || q.finite === 0) return;
    const updates = q.storedTtls(this.clock.now()).map((u) => ({ queue: q.ident, uuid: u.uuid, ttl: u.ttl }));
    return updates.length ? this.storage.updateTtls(updates) : undefined;
  }

  // ---------------------------------------------------------------- connections

  private readonly onConnect = (connId: ConnId): void => {
    const now = this.clock.now();
    const c: Conn = {
      id: connId,
      ext: false,
      acks: false,
      window: this.opts.initialInFlight,
      windowBytes: this.opts.initialInFlightBytes,
      flow: false,
      peerMaxPacket: MAX_WIRE_PACKET_SIZE,
      lastRecv: now,
      pingAt: 0,
      keepaliveAfter: 0,
      dead: false,
      writing: [],
      writingHead: 0,
      ackBuf: null,
      ackCount: 0,
      pendingSeen: [],
      ackScheduled: false,
      seen: undefined,
      checkLeft: 0,
      seenIndex: undefined,
      backlog: [],
      backlogHead: 0,
      sliceScheduled: false,
      turnDelivered: 0,
      turn: -1,
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
    if (c.keepalive) this.keepalives.delete(c.keepalive);
    this.detach(c);
  };

  /** Forget an identified connection: requeue what was in flight, start TTLs, report it. */
  private detach(c: Conn): void {
    // messages received before the connection ended are handed over first
    try {
      if (!c.dead && c.backlogHead < c.backlog.length) this.drainBacklog(c);
    } finally {
      this.forget(c);
    }
  }

  /** The rest of {@link detach}, also when a listener threw while the backlog was handed over. */
  private forget(c: Conn): void {
    const ident = c.ident;
    c.dead = true;
    if (ident === undefined || this.identConn.get(ident) !== c) return;
    this.identConn.delete(ident);
    if (this.seen.has(ident)) {
      this.idleSeen.add(ident);
      this.queueTrim();
    }
    const q = this.queues.get(ident);
    if (q && q.size === 0 && q.lineHead >= q.line.length) {
      // Nothing waits for this peer: forget its queue, so peers that come and go under ever
      // new identities cannot grow memory. It is made anew when needed.
      this.queues.delete(ident);
    } else if (q) {
      q.disconnect(this.clock.now());
      this.armTtl(q);
    }
    this.log.debug(`messaging ${this.identifier}: ${ident} disconnected (${c.id})`);
    this.emit('disconnect', c.id, ident);
  }

  private closeConn(c: Conn, err: SnakeMQError): void {
    this.log.debug(`messaging ${this.identifier}: closing ${c.id}: ${err.message}`);
    try {
      this.detach(c);
    } finally {
      this.packeter.closeConnection(c.id, err);
      this.reportError(err, c.id);
    }
  }

  private reportError(err: Error, connId: ConnId | undefined): void {
    if (this.listenerCount('error') > 0) this.emit('error', err, connId);
    else this.log.warn(`messaging ${this.identifier}: ${err.message}`);
  }

  /**
   * Start keepalive on a new connection. Received packets only note the time (`lastRecv`);
   * the connection's deadline is looked at when due and moved on from there, so traffic costs
   * keepalive nothing.
   */
  private armKeepalive(c: Conn): void {
    const interval = this.opts.keepaliveInterval;
    if (interval <= 0 || this.closed) return;
    const listening = this.packeter.connectionInfo(c.id)?.side === 'listener';
    c.keepaliveAfter = listening ? interval * LISTENER_KEEPALIVE_FACTOR : interval;
    c.keepalive = this.keepalives.entry(c);
    this.keepalives.set(c.keepalive, this.clock.now() + c.keepaliveAfter);
  }

  /** A connection's keepalive deadline is due: ping it, close it, or look again later. */
  private readonly onKeepalive = (c: Conn, now: number): void => {
    if (c.dead || !this.conns.has(c.id) || this.closed || !c.keepalive) return;
    const interval = c.keepaliveAfter;
    const wait = this.opts.keepaliveWait;
    if (c.pingAt && c.lastRecv < c.pingAt) {
      if (now - c.pingAt >= wait) {
        this.closeConn(c, new KeepaliveTimeoutError(now - c.lastRecv));
        return;
      }
      this.keepalives.set(c.keepalive, c.pingAt + wait);
      return;
    }
    c.pingAt = 0;
    const idle = now - c.lastRecv;
    if (idle >= interval) {
      this.packeter.sendPacket(c.id, encodePing());
      c.pingAt = now;
      this.keepalives.set(c.keepalive, now + wait);
    } else {
      this.keepalives.set(c.keepalive, c.lastRecv + interval);
    }
  };

  private readonly onPacketEvent = (connId: ConnId, payload: Buffer): void => {
    this.onPacket(connId, payload, 0, payload.length);
  };

  /** A packet's payload, `buf[start..end)`. */
  private readonly onPacket = (connId: ConnId, buf: Buffer, start: number, end: number): void => {
    if (this.closed) return;
    const c = this.conns.get(connId);
    if (!c || c.dead) return;
    // Packets of one received chunk arrived together: read the clock once per chunk.
    const chunk = this.packeter.chunksReceived;
    if (chunk !== this.recvChunk || c.pingAt >= this.recvNow) {
      this.recvChunk = chunk;
      this.recvNow = this.clock.now();
    }
    c.lastRecv = this.recvNow;
    if (c.ident !== undefined && end > start) {
      // Fast paths for the frames of the stream, valid as decodeFrame would find them.
      const type = buf[start];
      if (type === FRAME_MESSAGE && end - start > MESSAGE_HEADER_SIZE) return this.onMessage(c, c.ident, buf, start, end);
      if (type === FRAME_ACK && (end - start - 1) % 16 === 0) return this.onAck(c, c.ident, buf, start, end);
    }
    const payload = buf.subarray(start, end);
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
        return this.onMessage(c, c.ident, payload, 0, payload.length);
      case 'ack':
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError('ack frame received before identification'));
        return this.onAck(c, c.ident, payload, 0, payload.length);
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
    c.seen = this.seenWindow(ident);
    this.idleSeen.delete(ident);
    // Only a new connection's first messages can repeat ones received before (see SeenWindow).
    c.checkLeft = c.seen.limit;
    c.seenIndex = undefined;
    this.identConn.set(ident, c);
    const q = this.queue(ident);
    const wasFull = this.full(q, 0);
    const expired = q.connect(this.clock.now());
    const tt = this.ttlTimers.get(ident);
    if (tt) {
      this.ttls.delete(tt);
      this.ttlTimers.delete(ident);
    }
    this.dropExpired(q, expired, wasFull);
    this.writeBackTtls(q)?.catch((err) => this.reportError(err, undefined));
    this.log.debug(`messaging ${this.identifier}: ${ident} connected (${c.id}${c.ext ? ', extensions' : ''})`);
    this.emit('connect', c.id, ident);
    this.schedulePump(q);
  }

  // ---------------------------------------------------------------- sending

  private schedulePump(q: PeerQueue): void {
    if (q.pumpScheduled || !this.identConn.has(q.ident)) return;
    q.pumpScheduled = true;
    queueMicrotask(() => {
      q.pumpScheduled = false;
      this.pump(q.ident);
    });
  }

  private pump(ident: string): void {
    if (!this.loaded || this.closed) return;
    const c = this.identConn.get(ident);
    const q = this.queues.get(ident);
    if (!c || !q || c.dead) return;
    const p = this.packeter;
    const windowed = c.acks;
    // (the connection's slow-start allowance, see initialInFlight)
    const window = c.window;
    const windowBytes = c.windowBytes;
    // Bytes the connection takes before writable() turns false; asked again when used up.
    let room = 0;
    // The queue keeps each packet as it goes on the wire, one after the other in its chunks;
    // only the TTL is filled in now. Packets lying back to back in one chunk are handed to the
    // Packeter as one run (`chunk[runStart..runEnd)`, `run` of them, seqs from `runSeq`).
    let runChunk: Buffer | undefined;
    let runStart = 0;
    let runEnd = 0;
    let run = 0;
    let runSeq = 0;
    for (;;) {
      if (windowed && (q.inflight >= window || (q.inflight > 0 && q.inflightBytes >= windowBytes))) break;
      if (room <= 0) {
        if (!p.writable(c.id)) break;
        room = p.writableBytes(c.id);
      }
      const s = q.peekUnsent();
      if (s < 0) break;
      const len = q.bodyLength(s) + MESSAGE_FRAME_HEAD_SIZE;
      if (len > c.peerMaxPacket) {
        // (the run so far goes first: a listener may send, and so pump, again)
        if (run > 0) this.sendRun(c, runChunk!, runStart, runEnd, run, runSeq);
        run = 0;
        runChunk = undefined;
        const uuid = q.uuid(s);
        this.removeItem(q, s);
        this.emit('message-drop', ident, uuid, 'too-large');
        continue;
      }
      const chunk = q.chunk(s);
      const off = q.frameOffset(s);
      const t = q.ttl(s);
      writeU32BE(chunk, off + MESSAGE_TTL_OFFSET, t === null ? TTL_INFINITE_WIRE : ttlMsToWire(t));
      const body = q.largeBody(s);
      const seq = q.seqOf(s);
      q.markWriting(s);
      room -= len + PACKET_HEADER_SIZE;
      if (body === undefined && chunk === runChunk && off - PACKET_HEADER_SIZE === runEnd && seq === runSeq + run) {
        runEnd = q.packetEnd(s);
        run++;
        continue;
      }
      if (run > 0) this.sendRun(c, runChunk!, runStart, runEnd, run, runSeq);
      if (body === undefined) {
        runChunk = chunk;
        runStart = off - PACKET_HEADER_SIZE;
        runEnd = q.packetEnd(s);
        run = 1;
        runSeq = seq;
      } else {
        run = 0;
        runChunk = undefined;
        c.writing.push(seq, p.sendPacketParts(c.id, chunk.subarray(off, off + MESSAGE_FRAME_HEAD_SIZE), body), 1);
      }
    }
    if (run > 0) this.sendRun(c, runChunk!, runStart, runEnd, run, runSeq);
  }

  /** Hand `count` packets lying back to back in a queue chunk to the Packeter; their seqs follow `seq`. */
  private sendRun(c: Conn, chunk: Buffer, start: number, end: number, count: number, seq: number): void {
    c.writing.push(seq, this.packeter.sendFramedPackets(c.id, chunk.subarray(start, end), count), count);
  }

  private readonly onPacketsSent = (connId: ConnId, lastId: number): void => {
    const c = this.conns.get(connId);
    // A dead connection's items went back to their queue when it died.
    if (!c || c.ident === undefined || c.dead) return;
    const ident = c.ident;
    const q = this.queues.get(ident);
    const w = c.writing;
    let i = c.writingHead;
    const sentEvents = this.listenerCount('message-sent') > 0;
    const deliveredEvents = this.listenerCount('message-delivered') > 0;
    const observers = this.observers;
    // (with a plain snakeMQ peer, written is delivered: items leave the queue here)
    const wasFull = !c.acks && q !== undefined && this.full(q, 0);
    const deletes: ItemKey[] = [];
    // Runs written in full are passed; a run written in part is cut to its unwritten rest,
    // after its items are handled (when a listener throws, the next call walks them again and
    // skips those no longer being written).
    while (i < w.length && w[i + 1] <= lastId) {
      const first = w[i];
      const count = w[i + 2];
      const written = Math.min(count, lastId - w[i + 1] + 1);
      for (let seq = first; q !== undefined && seq < first + written; seq++) {
        // Looked up per item: a listener may have queued or removed messages meanwhile.
        const s = q.slotOf(seq);
        if (s < 0 || q.isRemoved(s) || q.state(s) !== WRITING) continue;
        // (an ack peer's message-delivered comes with its ack, see onAck)
        const uuid = sentEvents || (deliveredEvents && !c.acks) ? q.uuid(s) : undefined;
        // (the chunk keeps the uuid's bytes while observers are told, removed or not)
        const chunk = q.chunk(s);
        const off = q.frameOffset(s) + MESSAGE_UUID_OFFSET;
        if (c.acks) {
          q.setState(s, AWAITING_ACK);
          for (let k = 0; k < observers.length; k++) observers[k].sent(connId, ident, chunk, off);
          if (sentEvents) this.emit('message-sent', connId, ident, uuid!);
          continue;
        }
        // A plain snakeMQ peer: written is delivered.
        if (q.isStored(s)) deletes.push({ queue: ident, uuid: q.uuid(s) });
        q.remove(s);
        for (let k = 0; k < observers.length; k++) observers[k].sent(connId, ident, chunk, off);
        if (sentEvents) this.emit('message-sent', connId, ident, deliveredEvents ? Buffer.from(uuid!) : uuid!);
        for (let k = 0; k < observers.length; k++) observers[k].delivered(ident, chunk, off);
        if (deliveredEvents) this.emit('message-delivered', ident, uuid!);
      }
      if (written < count) {
        w[i] = first + written;
        w[i + 1] += written;
        w[i + 2] = count - written;
      } else i += 3;
    }
    this.deleteStored(deletes);
    c.writingHead = i;
    if (i === c.writing.length) {
      c.writing = [];
      c.writingHead = 0;
    } else if (i > 3 * 1024) {
      c.writing = c.writing.slice(i);
      c.writingHead = 0;
    }
    if (!c.acks && q) {
      this.afterRemoval(q, wasFull);
      this.schedulePump(q);
    }
  };

  private readonly onDrain = (connId: ConnId): void => {
    const c = this.conns.get(connId);
    if (c?.ident !== undefined) this.pump(c.ident);
  };

  /** An ack frame, `frame[start..end)`: type byte then n × 16-byte uuids. */
  private onAck(c: Conn, ident: string, frame: Buffer, start: number, end: number): void {
    const q = this.queues.get(ident);
    if (!q) return;
    const deliveredEvents = this.listenerCount('message-delivered') > 0;
    const observers = this.observers;
    const wasFull = this.full(q, 0);
    // Seqs of the items in flight by uuid, built only when an ack does not match the oldest item.
    let index: Map<string, number> | undefined;
    const deletes: ItemKey[] = [];
    // The uuids of message-delivered are views of copies of the frame's uuids, up to
    // ACK_COPY_BYTES at a time (the frame may be as long as a packet can be).
    let uuids: Buffer | undefined;
    let uuidsFrom = 0;
    let acked = 0;
    let ackedBytes = 0;
    for (let off = start + 1; off < end; off += 16) {
      // Acks come in sending order: the oldest item in flight is normally the one.
      let s = q.head;
      if (s >= q.end || !q.isInFlight(s) || !q.uuidIs(s, frame, off)) {
        index ??= q.inflightIndex();
        const seq = index.get(uuidKey(frame, off));
        if (seq === undefined) continue;
        s = q.slotOf(seq);
        if (s < 0 || !q.isInFlight(s)) continue;
      }
      // (storage gets a uuid of its own: a listener may change the one it was given)
      if (q.isStored(s)) deletes.push({ queue: ident, uuid: q.uuid(s) });
      let uuid: Buffer | undefined;
      if (deliveredEvents) {
        if (uuids === undefined || off + 16 > uuidsFrom + uuids.length) {
          uuidsFrom = off;
          uuids = Buffer.allocUnsafeSlow(Math.min(end - off, ACK_COPY_BYTES));
          frame.copy(uuids, 0, off, off + uuids.length);
        }
        uuid = uuids.subarray(off - uuidsFrom, off - uuidsFrom + 16);
      }
      const chunk = q.chunk(s);
      const uuidOff = q.frameOffset(s) + MESSAGE_UUID_OFFSET;
      ackedBytes += q.bodyLength(s);
      acked++;
      q.remove(s);
      for (let k = 0; k < observers.length; k++) observers[k].delivered(ident, chunk, uuidOff);
      if (deliveredEvents) this.emit('message-delivered', ident, uuid!);
    }
    this.deleteStored(deletes);
    // slow start: the allowance grows by what came back, so it doubles per round trip
    c.window = Math.min(this.opts.maxInFlight, c.window + acked);
    c.windowBytes = Math.min(this.opts.maxInFlightBytes, c.windowBytes + ackedBytes);
    this.afterRemoval(q, wasFull);
    this.schedulePump(q);
  }

  // ---------------------------------------------------------------- receiving

  /** Which received chunk `recvNow` was read for. */
  private recvChunk = -1;
  private recvNow = 0;
  /** Slab that received uuids and bodies are copied into. */
  private rxSlab: Buffer = Buffer.alloc(0);
  private rxOffset = 0;
  /** The stretch `rxSrc[rxSrcStart..rxSrcEnd)` of chunk number `rxSrcChunk` is copied at `rxSlab[i + rxDelta]`. */
  private rxSrc: Buffer | null = null;
  private rxSrcStart = 0;
  private rxSrcEnd = 0;
  private rxSrcChunk = -1;
  private rxDelta = 0;

  /** A message frame, `frame[start..end)`: type byte, uuid, TTL, flags, body; at least 25 bytes. */
  private onMessage(c: Conn, ident: string, frame: Buffer, start: number, end: number): void {
    const ttlWire = readU32BE(frame, start + MESSAGE_TTL_OFFSET);
    const ttl = ttlWire === TTL_INFINITE_WIRE ? null : ttlWire * 1000;
    const flags = readU32BE(frame, start + MESSAGE_FLAGS_OFFSET);
    if (!c.acks) {
      this.emit('message', c.id, ident, this.copyMessage(frame, start, end, ttl, flags));
      return;
    }
    const m = this.copyMessage(frame, start, end, ttl, flags);
    if (c.backlogHead < c.backlog.length) {
      if (c.backlog.length - c.backlogHead >= BACKLOG_LIMIT) {
        // a peer sending past its window: no more waiting, everything is handed over now
        this.drainBacklog(c);
        this.deliver(c, ident, m);
        return;
      }
    } else {
      if (c.turn !== this.turn) {
        c.turn = this.turn;
        c.turnDelivered = 0;
        this.scheduleEndTurn();
      }
      if (c.turnDelivered < DELIVERIES_PER_SLICE) {
        c.turnDelivered++;
        this.deliver(c, ident, m);
        return;
      }
    }
    // behind the messages waiting, or past this turn's slice
    c.backlog.push(m);
    this.scheduleSlice(c);
  }

  /** Counts turns of the event loop in which messages were handed over (see `Conn.turn`). */
  private turn = 0;
  private turnScheduled = false;
  private readonly endTurn = (): void => {
    this.turnScheduled = false;
    this.turn++;
  };

  private scheduleEndTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(this.endTurn);
  }

  /** Hand the next slice of a connection's backlog over on a later turn, after this one's writes. */
  private scheduleSlice(c: Conn): void {
    if (c.sliceScheduled) return;
    c.sliceScheduled = true;
    // What this slice acknowledges goes to the packeter now: its write is then scheduled
    // before the next slice runs.
    this.flushAcks(c);
    setImmediate(() => this.runSlice(c));
  }

  private runSlice(c: Conn): void {
    c.sliceScheduled = false;
    if (c.dead || this.closed || c.ident === undefined) return;
    // messages arriving before the next turn ends wait behind this slice
    c.turn = this.turn;
    c.turnDelivered = DELIVERIES_PER_SLICE;
    this.scheduleEndTurn();
    try {
      this.handOver(c, DELIVERIES_PER_SLICE);
    } finally {
      // the rest on the next turns, also after a listener threw
      if (c.backlogHead < c.backlog.length && !c.dead && !this.closed) this.scheduleSlice(c);
    }
  }

  private trimBacklog(c: Conn): void {
    if (c.backlogHead === c.backlog.length) {
      c.backlog = [];
      c.backlogHead = 0;
    } else if (c.backlogHead > 1024 && c.backlogHead * 2 > c.backlog.length) {
      c.backlog = c.backlog.slice(c.backlogHead);
      c.backlogHead = 0;
    }
  }

  /** Hand the whole backlog of a connection over now. */
  private drainBacklog(c: Conn): void {
    this.handOver(c, Infinity);
  }

  /**
   * Hand the next `max` waiting messages of a connection over (fewer if fewer wait). A listener
   * that throws does not keep the others from their messages: the first error goes on once they
   * are handed over.
   */
  private handOver(c: Conn, max: number): void {
    const ident = c.ident;
    if (ident === undefined) return;
    let failed = false;
    let first: unknown;
    for (let n = max; n > 0 && c.backlogHead < c.backlog.length; n--) {
      const m = c.backlog[c.backlogHead]!;
      c.backlog[c.backlogHead++] = undefined;
      try {
        this.deliver(c, ident, m);
      } catch (err) {
        if (!failed) first = err;
        failed = true;
      }
    }
    this.trimBacklog(c);
    if (failed) throw first;
  }

  /** Hand a received message of an ack peer to the application (unless it is a repeat) and acknowledge it. */
  private deliver(c: Conn, ident: string, m: Message): void {
    const src = Message.uuidSource(m);
    const u = Message.uuidOffset(m);
    const u0 = readI32(src, u);
    const u1 = readI32(src, u + 4);
    const u2 = readI32(src, u + 8);
    const u3 = readI32(src, u + 12);
    const w = c.seen ?? this.seenWindow(ident);
    if (c.checkLeft > 0) {
      c.checkLeft--;
      let index = c.seenIndex;
      if (index === undefined) index = c.seenIndex = w.size > 0 ? w.index() : null;
      if (c.checkLeft === 0) c.seenIndex = null;
      if (index !== null && index.has(u0, u1, u2, u3)) {
        // a resend of one we have: acknowledge it again, deliver it not
        this.queueAck(c, u0, u1, u2, u3);
        return;
      }
    }
    // Recorded and acknowledged even when a listener throws: it was handed over, and a message
    // that makes a listener throw is not to come back again and again.
    try {
      this.emit('message', c.id, ident, m);
    } finally {
      w.add(u0, u1, u2, u3);
      if (this.storage) this.queueSeen(c, ident, m.uuid);
      else this.queueAck(c, u0, u1, u2, u3);
    }
  }

  /**
   * A received message with its own copy of uuid and body (the frame is a view of a larger
   * chunk), in a slab shared by received messages as Node's Buffer pool does for small buffers;
   * large bodies get their own memory.
   *
   * Copied a stretch at a time: the first message of a chunk copies itself and the packets
   * right after it in the chunk (read by their length prefixes) as long as they are small and
   * fit the slab, and the messages among them become views of that copy: one memcpy for dozens
   * of messages instead of a `Buffer#copy` each. The stretch is known by the chunk buffer and
   * the Packeter's chunk count, so a transport that hands over one buffer again with new bytes
   * is never answered from an old copy.
   */
  private copyMessage(frame: Buffer, start: number, end: number, ttl: number | null, flags: number): Message {
    const from = start + 1; // uuid, TTL, flags, body
    const n = end - from;
    let slab: Buffer;
    let off: number;
    if (frame === this.rxSrc && from >= this.rxSrcStart && end <= this.rxSrcEnd && this.packeter.chunksReceived === this.rxSrcChunk) {
      slab = this.rxSlab;
      off = from + this.rxDelta;
    } else if (n > RX_SLAB_SIZE >>> 1) {
      slab = Buffer.allocUnsafeSlow(n);
      off = 0;
      frame.copy(slab, 0, from, end);
    } else {
      slab = this.rxSlab;
      off = this.rxOffset;
      if (slab.length - off < n) {
        slab = this.rxSlab = Buffer.allocUnsafeSlow(RX_SLAB_SIZE);
        off = 0;
      }
      // the messages after this one that are whole in the chunk, small, and fit the slab
      const limit = from + (slab.length - off);
      let stop = end;
      for (let at = end; at + PACKET_HEADER_SIZE < frame.length; ) {
        const len = readU32BE(frame, at);
        const next = at + PACKET_HEADER_SIZE + len;
        if (len > RX_SLAB_SIZE >>> 1 || next > frame.length || next > limit || frame[at + PACKET_HEADER_SIZE] !== FRAME_MESSAGE) break;
        stop = at = next;
      }
      frame.copy(slab, off, from, stop);
      this.rxSrc = frame;
      this.rxSrcStart = from;
      this.rxSrcEnd = stop;
      this.rxSrcChunk = this.packeter.chunksReceived;
      this.rxDelta = off - from;
      // keep the next copy 8-byte aligned
      this.rxOffset = Math.min(slab.length, off + ((stop - from + 7) & ~7));
    }
    return Message.fromWire(slab, off, off + n, ttl, flags);
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
    // gone, and its window forgotten meanwhile (a listener that closed the connection): the
    // uuids would make a window in storage that memory no longer has
    if (c.dead && this.seen.get(ident) !== c.seen) return undefined;
    const commit = this.storage!.addSeen(ident, uuids, this.opts.dedupWindow).then(
      () => {
        for (const u of uuids) this.queueAck(c, readI32(u, 0), readI32(u, 4), readI32(u, 8), readI32(u, 12));
      },
      (err) => this.reportError(err, c.id),
    );
    return this.trackSeen(commit);
  }

  /** Keep `commit` (which never rejects) in `seenCommits` until it settles. */
  private trackSeen(commit: Promise<void>): Promise<void> {
    this.seenCommits.add(commit);
    void commit.finally(() => this.seenCommits.delete(commit));
    return commit;
  }

  /**
   * Trim the idle windows on the next turn: a connection replaced by another of the same peer
   * leaves and comes back within this one, and must not cost that peer (or another) a window.
   */
  private queueTrim(): void {
    if (this.trimQueued || this.idleSeen.size <= this.opts.dedupIdlePeers) return;
    this.trimQueued = true;
    setImmediate(() => {
      this.trimQueued = false;
      this.trimIdleSeen();
    });
  }

  /** Forget the windows of the peers gone longest while more than `dedupIdlePeers` are kept, in storage too. */
  private trimIdleSeen(): void {
    if (this.closed || this.clock.now() < this.trimFrom) return;
    const gone: string[] = [];
    for (const peer of this.idleSeen) {
      if (this.idleSeen.size <= this.opts.dedupIdlePeers) break;
      this.idleSeen.delete(peer);
      this.seen.delete(peer);
      gone.push(peer);
    }
    const storage = this.storage;
    if (!storage || gone.length === 0) return;
    // (seen uuids of a connection that is gone and whose window was forgotten are not written
    // after this: see flushSeen)
    const commit = Promise.all(gone.map((peer) => Promise.resolve().then(() => storage.addSeen(peer, [], 0)))).then(
      () => undefined,
      (err) => this.reportError(err, undefined),
    );
    this.trackSeen(commit);
  }

  private seenWindow(ident: string): SeenWindow {
    let w = this.seen.get(ident);
    if (!w) {
      w = new SeenWindow(this.opts.dedupWindow);
      this.seen.set(ident, w);
    }
    return w;
  }

  /** Acknowledge a uuid (four little-endian int32): on the next turn, or now when the frame is full. */
  private queueAck(c: Conn, u0: number, u1: number, u2: number, u3: number): void {
    if (c.dead || !this.conns.has(c.id)) return;
    let buf = c.ackBuf;
    const off = 1 + 16 * c.ackCount;
    if (buf === null || buf.length < off + 16) {
      const grown = Buffer.allocUnsafeSlow(buf === null ? 1 + 16 * 64 : Math.min(2 * buf.length - 1, 1 + 16 * ACKS_PER_FRAME));
      if (buf !== null) buf.copy(grown, 0, 0, off);
      grown[0] = FRAME_ACK;
      buf = c.ackBuf = grown;
    }
    writeI32(buf, off, u0);
    writeI32(buf, off + 4, u1);
    writeI32(buf, off + 8, u2);
    writeI32(buf, off + 12, u3);
    if (++c.ackCount >= ACKS_PER_FRAME) this.flushAcks(c);
    else if (!c.ackScheduled) {
      c.ackScheduled = true;
      setImmediate(() => this.flushAcks(c));
    }
  }

  private flushAcks(c: Conn): void {
    c.ackScheduled = false;
    if (c.ackCount === 0 || c.dead || !this.conns.has(c.id)) return;
    const n = c.ackCount;
    c.ackCount = 0;
    // as the head of a packet: copied before this returns, so the buffer gathers the next frame
    this.packeter.sendPacketParts(c.id, c.ackBuf!.subarray(0, 1 + 16 * n), EMPTY);
  }
}
