/**
 * Unchecked byte helpers for the paths run per message, and the hash of uuids used by the
 * uuid-keyed hash tables: `UuidMap` (uuid-map.ts) and the dedup lookup of the queue.
 *
 * Plain indexing: several times faster than `Buffer#readInt32LE` and friends with their checks.
 * Callers know the offsets to be in bounds.
 *
 * @internal
 * @module
 */
import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';

/** The little-endian int32 at `off` (any alignment). */
export function readI32(b: Uint8Array, off: number): number {
  return b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24);
}

/** Write `v` as a little-endian int32 at `off`. */
export function writeI32(b: Uint8Array, off: number, v: number): void {
  b[off] = v;
  b[off + 1] = v >>> 8;
  b[off + 2] = v >>> 16;
  b[off + 3] = v >>> 24;
}

/** The big-endian uint16 at `off`. */
export function readU16BE(b: Uint8Array, off: number): number {
  return (b[off] << 8) | b[off + 1];
}

/** The big-endian uint32 at `off`. */
export function readU32BE(b: Uint8Array, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

/** Write `v` (a uint32) big-endian at `off`. */
export function writeU32BE(b: Uint8Array, off: number, v: number): void {
  b[off] = v >>> 24;
  b[off + 1] = v >>> 16;
  b[off + 2] = v >>> 8;
  b[off + 3] = v;
}

/** Copy the 16 bytes at `srcOff` of `src` (a uuid) to `dstOff` of `dst`: four int32 moves. */
export function copy16(src: Uint8Array, srcOff: number, dst: Uint8Array, dstOff: number): void {
  writeI32(dst, dstOff, readI32(src, srcOff));
  writeI32(dst, dstOff + 4, readI32(src, srcOff + 4));
  writeI32(dst, dstOff + 8, readI32(src, srcOff + 8));
  writeI32(dst, dstOff + 12, readI32(src, srcOff + 12));
}

/**
 * Random per process, and mixed in before each word rather than once: uuids come from peers,
 * and one that could pick uuids colliding in a known hash would make every lookup walk a long
 * probe run.
 */
const SEED = randomBytes(4).readInt32LE(0);

/** Hash of a 16-byte uuid given as its four little-endian int32 words (see {@link readI32}). */
export function hashUuid(a: number, b: number, c: number, d: number): number {
  let h = SEED ^ a;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) ^ b;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) ^ c;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) ^ d;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  return h ^ (h >>> 13);
}
