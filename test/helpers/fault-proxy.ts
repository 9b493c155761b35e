/**
 * A fault-injecting TCP proxy for tests, on loopback. It sits between a client and a server
 * (`client → proxy → target`) and forwards both directions in order (never reordering: it is
 * TCP), while it can
 *
 * - cut a connection after a seeded random number of bytes in one direction, forwarding exactly
 *   that many bytes first, and report where it cut: the byte offset in that direction, and
 *   whether the offset fell inside a `[uint32 BE length][payload]` packet (it follows the
 *   framing of what it forwards);
 * - split every chunk into random pieces written one by one (some of them a turn of the event
 *   loop apart), so the receiver sees arbitrary read boundaries;
 * - stall forwarding for a while at random points;
 * - forward at a limited rate (a slow network or a slow reader), with backpressure: it stops
 *   reading from the sender while it holds more than a little.
 *
 * All randomness comes from one seeded PRNG, so a failing run can be replayed from its seed.
 */
import * as net from 'node:net';

export { prng } from './prng.js';
import { prng } from './prng.js';

/** An integer in [min, max] from `rand`. */
export function randInt(rand: () => number, min: number, max: number): number {
  return min + Math.floor(rand() * (max - min + 1));
}

/**
 * Follows the `[uint32 BE length][payload]` framing of a byte stream without keeping it:
 * tells whether the stream, as far as it was fed, ends on a packet boundary.
 */
export class FrameTracker {
  private header = Buffer.alloc(4);
  private headerFill = 0;
  private remaining = 0;
  /** Packets completed so far. */
  packets = 0;
  /** Bytes fed so far. */
  bytes = 0;

  feed(chunk: Buffer): void {
    this.bytes += chunk.length;
    let off = 0;
    while (off < chunk.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - off);
        this.remaining -= take;
        off += take;
        if (this.remaining === 0) this.packets++;
        continue;
      }
      this.header[this.headerFill++] = chunk[off++];
      if (this.headerFill === 4) {
        this.headerFill = 0;
        this.remaining = this.header.readUInt32BE(0);
        if (this.remaining === 0) this.packets++;
      }
    }
  }

  /** The stream fed so far stops in the middle of a packet (its header or its payload). */
  get midFrame(): boolean {
    return this.headerFill > 0 || this.remaining > 0;
  }

  /** Bytes of the current packet already fed (0 on a boundary). */
  get intoFrame(): number {
    if (this.headerFill > 0) return this.headerFill;
    return this.remaining > 0 ? -1 : 0; // -1: somewhere in a payload (exact place not kept)
  }
}

/** Which way bytes flow: `'up'` client → target, `'down'` target → client. */
export type Direction = 'up' | 'down';

/** Where the proxy cut a connection. */
export interface CutReport {
  /** Index of the proxied connection (0 for the first accepted). */
  conn: number;
  /** The direction whose byte count decided the cut. */
  direction: Direction;
  /** Bytes forwarded in that direction on this connection before the cut (all of them arrived). */
  offset: number;
  /** The offset lies inside a packet (its length prefix or its payload), not between packets. */
  midFrame: boolean;
  /** Whole packets forwarded in that direction before the cut. */
  packetsBefore: number;
  /** Bytes forwarded the other way on this connection before the cut. */
  otherOffset: number;
}

/** Options of a {@link FaultProxy}. */
export interface FaultProxyOptions {
  /** The server to forward to (host default 127.0.0.1). */
  target: { host?: string; port: number };
  /** Seed of the PRNG (default 1). */
  seed?: number;
  /**
   * Cut this many connections in all (default 0); connections after that are left alone.
   * Each connection to be cut gets its cut point when it opens.
   */
  cuts?: number;
  /** Cut point range in bytes in the `'up'` direction (default [1, 20000]). */
  cutUp?: [number, number];
  /** Cut point range in bytes in the `'down'` direction (default [1, 2000]). */
  cutDown?: [number, number];
  /** Chance that a cut is placed in the `'down'` direction (default 0). */
  downCutChance?: number;
  /** Split each chunk into 1..maxPieces pieces (default 1: no splitting). */
  maxPieces?: number;
  /** Chance to yield a turn of the event loop between two pieces (default 0.3 when splitting). */
  yieldChance?: number;
  /** Chance per piece to stall before forwarding it (default 0). */
  stallChance?: number;
  /** Stall duration range, ms (default [1, 20]). */
  stallMs?: [number, number];
  /** Forward at most this many bytes per second per direction (default unlimited). */
  bytesPerSecond?: number;
  /** Stop reading from a side while this many bytes wait to be forwarded (default 256 KiB). */
  highWaterMark?: number;
}

