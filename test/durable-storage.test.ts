/**
 * The model test's storage wrapper (test/helpers/durable-storage.ts): it forwards whatever
 * methods the wrapped object has (so it fits the QueuesStorage of today and of issue #14's
 * rewrite alike), applies calls in call order at commit events, and a crash keeps a prefix of
 * the unresolved calls.
 */
import { describe, expect, it } from 'vitest';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { DurableStore } from './helpers/durable-storage.js';
import { prng } from './helpers/prng.js';
import { SimClock } from './helpers/sim-net.js';

/** An object with methods the wrapper has never heard of (like putDelivered / loadDelivered). */
class Log {
  readonly ops: string[] = [];
  async putDelivered(marks: { peer: string; seq: number }[]): Promise<void> {
    for (const m of marks) this.ops.push(`${m.peer}:${m.seq}`);
  }
  async loadDelivered(): Promise<string[]> {
    return [...this.ops];
  }
}

async function runAll(clock: SimClock): Promise<void> {
  for (let i = 0; i < 10_000 && clock.nextAt() !== Infinity; i++) {
    clock.runNext();
    await new Promise((r) => setImmediate(r));
  }
}

describe('DurableStore', () => {
  it('forwards methods it does not know, in call order, resolving once applied', async () => {
    const clock = new SimClock();
    const store = new DurableStore(new Log(), clock, prng(1));
    const h = store.open();
    const done: number[] = [];
    const ps = [1, 2, 3].map((seq) => h.putDelivered([{ peer: 'bob', seq }]).then(() => done.push(seq)));
    const loaded = h.loadDelivered();
    expect(store.inner.ops).toEqual([]); // nothing applied before a commit event
    await runAll(clock);
    await Promise.all(ps);
    expect(done).toEqual([1, 2, 3]);
    expect(await loaded).toEqual(['bob:1', 'bob:2', 'bob:3']);
  });

  it('a crash keeps every resolved call and a prefix of the others; the dead handle never answers', async () => {
    for (let seed = 1; seed <= 50; seed++) {
      const clock = new SimClock();
      const store = new DurableStore(new Log(), clock, prng(seed));
      const h = store.open();
      const resolved: number[] = [];
      for (let seq = 1; seq <= 20; seq++) void h.putDelivered([{ peer: 'p', seq }]).then(() => resolved.push(seq));
      // run a few commit events, then crash
      for (let i = 0; i < (seed % 4) && clock.nextAt() !== Infinity; i++) {
        clock.runNext();
        await new Promise((r) => setImmediate(r));
      }
      const before = [...resolved];
      store.crash();
      await runAll(clock);
      const late = h.putDelivered([{ peer: 'p', seq: 99 }]);
      let answered = false;
      void late.then(() => (answered = true), () => (answered = true));
      await new Promise((r) => setImmediate(r));
      expect(answered).toBe(false);
      expect(resolved).toEqual(before); // nothing resolves after the crash
      const kept = store.inner.ops.map((o) => Number(o.split(':')[1]));
      // a prefix of the calls, in order, containing every resolved one
      expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => i + 1));
      expect(kept.length).toBeGreaterThanOrEqual(before.length);
      // a new process sees what survived
      const h2 = store.open();
      const p = h2.loadDelivered();
      await runAll(clock);
      expect(await p).toEqual(store.inner.ops);
    }
  });

  it('wraps MemoryQueuesStorage; closeHandle applies what is queued and refuses later calls', async () => {
    const clock = new SimClock();
    const store = new DurableStore(new MemoryQueuesStorage(), clock, prng(7));
    const h = store.open();
    const uuid = Buffer.alloc(16, 1);
    const push = h.push([{ queue: 'bob', uuid, ttl: null, flags: 1, body: Buffer.from('x'), seq: 1 }]);
    uuid.fill(2); // the caller may reuse its buffer at once
    store.closeHandle();
    await push;
    await expect(h.load()).rejects.toThrow(/after close/);
    const h2 = store.open();
    const items = h2.load();
    await runAll(clock);
    const got = await items;
    expect(got.map((i) => i.uuid.toString('hex'))).toEqual([Buffer.alloc(16, 1).toString('hex')]);
  });
});
