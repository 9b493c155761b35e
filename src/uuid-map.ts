/**
 * A map keyed by uuids without a string or object per key: the SQLite storage's item and dedup
 * indexes and the RPC server's reply cache.
 *
 * @internal
 * @module
 */
import { Buffer } from 'node:buffer';
import { hashUuid, readI32 } from './bytes.js';

/** Smallest table of a {@link UuidMap} (slots; a power of two). */
const MAP_MIN_SLOTS = 16;
/** A {@link UuidMap} table shrinks on deletes only while larger than this (slots). */
const MAP_SHRINK_ABOVE = 4096;

/**
 * uuid → value (never `undefined`). 16-byte uuids live in an open-addressing table (linear
 * probing, backward-shift deletion, so constant adding and removing leaves no tombstones) of
 * their four int32 words: no string or object per uuid. The hash is seeded per process
 * ({@link hashUuid}): uuids come from peers, which must not be able to make them collide on
 * purpose. Uuids of any other length go to a `Map` keyed by their bytes as latin1.
 *
 * Each slot keeps its key's hash (never 0; 0 marks an empty slot): probing reads only that
 * array, a quarter of the words' size, and reads a key's words only when the hashes match;
 * moving entries back on removal finds their home slots without hashing again.
 */
export class UuidMap<V> {
  /** Hash of each slot's key ({@link slotHash}); 0: the slot is empty. */
  private hashes = new Int32Array(MAP_MIN_SLOTS);
  /** Keys, four words per slot. */
  private words = new Int32Array(MAP_MIN_SLOTS * 4);
  /** Values by slot (`undefined` where the slot is empty). */
  private vals: (V | undefined)[] = new Array<V | undefined>(MAP_MIN_SLOTS).fill(undefined);
  private mask = MAP_MIN_SLOTS - 1;
  /** 16-byte uuids in the table. */
  private count = 0;
  private other: Map<string, V> | null = null;

  get size(): number {
    return this.other === null ? this.count : this.count + this.other.size;
  }

  /** The value of `u`, or `undefined`. */
  get(u: Buffer): V | undefined {
    if (u.length !== 16) return this.other?.get(u.toString('latin1'));
    return this.get4(readI32(u, 0), readI32(u, 4), readI32(u, 8), readI32(u, 12));
  }

  /** The value of the uuid of words `a..d`, or `undefined`. */
  get4(a: number, b: number, c: number, d: number): V | undefined {
    const i = this.find(slotHash(a, b, c, d), a, b, c, d);
    return i < 0 ? undefined : this.vals[i];
  }

  /** Set `u` to `v` unless present; returns the value it had, or `undefined` (it was added). */
  add(u: Buffer, v: V): V | undefined {
    if (u.length !== 16) {
      const k = u.toString('latin1');
      const m = (this.other ??= new Map());
      const old = m.get(k);
      if (old !== undefined) return old;
      m.set(k, v);
      return undefined;
    }
    const a = readI32(u, 0);
    const b = readI32(u, 4);
    const c = readI32(u, 8);
    const d = readI32(u, 12);
    return this.add4(a, b, c, d, v);
  }

  /** Set the uuid of words `a..d` to `v` unless present; returns the value it had, or `undefined` (it was added). */
  add4(a: number, b: number, c: number, d: number, v: V): V | undefined {
    const h = slotHash(a, b, c, d);
    const i = this.find(h, a, b, c, d);
    if (i >= 0) return this.vals[i];
    this.insertAt(~i, h, a, b, c, d, v);
    return undefined;
  }

  /** Set the uuid of words `a..d` to `v`; returns the value it had, or `undefined`. */
  put4(a: number, b: number, c: number, d: number, v: V): V | undefined {
    const h = slotHash(a, b, c, d);
    const i = this.find(h, a, b, c, d);
    if (i < 0) {
      this.insertAt(~i, h, a, b, c, d, v);
      return undefined;
    }
    const old = this.vals[i];
    this.vals[i] = v;
    return old;
  }

  /** Set `u` (not 16 bytes long) to `v`; returns the value it had, or `undefined`. */
  putOther(u: Buffer, v: V): V | undefined {
    const k = u.toString('latin1');
    const m = (this.other ??= new Map());
    const old = m.get(k);
    m.set(k, v);
    return old;
  }

  /** Remove `u`; returns its value, or `undefined` when absent. */
  delete(u: Buffer): V | undefined {
    if (u.length === 16) return this.delete4(readI32(u, 0), readI32(u, 4), readI32(u, 8), readI32(u, 12));
    if (this.other === null) return undefined;
    const k = u.toString('latin1');
    const old = this.other.get(k);
    if (old === undefined) return undefined;
    this.other.delete(k);
    return old;
  }

