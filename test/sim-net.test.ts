/**
 * The model test's simulated network (test/helpers/sim-net.ts): what arrives on a connection is
 * a prefix of what was written, in order; connections are cut at arbitrary byte offsets (inside
 * a packet, not only between writes); nothing arrives after an end's `disconnect`; the
 * connector reconnects; after heal() nothing is cut.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import { prng } from './helpers/prng.js';
import { SimClock, SimNet } from './helpers/sim-net.js';

interface ConnLog {
  sent: Buffer[];
  got: Buffer[];
  disconnected: boolean;
  afterDisconnect: number;
}

async function drive(seed: number, healAt: number, until: number) {
  const clock = new SimClock();
  const net = new SimNet(clock, { rand: prng(seed) });
  const a = net.attach('listener');
  const b = net.attach('connector');
  const conns = new Map<string, ConnLog>();
  let counter = 0;
  a.on('recv', (id, data) => {
    const c = conns.get(id)!;
    if (c.disconnected) c.afterDisconnect++;
    c.got.push(data);
  });
  a.on('disconnect', (id) => {
    conns.get(id)!.disconnected = true;
  });
  b.on('connect', (id) => {
    conns.set(id, { sent: [], got: [], disconnected: false, afterDisconnect: 0 });
    // write 100-byte "packets" every few ms until the connection is gone
    const write = (): void => {
      const c = conns.get(id)!;
      if (c.disconnected || clock.now() > until) return;
      const p = Buffer.alloc(100, counter++ & 0xff);
      c.sent.push(p);
      b.send(id, p);
      clock.setTimeout(write, 3);
    };
    write();
  });
  b.on('disconnect', (id) => {
    conns.get(id)!.disconnected = true;
  });
  clock.setTimeout(() => net.heal(), healAt);
  while (clock.nextAt() !== Infinity && clock.now() <= until + 1000) {
    clock.runNext();
    await Promise.resolve();
  }
  return { conns, stats: net.stats };
}

describe('SimNet', () => {
  it('delivers a prefix of what was written, cut at arbitrary byte offsets, and reconnects', async () => {
    let midPacket = 0;
    let cuts = 0;
    for (let seed = 1; seed <= 40; seed++) {
      const { conns, stats } = await drive(seed, 3000, 4000);
      cuts += stats.cuts;
      expect(stats.connections).toBeGreaterThan(0);
      for (const c of conns.values()) {
        const sent = Buffer.concat(c.sent);
        const got = Buffer.concat(c.got);
        expect(got.length).toBeLessThanOrEqual(sent.length);
        expect(got.equals(sent.subarray(0, got.length))).toBe(true);
        expect(c.afterDisconnect).toBe(0);
        if (c.disconnected && got.length % 100 !== 0) midPacket++;
      }
      // once healed, the connection that is up stays up (unless the connector was left
      // half-open: without a keepalive here nothing makes it reconnect)
      if (stats.halfOpen === 0) expect([...conns.values()].at(-1)!.disconnected).toBe(false);
    }
    expect(cuts).toBeGreaterThan(40);
    expect(midPacket).toBeGreaterThan(10);
  });

  it('replays a seed exactly', async () => {
    const summary = async (): Promise<unknown> => {
      const { conns, stats } = await drive(5, 2000, 2500);
      return { stats, lens: [...conns.values()].map((c) => c.got.map((g) => g.length)) };
    };
    expect(await summary()).toEqual(await summary());
  });
});
