/**
 * The queue storage interface that Messaging uses to keep persistent messages across restarts.
 * Backends live in the top-level `storage/` folder, each its own entry point
 * (`snakemq/storage/memory`, `snakemq/storage/sqlite`, `snakemq/storage/mongodb`).
 *
 * Semantics every backend keeps (checked by one shared conformance suite):
 * - Operations apply in call order, even when a backend groups many of them into one
 *   transaction (group commit). A promise resolves only once its operation is durable.
 * - `load()` returns items in insertion order (an explicit sequence, never a timestamp), so
 *   per-queue FIFO order survives restarts.
 * - Items are keyed by (queue, uuid). Pushing a key that already exists is ignored.
 *
 * @module
 */

/** One stored message. */
export interface StoredItem {
  /** Destination identity (the queue's name). */
  queue: string;
  /** 16-byte message uuid. */
  uuid: Buffer;
  /** Remaining time to live in milliseconds; `null` = infinite. */
  ttl: number | null;
  /** Message flags (bit 1 = persistent). */
  flags: number;
  /** Message body. */
  body: Buffer;
}

/** Key of a stored item. */
export interface ItemKey {
  queue: string;
  uuid: Buffer;
}

/** A key with a new remaining TTL. */
export interface TtlUpdate extends ItemKey {
  /** Remaining time to live in milliseconds; `null` = infinite. */
  ttl: number | null;
}

/** A pluggable, promise-based persistent store for message queues and small bookkeeping. */
export interface QueuesStorage {
  /** Every stored item, all queues, in insertion order. */
  load(): Promise<StoredItem[]>;
  /** Store items (appended after everything stored before). */
  push(items: StoredItem[]): Promise<void>;
  /** Delete items by key; unknown keys are ignored. */
  delete(keys: ItemKey[]): Promise<void>;
  /** Rewrite the remaining TTL of items; unknown keys are ignored. */
  updateTtls(updates: TtlUpdate[]): Promise<void>;
  /** Delete every item of one queue, or of all queues when `queue` is omitted. */
  deleteAll(queue?: string): Promise<void>;

  /**
   * Record message uuids received from `peer` (the receiver's dedup window) and keep only the
   * newest `keep` of that peer.
   */
  addSeen(peer: string, uuids: Buffer[], keep: number): Promise<void>;
  /** The dedup windows of every peer, each oldest first. */
  loadSeen(): Promise<Map<string, Buffer[]>>;

  /** Small key/value bookkeeping (e.g. the RPC server's reply cache). `null` when absent. */
  getMeta(key: string): Promise<Buffer | null>;
  /** Set (or with `null`, delete) a bookkeeping value. */
  setMeta(key: string, value: Buffer | null): Promise<void>;

  /** Flush pending work and release every resource. Later calls reject with `ERR_CLOSED`. */
  close(): Promise<void>;
}
