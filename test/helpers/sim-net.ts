/**
 * A deterministic simulated network for model tests: two nodes, "alice" on the listener side
 * and "bob" on the connector side, joined by connections that a seeded PRNG cuts at arbitrary
 * byte offsets, delays and chunks. Everything happens on a {@link SimClock} (virtual time that
 * only the test moves): no sockets, no real timers, no Math.random.
 *
 * Model of one connection:
 * - Each direction is a pipe: bytes written arrive in order after a random latency, handed to
 *   the receiver as `recv` events of random sizes (bytes of several writes may come together,
 *   one write may come in many pieces).
 * - A connection has a byte budget, shared by both directions or one per direction. The write
 *   that crosses it is cut there (mid-packet, mid-frame: wherever it falls); the bytes before
 *   the cut arrive, nothing after them does, and the connection breaks when they have arrived.
 * - A broken connection is noticed by each end on its own, after a random delay of its own:
 *   until then that end may still write (the bytes are lost). Now and then an end is never told
 *   (half-open): only its own keepalive closes it. An end never gets bytes after its
 *   `disconnect`.
 * - Backpressure: per connection and direction a kernel buffer of random size (or unlimited);
 *   with more than that on the way `send()` returns false, `bufferedAmount()` reports the
 *   excess, and `drain` follows once it is down again.
 * - `closeConnection` (Link's socket.end()): the closing end gets `disconnect` at once; what it
 *   wrote before still arrives (budget permitting), then the other end gets `disconnect`.
 * - The connector reconnects like Link does: after its connection is gone, after a random wait;
 *   an attempt while the listener is down fails and is retried after a longer wait.
 * - {@link SimNet.heal}: no more cuts (budgets of existing and new connections become
 *   unlimited); what was already cut still breaks.
 * - {@link SimNet.crash}: the endpoint is detached at once (it gets no more events); its
 *   connections break, with or without the bytes it had already written still arriving (the
 *   kernel flushes a dead process's sockets, or resets them).
 */
import { Buffer } from 'node:buffer';
import type { Clock, TimerHandle } from '../../src/clock.js';
import { Emitter } from '../../src/emitter.js';
import type { ConnId, ConnectionInfo, Transport, TransportEvents } from '../../src/link.js';

// ---------------------------------------------------------------- virtual clock

interface SimTimer {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * Virtual time in whole milliseconds with a binary heap of timers; ties fire in creation order. Moved only by
 * {@link SimClock.runNext}; {@link SimClock.scope} gives a Clock whose timers die with it (a
 * crashed process's timers).
 */
export class SimClock implements Clock {
  /**
   * @param wholeMs timers fall due on whole milliseconds (default, as Node's do). `false`:
   *   fractional times, timers firing exactly at their due time.
   */
  constructor(readonly wholeMs = true) {}

  private time = 0;
  private seq = 0;
  private readonly heap: SimTimer[] = [];
  /** Timers fired so far. */
  fired = 0;

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    // Whole milliseconds, never early, as Node's timers (libuv keeps time in whole ms). Time
    // itself stays a whole number, so the arithmetic on it is exact.
    const t: SimTimer = { at: this.time + (ms > 0 ? (this.wholeMs ? Math.ceil(ms) : ms) : 0), seq: this.seq++, fn, cancelled: false };
    this.push(t);
    return t;
  }

  clearTimeout(handle: TimerHandle): void {
    const t = handle as SimTimer;
    if (t && typeof t === 'object' && 'cancelled' in t) t.cancelled = true;
  }

  /** When the next live timer is due (`Infinity`: none). */
  nextAt(): number {
    const h = this.heap;
    while (h.length > 0 && h[0].cancelled) this.pop();
    return h.length > 0 ? h[0].at : Infinity;
  }

  /**
   * Move time to the next due timer and fire it (one timer: the caller lets the event loop
   * run before the next). Returns the number fired (0 when none is pending).
   */
  runNext(): number {
    const at = this.nextAt();
    if (at === Infinity) return 0;
    if (at > this.time) this.time = at;
    const t = this.heap[0];
    this.pop();
    this.fired++;
    t.fn();
    return 1;
  }

  /** A Clock on this time whose timers stop firing once `kill()` was called. */
  scope(): Clock & { kill(): void } {
    let alive = true;
    const clock = this;
    return {
      now: () => clock.now(),
      setTimeout: (fn, ms) =>
        clock.setTimeout(() => {
          if (alive) fn();
        }, ms),
      clearTimeout: (h) => clock.clearTimeout(h),
      kill() {
        alive = false;
      },
    };
  }

  private push(t: SimTimer): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && less(h[l], h[m])) m = l;
      if (r < h.length && less(h[r], h[m])) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m], h[i]];
      i = m;
    }
  }
}

