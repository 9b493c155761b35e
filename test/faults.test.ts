/**
 * Fault injection over real loopback sockets: a proxy between bob and alice cuts the
 * connection at random byte offsets (many of them inside a packet), splits writes and stalls.
 * Acknowledged delivery must still hand every message to alice's application exactly once and
 * in order.
 */
import * as net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FLAG_PERSISTENT, Message } from '../src/message.js';
import { FaultProxy, FrameTracker, prng, randInt } from './helpers/fault-proxy.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { cleanupTemp, sqlite, tempDir } from './helpers/temp.js';
import { until, waitFor } from './helpers/wait.js';

const SEED = Number(process.env.SNAKEMQ_FAULT_SEED ?? 20240611);

const proxies: FaultProxy[] = [];
const sockets: net.Socket[] = [];
const servers: net.Server[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const p of proxies.splice(0)) await p.close();
  await closeAllPeers();
  await cleanupTemp();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});



function proxy(...args: ConstructorParameters<typeof FaultProxy>): FaultProxy {
  const p = new FaultProxy(...args);
  proxies.push(p);
  return p;
}

/** A raw TCP server that records every byte it receives, per connection. */
async function sink(): Promise<{ port: number; received: Buffer[][]; closed: number[] }> {
  const received: Buffer[][] = [];
  const closed: number[] = [];
  const server = net.createServer((s) => {
    const i = received.length;
    received.push([]);
    sockets.push(s);
    s.on('data', (d) => received[i].push(d));
    s.on('error', () => {});
    s.on('close', () => closed.push(i));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, received, closed };
}

/** Packets `[len][payload]` with payload lengths from `lens`, payload bytes = packet index. */
function packets(lens: number[]): Buffer {
  return Buffer.concat(
    lens.map((n, i) => {
      const b = Buffer.alloc(4 + n, i & 0xff);
      b.writeUInt32BE(n, 0);
      return b;
    }),
  );
}

describe('the fault proxy itself', () => {
  it('FrameTracker knows packet boundaries however the stream is chunked', () => {
    const rand = prng(SEED);
    const lens = Array.from({ length: 200 }, () => randInt(rand, 0, 40));
    const stream = packets(lens);
    const boundaries = new Set<number>([0]);
    let off = 0;
    for (const n of lens) boundaries.add((off += 4 + n));
    for (let trial = 0; trial < 50; trial++) {
      const t = new FrameTracker();
      let pos = 0;
      while (pos < stream.length) {
        const n = Math.min(stream.length - pos, randInt(rand, 1, 30));
        t.feed(stream.subarray(pos, pos + n));
        pos += n;
        expect(t.midFrame).toBe(!boundaries.has(pos));
      }
      expect(t.packets).toBe(lens.length);
    }
  });

  it('forwards exactly the bytes up to the cut, in order, and reports the offset truthfully', async () => {
    const target = await sink();
    const p = proxy({ target: { port: target.port }, seed: SEED, cuts: 1, cutUp: [1000, 3000], maxPieces: 5 });
    const port = await p.listen();
    const stream = packets(Array.from({ length: 300 }, (_, i) => (i * 7) % 23));
    const client = net.connect(port, '127.0.0.1');
    sockets.push(client);
    client.on('error', () => {});
    const clientClosed = new Promise((r) => client.once('close', r));
    client.write(stream);
    await clientClosed;
    await until(() => target.closed.length === 1, 5000, 'the target side to close');
    expect(p.cutReports).toHaveLength(1);
    const cut = p.cutReports[0];
    expect(cut.direction).toBe('up');
    expect(cut.offset).toBeGreaterThanOrEqual(1000);
    expect(cut.offset).toBeLessThanOrEqual(3000);
    const got = Buffer.concat(target.received[0]);
    expect(got.length).toBe(cut.offset);
    expect(got.equals(stream.subarray(0, cut.offset))).toBe(true);
    const t = new FrameTracker();
    t.feed(got);
    expect(cut.midFrame).toBe(t.midFrame);
    expect(cut.packetsBefore).toBe(t.packets);
  });

  it('splits writes into many reads but never reorders or loses a byte', async () => {
    const target = await sink();
    const p = proxy({ target: { port: target.port }, seed: SEED, maxPieces: 64, stallChance: 0.2, stallMs: [1, 3] });
    const port = await p.listen();
    const rand = prng(SEED + 1);
    const data = Buffer.alloc(200_000);
    for (let i = 0; i < data.length; i++) data[i] = Math.floor(rand() * 256);
    const client = net.connect(port, '127.0.0.1');
    sockets.push(client);
    for (let off = 0; off < data.length; off += 10_000) client.write(data.subarray(off, off + 10_000));
    client.end();
    await until(() => target.closed.length === 1, 10_000, 'the target side to close');
    const got = Buffer.concat(target.received[0]);
    expect(got.equals(data)).toBe(true);
    expect(p.writes).toBeGreaterThan(40); // written in many pieces
    expect(p.stalls).toBeGreaterThan(0);
    expect(p.cutReports).toHaveLength(0);
  });
});

describe('acknowledged delivery through a connection cut at random offsets', () => {
  it(
    '10,000 persistent messages, 20+ cuts (10+ inside a packet): each arrives once, in order',
    async () => {
      const dir = tempDir('snakemq-faults-');
      const alice = makePeer('alice', { storage: sqlite(join(dir, 'alice.db')) });
      const bob = makePeer('bob', { storage: sqlite(join(dir, 'bob.db')) });
      const errors: Error[] = [];
      alice.messaging.on('error', (e) => errors.push(e));
      bob.messaging.on('error', (e) => errors.push(e));
      const got: number[] = [];
      alice.messaging.on('message', (_c, ident, m) => {
        expect(ident).toBe('bob');
        got.push(Number(m.body.toString('latin1').split(':')[0]));
      });
      const p = proxy({
        target: { port: await listen(alice) },
        seed: SEED,
        cuts: 30,
        cutUp: [1, 12_000],
        // (acknowledgements are cumulative, 17 bytes a turn: a downstream cut must come early to come at all)
        cutDown: [1, 120],
        downCutChance: 0.2,
        maxPieces: 4,
        stallChance: 0.002,
        stallMs: [1, 10],
      });
      let connects = 0;
      bob.messaging.on('connect', () => connects++);
      connect(bob, await p.listen(), 5);
      const N = 10_000;
      const rand = prng(SEED + 2);
      const sends: Promise<void>[] = [];
      for (let i = 0; i < N; i++) {
        const body = `${i}:${'x'.repeat(randInt(rand, 0, 60))}`;
        sends.push(bob.messaging.sendMessage('alice', new Message(body, { flags: FLAG_PERSISTENT })));
        // let the connection make progress while we send, so cuts land mid-stream
        if (i % 500 === 499) await new Promise((r) => setImmediate(r));
      }
      await Promise.all(sends);
      await until(() => got.length >= N && bob.messaging.queueSize('alice') === 0, 45_000, 'all messages acknowledged');
      // Nothing more may come: a duplicate would show up here.
      const extra = waitFor(alice.messaging, 'message', () => true, 300).then(
        () => true,
        () => false,
      );
      expect(await extra).toBe(false);
      expect(got.length).toBe(N);
      const firstBad = got.findIndex((v, i) => v !== i);
      expect(firstBad).toBe(-1);

      const cuts = p.cutReports;
      const mid = cuts.filter((c) => c.midFrame);
      expect(cuts.length).toBeGreaterThanOrEqual(20);
      expect(mid.length).toBeGreaterThanOrEqual(10);
      expect(cuts.some((c) => c.direction === 'down')).toBe(true);
      expect(p.accepted).toBeGreaterThan(cuts.length);
      expect(connects).toBeGreaterThan(1);
      // Cuts only close connections; nothing was reported as a protocol violation.
      expect(errors.filter((e) => (e as { code?: string }).code !== 'ERR_DUPLICATE_IDENTITY')).toEqual([]);
      // Storage is empty once everything was acknowledged.
      expect(await bob.messaging.storage!.load()).toEqual([]);
    },
    60_000,
  );
});
