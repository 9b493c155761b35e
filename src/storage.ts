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
 * - Each item keeps its `seq` (the sender's sequence number, extension version 2).
 * - The receiver's dedup state is one {@link DeliveredMark} per sending peer (small, fixed size),
 *   upserted by peer.
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
  /**
   * The message's sequence number toward `queue` (extension version 2): an integer
   * 1..Number.MAX_SAFE_INTEGER, or 0 for an item stored by a version without sequence numbers.
   */
  seq: number;
}

/** The highest sequence number a receiver has delivered from one sender incarnation (its dedup state for that sender). */
export interface DeliveredMark {
  /** The sender's identity. */
  peer: string;
  /** The sender's incarnation id: 8 bytes. */
  incarnation: Buffer;
  /** The highest sequence number delivered from (peer, incarnation); an integer 0..Number.MAX_SAFE_INTEGER. */
  seq: number;
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

  /** Record marks, each replacing the one stored for its peer (upsert by peer). In call order with everything else. */
  putDelivered(marks: DeliveredMark[]): Promise<void>;
  /** Every stored mark, one per peer (any order). */
  loadDelivered(): Promise<DeliveredMark[]>;
  /** Delete the marks of these peers (unknown peers are ignored). */
  forgetDelivered(peers: string[]): Promise<void>;

  /** Small key/value bookkeeping (e.g. the RPC server's reply cache). `null` when absent. */
  getMeta(key: string): Promise<Buffer | null>;
  /** Set (or with `null`, delete) a bookkeeping value. */
  setMeta(key: string, value: Buffer | null): Promise<void>;

  /** Flush pending work and release every resource. Later calls reject with `ERR_CLOSED`. */
  close(): Promise<void>;
}
