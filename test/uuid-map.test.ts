/**
 * UuidMap (the SQLite storage's indexes and the RPC server's reply cache) against a plain Map
 * as a reference model: random adds, puts, gets and removals over a pool of keys, through
 * growth past the size where the table starts to shrink again and back down.
 */
import { describe, expect, it } from 'vitest';
import { readI32 } from '../src/bytes.js';
import { UuidMap } from '../src/uuid-map.js';
import { prng } from './helpers/prng.js';

describe('UuidMap', () => {
  it.each([1, 2, 3])('agrees with a Map through random operations, growing and shrinking (seed %i)', (seed) => {
    const rnd = prng(seed);
    const int = (n: number): number => Math.floor(rnd() * n);
    // 16-byte keys, and a few of other lengths (kept apart in a Map of their own)
    const pool: Buffer[] = [];
    for (let i = 0; i < 6000; i++) {
      const k = Buffer.alloc(i % 50 === 0 ? 1 + (i % 20) : 16);
      for (let j = 0; j < k.length; j++) k[j] = int(256);
      pool.push(k);
    }
    const map = new UuidMap<{ n: number }>();
    const model = new Map<string, { n: number }>();
    const words = (k: Buffer): [number, number, number, number] => [readI32(k, 0), readI32(k, 4), readI32(k, 8), readI32(k, 12)];
    let n = 0;
    // grow to about 5000 keys, then drain to a few hundred, twice
    for (const [steps, addShare] of [
      [12_000, 0.8],
      [12_000, 0.15],
      [8_000, 0.8],
      [10_000, 0.1],
    ] as const) {
      for (let step = 0; step < steps; step++) {
        const k = pool[int(pool.length)];
        const hex = k.toString('hex');
        const had = model.get(hex);
        const r = rnd();
        if (r < addShare) {
          const v = { n: n++ };
          if (k.length === 16 && rnd() < 0.5) {
            const put = rnd() < 0.5;
            const old = put ? map.put4(...words(k), v) : map.add4(...words(k), v);
            expect(old).toBe(had);
            if (put || had === undefined) model.set(hex, v);
          } else if (k.length !== 16 && rnd() < 0.5) {
            expect(map.putOther(k, v)).toBe(had);
            model.set(hex, v);
          } else {
            expect(map.add(k, v)).toBe(had);
            if (had === undefined) model.set(hex, v);
          }
        } else if (r < addShare + (1 - addShare) * 0.3) {
          expect(k.length === 16 ? map.get4(...words(k)) : map.get(k)).toBe(had);
        } else if (k.length === 16 && rnd() < 0.5) {
          // removes only that value: a stale one (another object) leaves the key
          const stale = rnd() < 0.3;
          const removed = map.deleteIf4(...words(k), stale ? { n: -1 } : (had ?? { n: -1 }));
          expect(removed).toBe(had !== undefined && !stale);
          if (removed) model.delete(hex);
        } else {
          expect(k.length === 16 && rnd() < 0.5 ? map.delete4(...words(k)) : map.delete(k)).toBe(had);
          model.delete(hex);
        }
        expect(map.size).toBe(model.size);
      }
      for (const [hex, v] of model) expect(map.get(Buffer.from(hex, 'hex'))).toBe(v);
      const values: { n: number }[] = [];
      map.forEachValue((v) => values.push(v));
      expect(values.map((v) => v.n).sort((a, b) => a - b)).toEqual([...model.values()].map((v) => v.n).sort((a, b) => a - b));
    }
  });
});
