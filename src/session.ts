/**
 * The rules of one connection's messaging session, without I/O: what the handshake decides
 * (which delivery a peer gets), when a sender may resend after a reconnect (resume), how much
 * it may have in flight (slow start), what a receiver does with a sequenced message (deliver
 * or drop as a repeat) and what keepalive does when its deadline comes. Time comes in as
 * arguments; {@link Messaging} drives one Session per connection, does the I/O, and keeps the
 * queues ({@link PeerQueue}) and the receiver's marks ({@link DeliveredMarks}).
 *
 * A connection goes through these steps, in this order, on both sides alike:
 *
 * | step          | we send                              | we accept                                |
 * |---------------|--------------------------------------|------------------------------------------|
 * | connected     | version, hello (if extensions), ident | version, hello, ident                   |
 * | identified    | resume (sequenced only)              | every frame; messages of a plain peer    |
 * | resumed       | messages (sequenced: only from here) | the peer's resume once; later ones are ignored |
 *
 * Delivery modes, decided when the peer identifies (its hello, if any, came before):
 * - `'sequenced'`: both sides offered extension version 2 with acks. Messages carry sequence
 *   numbers; the receiver keeps, per (sender identity, incarnation), the highest one
 *   delivered, drops what is at or below it as a repeat, and acknowledges cumulatively; after
 *   identification each side tells the other that number (resume) and a sender resends
 *   nothing before it has the peer's resume (or {@link SessionConfig.resumeWait} passed).
 * - `'legacy'`: the peer offered only version 1 of our extensions. Plain snakeMQ delivery
 *   (a message leaves our queue once written), and we acknowledge its messages by uuid, as
 *   version 1 expects, so that its own window keeps moving. No dedup.
 * - `'plain'`: a plain snakeMQ 1.6 peer (no hello), or our extensions are off.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { readI32 } from './bytes.js';
import { FEATURE_ACKS, type HelloFrame, INCARNATION_SIZE } from './protocol.js';

/** How messages are delivered on a connection, see the module documentation. */
export type DeliveryMode = 'plain' | 'legacy' | 'sequenced';

/** What a session needs to know of its side. */
export interface SessionConfig {
  /** We offer our extensions. */
  extensions: boolean;
  /** Close a pinged connection when nothing arrives within this. */
  keepaliveWait: number;
  /** A sequenced sender waits this long for the peer's resume before it resends anyway. */
  resumeWait: number;
  /** Slow start: messages and body bytes in flight at first, and at most. */
  initialInFlight: number;
  initialInFlightBytes: number;
  maxInFlight: number;
  maxInFlightBytes: number;
}

/** What keepalive does when a connection's deadline comes: and when to look again (`at`). */
export interface KeepaliveStep {
  action: 'ping' | 'close' | 'none';
  at: number;
}

/** Two incarnations (8-byte ids) are equal. */
export function sameIncarnation(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number): boolean {
  return readI32(a, aOff) === readI32(b, bOff) && readI32(a, aOff + 4) === readI32(b, bOff + 4);
}

export class Session {
  readonly config: SessionConfig;
  /** The peer's identity, once it identified. */
  ident: string | undefined = undefined;
  /** The peer sent a hello before identifying (it speaks our extensions, of some version). */
  ext = false;
  /** Decided at identification; `'plain'` before. */
  mode: DeliveryMode = 'plain';
  /** `mode === 'sequenced'`, read per message. */
  sequenced = false;
  /** The largest packet payload the peer accepts. */
  peerMaxPacket: number;
  /** The peer's incarnation (its hello of version 2), 8 bytes. */
  peerIncarnation: Buffer | undefined = undefined;
  private helloVersion = 0;
  private helloFeatures = 0;
  /**
   * A sequenced sender may send (the peer's resume arrived, or it waited long enough); other
   * modes may send once identified.
   */
  resumed = false;
  /** When a sequenced sender stops waiting for the peer's resume. */
  resumeBy = 0;
  /** The in-flight allowance (slow start), messages and body bytes. */
  window: number;
  windowBytes: number;
  /** When something last arrived, and when we pinged (0: no ping outstanding). */
  lastRecv: number;
  pingAt = 0;
  /** Ping after this long with nothing received (set by the driver; 0: no keepalive). */
  keepaliveAfter = 0;

  constructor(config: SessionConfig, peerMaxPacket: number, now: number) {
    this.config = config;
    this.peerMaxPacket = peerMaxPacket;
    this.window = config.initialInFlight;
    this.windowBytes = config.initialInFlightBytes;
    this.lastRecv = now;
  }

