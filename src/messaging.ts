/**
 * Messaging: identity routing, per-peer queues with TTL, keepalive, persistent storage and —
 * between peers that both speak our extensions (version 2) — sequenced, acknowledged delivery
 * with deduplication, a resume after each reconnect and a bounded in-flight window. Speaks
 * snakeMQ protocol version 1 byte for byte with plain snakeMQ 1.6 peers.
 *
 * The rules of a connection (handshake, delivery mode, resume, slow start, repeats,
 * keepalive) are in {@link Session} (session.ts); the queues in {@link PeerQueue} (queue.ts);
 * the receiver's dedup marks in {@link DeliveredMarks} (inbound.ts). This class does the I/O
 * and the bookkeeping between them.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { copy16, readI32, readU32BE, writeI32, writeU32BE } from './bytes.js';
import { type Clock, type TimerHandle, systemClock } from './clock.js';
import { type Deadline, Deadlines, KEEPALIVE_RESOLUTION_MS } from './deadlines.js';
import {
  BadFrameError,
  ClosedError,
  DuplicateIdentityError,
  StorageError,
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
  FRAME_IDENTIFICATION,
  FRAME_MESSAGE,
  FRAME_SEQ_ACK,
  FRAME_SEQ_MESSAGE,
  type Frame,
  INCARNATION_SIZE,
  MAX_SEQ,
  MESSAGE_FLAGS_OFFSET,
  MESSAGE_FRAME_HEAD_SIZE,
  MESSAGE_HEADER_SIZE,
  MESSAGE_TTL_OFFSET,
  MESSAGE_UUID_OFFSET,
  PROTOCOL_VERSION,
  SEQ_MESSAGE_FLAGS_OFFSET,
  SEQ_MESSAGE_HEADER_SIZE,
  SEQ_MESSAGE_SEQ_OFFSET,
  SEQ_MESSAGE_TTL_OFFSET,
  SEQ_MESSAGE_UUID_OFFSET,
  TTL_INFINITE_WIRE,
  decodeFrame,
  encodeHello,
  encodeIdentification,
  encodeIncompatibleProtocol,
  encodePing,
  encodePong,
  encodeProtocolVersion,
  encodeResume,
  MARK_FRAME_SIZE,
  readSeq,
  ttlMsToWire,
  writeMark,
  writeSeq,
} from './protocol.js';
import { AWAITING_ACK, FRAME_HEAD_SIZE, PeerQueue, QUEUED, type RemovedItem, WRITING } from './queue.js';
import { DeliveredMarks } from './inbound.js';
import { Session, type SessionConfig, sameIncarnation } from './session.js';
import type { ItemKey, QueuesStorage } from './storage.js';

export { Message, FLAG_PERSISTENT };

/** Our own identity is at most this many characters (snakeMQ cuts its own there). */
export const MAX_IDENT_LENGTH = 50;

/** Why a message was dropped. */
export type DropReason = 'ttl' | 'queue-full' | 'too-large';

/** What happens when a peer's queue is at its limit. */
export type QueuePolicy = 'reject' | 'drop-oldest' | 'block';

/** Meta keys (see {@link QueuesStorage.getMeta}) of a sender's incarnation and its reserved sequence numbers. */
export const META_INCARNATION = 'snakemq.incarnation';
export const META_SEQ_RESERVED = 'snakemq.seq-reserved';
/**
 * Sequence numbers are reserved in storage this many at a time (one meta write per block),
 * the next block when half of one is used, so that a restarted sender never reuses one
 * (a receiver would take a reused number for a repeat).
 */
export const SEQ_BLOCK = 1 << 20;
/**
 * Packets of a connection kept while stored messages load (more closes it). Only peers of
 * extension version 2 are held, from their identification on, and they send no message before
 * our resume: what they send meanwhile is a few small frames.
 */
const EARLY_BYTES_LIMIT = 1024 * 1024;

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
  dedupIdlePeers: 1_000_000,
  extensions: true,
} as const;

/** Options of {@link Messaging}. All durations in milliseconds. */
export interface MessagingOptions {
  /** Where persistent messages (and the dedup marks) are kept. Without it nothing persists. */
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
   * Dedup marks kept for peers that are not connected (default 1,000,000; `Infinity`: all). A
   * mark is what a receiver remembers of a sender: its incarnation and the highest sequence
   * number delivered from it, about 100 bytes in memory with the peer's identity (the bench
   * figure `dedup_bytes_per_peer`). Past the limit the mark of the peer gone longest ago
   * is forgotten, in storage too, so that peers coming and going under ever new identities
   * cannot grow memory without bound.
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