  /** Remove the uuid of words `a..d`; returns its value, or `undefined` when absent. */
  delete4(a: number, b: number, c: number, d: number): V | undefined {
    const i = this.find(slotHash(a, b, c, d), a, b, c, d);
    if (i < 0) return undefined;
    const old = this.vals[i];
    this.removeSlot(i);
    return old;
  }

  /** Remove the uuid of words `a..d` if its value is `v` (the same object); returns whether it did. */
  deleteIf4(a: number, b: number, c: number, d: number, v: V): boolean {
    const i = this.find(slotHash(a, b, c, d), a, b, c, d);
    if (i < 0 || this.vals[i] !== v) return false;
    this.removeSlot(i);
    return true;
  }

  /** Call `fn` with every value (the map must not change meanwhile). */
  forEachValue(fn: (v: V) => void): void {
    const vals = this.vals;
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i];
      if (v !== undefined) fn(v);
    }
    if (this.other) for (const v of this.other.values()) fn(v);
  }

  /** The slot holding `a..d` (whose {@link slotHash} is `h`), or `~slot` of the empty slot where it would go. */
  private find(h: number, a: number, b: number, c: number, d: number): number {
    const hashes = this.hashes;
    const words = this.words;
    const mask = this.mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const x = hashes[i];
      if (x === 0) return ~i;
      if (x !== h) continue;
      const q = i << 2;
      if (words[q] === a && words[q + 1] === b && words[q + 2] === c && words[q + 3] === d) return i;
    }
  }

  private insertAt(i: number, h: number, a: number, b: number, c: number, d: number, v: V): void {
    const q = i << 2;
    const words = this.words;
    words[q] = a;
    words[q + 1] = b;
    words[q + 2] = c;
    words[q + 3] = d;
    this.hashes[i] = h;
    this.vals[i] = v;
    // at most half full: short probe runs (the RPC reply cache probes a table of 10,000
    // entries twice per call, and at 5/8 full its runs were long enough to cost it 5-8%)
    if (++this.count * 2 > this.mask + 1) this.resize((this.mask + 1) << 1);
  }

  private removeSlot(i: number): void {
    this.removeAt(i);
    // (a table that grows and drains over and over, as a queue does, is not resized every time)
    if (--this.count * 16 < this.mask && this.mask >= MAP_SHRINK_ABOVE) this.resize((this.mask + 1) >> 1);
  }

  /** Empty slot `i`, moving later entries of its probe run back so that every entry stays findable. */
  private removeAt(i: number): void {
    const hashes = this.hashes;
    const words = this.words;
    const vals = this.vals;
    const mask = this.mask;
    let hole = i;
    for (let j = (i + 1) & mask; hashes[j] !== 0; j = (j + 1) & mask) {
      const home = hashes[j]! & mask;
      // the entry may move into the hole when the hole lies between its home slot and it
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        const q = j << 2;
        const p = hole << 2;
        words[p] = words[q]!;
        words[p + 1] = words[q + 1]!;
        words[p + 2] = words[q + 2]!;
        words[p + 3] = words[q + 3]!;
        hashes[hole] = hashes[j]!;
        vals[hole] = vals[j];
        hole = j;
      }
    }
    hashes[hole] = 0;
    vals[hole] = undefined;
  }

  private resize(slots: number): void {
    const hashes = this.hashes;
    const words = this.words;
    const vals = this.vals;
    this.hashes = new Int32Array(slots);
    this.words = new Int32Array(slots * 4);
    this.vals = new Array<V | undefined>(slots).fill(undefined);
    this.mask = slots - 1;
    const mask = this.mask;
    for (let i = 0; i < hashes.length; i++) {
      const h = hashes[i]!;
      if (h === 0) continue;
      let at = h & mask;
      while (this.hashes[at] !== 0) at = (at + 1) & mask;
      const q = i << 2;
      const p = at << 2;
      this.words[p] = words[q]!;
      this.words[p + 1] = words[q + 1]!;
      this.words[p + 2] = words[q + 2]!;
      this.words[p + 3] = words[q + 3]!;
      this.hashes[at] = h;
      this.vals[at] = vals[i];
    }
  }
}

/** {@link hashUuid} of a key as a {@link UuidMap} keeps it: never 0, which marks an empty slot. */
function slotHash(a: number, b: number, c: number, d: number): number {
  return hashUuid(a, b, c, d) || 1;
}