  /** Anything arrived at `now`. */
  received(now: number): void {
    this.lastRecv = now;
  }

  /** A hello arrived. Only one before identification counts; returns whether it did. */
  hello(f: HelloFrame): boolean {
    if (this.ident !== undefined || !this.config.extensions || f.extVersion < 1) return false;
    this.ext = true;
    this.helloVersion = f.extVersion;
    this.helloFeatures = f.features;
    this.peerMaxPacket = f.maxPacketSize;
    // (a copy: the frame is a view of a receive buffer)
    this.peerIncarnation = f.incarnation !== undefined && f.incarnation.length === INCARNATION_SIZE ? Buffer.from(f.incarnation) : undefined;
    return true;
  }

  /** Whether identifying now would give sequenced delivery (the hello so far says so). */
  wouldSequence(): boolean {
    return this.ext && (this.helloFeatures & FEATURE_ACKS) !== 0 && this.helloVersion >= 2 && this.peerIncarnation !== undefined;
  }

  /**
   * The peer identified at `now`: decide the delivery mode. Returns `false` (and changes
   * nothing) when it had identified before: a repeated identification is ignored.
   */
  identified(ident: string, now: number): boolean {
    if (this.ident !== undefined) return false;
    this.ident = ident;
    const acks = (this.helloFeatures & FEATURE_ACKS) !== 0;
    if (this.wouldSequence()) this.mode = 'sequenced';
    else if (this.ext && acks) this.mode = 'legacy';
    else this.mode = 'plain';
    this.sequenced = this.mode === 'sequenced';
    this.resumed = !this.sequenced;
    this.resumeBy = now + this.config.resumeWait;
    return true;
  }

  /**
   * The peer's resume arrived. Returns the highest sequence number of ours it has delivered
   * (what the sender may drop from its queue now): the frame's number when it names our
   * incarnation `own`, 0 when it names another (the peer does not know this incarnation), and
   * -1 when the frame is to be ignored (not sequenced, or not the first resume).
   */
  resume(incarnation: Uint8Array, seq: number, own: Uint8Array): number {
    if (!this.sequenced || this.resumed) return -1;
    this.resumed = true;
    return sameIncarnation(incarnation, 0, own, 0) ? seq : 0;
  }

  /** The wait for the peer's resume is over at `now`: returns whether sending may start now. */
  resumeTimedOut(now: number): boolean {
    if (this.resumed || now < this.resumeBy) return false;
    this.resumed = true;
    return true;
  }

  /**
   * Whether one more message may go in flight, with `inflight` messages and `inflightBytes`
   * body bytes in flight already (unacknowledged). One message always may when none is.
   */
  mayWrite(inflight: number, inflightBytes: number): boolean {
    if (!this.sequenced) return this.resumed;
    return this.resumed && inflight < this.window && (inflight === 0 || inflightBytes < this.windowBytes);
  }

  /** `count` messages of `bytes` body bytes were acknowledged: the allowance grows by as much (so it doubles per round trip). */
  acknowledged(count: number, bytes: number): void {
    const c = this.config;
    this.window = Math.min(c.maxInFlight, this.window + count);
    this.windowBytes = Math.min(c.maxInFlightBytes, this.windowBytes + bytes);
  }

  /**
   * A sequenced message numbered `seq` arrived; `delivered` is the highest number delivered
   * from this peer's incarnation so far. `true`: deliver it; `false`: it is a repeat
   * (acknowledge it again, do not deliver).
   */
  static isNew(seq: number, delivered: number): boolean {
    return seq > delivered;
  }

  /** The keepalive deadline came at `now`: what to do, and when to look again. */
  keepaliveStep(now: number): KeepaliveStep {
    const keepaliveAfter = this.keepaliveAfter;
    const keepaliveWait = this.config.keepaliveWait;
    // (deadlines compared as the sums they are scheduled at: `now - pingAt < wait` can hold at
    // `now === pingAt + wait` in floating point, and the check would come back at once, forever)
    if (this.pingAt && this.lastRecv < this.pingAt) {
      const closeAt = this.pingAt + keepaliveWait;
      if (now >= closeAt) return { action: 'close', at: 0 };
      return { action: 'none', at: closeAt };
    }
    this.pingAt = 0;
    if (now >= this.lastRecv + keepaliveAfter) {
      this.pingAt = now;
      return { action: 'ping', at: now + keepaliveWait };
    }
    return { action: 'none', at: this.lastRecv + keepaliveAfter };
  }
}