/** A connection: its {@link Session} and what the I/O around it needs. */
class Conn extends Session {
  readonly id: ConnId;
  /** When keepalive looks at this connection next (in {@link Messaging}'s one keepalive heap). */
  keepalive: Deadline<Conn> | undefined = undefined;
  /** Replaced by another connection of the same identity, or closing: ignore it. */
  dead = false;
  /** We have not sent our version, hello and identity yet (stored messages are loading). */
  greetPending = false;
  /** Packets received while stored messages load, copied, handed over once loaded. */
  early: Buffer[] | undefined = undefined;
  earlyBytes = 0;
  /** The timer of the wait for the peer's resume (sequenced). */
  resumeTimer: TimerHandle | undefined = undefined;
  /**
   * The items being written on this connection, in packet order, as runs of three numbers
   * from `writingHead` on: the seq of a run's first item, its packet id, and how many items
   * follow with consecutive seqs and packet ids.
   */
  writing: number[] = [];
  writingHead = 0;
  /**
   * A legacy (extension version 1) peer's ack frame being gathered: type byte then `ackCount`
   * uuids. Kept for the next frame once sent (the Packeter copies it); it grows from 64 uuids
   * to {@link ACKS_PER_FRAME}.
   */
  ackBuf: Buffer | null = null;
  ackCount = 0;
  ackScheduled = false;
  /** A sequenced peer: its slot in the receiver's marks, and a cumulative ack is due. */
  markSlot = -1;
  seqAckDue = false;
  /** Deliveries (and repeats) since the last cumulative ack. */
  seqAcks = 0;
  /** The highest wire seq of ours written on this connection or covered by the peer's resume: acks go no further. */
  sentSeq = 0;
  /** Deliveries not yet committed to storage (one write per connection and turn). */
  commitScheduled = false;
  /**
   * Received sequenced messages waiting to be handed to the application, from `backlogHead`
   * (their sequence numbers in `backlogSeqs`): see {@link DELIVERIES_PER_SLICE}.
   */
  backlog: (Message | undefined)[] = [];
  backlogSeqs: number[] = [];
  backlogHead = 0;
  /** A slice of the backlog is scheduled. */
  sliceScheduled = false;
  /** Messages handed over in the turn numbered `turn`. */
  turnDelivered = 0;
  turn = -1;