function less(a: SimTimer, b: SimTimer): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

// ---------------------------------------------------------------- network

/** Knobs of the network; every draw comes from `rand`. */
export interface SimNetOptions {
  rand: () => number;
  /** Cut connections at random byte budgets (default true). */
  cuts?: boolean;
  /** Largest one-way latency, ms (default 20). */
  maxLatency?: number;
}

type Side = ConnectionInfo['side'];

interface Pipe {
  /** Bytes written and not yet arrived, each with its arrival time (non-decreasing). */
  pending: { data: Buffer; at: number }[];
  /** Arrival time of the last piece written. */
  lastAt: number;
  /** A delivery event is scheduled. */
  scheduled: boolean;
  /** Bytes this direction may still carry before the cut (`Infinity`: no cut). */
  budget: number;
  /** Bytes in `pending`. */
  bytes: number;
  /**
   * What the writer's kernel takes: beyond this many bytes on the way, `send()` returns false
   * and the writer gets `drain` once they are down to it again; the excess is reported by
   * `bufferedAmount()`.
   */
  cap: number;
  /** `send()` returned false; `drain` is owed. */
  blocked: boolean;
}

interface SimConn {
  id: ConnId;
  ends: [SimEndpoint, SimEndpoint]; // [listener, connector]
  /** Pipe i carries what end i writes. */
  pipes: [Pipe, Pipe];
  /** Both directions draw on pipes[0].budget. */
  sharedBudget: boolean;
  /** The budget was used up: nothing written from now on arrives; it breaks once the prefix arrived. */
  cutAt: number | undefined;
  /** Broken: nothing more arrives. */
  broken: boolean;
  /** End i has been told `disconnect` (or will be, scheduled). */
  gone: [boolean, boolean];
  /** End i closed it itself: what it wrote still arrives, nothing arrives at it. */
  closing: [boolean, boolean];
}

let connCounter = 0;

/** The simulated network between one listener ("alice") and one connector ("bob"). */
export class SimNet {
  readonly clock: SimClock;
  private readonly rand: () => number;
  private cuts: boolean;
  private readonly maxLatency: number;
  /** The attached endpoint of each side (`undefined` while that node is down). */
  private readonly endpoints: { listener?: SimEndpoint; connector?: SimEndpoint } = {};
  private readonly conns = new Map<ConnId, SimConn>();
  /** The connector's connection (until the connector was told it is gone) or pending attempt. */
  private connectorConn: ConnId | undefined;
  private connectTimer: TimerHandle | undefined;
  private failedAttempts = 0;
  /** Counts everything the nodes did to the network (for settling). */
  activity = 0;
  /** Statistics. */
  stats = { connections: 0, cuts: 0, bytes: 0, failedConnects: 0, blocked: 0, drains: 0, halfOpen: 0 };

  constructor(clock: SimClock, options: SimNetOptions) {
    this.clock = clock;
    this.rand = options.rand;
    this.cuts = options.cuts ?? true;
    this.maxLatency = options.maxLatency ?? 20;
  }

  /**
   * A new endpoint for one side; the previous one of that side must be detached. With
   * `plugged` false it is not on the network until {@link plug} (a node that starts its Link
   * later).
   */
  attach(side: Side, plugged = true): SimEndpoint {
    const ep = new SimEndpoint(this, side);
    if (plugged) this.plug(ep);
    return ep;
  }

  /** Put an endpoint made by `attach(side, false)` on the network. */
  plug(ep: SimEndpoint): void {
    if (ep.detached) return;
    const side = ep.side;
    if (this.endpoints[side]) throw new Error(`sim-net: a ${side} is attached already`);
    this.endpoints[side] = ep;
    if (side === 'connector') {
      this.connectorConn = undefined;
      this.failedAttempts = 0;
      this.scheduleConnect(this.randInt(0, 5));
    }
  }

