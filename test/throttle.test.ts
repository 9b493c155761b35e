import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { Link } from '../src/link.js';
import { Packeter } from '../src/packeter.js';
import { Throttle } from '../src/throttle.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { until, waitFor } from './helpers/wait.js';

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

describe('Throttle', () => {
  it('holds 100 kB/s within 15% over 10 simulated seconds (Packeter over Throttle)', async () => {
    const clock = new ManualClock();
    const [ta, tb] = memoryPair();
    const throttle = new Throttle(ta, { bytesPerSecond: 100_000, clock });
    const sender = new Packeter(throttle);
    const receiver = new Packeter(tb);
    let bytes = 0;
    const samples: number[] = [];
    receiver.on('packet', (_c, p) => (bytes += p.length + 4));
    connectPair(ta, tb, 'c1');
    const payload = Buffer.alloc(996);
    for (let i = 0; i < 3000; i++) sender.sendPacket('c1', payload); // 3 MB offered
    await tick();
    for (let ms = 0; ms < 10_000; ms += 10) {
      clock.advance(10);
      await tick();
      await tick();
      if ((ms + 10) % 1000 === 0) samples.push(bytes);
    }
    const rate = bytes / 10;
    expect(rate).toBeGreaterThan(85_000);
    expect(rate).toBeLessThan(115_000);
    // and evenly, not in one burst: every simulated second carried 100 kB ± 15% (the first adds the bucket)
    const perSecond = samples.map((s, i) => s - (i ? samples[i - 1] : 0));
    for (const s of perSecond.slice(1)) {
      expect(s).toBeGreaterThan(85_000);
      expect(s).toBeLessThan(115_000);
    }
  });

  it('splits a write larger than the bucket into pieces and reports it sent once', async () => {
    const clock = new ManualClock();
    const [ta, tb] = memoryPair();
    const throttle = new Throttle(ta, { bytesPerSecond: 1000, burst: 100, clock });
    const chunks: number[] = [];
    tb.on('recv', (_c, d) => chunks.push(d.length));
    connectPair(ta, tb, 'c1');
    let done = 0;
    expect(throttle.send('c1', Buffer.alloc(1000), () => done++)).toBe(true);
    await tick();
    expect(chunks).toEqual([100]);
    for (let i = 0; i < 100 && done === 0; i++) {
      clock.advance(10);
      await tick();
    }
    expect(chunks.reduce((a, b) => a + b, 0)).toBe(1000);
    expect(done).toBe(1);
    expect(clock.now()).toBeGreaterThanOrEqual(900);
  });

  it('rejects a non-positive rate', () => {
    const [ta] = memoryPair();
    expect(() => new Throttle(ta, { bytesPerSecond: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('slows real sockets down: 60 kB at 100 kB/s takes at least 0.4 s', async () => {
    const a = new Link();
    const b = new Link();
    closers.push(() => a.close(), () => b.close());
    const sender = new Packeter(new Throttle(a, { bytesPerSecond: 100_000 }));
    const receiver = new Packeter(b);
    const { port } = await a.addListener({ port: 0 });
    const [connId] = await Promise.all([
      waitFor<[string]>(sender, 'connect').then(([c]) => c),
      b.addConnector({ host: '127.0.0.1', port }),
    ]);
    let bytes = 0;
    receiver.on('packet', (_c, p) => (bytes += p.length + 4));
    const start = performance.now();
    for (let i = 0; i < 60; i++) sender.sendPacket(connId, Buffer.alloc(996));
    await until(() => bytes >= 60_000, 20_000);
    // 60 kB minus the 10 kB bucket at 100 kB/s: at least 0.5 s; assert a generous lower bound only
    expect(performance.now() - start).toBeGreaterThanOrEqual(400);
  });
});
