/**
 * Argument checks shared by the storage backends.
 *
 * @module
 * @internal
 */
import { Buffer } from 'node:buffer';
import { InvalidArgumentError } from './errors.js';
import type { DeliveredMark, ItemKey, StoredItem, TtlUpdate } from './storage.js';

/**
 * Check the arguments of {@link QueuesStorage.push}. Shared by the backends.
 * @internal
 * @throws {InvalidArgumentError} on a malformed item.
 */
export function checkItems(items: readonly StoredItem[]): void {
  if (!Array.isArray(items)) throw new InvalidArgumentError('items must be an array');
  for (const it of items) {
    checkKey(it);
    if (!(it.ttl === null || (typeof it.ttl === 'number' && Number.isFinite(it.ttl) && it.ttl >= 0))) {
      throw new InvalidArgumentError('ttl must be null or a finite number >= 0');
    }
    if (!Number.isInteger(it.flags) || it.flags < 0 || it.flags > 0xffffffff) {
      throw new InvalidArgumentError('flags must be an integer in 0..2^32-1');
    }
    if (!Buffer.isBuffer(it.body)) throw new InvalidArgumentError('body must be a Buffer');
    if (!isSeq(it.seq)) throw new InvalidArgumentError('seq must be an integer in 0..Number.MAX_SAFE_INTEGER');
  }
}

/** Whether `n` is an integer 0..Number.MAX_SAFE_INTEGER (a sequence number or 0). */
function isSeq(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/**
 * Check an {@link ItemKey}. Shared by the backends.
 * @internal
 * @throws {InvalidArgumentError} on a malformed key.
 */
export function checkKey(key: ItemKey): void {
  if (typeof key !== 'object' || key === null) throw new InvalidArgumentError('item key must be an object');
  if (typeof key.queue !== 'string') throw new InvalidArgumentError('queue must be a string');
  if (!Buffer.isBuffer(key.uuid)) throw new InvalidArgumentError('uuid must be a Buffer');
}

/**
 * Check an array of keys (or TTL updates when `ttls` is true). Shared by the backends.
 * @internal
 * @throws {InvalidArgumentError} on a malformed entry.
 */
export function checkKeys(keys: readonly ItemKey[] | readonly TtlUpdate[], ttls = false): void {
  if (!Array.isArray(keys)) throw new InvalidArgumentError('keys must be an array');
  for (const k of keys) {
    checkKey(k);
    if (ttls) {
      const ttl = (k as TtlUpdate).ttl;
      if (!(ttl === null || (typeof ttl === 'number' && Number.isFinite(ttl) && ttl >= 0))) {
        throw new InvalidArgumentError('ttl must be null or a finite number >= 0');
      }
    }
  }
}

/** Bytes of a {@link DeliveredMark.incarnation}. */
export const INCARNATION_BYTES = 8;

/**
 * Check the argument of {@link QueuesStorage.putDelivered}. Shared by the backends.
 * @internal
 * @throws {InvalidArgumentError} on a malformed mark.
 */
export function checkMarks(marks: readonly DeliveredMark[]): void {
  if (!Array.isArray(marks)) throw new InvalidArgumentError('marks must be an array');
  for (const m of marks) {
    if (typeof m !== 'object' || m === null) throw new InvalidArgumentError('mark must be an object');
    if (typeof m.peer !== 'string') throw new InvalidArgumentError('peer must be a string');
    if (!Buffer.isBuffer(m.incarnation) || m.incarnation.length !== INCARNATION_BYTES) {
      throw new InvalidArgumentError(`incarnation must be a Buffer of ${INCARNATION_BYTES} bytes`);
    }
    if (!isSeq(m.seq)) throw new InvalidArgumentError('seq must be an integer in 0..Number.MAX_SAFE_INTEGER');
  }
}

/**
 * Check the argument of {@link QueuesStorage.forgetDelivered}. Shared by the backends.
 * @internal
 * @throws {InvalidArgumentError} unless it is an array of strings.
 */
export function checkPeers(peers: readonly string[]): void {
  if (!Array.isArray(peers) || !peers.every((p) => typeof p === 'string')) {
    throw new InvalidArgumentError('peers must be an array of strings');
  }
}

/**
 * Check the arguments of {@link QueuesStorage.setMeta} / `getMeta`. Shared by the backends.
 * @internal
 * @throws {InvalidArgumentError} on malformed arguments.
 */
export function checkMeta(key: string, value?: Buffer | null): void {
  if (typeof key !== 'string') throw new InvalidArgumentError('meta key must be a string');
  if (value !== undefined && value !== null && !Buffer.isBuffer(value)) {
    throw new InvalidArgumentError('meta value must be a Buffer or null');
  }
}

/** A promise with its settle functions, shared by every caller of one storage batch. */
export interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** A new {@link Deferred} (Node 20 has no `Promise.withResolvers`). */
export function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