interface Pipe {
  dir: Direction;
  src: net.Socket;
  dst: net.Socket;
  queue: Buffer[];
  queued: number;
  running: boolean;
  tracker: FrameTracker;
  /** Cut once this many bytes were forwarded (Infinity: never). */
  cutAt: number;
  paused: boolean;
  /** The source ended (EOF or closed): end the destination once the queue is forwarded. */
  ended: boolean;
  /** The destination was ended. */
  finished: boolean;
  /** Rate limiting: when the current window started and bytes sent in it. */
  windowStart: number;
  windowBytes: number;
}

interface ProxiedConn {
  index: number;
  client: net.Socket;
  upstream: net.Socket;
  up: Pipe;
  down: Pipe;
  done: boolean;
  /** A cut was planned for this connection and has not happened (yet). */
  planned: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const nextTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * The proxy. `listen()` resolves with its port; point the client's connector at it.
 *
 * @example
 * const proxy = new FaultProxy({ target: { port: alicePort }, seed: 7, cuts: 25, maxPieces: 4 });
 * connect(bob, await proxy.listen());
 * ...
 * expect(proxy.cutReports.filter((c) => c.midFrame).length).toBeGreaterThanOrEqual(10);
 */
export class FaultProxy {
  /** Every cut made, in order. */
  readonly cutReports: CutReport[] = [];
  /** Connections accepted so far. */
  accepted = 0;
  /** Bytes forwarded per direction over all connections. */
  readonly forwarded = { up: 0, down: 0 };
  /** Separate writes made to the sockets (pieces of split chunks count one each). */
  writes = 0;
  /** Stalls made. */
  stalls = 0;
  /** Times a side was paused for backpressure. */
  pauses = 0;

  private readonly opts: Required<Omit<FaultProxyOptions, 'target' | 'bytesPerSecond'>> & {
    bytesPerSecond: number;
  };
  private readonly target: { host: string; port: number };
  private readonly rand: () => number;
  private readonly server: net.Server;
  private readonly conns = new Set<ProxiedConn>();
  private readonly sockets = new Set<net.Socket>();
  private cutsPlanned = 0;
  private closed = false;
  private readonly cutListeners: Array<(c: CutReport) => void> = [];

  constructor(options: FaultProxyOptions) {
    this.target = { host: options.target.host ?? '127.0.0.1', port: options.target.port };
    this.rand = prng(options.seed ?? 1);
    const maxPieces = options.maxPieces ?? 1;
    this.opts = {
      seed: options.seed ?? 1,
      cuts: options.cuts ?? 0,
      cutUp: options.cutUp ?? [1, 20_000],
      cutDown: options.cutDown ?? [1, 2_000],
      downCutChance: options.downCutChance ?? 0,
      maxPieces,
      yieldChance: options.yieldChance ?? (maxPieces > 1 ? 0.3 : 0),
      stallChance: options.stallChance ?? 0,
      stallMs: options.stallMs ?? [1, 20],
      bytesPerSecond: options.bytesPerSecond ?? Infinity,
      highWaterMark: options.highWaterMark ?? 256 * 1024,
    };
    this.server = net.createServer({ allowHalfOpen: true }, (client) => this.accept(client));
  }

  /** Listen on 127.0.0.1, port 0; resolves with the port. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  /** Point new connections at another target (e.g. a restarted server). */
  retarget(port: number, host = '127.0.0.1'): void {
    this.target.port = port;
    this.target.host = host;
  }

  /** Cuts still to be made. */
  get cutsLeft(): number {
    return this.opts.cuts - this.cutReports.length;
  }

  /** Call `fn` for every cut from now on. */
  onCut(fn: (c: CutReport) => void): void {
    this.cutListeners.push(fn);
  }