  /** Stop cutting: every budget becomes unlimited (cuts already under way still happen). */
  heal(): void {
    this.cuts = false;
    for (const c of this.conns.values()) for (const p of c.pipes) p.budget = Infinity;
  }

  /** The node of `ep` died: detach it now; its connections break (its written bytes may still arrive). */
  crash(ep: SimEndpoint): void {
    this.detach(ep, this.rand() < 0.5);
  }

  /** The node of `ep` shut down (Link.close()): what it wrote still arrives, then its peer is told. */
  shutdown(ep: SimEndpoint): void {
    this.detach(ep, true);
  }

  private detach(ep: SimEndpoint, flush: boolean): void {
    if (ep.detached) return;
    ep.detached = true;
    if (this.endpoints[ep.side] === ep) delete this.endpoints[ep.side];
    if (ep.side === 'connector' && this.connectTimer) {
      this.clock.clearTimeout(this.connectTimer);
      this.connectTimer = undefined;
    }
    for (const c of [...this.conns.values()]) {
      const i = c.ends.indexOf(ep);
      if (i < 0) continue;
      c.gone[i] = true;
      if (flush) this.closeEnd(c, i as 0 | 1, false);
      else this.breakConn(c);
      this.forgetIfDone(c);
    }
  }

  // ------------------------------------------------ connecting

  private scheduleConnect(ms: number): void {
    if (this.connectTimer) return;
    this.connectTimer = this.clock.setTimeout(() => {
      this.connectTimer = undefined;
      this.attempt();
    }, ms);
  }

  private attempt(): void {
    const b = this.endpoints.connector;
    if (!b || b.detached || this.connectorConn !== undefined) return;
    const a = this.endpoints.listener;
    if (!a) {
      // refused: back off like Link (doubling, capped)
      this.stats.failedConnects++;
      this.failedAttempts++;
      const base = Math.min(1000, 25 * 2 ** Math.min(this.failedAttempts, 6));
      this.scheduleConnect(base * (0.8 + 0.4 * this.rand()));
      return;
    }
    this.failedAttempts = 0;
    const id = `sim${++connCounter}`;
    const budget = (): number => (this.cuts && this.rand() < 0.85 ? this.drawBudget() : Infinity);
    const shared = this.rand() < 0.5;
    const cap = (): number => (this.rand() < 0.5 ? Infinity : Math.floor(64 * Math.pow(256, this.rand())));
    const pipe = (b: number): Pipe => ({ pending: [], lastAt: 0, scheduled: false, budget: b, bytes: 0, cap: cap(), blocked: false });
    const c: SimConn = {
      id,
      ends: [a, b],
      pipes: [pipe(budget()), pipe(shared ? Infinity : budget())],
      sharedBudget: shared,
      cutAt: undefined,
      broken: false,
      gone: [false, false],
      closing: [false, false],
    };
    this.conns.set(id, c);
    this.connectorConn = id;
    this.stats.connections++;
    const info = (side: Side): ConnectionInfo => ({
      connId: id,
      side,
      ownerId: side === 'listener' ? 'sim-listener' : 'sim-connector',
      remoteAddress: 'sim',
      remotePort: 0,
      localAddress: 'sim',
      localPort: 0,
      tls: false,
    });
    // (either end may hear of it first)
    const order: (0 | 1)[] = this.rand() < 0.5 ? [0, 1] : [1, 0];
    for (const i of order) {
      const ep = c.ends[i];
      if (!ep.detached && !c.gone[i]) ep.fire('connect', id, info(ep.side));
    }
  }

  /** Log-uniform between 16 bytes and 64 KiB: most connections carry a few hundred bytes to a few KB. */
  private drawBudget(): number {
    return Math.floor(16 * Math.pow(4096, this.rand()));
  }

  // ------------------------------------------------ data

