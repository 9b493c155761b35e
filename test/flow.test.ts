/**
 * Flow control and bounded memory: queue limits hold under concurrent sends, the 'block'
 * policy serves blocked senders strictly in call order, and a producer offering a million
 * messages to a slow reader is held back while its memory stays bounded.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { killAllChildren, spawnFixture } from './helpers/children.js';
import { FaultProxy } from './helpers/fault-proxy.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { until } from './helpers/wait.js';

const proxies: FaultProxy[] = [];
afterEach(async () => {
  await killAllChildren();
  for (const p of proxies.splice(0)) await p.close();
  await closeAllPeers();
});

/** Settle-or-pending state of promises after the event loop had a few turns. */
async function states(ps: Promise<unknown>[]): Promise<string[]> {
  const out: string[] = ps.map(() => 'pending');
  ps.forEach((p, i) =>
    p.then(
      () => (out[i] = 'ok'),
      (e: { code?: string }) => (out[i] = e.code ?? 'error'),
    ),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return out;
}

describe('queue limits under concurrent sends', () => {
  it("calls made together cannot overrun the limit: 'reject' rejects the surplus", async () => {
    const bob = makePeer('bob', { queueLimit: 3 });
    const ps = Array.from({ length: 10 }, (_, i) => bob.messaging.sendMessage('alice', new Message(`m${i}`)));
    expect(await states(ps)).toEqual(['ok', 'ok', 'ok', ...Array(7).fill('ERR_QUEUE_FULL')]);
    expect(bob.messaging.queueSize('alice')).toBe(3);
  });

  it("calls made together cannot overrun the limit: 'block' holds the surplus", async () => {
    const bob = makePeer('bob', { queueLimit: 3, queuePolicy: 'block' });
    const ps = Array.from({ length: 10 }, (_, i) => bob.messaging.sendMessage('alice', new Message(`m${i}`)));
    expect(await states(ps)).toEqual(['ok', 'ok', 'ok', ...Array(7).fill('pending')]);
    expect(bob.messaging.queueSize('alice')).toBe(3);
    const alice = makePeer('alice');
    const got: string[] = [];
    alice.messaging.on('message', (_c, _i, m) => got.push(m.body.toString()));
    connect(bob, await listen(alice));
    await Promise.all(ps);
    await until(() => got.length === 10);
    expect(got).toEqual(Array.from({ length: 10 }, (_, i) => `m${i}`));
  });

  it("calls made together cannot overrun the limit: 'drop-oldest' drops down to it", async () => {
    const bob = makePeer('bob', { queueLimit: 3, queuePolicy: 'drop-oldest' });
    const dropped: string[] = [];
    const msgs = Array.from({ length: 10 }, (_, i) => new Message(`m${i}`));
    bob.messaging.on('message-drop', (_i, uuid) => dropped.push(msgs.find((m) => m.uuid.equals(uuid))!.body.toString()));
    await Promise.all(msgs.map((m) => bob.messaging.sendMessage('alice', m)));
    expect(bob.messaging.queueSize('alice')).toBe(3);
    expect(dropped).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6']);
  });

  it("'queueLimitBytes' holds too: bytes of calls made together are counted", async () => {
    const bob = makePeer('bob', { queueLimitBytes: 1000 });
    const ps = Array.from({ length: 5 }, () => bob.messaging.sendMessage('alice', new Message(Buffer.alloc(300))));
    expect(await states(ps)).toEqual(['ok', 'ok', 'ok', 'ERR_QUEUE_FULL', 'ERR_QUEUE_FULL']);
  });
});

describe("'block' serves blocked senders strictly in call order", () => {
  it('a large message waiting for room is not overtaken by a smaller one behind it', async () => {
    // One message in flight at a time: room is freed one message at a time.
    const bob = makePeer('bob', { queuePolicy: 'block', queueLimitBytes: 1000, maxInFlight: 1 });
    for (let i = 0; i < 10; i++) await bob.messaging.sendMessage('alice', new Message(`f${i}`.padEnd(100, '.')));
    const big = bob.messaging.sendMessage('alice', new Message('BIG'.padEnd(500, '.')));
    const small = bob.messaging.sendMessage('alice', new Message('sml'));
    expect(await states([big, small])).toEqual(['pending', 'pending']);
    const alice = makePeer('alice');
    const got: string[] = [];
    alice.messaging.on('message', (_c, _i, m) => got.push(m.body.toString().slice(0, 3)));
    connect(bob, await listen(alice));
    await Promise.all([big, small]);
    await until(() => got.length === 12);
    expect(got).toEqual(['f0.', 'f1.', 'f2.', 'f3.', 'f4.', 'f5.', 'f6.', 'f7.', 'f8.', 'f9.', 'BIG', 'sml']);
  });

  it("a send made from a 'drain' handler queues behind the senders already waiting", async () => {
    const bob = makePeer('bob', { queuePolicy: 'block', queueLimit: 2, maxInFlight: 1 });
    await bob.messaging.sendMessage('alice', new Message('a'));
    await bob.messaging.sendMessage('alice', new Message('b'));
    const waiting = ['c', 'd', 'e'].map((b) => bob.messaging.sendMessage('alice', new Message(b)));
    const fromDrain: Promise<void>[] = [];
    let k = 0;
    bob.messaging.on('drain', () => {
      if (k < 3) fromDrain.push(bob.messaging.sendMessage('alice', new Message(`x${k++}`)));
    });
    const alice = makePeer('alice');
    const got: string[] = [];
    alice.messaging.on('message', (_c, _i, m) => got.push(m.body.toString()));
    connect(bob, await listen(alice));
    await Promise.all(waiting);
    await until(() => fromDrain.length === 3);
    await Promise.all(fromDrain);
    await until(() => got.length === 8);
    expect(got).toEqual(['a', 'b', 'c', 'd', 'e', 'x0', 'x1', 'x2']);
  });

  it('room freed by an expired TTL lets the first blocked sender go; close() rejects the rest', async () => {
    const bob = makePeer('bob', { queuePolicy: 'block', queueLimit: 1 });
    const drops: string[] = [];
    bob.messaging.on('message-drop', (_i, _u, reason) => drops.push(reason));
    await bob.messaging.sendMessage('alice', new Message('short', { ttl: 100 }));
    const second = bob.messaging.sendMessage('alice', new Message('second'));
    const third = bob.messaging.sendMessage('alice', new Message('third'));
    expect(await states([second, third])).toEqual(['pending', 'pending']);
    await second; // the TTL timer dropped 'short' and made room for exactly one
    expect(drops).toEqual(['ttl']);
    expect(await states([third])).toEqual(['pending']);
    await bob.messaging.close();
    await expect(third).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  it('many concurrent senders against a tiny queue: every message once, in call order', async () => {
    const bob = makePeer('bob', { queuePolicy: 'block', queueLimit: 5, maxInFlight: 3 });
    const alice = makePeer('alice');
    const got: number[] = [];
    alice.messaging.on('message', (_c, _i, m) => got.push(Number(m.body.toString())));
    connect(bob, await listen(alice));
    const N = 5000;
    const ps: Promise<void>[] = [];
    for (let i = 0; i < N; i++) {
      ps.push(bob.messaging.sendMessage('alice', new Message(String(i))));
      if (i % 97 === 0) await new Promise((r) => setImmediate(r));
    }
    await Promise.all(ps);
    await until(() => got.length === N, 20_000);
    expect(got.findIndex((v, i) => v !== i)).toBe(-1);
  });
});

// Documented bound for the producer below: with queueLimit 1000 and messages of a few bytes,
// its heap after gc() grows by less than 16 MiB while offering the messages, and its RSS stays
// under 256 MiB. (Measured here: a few MiB of heap and ~100 MiB RSS.)
const SLOW_COUNT = Number(process.env.SNAKEMQ_SLOW_COUNT ?? 1_000_000);
const SLOW_BYTES_PER_SECOND = Number(process.env.SNAKEMQ_SLOW_RATE ?? 1024 * 1024);
const HEAP_BOUND = 16 * 1024 * 1024;
const RSS_BOUND = 256 * 1024 * 1024;

describe('a producer and a slow reader', () => {
  it(
    `offering ${SLOW_COUNT.toLocaleString('en')} messages with 'block': the producer is held back and its memory stays bounded`,
    async () => {
      const alice = makePeer('alice');
      let next = 0;
      let bad = -1;
      alice.messaging.on('message', (_c, _i, m) => {
        const s = m.body.toString();
        if (s[0] === 'w') return; // the producer's warm-up
        if (Number(s) !== next && bad < 0) bad = next;
        next++;
      });
      // The reader's side of the connection passes on at most 1 MiB/s (a frame here is ~37
      // bytes: ~28,000 messages/s, well below what the producer offers unhindered here), and
      // would stop reading from the producer if it fell behind by more than 64 KiB (the
      // producer's queue limit of 1000 messages, in flight included, keeps it below that).
      const proxy = new FaultProxy({
        target: { port: await listen(alice) },
        bytesPerSecond: SLOW_BYTES_PER_SECOND,
        highWaterMark: 64 * 1024,
      });
      proxies.push(proxy);
      const port = await proxy.listen();
      const QUEUE_LIMIT = 1000;
      const started = performance.now();
      const child = spawnFixture('faults-flow-sender.ts', [String(port), String(SLOW_COUNT), String(QUEUE_LIMIT)], ['--expose-gc']);
      const line = await child.waitLine((l) => l.startsWith('{'), 170_000);
      const elapsed = performance.now() - started;
      expect(await child.exited).toBe(0);
      const r = JSON.parse(line) as {
        count: number;
        offeredMs: number;
        waited: number;
        blockedMs: number;
        drains: number;
        maxQueue: number;
        maxHeapGrowth: number;
        maxRss: number;
        base: { heap: number; rss: number };
      };
      await until(() => next === SLOW_COUNT, 10_000, 'alice to receive everything');
      expect(bad).toBe(-1);
      // Held back: sends kept finding the queue full and waiting for room (the reader frees it
      // in batches of about one in-flight window, so roughly one send per batch waits), and the
      // producer spent most of its time waiting; the queue never grew past its limit.
      expect(r.waited).toBeGreaterThan(SLOW_COUNT / 5000);
      expect(r.drains).toBeGreaterThan(SLOW_COUNT / 5000);
      expect(r.blockedMs).toBeGreaterThan(r.offeredMs / 2);
      expect(r.maxQueue).toBeLessThanOrEqual(QUEUE_LIMIT);
      // And it could go no faster than the reader (frame bytes / rate, with some slack).
      expect(r.offeredMs).toBeGreaterThan(((SLOW_COUNT * 30) / SLOW_BYTES_PER_SECOND) * 1000 * 0.8);
      // Bounded memory.
      expect(r.maxHeapGrowth).toBeLessThan(HEAP_BOUND);
      expect(r.maxRss).toBeLessThan(RSS_BOUND);
      console.log(
        `slow reader: ${SLOW_COUNT} messages in ${Math.round(elapsed)} ms, ${r.waited} sends waited ` +
          `(${Math.round((100 * r.blockedMs) / r.offeredMs)}% of the time), ` +
          `heap growth ${(r.maxHeapGrowth / 1048576).toFixed(1)} MiB, max RSS ${(r.maxRss / 1048576).toFixed(0)} MiB`,
      );
    },
    180_000,
  );
});