  constructor(id: ConnId, config: SessionConfig, now: number) {
    super(config, MAX_WIRE_PACKET_SIZE, now);
    this.id = id;
  }
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
/** A sequenced receiver acknowledges at the latest after this many deliveries (else once per turn). */
const SEQ_ACK_EVERY = 1024;
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
  /** The receiver's dedup marks of the senders of sequenced messages. */
  private readonly marks = new DeliveredMarks();
  private trimQueued = false;
  /** Our incarnation (toward every peer), 8 bytes: from storage when there is one, else random. */
  private incarnation: Buffer = randomBytes(INCARNATION_SIZE);
  /** The next sequence number to give a message, and the end of the block reserved in storage. */
  private nextSeq = 1;
  private seqReserved = MAX_SEQ;
  private readonly sessionConfig: SessionConfig;
  /** The next TTL expiry of each queue whose TTLs run down, on one timer. */
  private readonly ttls: Deadlines<PeerQueue>;
  private readonly ttlTimers = new Map<string, Deadline<PeerQueue>>();
  /** The keepalive checks of all connections, on one timer. */
  private readonly keepalives: Deadlines<Conn>;
  private readonly ownIdentFrame: Buffer;
  /** Made once loaded (it carries our incarnation); connections are greeted only then. */
  private helloFrame: Buffer | undefined;
  /** A cumulative ack being written (the Packeter copies it). */
  private readonly seqAckBuf = Buffer.alloc(MARK_FRAME_SIZE);
  private loaded = false;
  private closed = false;
  /** Packets come through the packeter's sink (else through `packet` events). */
  private readonly sinkSet: boolean;
  private iterators = new Set<(r: Received | null) => void>();
  /** Storage writes of dedup marks (deliveries, whose acks wait for them; forgotten marks), awaited by close(). */
  private readonly commits = new Set<Promise<void>>();
  /** Connections whose peer's mark is to be written on the next turn. */
  private readonly commitsDue = new Set<Conn>();
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
    this.sessionConfig = {
      extensions: this.opts.extensions,
      keepaliveWait: this.opts.keepaliveWait,
      // (a peer that lost its state still sends a resume: the wait is for one that does not)
      resumeWait: this.opts.keepaliveWait > 0 ? this.opts.keepaliveWait : MESSAGING_DEFAULTS.keepaliveWait,
      initialInFlight: this.opts.initialInFlight,
      initialInFlightBytes: this.opts.initialInFlightBytes,
      maxInFlight: this.opts.maxInFlight,
      maxInFlightBytes: this.opts.maxInFlightBytes,
    };
    packeter.on('connect', this.onConnect);
    packeter.on('disconnect', this.onDisconnect);
    this.sinkSet = packeter.setPacketSink(this.onPacket);
    if (!this.sinkSet) packeter.on('packet', this.onPacketEvent);
    packeter.on('packets-sent', this.onPacketsSent);
    packeter.on('drain', this.onDrain);
    this.ready = this.load();
    this.ready.catch(() => {});
  }

  private makeHello(): void {
    this.helloFrame = this.opts.extensions
      ? encodeHello({
          extVersion: EXTENSION_VERSION,
          maxPacketSize: this.packeter.maxPacketSize,
          features: FEATURE_ACKS | FEATURE_FLOW,
          incarnation: this.incarnation,
        })
      : undefined;
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
    if (this.loadError !== undefined) throw this.loadError;
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
    await this.ready.catch(() => {});
    if (this.loadError !== undefined) throw this.loadError;
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
    const seq = this.takeSeq();
    q.push(src, off, message.body, message.flags, ttl, stored, ttl !== null && q.since !== null ? this.clock.now() : 0, seq);
    let commit: Promise<void> | undefined;
    if (stored) {
      commit = this.storage!.push([{ queue: ident, uuid: message.uuid, ttl, flags: message.flags, body: message.body, seq }]);
    }
    if (!q.pumpScheduled) this.schedulePump(q);
    if (q.since !== null) this.armTtl(q);
    return commit;
  }

  /** The next wire sequence number; reserves the next block in storage when half of this one is used. */
  private takeSeq(): number {
    if (this.nextSeq > this.seqReserved) {
      // (only when reserving failed half a block long: such a number could be used again after a restart)
      if (!this.reserving) this.reserveSeqs();
      throw new StorageError(`no sequence numbers reserved in storage past ${this.seqReserved}`);
    }
    const seq = this.nextSeq++;
    if (this.nextSeq > this.seqReserved - SEQ_BLOCK / 2 && !this.reserving && this.storage !== undefined) this.reserveSeqs();
    return seq;
  }

  /** A reservation is being written. */
  private reserving = false;

  /** Reserve sequence numbers below `limit` in storage, and wait for it. */
  private async reserveSeqsNow(limit: number): Promise<void> {
    const value = Buffer.alloc(8);
    writeSeq(value, 0, limit);
    await this.storage!.setMeta(META_SEQ_RESERVED, value);
    this.seqReserved = limit;
  }

  /**
   * Reserve the next block of sequence numbers in storage. Numbers are handed out past the
   * reserved end only if half a block (half a million messages) is sent before the write
   * commits; a restart after that could reuse them.
   */
  private reserveSeqs(): void {
    this.reserving = true;
    this.reserveSeqsNow(Math.max(this.seqReserved, this.nextSeq) + SEQ_BLOCK).then(
      () => {
        this.reserving = false;
      },
      // (tried again by the next message: one attempt at a time)
      (err) => {
        this.reserving = false;
        this.reportError(err, undefined);
      },
    );
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
    for (const c of this.conns.values()) if (c.resumeTimer) this.clock.clearTimeout(c.resumeTimer);
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
    // (connections that ended this turn too: their deliveries are to be recorded as well)
    for (const c of [...this.commitsDue]) this.flushCommit(c);
    await Promise.all([...this.commits]);
    for (const c of this.conns.values()) {
      this.flushSeqAck(c);
      this.flushAcks(c);
    }
    const writes: Promise<void>[] = [];
    for (const q of this.queues.values()) {
      const p = this.writeBackTtls(q);
      if (p) writes.push(p);
    }
    await Promise.all(writes).catch((err) => this.reportError(err, undefined));
    if (failed) throw first;
  }

  // ---------------------------------------------------------------- loading

  /**
   * Loading from storage failed: sending is refused with this error (numbers could not be
   * reserved, so a message sent now could be taken for a repeat after the next start).
   */
  private loadError: Error | undefined;

  private async load(): Promise<void> {
    try {
      await this.loadStored();
    } catch (err) {
      this.loadError = err instanceof SnakeMQError ? err : new StorageError(`loading from storage failed: ${(err as Error)?.message ?? err}`, { cause: err });
      this.reportError(this.loadError, undefined);
      throw err;
    }
  }

  private async loadStored(): Promise<void> {
    try {
      if (!this.storage) return;
      const storage = this.storage;
      const [items, marks, inc, reserved] = await Promise.all([
        storage.load(),
        storage.loadDelivered(),
        storage.getMeta(META_INCARNATION),
        storage.getMeta(META_SEQ_RESERVED),
      ]);
      // Our incarnation stays what storage says, so that peers know our sequence numbers after
      // a restart; sequence numbers continue after every one reserved or stored.
      if (inc !== null && inc.length === INCARNATION_SIZE) this.incarnation = Buffer.from(inc);
      else await storage.setMeta(META_INCARNATION, this.incarnation);
      let last = reserved !== null && reserved.length === 8 ? Math.max(0, readSeq(reserved, 0)) : 0;
      for (const it of items) if (it.seq > last) last = it.seq;
      this.nextSeq = last + 1;
      const now = this.clock.now();
      // Items stored without a sequence number (seq 0; none of our backends returns that, their
      // migrations number old items) get the next ones, not stored: queue order stays
      // increasing only if they come before every numbered item of their queue.
      let unnumbered = 0;
      for (const s of items) {
        if (s.seq <= 0) unnumbered++;
        this.queue(s.queue).push(s.uuid, 0, s.body, s.flags, s.ttl, true, now, s.seq > 0 ? s.seq : this.nextSeq++);
      }
      if (unnumbered > 0) this.log.warn(`messaging ${this.identifier}: ${unnumbered} stored messages without a sequence number were numbered anew`);
      // (awaited, before anything is sent: a sender that used numbers it had not reserved
      // durably could use them again after a crash, and a receiver would take those messages
      // for repeats)
      await this.reserveSeqsNow(this.nextSeq + SEQ_BLOCK);
      for (const m of marks) this.marks.load(m);
      for (const q of this.queues.values()) this.armTtl(q);
      this.log.debug(`messaging ${this.identifier}: loaded ${items.length} stored messages, ${marks.length} dedup marks`);
    } finally {
      this.loaded = true;
      // (with the incarnation loaded, or random)
      this.makeHello();
      // connections that came meanwhile: greet them and hand over what they sent
      if (!this.closed) {
        for (const c of [...this.conns.values()]) {
          if (c.greetPending) this.greet(c);
          const early = c.early;
          c.early = undefined;
          if (early) for (const b of early) if (!c.dead && this.conns.get(c.id) === c) this.onPacket(c.id, b, 0, b.length);
        }
      }
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
    const c = new Conn(connId, this.sessionConfig, this.clock.now());
    this.conns.set(connId, c);
    // Nothing happens on a connection before stored messages (and our incarnation) are loaded:
    // what the peer sends meanwhile waits (see onPacket).
    if (this.loaded) this.greet(c);
    else c.greetPending = true;
  };

  /** Send our version, hello and identity. */
  private greet(c: Conn): void {
    c.greetPending = false;
    this.packeter.sendPacket(c.id, encodeProtocolVersion(PROTOCOL_VERSION));
    if (this.helloFrame) this.packeter.sendPacket(c.id, this.helloFrame);
    this.packeter.sendPacket(c.id, this.ownIdentFrame);
    // (keepalive from here: our pings must not come before our version frame)
    c.lastRecv = this.clock.now();
    this.armKeepalive(c);
  }

  private readonly onDisconnect = (connId: ConnId): void => {
    const c = this.conns.get(connId);
    if (!c) return;
    this.conns.delete(connId);
    if (c.keepalive) this.keepalives.delete(c.keepalive);
    c.early = undefined;
    // (the resume timer goes in forget)
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
    if (c.resumeTimer) this.clock.clearTimeout(c.resumeTimer);
    c.resumeTimer = undefined;
    if (ident === undefined || this.identConn.get(ident) !== c) return;
    this.identConn.delete(ident);
    if (c.markSlot >= 0) {
      this.marks.touch(ident);
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

  /** A connection's keepalive deadline is due: ping it, close it, or look again later (see {@link Session.keepaliveStep}). */
  private readonly onKeepalive = (c: Conn, now: number): void => {
    if (c.dead || !this.conns.has(c.id) || this.closed || !c.keepalive) return;
    const step = c.keepaliveStep(now);
    if (step.action === 'close') {
      this.closeConn(c, new KeepaliveTimeoutError(now - c.lastRecv));
      return;
    }
    if (step.action === 'ping') this.packeter.sendPacket(c.id, encodePing());
    this.keepalives.set(c.keepalive, step.at);
  };

  private readonly onPacketEvent = (connId: ConnId, payload: Buffer): void => {
    this.onPacket(connId, payload, 0, payload.length);
  };

  /** A packet's payload, `buf[start..end)`. */
  private readonly onPacket = (connId: ConnId, buf: Buffer, start: number, end: number): void => {
    if (this.closed) return;
    const c = this.conns.get(connId);
    if (!c || c.dead) return;
    // Before stored messages and marks are loaded, a peer about to get sequenced delivery
    // waits from its identification on (it needs our marks for its resume and dedup); plain
    // and version 1 peers are handled at once (their messages need no marks).
    if (!this.loaded && (c.early !== undefined || (buf[start] === FRAME_IDENTIFICATION && c.wouldSequence()))) {
      return this.keepEarly(c, buf, start, end);
    }
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
      if (type === FRAME_SEQ_MESSAGE && c.sequenced && end - start > SEQ_MESSAGE_HEADER_SIZE) {
        const seq = readSeq(buf, start + SEQ_MESSAGE_SEQ_OFFSET);
        if (seq > 0) return this.onSeqMessage(c, c.ident, buf, start, end, seq);
      }
      if (type === FRAME_MESSAGE && end - start > MESSAGE_HEADER_SIZE) return this.onMessage(c, c.ident, buf, start, end);
      if (type === FRAME_SEQ_ACK && c.sequenced && end - start === 17) {
        const seq = readSeq(buf, start + 1 + INCARNATION_SIZE);
        if (seq >= 0) return this.onSeqAck(c, c.ident, buf, start + 1, seq);
      }
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
      case 'seq-message':
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError());
        // (a peer that did not negotiate sequenced delivery has no business sending these)
        if (!c.sequenced) return;
        return this.onSeqMessage(c, c.ident, payload, 0, payload.length, f.seq);
      case 'seq-ack':
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError('ack frame received before identification'));
        if (c.sequenced) this.onSeqAck(c, c.ident, f.incarnation, 0, f.seq);
        return;
      case 'resume':
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError('resume frame received before identification'));
        return this.onResume(c, c.ident, f.incarnation, f.seq);
      case 'ack':
        // acks by uuid (extension version 1): nothing of ours waits for them any more
        if (c.ident === undefined) return this.closeConn(c, new NotIdentifiedError('ack frame received before identification'));
        return;
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
        c.hello(f);
        return;
      case 'ident':
        return this.onIdent(c, f.ident);
      case 'unknown':
        return;
    }
  };

  /** A packet that came before stored messages were loaded: kept (copied) until then. */
  private keepEarly(c: Conn, buf: Buffer, start: number, end: number): void {
    c.earlyBytes += end - start;
    if (c.earlyBytes > EARLY_BYTES_LIMIT) {
      c.early = undefined;
      this.closeConn(c, new SnakeMQError('ERR_NOT_READY', `more than ${EARLY_BYTES_LIMIT} bytes received before stored messages were loaded`));
      return;
    }
    (c.early ??= []).push(Buffer.from(buf.subarray(start, end)));
  }

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
    const now = this.clock.now();
    c.identified(ident, now);
    this.identConn.set(ident, c);
    if (c.sequenced) {
      // resume: tell the peer what we have delivered from it, before anything else
      const slot = (c.markSlot = this.marks.identified(ident, c.peerIncarnation!));
      this.packeter.sendPacket(c.id, encodeResume({ incarnation: c.peerIncarnation!, seq: this.marks.deliveredOf(slot) }));
      // and wait for its resume before resending
      c.resumeTimer = this.clock.setTimeout(() => {
        c.resumeTimer = undefined;
        if (c.dead || this.closed || !c.resumeTimedOut(this.clock.now())) return;
        this.log.debug(`messaging ${this.identifier}: no resume from ${ident} within ${this.sessionConfig.resumeWait} ms; resending`);
        const q = this.queues.get(ident);
        if (q) this.schedulePump(q);
      }, this.sessionConfig.resumeWait);
    }
    const q = this.queue(ident);
    const wasFull = this.full(q, 0);
    const expired = q.connect(now);
    const tt = this.ttlTimers.get(ident);
    if (tt) {
      this.ttls.delete(tt);
      this.ttlTimers.delete(ident);
    }
    this.dropExpired(q, expired, wasFull);
    this.writeBackTtls(q)?.catch((err) => this.reportError(err, undefined));
    this.log.debug(`messaging ${this.identifier}: ${ident} connected (${c.id}, ${c.mode})`);
    this.emit('connect', c.id, ident);
    this.schedulePump(q);
  }

  /** The peer's resume: drop what it has delivered already, then start sending. */
  private onResume(c: Conn, ident: string, incarnation: Buffer, seq: number): void {
    const covered = c.resume(incarnation, seq, this.incarnation);
    if (covered < 0) return;
    if (c.resumeTimer) this.clock.clearTimeout(c.resumeTimer);
    c.resumeTimer = undefined;
    let upTo = covered;
    if (upTo >= this.nextSeq) {
      // More than we ever numbered: our numbers were used before (storage lost while the
      // peer kept its mark?). Number on above it, so that new messages are not taken for repeats.
      this.reportError(new SnakeMQError('ERR_SEQ_REUSED', `${ident} has delivered up to ${upTo} of ours, more than we have numbered (${this.nextSeq - 1}); numbering on from there`), c.id);
      this.nextSeq = upTo + 1;
      upTo = this.nextSeq - 1;
    }
    c.sentSeq = upTo;
    const q = this.queues.get(ident);
    if (!q) return;
    if (upTo > 0) this.dropDelivered(c, q, upTo, false);
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
    if (!c || !q || c.dead || !c.resumed) return;
    const p = this.packeter;
    const sequenced = c.sequenced;
    // Bytes the connection takes before writable() turns false; asked again when used up.
    let room = 0;
    // The queue keeps each packet as it goes on the wire to a sequenced peer, one after the
    // other in its chunks; only the TTL is filled in now. Packets lying back to back in one
    // chunk are handed to the Packeter as one run (`chunk[runStart..runEnd)`, `run` of them,
    // seqs from `runSeq`). Other peers get each message's version 1 frame made from it.
    let runChunk: Buffer | undefined;
    let runStart = 0;
    let runEnd = 0;
    let run = 0;
    let runSeq = 0;
    for (;;) {
      // (the connection's slow-start allowance, see initialInFlight)
      if (sequenced && !c.mayWrite(q.inflight, q.inflightBytes)) break;
      if (room <= 0) {
        if (!p.writable(c.id)) break;
        room = p.writableBytes(c.id);
      }
      const s = q.peekUnsent();
      if (s < 0) break;
      const len = q.bodyLength(s) + (sequenced ? FRAME_HEAD_SIZE : MESSAGE_FRAME_HEAD_SIZE);
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
      writeU32BE(chunk, off + SEQ_MESSAGE_TTL_OFFSET, t === null ? TTL_INFINITE_WIRE : ttlMsToWire(t));
      const body = q.largeBody(s);
      const seq = q.seqOf(s);
      q.markWriting(s);
      c.sentSeq = q.wireSeq(s);
      room -= len + PACKET_HEADER_SIZE;
      if (!sequenced) {
        this.sendPlain(c, q, s, chunk, off, body, seq);
        continue;
      }
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
        c.writing.push(seq, p.sendPacketParts(c.id, chunk.subarray(off, off + FRAME_HEAD_SIZE), body), 1);
      }
    }
    if (run > 0) this.sendRun(c, runChunk!, runStart, runEnd, run, runSeq);
  }

  /** The head of a version 1 message frame being written (the Packeter copies it). */
  private readonly plainHead = Buffer.alloc(MESSAGE_FRAME_HEAD_SIZE);

  /** Write the item at `slot` (frame at `chunk[off..]`) as a version 1 message frame. */
  private sendPlain(c: Conn, q: PeerQueue, slot: number, chunk: Buffer, off: number, body: Buffer | undefined, seq: number): void {
    const h = this.plainHead;
    h[0] = FRAME_MESSAGE;
    copy16(chunk, off + SEQ_MESSAGE_UUID_OFFSET, h, MESSAGE_UUID_OFFSET);
    chunk.copy(h, MESSAGE_TTL_OFFSET, off + SEQ_MESSAGE_TTL_OFFSET, off + SEQ_MESSAGE_FLAGS_OFFSET + 4);
    const b = body ?? chunk.subarray(off + FRAME_HEAD_SIZE, q.packetEnd(slot));
    const id = this.packeter.sendPacketParts(c.id, h, b);
    // (consecutive items written one by one make one run of the writing list)
    const w = c.writing;
    const n = w.length;
    if (n > c.writingHead && w[n - 3] + w[n - 1] === seq && w[n - 2] + w[n - 1] === id) w[n - 1]++;
    else w.push(seq, id, 1);
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
    const sequenced = c.sequenced;
    // (with a peer not sequenced, written is delivered: items leave the queue here)
    const wasFull = !sequenced && q !== undefined && this.full(q, 0);
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
        // (a sequenced peer's message-delivered comes with its ack, see onSeqAck)
        const uuid = sentEvents || (deliveredEvents && !sequenced) ? q.uuid(s) : undefined;
        // (the chunk keeps the uuid's bytes while observers are told, removed or not)
        const chunk = q.chunk(s);
        const off = q.frameOffset(s) + SEQ_MESSAGE_UUID_OFFSET;
        if (sequenced) {
          q.setState(s, AWAITING_ACK);
          for (let k = 0; k < observers.length; k++) observers[k].sent(connId, ident, chunk, off);
          if (sentEvents) this.emit('message-sent', connId, ident, uuid!);
          continue;
        }
        // A peer without sequenced delivery: written is delivered.
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
    if (!sequenced && q) {
      this.afterRemoval(q, wasFull);
      this.schedulePump(q);
    }
  };

  private readonly onDrain = (connId: ConnId): void => {
    const c = this.conns.get(connId);
    if (c?.ident !== undefined) this.pump(c.ident);
  };

  /**
   * A cumulative ack: everything up to `seq` of the incarnation at `inc[incOff..incOff + 8)`
   * was delivered. Ignored when it names another incarnation than ours.
   */
  private onSeqAck(c: Conn, ident: string, inc: Uint8Array, incOff: number, seq: number): void {
    if (!sameIncarnation(inc, incOff, this.incarnation, 0)) return;
    const q = this.queues.get(ident);
    // (never past what this connection wrote, or the resume covered: a peer must not take
    // away what it was never sent)
    if (q) this.dropDelivered(c, q, Math.min(seq, c.sentSeq), true);
  }

  /**
   * The peer has delivered everything of ours up to wire seq `upTo`: remove those items (in
   * flight, or still queued after a reconnect), from storage too, and report them delivered.
   * `acked`: they were acknowledged on this connection, which raises its allowance (slow
   * start); what a resume covers does not.
   */
  private dropDelivered(c: Conn, q: PeerQueue, upTo: number, acked: boolean): void {
    const ident = q.ident;
    const deliveredEvents = this.listenerCount('message-delivered') > 0;
    const observers = this.observers;
    const wasFull = this.full(q, 0);
    const deletes: ItemKey[] = [];
    let count = 0;
    let bytes = 0;
    // Items are in wire-seq order: take the head while it is covered. (The head is always a
    // live item; it is looked up anew each time, as a listener may queue messages, which moves
    // slots.)
    for (;;) {
      const s = q.head;
      if (s >= q.end || q.wireSeq(s) > upTo) break;
      // (storage gets a uuid of its own: a listener may change the one it was given)
      if (q.isStored(s)) deletes.push({ queue: ident, uuid: q.uuid(s) });
      const uuid = deliveredEvents ? q.uuid(s) : undefined;
      const chunk = q.chunk(s);
      const uuidOff = q.frameOffset(s) + SEQ_MESSAGE_UUID_OFFSET;
      bytes += q.bodyLength(s);
      count++;
      q.remove(s);
      for (let k = 0; k < observers.length; k++) observers[k].delivered(ident, chunk, uuidOff);
      if (deliveredEvents) this.emit('message-delivered', ident, uuid!);
    }
    if (count === 0) return;
    this.deleteStored(deletes);
    // slow start: the allowance grows by what came back, so it doubles per round trip
    if (acked) c.acknowledged(count, bytes);
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

  /**
   * A version 1 message frame, `frame[start..end)`: type byte, uuid, TTL, flags, body; at least
   * 25 bytes. From a plain peer (or one of extension version 1, whose message we acknowledge by
   * uuid): handed over at once, no dedup.
   */
  private onMessage(c: Conn, ident: string, frame: Buffer, start: number, end: number): void {
    const ttlWire = readU32BE(frame, start + MESSAGE_TTL_OFFSET);
    const ttl = ttlWire === TTL_INFINITE_WIRE ? null : ttlWire * 1000;
    const flags = readU32BE(frame, start + MESSAGE_FLAGS_OFFSET);
    const m = this.copyMessage(frame, start, end, ttl, flags, start + MESSAGE_UUID_OFFSET);
    if (c.mode !== 'legacy') {
      this.emit('message', c.id, ident, m);
      return;
    }
    // (acknowledged even when a listener throws: it was handed over)
    try {
      this.emit('message', c.id, ident, m);
    } finally {
      const src = Message.uuidSource(m);
      const u = Message.uuidOffset(m);
      this.queueAck(c, readI32(src, u), readI32(src, u + 4), readI32(src, u + 8), readI32(src, u + 12));
    }
  }

  /** A sequenced message frame, `frame[start..end)` (at least 33 bytes), numbered `seq`. */
  private onSeqMessage(c: Conn, ident: string, frame: Buffer, start: number, end: number, seq: number): void {
    const ttlWire = readU32BE(frame, start + SEQ_MESSAGE_TTL_OFFSET);
    const ttl = ttlWire === TTL_INFINITE_WIRE ? null : ttlWire * 1000;
    const flags = readU32BE(frame, start + SEQ_MESSAGE_FLAGS_OFFSET);
    const m = this.copyMessage(frame, start, end, ttl, flags, start + SEQ_MESSAGE_UUID_OFFSET);
    if (c.backlogHead < c.backlog.length) {
      if (c.backlog.length - c.backlogHead >= BACKLOG_LIMIT) {
        // a peer sending past its window: no more waiting, everything is handed over now
        this.drainBacklog(c);
        this.deliver(c, ident, m, seq);
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
        this.deliver(c, ident, m, seq);
        return;
      }
    }
    // behind the messages waiting, or past this turn's slice
    c.backlog.push(m);
    c.backlogSeqs.push(seq);
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
    this.flushSeqAck(c);
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
      c.backlogSeqs = [];
      c.backlogHead = 0;
    } else if (c.backlogHead > 1024 && c.backlogHead * 2 > c.backlog.length) {
      c.backlog = c.backlog.slice(c.backlogHead);
      c.backlogSeqs = c.backlogSeqs.slice(c.backlogHead);
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
      const seq = c.backlogSeqs[c.backlogHead];
      c.backlog[c.backlogHead++] = undefined;
      try {
        this.deliver(c, ident, m, seq);
      } catch (err) {
        if (!failed) first = err;
        failed = true;
      }
    }
    this.trimBacklog(c);
    if (failed) throw first;
  }

  /**
   * Hand a received sequenced message to the application unless it is a repeat (numbered at or
   * below the highest delivered from its sender's incarnation), and acknowledge it.
   */
  private deliver(c: Conn, ident: string, m: Message, seq: number): void {
    const marks = this.marks;
    const slot = c.markSlot;
    if (!Session.isNew(seq, marks.deliveredOf(slot))) {
      // a resend of one we have: acknowledge again, deliver not
      this.queueSeqAck(c);
      return;
    }
    // Recorded and acknowledged even when a listener throws: it was handed over, and a message
    // that makes a listener throw is not to come back again and again.
    marks.setDelivered(slot, seq);
    try {
      this.emit('message', c.id, ident, m);
    } finally {
      if (this.storage) this.queueCommit(c);
      else this.queueSeqAck(c);
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
  private copyMessage(frame: Buffer, start: number, end: number, ttl: number | null, flags: number, from: number): Message {
    // (from: where the uuid starts; TTL, flags and body follow it)
    const type = frame[start];
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
        if (len > RX_SLAB_SIZE >>> 1 || next > frame.length || next > limit || frame[at + PACKET_HEADER_SIZE] !== type) break;
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

  /** Record the connection's peer's mark in storage, once per connection and turn; acknowledge once committed. */
  private queueCommit(c: Conn): void {
    if (c.commitScheduled) return;
    c.commitScheduled = true;
    this.commitsDue.add(c);
    setImmediate(() => void this.flushCommit(c));
  }

  private flushCommit(c: Conn): Promise<void> | undefined {
    if (!c.commitScheduled) return undefined;
    c.commitScheduled = false;
    this.commitsDue.delete(c);
    const ident = c.ident;
    // (gone, and its mark forgotten meanwhile: it would make a mark in storage that memory no longer has)
    if (ident === undefined || c.markSlot < 0 || this.marks.slotOf(ident) !== c.markSlot) return undefined;
    const mark = this.marks.mark(ident, c.markSlot);
    const commit = this.storage!.putDelivered([mark]).then(
      () => {
        this.marks.setCommitted(c.markSlot, mark.incarnation, mark.seq);
        this.queueSeqAck(c);
      },
      (err) => this.reportError(err, c.id),
    );
    return this.trackCommit(commit);
  }

  /** Keep `commit` (which never rejects) in `commits` until it settles. */
  private trackCommit(commit: Promise<void>): Promise<void> {
    this.commits.add(commit);
    void commit.finally(() => this.commits.delete(commit));
    return commit;
  }

  /** Forget the marks of the peers gone longest ago on the next turn, while more than `dedupIdlePeers` are kept. */
  private queueTrim(): void {
    if (this.trimQueued || this.marks.size - this.identConn.size <= this.opts.dedupIdlePeers) return;
    // (the exact count of connected peers with a mark is taken in trimMarks)
    this.trimQueued = true;
    setImmediate(() => {
      this.trimQueued = false;
      this.trimMarks();
    });
  }

  private trimMarks(): void {
    if (this.closed) return;
    let kept = 0;
    for (const c of this.identConn.values()) if (c.markSlot >= 0) kept++;
    const gone = this.marks.trim(this.opts.dedupIdlePeers, (peer) => this.identConn.has(peer), kept);
    const storage = this.storage;
    if (!storage || gone.length === 0) return;
    this.trackCommit(
      storage.forgetDelivered(gone).then(
        () => undefined,
        (err) => this.reportError(err, undefined),
      ),
    );
  }

  /**
   * Acknowledge cumulatively what was delivered from the peer (committed, with storage): on
   * the next turn, or now after {@link SEQ_ACK_EVERY} deliveries.
   */
  private queueSeqAck(c: Conn): void {
    if (c.dead) return;
    if (++c.seqAcks >= SEQ_ACK_EVERY) this.flushSeqAck(c);
    else if (!c.seqAckDue) {
      c.seqAckDue = true;
      setImmediate(() => this.flushSeqAck(c));
    }
  }

  private flushSeqAck(c: Conn): void {
    if (c.seqAcks === 0) return;
    c.seqAckDue = false;
    c.seqAcks = 0;
    if (c.dead || !this.conns.has(c.id) || c.markSlot < 0) return;
    const seq = this.storage ? this.marks.committedOf(c.markSlot) : this.marks.deliveredOf(c.markSlot);
    writeMark(this.seqAckBuf, FRAME_SEQ_ACK, c.peerIncarnation!, seq);
    // as the head of a packet: copied before this returns
    this.packeter.sendPacketParts(c.id, this.seqAckBuf, EMPTY);
  }

  /** Acknowledge a uuid (four little-endian int32) to a legacy peer: on the next turn, or now when the frame is full. */
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
