/**
 * An in-process {@link QueuesStorage}: nothing survives the process, but it keeps every other
 * promise of the interface (call order, insertion order, duplicate keys ignored, one delivered
 * mark per peer). Useful for tests and for peers that want acknowledged delivery without disk.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { ClosedError, InvalidArgumentError } from '../src/errors.js';
import { checkItems, checkKeys, checkMarks, checkMeta, checkPeers } from '../src/storage-checks.js';
import type { DeliveredMark, ItemKey, QueuesStorage, StoredItem, TtlUpdate } from '../src/storage.js';

/** Unambiguous map key of (queue, uuid): hex never contains `|`. */
function itemKey(queue: string, uuid: Buffer): string {
  return `${uuid.toString('hex')}|${queue}`;
}

function copy(b: Buffer): Buffer {
  return Buffer.from(b);
}

/**
 * {@link QueuesStorage} kept in memory. Every operation applies synchronously at call time, so
 * call order is trivially kept; the returned promises resolve on the next microtask.
 *
 * Buffers are copied on the way in and on the way out, so neither the caller's later changes
 * to what it pushed nor changes to what `load()` returned affect the stored data.
 */
export class MemoryQueuesStorage implements QueuesStorage {
  /** Insertion-ordered: a Map iterates in insertion order, and a re-insert after delete goes last. */
  private readonly items = new Map<string, StoredItem>();
  /** peer -> its delivered mark (our own copy). */
  private readonly delivered = new Map<string, DeliveredMark>();
  private readonly meta = new Map<string, Buffer>();
  private closed = false;

  /**
   * Every stored item, all queues, in insertion order (copies).
   * @throws {ClosedError} (rejects) after `close()`.
   */
  load(): Promise<StoredItem[]> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    const out: StoredItem[] = [];
    for (const it of this.items.values()) {
      out.push({ queue: it.queue, uuid: copy(it.uuid), ttl: it.ttl, flags: it.flags, body: copy(it.body), seq: it.seq });
    }
    return Promise.resolve(out);
  }

  /**
   * Append items; a key already stored is ignored (its data and position are kept).
   * @throws {InvalidArgumentError} (rejects) on malformed items, storing none of them.
   * @throws {ClosedError} (rejects) after `close()`.
   */
  push(items: StoredItem[]): Promise<void> {
    return this.run(() => {
      checkItems(items);
      for (const it of items) {
        const k = itemKey(it.queue, it.uuid);
        if (this.items.has(k)) continue;
        this.items.set(k, { queue: it.queue, uuid: copy(it.uuid), ttl: it.ttl, flags: it.flags, body: copy(it.body), seq: it.seq });
      }
    });
  }

  /**
   * Delete items by key; unknown keys are ignored.
   * @throws {InvalidArgumentError} (rejects) on malformed keys. @throws {ClosedError} after `close()`.
   */
  delete(keys: ItemKey[]): Promise<void> {
    return this.run(() => {
      checkKeys(keys);
      for (const k of keys) this.items.delete(itemKey(k.queue, k.uuid));
    });
  }

  /**
   * Rewrite remaining TTLs (ms, `null` = infinite); unknown keys are ignored.
   * @throws {InvalidArgumentError} (rejects) on malformed updates. @throws {ClosedError} after `close()`.
   */
  updateTtls(updates: TtlUpdate[]): Promise<void> {
    return this.run(() => {
      checkKeys(updates, true);
      for (const u of updates) {
        const it = this.items.get(itemKey(u.queue, u.uuid));
        if (it) it.ttl = u.ttl;
      }
    });
  }

  /**
   * Delete every item of `queue`, or of all queues when omitted.
   * @throws {ClosedError} (rejects) after `close()`.
   */
  deleteAll(queue?: string): Promise<void> {
    return this.run(() => {
      if (queue === undefined) {
        this.items.clear();
        return;
      }
      if (typeof queue !== 'string') throw new InvalidArgumentError('queue must be a string');
      for (const [k, it] of this.items) if (it.queue === queue) this.items.delete(k);
    });
  }

  /**
   * Record marks, each replacing the one stored for its peer (the last of a peer in `marks` wins).
   * @throws {InvalidArgumentError} (rejects, none recorded) on a malformed mark.
   * @throws {ClosedError} (rejects) after `close()`.
   */
  putDelivered(marks: DeliveredMark[]): Promise<void> {
    return this.run(() => {
      checkMarks(marks);
      for (const m of marks) this.delivered.set(m.peer, { peer: m.peer, incarnation: copy(m.incarnation), seq: m.seq });
    });
  }

  /**
   * Every stored mark, one per peer (copies).
   * @throws {ClosedError} (rejects) after `close()`.
   */
  loadDelivered(): Promise<DeliveredMark[]> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    const out: DeliveredMark[] = [];
    for (const m of this.delivered.values()) out.push({ peer: m.peer, incarnation: copy(m.incarnation), seq: m.seq });
    return Promise.resolve(out);
  }

  /**
   * Delete the marks of these peers; unknown peers are ignored.
   * @throws {InvalidArgumentError} (rejects) unless `peers` is an array of strings.
   * @throws {ClosedError} (rejects) after `close()`.
   */
  forgetDelivered(peers: string[]): Promise<void> {
    return this.run(() => {
      checkPeers(peers);
      for (const p of peers) this.delivered.delete(p);
    });
  }

  /**
   * A bookkeeping value (a copy), or `null` when absent.
   * @throws {ClosedError} (rejects) after `close()`.
   */
  getMeta(key: string): Promise<Buffer | null> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkMeta(key);
    } catch (err) {
      return Promise.reject(err);
    }
    const v = this.meta.get(key);
    return Promise.resolve(v ? copy(v) : null);
  }

  /**
   * Set a bookkeeping value, or delete it with `null`.
   * @throws {InvalidArgumentError} (rejects) on malformed arguments. @throws {ClosedError} after `close()`.
   */
  setMeta(key: string, value: Buffer | null): Promise<void> {
    return this.run(() => {
      checkMeta(key, value);
      if (value === null) this.meta.delete(key);
      else this.meta.set(key, copy(value));
    });
  }

  /** Drop everything held. Idempotent; every later operation rejects with `ERR_CLOSED`. */
  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.items.clear();
      this.delivered.clear();
      this.meta.clear();
    }
    return Promise.resolve();
  }

  private run(fn: () => void): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      fn();
    } catch (err) {
      return Promise.reject(err);
    }
    return Promise.resolve();
  }
}
