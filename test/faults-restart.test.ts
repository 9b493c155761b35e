/**
 * Processes killed with SIGKILL at seeded random points and restarted on the same SQLite file:
 * - the sender: every send whose promise resolved arrives exactly once, in order;
 * - the receiver: nothing is lost, and each restart repeats at most one in-flight window.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FLAG_PERSISTENT, Message } from '../src/message.js';
import { type Child, killAllChildren, spawnFixture } from './helpers/children.js';
import { prng, randInt } from './helpers/fault-proxy.js';
import { closeAllPeers, listen, makePeer } from './helpers/peers.js';
import { cleanupTemp, sqlite, tempDir } from './helpers/temp.js';
import { until } from './helpers/wait.js';

const SEED = Number(process.env.SNAKEMQ_FAULT_SEED ?? 20240611);

afterEach(async () => {
  await killAllChildren();
  await closeAllPeers();
  await cleanupTemp();
});



/** "<gen>:<i>" → [gen, i] */
const parse = (body: string): [number, number] => body.split(':').map(Number) as [number, number];
const before = (a: [number, number], b: [number, number]): boolean => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

describe('a sender killed with SIGKILL and restarted twice on the same SQLite file', () => {
  it(
    'delivers every send whose promise resolved exactly once, in order',
    async () => {
      const rand = prng(SEED);
      const dir = tempDir('snakemq-restart-');
      const alice = makePeer('alice', { storage: sqlite(join(dir, 'alice.db')) });
      const received: string[] = [];
      alice.messaging.on('message', (_c, ident, m) => {
        expect(ident).toBe('bob');
        received.push(m.body.toString());
      });
      const port = await listen(alice);
      const resolved: string[] = [];
      const bobDb = join(dir, 'bob.db');
      const kills: number[] = [];
      for (let gen = 0; gen < 3; gen++) {
        const last = gen === 2;
        const child: Child = spawnFixture('faults-sender.ts', [bobDb, String(port), String(gen), last ? '3000' : '1000000']);
        child.onLine((line) => {
          if (line.startsWith('ok ')) resolved.push(line.slice(3));
        });
        if (last) {
          await child.waitLine((l) => l === 'done', 40_000);
          expect(await child.exited).toBe(0);
        } else {
          // Kill at a seeded random point: after this many resolved sends of this generation,
          // plus a random extra delay so the kill lands anywhere in the send/commit/ack cycle.
          const killAfter = randInt(rand, 300, 4000);
          const extraMs = randInt(rand, 0, 30);
          let seen = 0;
          await child.waitLine(() => ++seen >= killAfter, 40_000);
          await new Promise((r) => setTimeout(r, extraMs));
          await child.kill();
          kills.push(resolved.length);
        }
      }
      expect(kills).toHaveLength(2);
      // Everything resolved has arrived: the last generation exited only once all its queue
      // (the earlier generations' leftovers included) was acknowledged, i.e. handed to alice.
      const got = new Set(received);
      expect(resolved.filter((r) => !got.has(r))).toEqual([]);
      // Exactly once: no body twice. In order: strictly increasing (generation, index).
      expect(new Set(received).size).toBe(received.length);
      for (let i = 1; i < received.length; i++) {
        if (!before(parse(received[i - 1]), parse(received[i]))) {
          throw new Error(`out of order at ${i}: ${received[i - 1]} then ${received[i]}`);
        }
      }
      // Each killed generation got some sends resolved, and the last one all of its 3000.
      for (const gen of [0, 1]) expect(resolved.some((r) => r.startsWith(`${gen}:`))).toBe(true);
      expect(resolved.filter((r) => r.startsWith('2:'))).toHaveLength(3000);
      expect(received.length).toBeGreaterThanOrEqual(resolved.length);
    },
    90_000,
  );
});

describe('a receiver killed with SIGKILL and restarted twice on the same SQLite file', () => {
  it(
    'loses nothing and repeats at most one in-flight window per restart',
    async () => {
      const rand = prng(SEED + 1);
      const dir = tempDir('snakemq-restart-');
      const MAX_IN_FLIGHT = 64;
      const bob = makePeer('bob', { storage: sqlite(join(dir, 'bob.db')), maxInFlight: MAX_IN_FLIGHT });
      const port = await listen(bob);
      const N = 8000;
      const sends: Promise<void>[] = [];
      for (let i = 0; i < N; i++) sends.push(bob.messaging.sendMessage('alice', new Message(String(i), { flags: FLAG_PERSISTENT })));
      await Promise.all(sends);
      const aliceDb = join(dir, 'alice.db');
      const gens: number[][] = [];
      for (let gen = 0; gen < 3; gen++) {
        const got: number[] = [];
        gens.push(got);
        const child = spawnFixture('faults-receiver.ts', [aliceDb, String(port)]);
        child.onLine((line) => {
          if (line.startsWith('m ')) got.push(Number(line.slice(2)));
        });
        if (gen === 2) {
          await until(() => bob.messaging.queueSize('alice') === 0, 40_000, 'every message acknowledged');
        } else {
          const killAfter = randInt(rand, 500, 3000);
          await child.waitLine(() => got.length >= killAfter, 40_000);
          await new Promise((r) => setTimeout(r, randInt(rand, 0, 20)));
          await child.kill();
        }
      }
      // None lost: the messages seen by the application, repeats removed, are 0..N-1 in order.
      const all = gens.flat();
      const firsts: number[] = [];
      const seen = new Set<number>();
      for (const v of all) {
        if (!seen.has(v)) {
          seen.add(v);
          firsts.push(v);
        }
      }
      expect(firsts.length).toBe(N);
      expect(firsts.findIndex((v, i) => v !== i)).toBe(-1);
      // Within one process life each message once and in order.
      for (const g of gens) for (let i = 1; i < g.length; i++) expect(g[i]).toBeGreaterThan(g[i - 1]);
      // Repeats: only what a generation saw that the one before had already seen, at most one
      // in-flight window each.
      for (let gen = 1; gen < 3; gen++) {
        const earlier = new Set(gens.slice(0, gen).flat());
        const repeats = gens[gen].filter((v) => earlier.has(v)).length;
        expect(repeats).toBeLessThanOrEqual(MAX_IN_FLIGHT);
      }
      expect(gens[0].length).toBeGreaterThan(0);
      expect(gens[1].length).toBeGreaterThan(0);
    },
    90_000,
  );
});
