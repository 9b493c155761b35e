/**
 * Throttle: sits between a Link and the Packeter with the same face as a Link and limits the
 * bytes per second written on each connection (a token bucket; the clock is injected).
 *
 * @module
 */
import { type Clock, type TimerHandle, systemClock } from './clock.js';
import { Emitter } from './emitter.js';
import { InvalidArgumentError } from './errors.js';
import type { ConnId, ConnectionInfo, ReadTargetProvider, Transport, TransportEvents } from './link.js';

/** Options of a {@link Throttle}. */
export interface ThrottleOptions {
  /** Bytes per second allowed on each connection. */
  bytesPerSecond: number;
  /**
   * Bucket size in bytes: how much may leave at once after a quiet period (default: a tenth of
   * a second's worth, at least 1 byte).
   */
  burst?: number;
  /** Bytes waiting in the throttle above which `send()` returns false (default 64 KiB). */
  highWaterMark?: number;
  clock?: Clock;
}

interface Pending {
  data: Buffer;
  cb?: (err?: Error | null) => void;
}

interface ConnState {
  tokens: number;
  last: number;
  queue: Pending[];
  queued: number;
  timer?: TimerHandle;
  needDrain: boolean;
  /** Write of the lower transport returned false; wait for its drain. */
  innerBlocked: boolean;
}

/**
 * Limits outgoing bytes per connection. Data beyond the bucket waits in the throttle and is
 * written in pieces as tokens accrue.
 */
export class Throttle extends Emitter<TransportEvents> implements Transport {
  readonly inner: Transport;
  readonly bytesPerSecond: number;
  readonly burst: number;
  readonly highWaterMark: number;
  private readonly clock: Clock;
  private readonly conns = new Map<ConnId, ConnState>();

  constructor(inner: Transport, options: ThrottleOptions) {
    super();
    const bps = options.bytesPerSecond;
    if (typeof bps !== 'number' || !(bps > 0) || !Number.isFinite(bps)) {
      throw new InvalidArgumentError(`bytesPerSecond must be a positive number, got ${bps}`);
    }
    this.inner = inner;
    this.bytesPerSecond = bps;
    this.burst = Math.max(1, Math.floor(options.burst ?? bps / 10));
    this.highWaterMark = options.highWaterMark ?? 64 * 1024;
    this.clock = options.clock ?? systemClock;
    inner.on('connect', (connId: ConnId, info: ConnectionInfo) => {
      this.conns.set(connId, {
        tokens: this.burst,
        last: this.clock.now(),
        queue: [],
        queued: 0,
        needDrain: false,
        innerBlocked: false,
      });
      this.emit('connect', connId, info);
    });
    inner.on('disconnect', (connId, reason) => {
      const c = this.conns.get(connId);
      if (c) {
        if (c.timer) this.clock.clearTimeout(c.timer);
        this.conns.delete(connId);
        for (const p of c.queue) p.cb?.(reason ?? new Error('connection closed'));
      }
      this.emit('disconnect', connId, reason);
    });
    inner.on('recv', (connId, data) => this.emit('recv', connId, data));
    inner.on('drain', (connId) => {
      const c = this.conns.get(connId);
      if (!c) return;
      c.innerBlocked = false;
      this.pump(connId, c);
    });
    inner.on('error', (err, connId) => {
      if (this.listenerCount('error') > 0) this.emit('error', err, connId);
    });
  }

  send(connId: ConnId, data: Buffer | Buffer[], cb?: (err?: Error | null) => void): boolean {
    const c = this.conns.get(connId);
    if (!c) return this.inner.send(connId, data, cb);
    const bufs = Array.isArray(data) ? data : [data];
    bufs.forEach((b, i) => {
      c.queue.push({ data: b, cb: i === bufs.length - 1 ? cb : undefined });
      c.queued += b.length;
    });
    this.pump(connId, c);
    if (c.queued >= this.highWaterMark || c.innerBlocked) {
      c.needDrain = true;
      return false;
    }
    return true;
  }

  closeConnection(connId: ConnId, reason?: Error): void {
    this.inner.closeConnection(connId, reason);
  }

  /** Reads are not throttled: passed on to the inner transport (whose `recv` we re-emit at once). */
  setReadTarget(connId: ConnId, provider: ReadTargetProvider | null): void {
    this.inner.setReadTarget?.(connId, provider);
  }

  bufferedAmount(connId: ConnId): number {
    return (this.conns.get(connId)?.queued ?? 0) + this.inner.bufferedAmount(connId);
  }

  private refill(c: ConnState): void {
    const now = this.clock.now();
    c.tokens = Math.min(this.burst, c.tokens + ((now - c.last) * this.bytesPerSecond) / 1000);
    c.last = now;
  }

  private pump(connId: ConnId, c: ConnState): void {
    if (c.timer || c.innerBlocked) return;
    this.refill(c);
    while (c.queue.length > 0 && c.tokens >= 1) {
      const head = c.queue[0];
      const n = Math.min(head.data.length, Math.floor(c.tokens));
      let piece: Buffer;
      let cb: Pending['cb'];
      if (n === head.data.length) {
        c.queue.shift();
        piece = head.data;
        cb = head.cb;
      } else {
        piece = head.data.subarray(0, n);
        head.data = head.data.subarray(n);
      }
      c.tokens -= n;
      c.queued -= n;
      if (!this.inner.send(connId, piece, cb)) {
        c.innerBlocked = true;
        return;
      }
    }
    if (c.queue.length > 0) {
      const wait = Math.max(1, Math.ceil(((1 - c.tokens) * 1000) / this.bytesPerSecond));
      c.timer = this.clock.setTimeout(() => {
        c.timer = undefined;
        if (this.conns.get(connId) === c) this.pump(connId, c);
      }, Math.max(wait, 10));
    } else if (c.needDrain) {
      c.needDrain = false;
      this.emit('drain', connId);
    }
  }
}