  /** Cut every open connection now (both sockets destroyed), without a report. */
  dropAll(): void {
    for (const c of this.conns) this.finish(c);
  }

  /** Stop listening and destroy every proxied connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.dropAll();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    if (this.closed) {
      client.destroy();
      return;
    }
    const index = this.accepted++;
    client.setNoDelay(true);
    client.pause();
    const upstream = net.connect({ host: this.target.host, port: this.target.port, allowHalfOpen: true });
    upstream.setNoDelay(true);
    upstream.pause();
    const pipe = (dir: Direction, src: net.Socket, dst: net.Socket): Pipe => ({
      dir,
      src,
      dst,
      queue: [],
      queued: 0,
      running: false,
      tracker: new FrameTracker(),
      cutAt: Infinity,
      paused: false,
      ended: false,
      finished: false,
      windowStart: performance.now(),
      windowBytes: 0,
    });
    const c: ProxiedConn = {
      index,
      client,
      upstream,
      up: pipe('up', client, upstream),
      down: pipe('down', upstream, client),
      done: false,
      planned: false,
    };
    this.sockets.add(client);
    this.sockets.add(upstream);
    client.once('close', () => this.sockets.delete(client));
    upstream.once('close', () => this.sockets.delete(upstream));
    if (this.cutsPlanned < this.opts.cuts) {
      this.cutsPlanned++;
      c.planned = true;
      if (this.rand() < this.opts.downCutChance) c.down.cutAt = randInt(this.rand, ...this.opts.cutDown);
      else c.up.cutAt = randInt(this.rand, ...this.opts.cutUp);
    }
    this.conns.add(c);
    // An error is a reset: both sides go at once. An orderly end travels through, after the
    // bytes before it.
    for (const s of [client, upstream]) s.on('error', () => this.finish(c));
    for (const p of [c.up, c.down]) {
      const end = (): void => {
        if (p.ended) return;
        p.ended = true;
        this.maybeEnd(c, p);
      };
      p.src.on('end', end);
      p.src.on('close', end);
    }
    upstream.once('connect', () => {
      if (c.done) return;
      for (const p of [c.up, c.down]) {
        p.src.on('data', (chunk: Buffer) => this.onData(c, p, chunk));
        p.src.resume();
      }
    });
  }

  /** Pass an orderly end on once everything before it was forwarded. */
  private maybeEnd(c: ProxiedConn, p: Pipe): void {
    if (c.done || !p.ended || p.running || p.queue.length || p.finished) return;
    p.finished = true;
    p.dst.end();
    const other = p === c.up ? c.down : c.up;
    if (other.finished) {
      this.retire(c);
      const t = setTimeout(() => this.destroyBoth(c), 1000);
      let open = 2;
      for (const s of [c.client, c.upstream]) {
        s.once('close', () => {
          if (--open === 0) clearTimeout(t);
        });
      }
    }
  }

  private onData(c: ProxiedConn, p: Pipe, chunk: Buffer): void {
    if (c.done) return;
    p.queue.push(chunk);
    p.queued += chunk.length;
    if (p.queued >= this.opts.highWaterMark && !p.paused) {
      p.paused = true;
      this.pauses++;
      p.src.pause();
    }
    if (!p.running) void this.run(c, p);
  }

  /** Forward a pipe's queue, piece by piece, until it is empty. */
  private async run(c: ProxiedConn, p: Pipe): Promise<void> {
    p.running = true;
    const o = this.opts;
    const simple = o.maxPieces <= 1 && o.stallChance === 0 && o.bytesPerSecond === Infinity;
    try {
      while (p.queue.length && !c.done) {
        const chunk = p.queue.shift()!;
        p.queued -= chunk.length;
        if (p.paused && p.queued < o.highWaterMark / 2) {
          p.paused = false;
          p.src.resume();
        }
        if (simple && p.cutAt === Infinity) {
          p.tracker.feed(chunk);
          this.forwarded[p.dir] += chunk.length;
          this.writes++;
          if (!p.dst.write(chunk)) await this.drained(c, p.dst);
          continue;
        }
        for (const piece of this.split(chunk)) {
          if (o.stallChance > 0 && this.rand() < o.stallChance) {
            this.stalls++;
            await sleep(randInt(this.rand, ...o.stallMs));
            if (c.done) return;
          }
          if (!(await this.forward(c, p, piece))) return;
        }
      }
    } finally {
      p.running = false;
    }
    this.maybeEnd(c, p);
  }