  send(ep: SimEndpoint, connId: ConnId, data: Buffer | Buffer[], cb?: (err?: Error | null) => void): boolean {
    this.activity++;
    const c = this.conns.get(connId);
    const i = c ? c.ends.indexOf(ep) : -1;
    if (!c || i < 0 || c.gone[i] || c.closing[i] || ep.detached) {
      if (!ep.detached) queueMicrotask(() => cb?.(new Error('sim-net: connection is closed')));
      return false;
    }
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    this.stats.bytes += buf.length;
    // "handed to the kernel": the callback comes on the next event, whatever becomes of the bytes
    if (cb) this.clock.setTimeout(() => ep.detached || cb(null), 0);
    if (c.broken || c.cutAt !== undefined) return true; // lost
    const pipe = c.pipes[i];
    const budgetPipe = c.sharedBudget ? c.pipes[0] : pipe;
    let take = buf.length;
    let cut = false;
    if (budgetPipe.budget < take) {
      take = budgetPipe.budget;
      cut = true;
    }
    if (budgetPipe.budget !== Infinity) budgetPipe.budget -= take;
    const now = this.clock.now();
    const at = Math.max(pipe.lastAt, now + this.latency());
    pipe.lastAt = at;
    if (take > 0) {
      pipe.pending.push({ data: buf.subarray(0, take), at });
      pipe.bytes += take;
    }
    this.scheduleDelivery(c, i as 0 | 1);
    if (cut) {
      this.stats.cuts++;
      // the connection breaks once the bytes before the cut have arrived (both directions'
      // bytes due before then still arrive)
      c.cutAt = at;
      this.clock.setTimeout(() => this.breakConn(c), at - now);
    }
    if (pipe.bytes > pipe.cap) {
      if (!pipe.blocked) this.stats.blocked++;
      pipe.blocked = true;
      return false;
    }
    return true;
  }

  /** Bytes the writer's kernel did not take yet (see `Pipe.cap`). */
  bufferedAmount(ep: SimEndpoint, connId: ConnId): number {
    const c = this.conns.get(connId);
    const i = c ? c.ends.indexOf(ep) : -1;
    if (!c || i < 0) return 0;
    const p = c.pipes[i];
    return p.bytes > p.cap ? p.bytes - p.cap : 0;
  }

  private latency(): number {
    const r = this.rand();
    // mostly short, sometimes long: a few ms, up to maxLatency
    return this.ms(r < 0.6 ? r * 5 : 1 + this.rand() * this.maxLatency);
  }

  private scheduleDelivery(c: SimConn, i: 0 | 1): void {
    const pipe = c.pipes[i];
    if (pipe.scheduled || pipe.pending.length === 0) return;
    pipe.scheduled = true;
    this.clock.setTimeout(() => this.deliver(c, i), pipe.pending[0].at - this.clock.now());
  }

  /** Hand what has arrived on pipe `i` to the other end, in random pieces. */
  private deliver(c: SimConn, i: 0 | 1): void {
    const pipe = c.pipes[i];
    pipe.scheduled = false;
    if (c.broken) return;
    const j = (1 - i) as 0 | 1;
    const to = c.ends[j];
    const now = this.clock.now();
    const parts: Buffer[] = [];
    while (pipe.pending.length > 0 && pipe.pending[0].at <= now) {
      const piece = pipe.pending.shift()!.data;
      pipe.bytes -= piece.length;
      parts.push(piece);
    }
    if (parts.length > 0 && !c.gone[j] && !c.closing[j] && !to.detached) {
      const all = parts.length === 1 ? parts[0] : Buffer.concat(parts);
      // random pieces: sometimes byte by byte, sometimes all at once
      const mode = this.rand();
      let off = 0;
      while (off < all.length) {
        let n: number;
        if (mode < 0.3) n = all.length - off;
        else if (mode < 0.5) n = 1 + Math.floor(this.rand() * 8);
        else n = 1 + Math.floor(this.rand() * 700);
        const piece = all.subarray(off, Math.min(all.length, off + n));
        off += piece.length;
        // a fresh buffer each time, as a socket read would give
        to.fire('recv', c.id, Buffer.from(piece));
        if (c.gone[j] || c.closing[j] || to.detached || c.broken) break;
      }
    }
    this.scheduleDelivery(c, i);
    if (pipe.blocked && pipe.bytes <= pipe.cap && !c.broken) {
      pipe.blocked = false;
      const from = c.ends[i];
      if (!c.gone[i] && !c.closing[i]) {
        this.stats.drains++;
        from.fire('drain', c.id);
      }
    }
    this.maybeFinishClose(c);
  }

