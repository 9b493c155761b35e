/**
 * UuidMap (the SQLite storage's indexes and the RPC server's reply cache) against a plain Map
 * as a reference model: random adds, puts, gets and removals, over random keys through growth
 * and shrinking, and over keys made to collide (equal hashes, hash 0, runs that wrap around
 * the end of the table).
 */
import { describe, expect, it } from 'vitest';
import { hashUuid, readI32 } from '../src/bytes.js';
import { UuidMap } from '../src/uuid-map.js';
import { prng } from './helpers/prng.js';

type Words = [number, number, number, number];
const words = (k: Buffer): Words => [readI32(k, 0), readI32(k, 4), readI32(k, 8), readI32(k, 12)];

/**
 * Random operations on `map` and a Map model over `pool`, in phases of `[steps, share of
 * adds]`; checks every result, the size, and at the end of each phase every value.
 */
function againstModel(map: UuidMap<{ n: number }>, pool: Buffer[], rnd: () => number, phases: [number, number][], afterPhase?: () => void): void {
  const model = new Map<string, { n: number }>();
  let n = 0;
  for (const [steps, addShare] of phases) {
    for (let step = 0; step < steps; step++) {
      const k = pool[Math.floor(rnd() * pool.length)];
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
    for (const k of pool) expect(map.get(k)).toBe(model.get(k.toString('hex')));
    const values: number[] = [];
    map.forEachValue((v) => values.push(v.n));
    expect(values.sort((a, b) => a - b)).toEqual([...model.values()].map((v) => v.n).sort((a, b) => a - b));
    afterPhase?.();
  }
}

// hashUuid's steps after its last word is mixed in can be undone, so for any first three words
// there is a last word that gives any hash wanted.
const C1 = 0x85ebca6b;
const C2 = 0xc2b2ae35;
/** The multiplicative inverse of odd `c` modulo 2^32. */
function inverse(c: number): number {
  let x = c;
  for (let i = 0; i < 5; i++) x = Math.imul(x, 2 - Math.imul(c, x));
  return x;
}
/** Undo `y = x ^ (x >>> k)`. */
function unshift(y: number, k: number): number {
  let x = y;
  for (let i = 0; i < 32; i += k) x = y ^ (x >>> k);
  return x | 0;
}
/** The state before hashUuid's final mixing that ends as `h`. */
function unmix(h: number): number {
  let x = unshift(h, 13);
  x = Math.imul(x, inverse(C1));
  x = unshift(x, 16);
  x = Math.imul(x, inverse(C2));
  return unshift(x, 13);
}
/** A 16-byte key with words `a, b, c` whose hash is `h`. */
function keyWithHash(a0: number, b0: number, c0: number, h: number): Buffer {
  const [a, b, c] = [a0 | 0, b0 | 0, c0 | 0];
  const d = unmix(h | 0) ^ unmix(hashUuid(a, b, c, 0));
  const k = Buffer.alloc(16);
  [a, b, c, d].forEach((w, i) => k.writeInt32LE(w, i * 4));
  expect(hashUuid(a, b, c, d)).toBe(h | 0);
  return k;
}

describe('UuidMap', () => {
  it.each([1, 2])('agrees with a Map through random operations, growing and shrinking (seed %i)', (seed) => {
    const rnd = prng(seed);
    const pool: Buffer[] = [];
    for (let i = 0; i < 6000; i++) {
      // 16-byte keys, and a few of other lengths (kept apart in a Map of their own)
      const k = Buffer.alloc(i % 50 === 0 ? 1 + (i % 20) : 16);
      for (let j = 0; j < k.length; j++) k[j] = Math.floor(rnd() * 256);
      pool.push(k);
    }
    const map = new UuidMap<{ n: number }>();
    const slots = (): number => (map as unknown as { mask: number }).mask + 1;
    const sizes: number[] = [];
    // up to about 5000 keys, down to a few hundred (the table shrinks), twice
    againstModel(
      map,
      pool,
      rnd,
      [
        [12_000, 0.8],
        [40_000, 0.02],
        [8_000, 0.8],
        [40_000, 0.02],
      ],
      () => sizes.push(slots()),
    );
    expect(sizes[0]).toBeGreaterThanOrEqual(8192);
    expect(sizes[1]).toBeLessThan(sizes[0]);
    expect(sizes[3]).toBeLessThan(sizes[2]);
  });

  it('agrees with a Map when keys collide: equal hashes, hash 0 and 1, runs wrapping around the end', () => {
    const rnd = prng(7);
    const pool: Buffer[] = [];
    // home slots at the very end of a table of any size (the runs wrap to slot 0), at slot 0,
    // and hash 0 (which the map keeps as 1)
    for (const h of [-1, -2, -3, -4, 0, 1, 2, 0x7fffffff]) {
      for (let i = 0; i < 12; i++) pool.push(keyWithHash(i * 7919 + h, i, h, h));
    }
    for (let i = 0; i < 40; i++) pool.push(keyWithHash(i, i * 31, -i, Math.floor(rnd() * 2 ** 32)));
    againstModel(new UuidMap<{ n: number }>(), pool, rnd, [
      [3000, 0.7],
      [3000, 0.3],
      [3000, 0.7],
      [6000, 0.1],
    ]);
  });
});