  private split(chunk: Buffer): Buffer[] {
    const n = Math.min(chunk.length, randInt(this.rand, 1, this.opts.maxPieces));
    if (n <= 1) return [chunk];
    const cuts = new Set<number>();
    while (cuts.size < n - 1) cuts.add(randInt(this.rand, 1, chunk.length - 1));
    const points = [0, ...[...cuts].sort((a, b) => a - b), chunk.length];
    const out: Buffer[] = [];
    for (let i = 0; i + 1 < points.length; i++) out.push(chunk.subarray(points[i], points[i + 1]));
    return out;
  }

  /** Write one piece, honouring the cut point, the rate and backpressure. False once cut. */
  private async forward(c: ProxiedConn, p: Pipe, piece: Buffer): Promise<boolean> {
    const o = this.opts;
    if (o.bytesPerSecond !== Infinity) {
      // Token bucket over 50 ms windows.
      const windowMs = 50;
      const perWindow = Math.max(1, Math.floor((o.bytesPerSecond * windowMs) / 1000));
      let off = 0;
      while (off < piece.length) {
        const now = performance.now();
        if (now - p.windowStart >= windowMs) {
          p.windowStart = now;
          p.windowBytes = 0;
        }
        const room = perWindow - p.windowBytes;
        if (room <= 0) {
          await sleep(Math.max(1, windowMs - (now - p.windowStart)));
          if (c.done) return false;
          continue;
        }
        const part = piece.subarray(off, off + room);
        off += part.length;
        p.windowBytes += part.length;
        if (!(await this.write(c, p, part))) return false;
      }
      return true;
    }
    if (o.yieldChance > 0 && this.rand() < o.yieldChance) {
      await nextTurn();
      if (c.done) return false;
    }
    return this.write(c, p, piece);
  }

  private async write(c: ProxiedConn, p: Pipe, data: Buffer): Promise<boolean> {
    if (c.done) return false;
    const sent = p.tracker.bytes;
    if (sent + data.length >= p.cutAt) {
      const keep = data.subarray(0, p.cutAt - sent);
      if (keep.length) {
        p.tracker.feed(keep);
        this.forwarded[p.dir] += keep.length;
      }
      this.cut(c, p, keep);
      return false;
    }
    p.tracker.feed(data);
    this.forwarded[p.dir] += data.length;
    this.writes++;
    if (!p.dst.write(data)) await this.drained(c, p.dst);
    return !c.done;
  }

  private drained(c: ProxiedConn, s: net.Socket): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('close', done);
        resolve();
      };
      s.on('drain', done);
      s.on('close', done);
      if (c.done) done();
    });
  }

  /** Forward `last` (the bytes up to the cut point), then close both sides. */
  private cut(c: ProxiedConn, p: Pipe, last: Buffer): void {
    const other = p === c.up ? c.down : c.up;
    const report: CutReport = {
      conn: c.index,
      direction: p.dir,
      offset: p.tracker.bytes,
      midFrame: p.tracker.midFrame,
      packetsBefore: p.tracker.packets,
      otherOffset: other.tracker.bytes,
    };
    this.cutReports.push(report);
    c.planned = false;
    this.retire(c);
    // The receiving side gets exactly `offset` bytes, then FIN; the sending side is reset.
    p.src.destroy();
    if (last.length) p.dst.write(last);
    p.dst.end();
    const t = setTimeout(() => p.dst.destroy(), 1000);
    p.dst.once('close', () => clearTimeout(t));
    for (const fn of this.cutListeners) fn(report);
  }

  /** Reset both sides now. */
  private finish(c: ProxiedConn): void {
    if (c.done) return;
    this.retire(c);
    this.destroyBoth(c);
  }

  /** The connection is over; a cut planned for it and not made goes to the next one. */
  private retire(c: ProxiedConn): void {
    c.done = true;
    this.conns.delete(c);
    if (c.planned) {
      c.planned = false;
      this.cutsPlanned--;
    }
  }

  private destroyBoth(c: ProxiedConn): void {
    c.client.destroy();
    c.upstream.destroy();
  }
}