  /** Break a connection: nothing more arrives; each end not yet told hears of it after its own delay. */
  private breakConn(c: SimConn): void {
    if (c.broken) return;
    c.broken = true;
    for (const p of c.pipes) {
      p.pending.length = 0;
      p.bytes = 0;
    }
    for (const i of [0, 1] as const) {
      if (c.gone[i]) continue;
      // Now and then an end is never told (a half-open connection after a silent network
      // failure): it finds out by its own keepalive, closing the connection.
      if (this.rand() < 0.08) {
        this.stats.halfOpen++;
        continue;
      }
      c.gone[i] = true;
      const delay = this.rand() < 0.3 ? 0 : this.ms(this.rand() * 50);
      this.clock.setTimeout(() => this.tellGone(c, i), delay);
    }
    this.forgetIfDone(c);
  }

  /** A broken connection both of whose ends were told (or are about to be) is forgotten. */
  private forgetIfDone(c: SimConn): void {
    if (c.broken && c.gone[0] && c.gone[1]) this.conns.delete(c.id);
  }

  /** End `i` closes (or its process is gone and flushed): its bytes still go, then the peer is told. */
  closeEnd(c: SimConn, i: 0 | 1, tell: boolean): void {
    if (c.closing[i] || c.broken) return;
    c.closing[i] = true;
    // nothing arrives at a closed end
    c.pipes[1 - i].pending.length = 0;
    c.pipes[1 - i].bytes = 0;
    if (tell && !c.gone[i]) {
      c.gone[i] = true;
      this.clock.setTimeout(() => this.tellGone(c, i), 0);
    }
    c.gone[i] = true;
    this.maybeFinishClose(c);
  }

  /** A closing connection whose closing end's bytes have all arrived: break it (tells the other end). */
  private maybeFinishClose(c: SimConn): void {
    if (c.broken) return;
    for (const i of [0, 1] as const) {
      if (c.closing[i] && c.pipes[i].pending.length === 0) {
        this.breakConn(c);
        return;
      }
    }
  }

  private tellGone(c: SimConn, i: 0 | 1): void {
    const ep = c.ends[i];
    if (!ep.detached) ep.fire('disconnect', c.id, c.closing[i] ? undefined : new Error('sim-net: connection lost'));
    if (ep.side === 'connector' && this.connectorConn === c.id && this.endpoints.connector === ep) {
      this.connectorConn = undefined;
      // a dropped link comes back soon (sometimes not so soon)
      this.scheduleConnect(this.rand() < 0.8 ? this.rand() * 100 : 100 + this.rand() * 1500);
    }
  }

  closeConnection(ep: SimEndpoint, connId: ConnId): void {
    this.activity++;
    const c = this.conns.get(connId);
    if (!c) return;
    const i = c.ends.indexOf(ep);
    if (i < 0 || c.gone[i]) return;
    if (c.broken) {
      // a half-open end closing: it hears of it at once, the other end was told already
      c.gone[i] = true;
      this.clock.setTimeout(() => this.tellGone(c, i as 0 | 1), 0);
      this.forgetIfDone(c);
      return;
    }
    this.closeEnd(c, i as 0 | 1, true);
  }

  /** A duration on the clock's grid. */
  private ms(x: number): number {
    return this.clock.wholeMs ? Math.floor(x) : x;
  }

  private randInt(lo: number, hi: number): number {
    return lo + Math.floor(this.rand() * (hi - lo + 1));
  }
}

/** One node's Transport onto the {@link SimNet}. */
export class SimEndpoint extends Emitter<TransportEvents> implements Transport {
  /** The node is gone: no more events. */
  detached = false;

  constructor(
    private readonly net: SimNet,
    readonly side: Side,
  ) {
    super();
  }

  /** @internal Emit an event unless detached. */
  fire<K extends keyof TransportEvents & string>(event: K, ...args: TransportEvents[K]): void {
    if (!this.detached) this.emit(event, ...args);
  }

  send(connId: ConnId, data: Buffer | Buffer[], cb?: (err?: Error | null) => void): boolean {
    return this.net.send(this, connId, data, cb);
  }

  closeConnection(connId: ConnId): void {
    this.net.closeConnection(this, connId);
  }

  bufferedAmount(connId: ConnId): number {
    return this.net.bufferedAmount(this, connId);
  }
}
