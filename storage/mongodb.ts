/**
 * A {@link QueuesStorage} in one MongoDB collection, with group commit (one ordered `bulkWrite`
 * per turn of the event loop). This is the only module that loads the `mongodb` driver.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import {
  Binary,
  MongoClient,
  type AnyBulkWriteOperation,
  type Collection,
  type Document,
  type MongoClientOptions,
  type WriteConcernSettings,
} from 'mongodb';
import { ClosedError, SnakeMQError, StorageError } from '../src/errors.js';
import type { DeliveredMark, ItemKey, QueuesStorage, StoredItem, TtlUpdate } from '../src/storage.js';
import { checkItems, checkKeys, checkMarks, checkMeta, checkPeers, deferred } from '../src/storage-checks.js';

/** Options of {@link MongoQueuesStorage.connect}. */
export interface MongoQueuesStorageOptions {
  /** Database name. Default: the one in the URL, else `'snakemq'`. */
  dbName?: string;
  /** Collection name. Default `'snakemq'`. */
  collection?: string;
  /**
   * Write concern of every write. Default `{ w: 'majority', journal: true }`: a write resolves
   * once it is in the on-disk journal (of a majority of a replica set).
   */
  writeConcern?: WriteConcernSettings;
  /** Passed to `new MongoClient(url, clientOptions)`. */
  clientOptions?: MongoClientOptions;
}

/** The writes of one `bulkWrite` and the one promise all their callers were handed. */
interface Batch {
  ops: AnyBulkWriteOperation<Document>[];
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function newBatch(): Batch {
  return { ops: [], ...deferred() };
}

/** Indexes of the per-uuid dedup entries (`kind: 'seen'`) that versions before sequence numbers made. */
const OLD_SEEN_INDEXES = ['snakemq_seen_key', 'snakemq_seen_order'];

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A fresh Buffer with the bytes of a stored Binary (or Buffer, with `promoteBuffers`). */
function toBuffer(v: unknown, field: string): Buffer {
  if (v instanceof Binary) return Buffer.from(v.value());
  if (v instanceof Uint8Array) return Buffer.from(v);
  throw new StorageError(`stored document has a malformed ${field}`);
}

function toWrapped(err: unknown, what: string): SnakeMQError {
  return err instanceof SnakeMQError ? err : new StorageError(`MongoDB ${what} failed: ${errMessage(err)}`, { cause: err });
}

/**
 * {@link QueuesStorage} in a MongoDB collection. Create it with {@link MongoQueuesStorage.connect}.
 *
 * Everything lives in ONE collection, told apart by a `kind` field:
 * - `kind: 'item'`: `{ queue, uuid: Binary, ttl, flags, body: Binary, seq, mseq }`, `_id` an
 *   ObjectId; unique index `{ queue: 1, uuid: 1 }` (partial: items only); loaded by
 *   `{ kind: 1, seq: 1 }`. `mseq` is the message's sequence number ({@link StoredItem.seq});
 *   an item written by a version without it loads with seq 0.
 * - `kind: 'delivered'`: `{ _id: 'delivered:' + peer, peer, incarnation: Binary, seq }`, one per
 *   peer, upserted by `_id`.
 * - `kind: 'meta'`: `{ _id: 'meta:' + key, value: Binary }`.
 *
 * Item `seq` gives insertion order: the largest stored `seq` is read at connect, then numbers
 * are handed out in memory. So only ONE `MongoQueuesStorage` may use a collection at a time.
 * `connect` deletes the per-uuid dedup entries (`kind: 'seen'`) and their indexes left by a
 * version without sequence numbers.
 *
 * Group commit: writes made in one turn of the event loop go out as one ordered `bulkWrite`
 * (while one is in flight, the next writes gather for the following one), then their promises
 * settle together (one shared promise object). Unlike SQLite, a failed batch is not rolled back:
 * the operations before the failing one stay applied. Reads wait for every write called before
 * them.
 */
export class MongoQueuesStorage implements QueuesStorage {
  private readonly client: MongoClient;
  private readonly coll: Collection<Document>;
  private seq: number;
  private pending: Batch | null = null;
  private running: Promise<void> | null = null;
  private scheduled = false;
  private closed = false;
  private closing: Promise<void> | null = null;

  private constructor(client: MongoClient, coll: Collection<Document>, nextSeq: number) {
    this.client = client;
    this.coll = coll;
    this.seq = nextSeq;
  }

  /**
   * Connect, create the indexes if missing, remove an older version's dedup entries, and read
   * the largest stored item sequence number.
   * The storage owns the client: `close()` closes it.
   * @param url A MongoDB connection string, e.g. `mongodb://127.0.0.1:27017/mydb`.
   * @throws {StorageError} (rejects) when the server cannot be reached or the indexes cannot
   *   be created.
   */
  static async connect(url: string, options: MongoQueuesStorageOptions = {}): Promise<MongoQueuesStorage> {
    let client: MongoClient | undefined;
    try {
      client = new MongoClient(url, options.clientOptions);
      await client.connect();
      const db = options.dbName !== undefined ? client.db(options.dbName) : urlHasDb(url) ? client.db() : client.db('snakemq');
      const coll = db.collection<Document>(options.collection ?? 'snakemq', {
        writeConcern: options.writeConcern ?? { w: 'majority', journal: true },
      });
      await coll.createIndexes([
        { key: { queue: 1, uuid: 1 }, name: 'snakemq_item_key', unique: true, partialFilterExpression: { kind: 'item' } },
        { key: { kind: 1, seq: 1 }, name: 'snakemq_order' },
      ]);
      // per-uuid dedup state of an older version: replaced by the delivered marks
      for (const ix of await coll.indexes()) {
        if (ix.name !== undefined && OLD_SEEN_INDEXES.includes(ix.name)) await coll.dropIndex(ix.name);
      }
      await coll.deleteMany({ kind: 'seen' });
      let max = 0;
      const top = await coll.find({ kind: 'item' }, { projection: { _id: 0, seq: 1 } }).sort({ kind: 1, seq: -1 }).limit(1).next();
      if (top && typeof top['seq'] === 'number') max = top['seq'];
      return new MongoQueuesStorage(client, coll, max + 1);
    } catch (err) {
      await client?.close().catch(() => undefined);
      throw toWrapped(err, 'connect');
    }
  }

  /**
   * Every stored item, all queues, in insertion order. Waits for earlier writes first.
   * @throws {StorageError} (rejects) on a driver error. @throws {ClosedError} after `close()`.
   */
  load(): Promise<StoredItem[]> {
    return this.read(async () => {
      const docs = await this.coll.find({ kind: 'item' }).sort({ kind: 1, seq: 1 }).toArray();
      return docs.map(
        (d): StoredItem => ({
          queue: d['queue'] as string,
          uuid: toBuffer(d['uuid'], 'uuid'),
          ttl: (d['ttl'] as number | null | undefined) ?? null,
          flags: d['flags'] as number,
          body: toBuffer(d['body'], 'body'),
          // (an item of an older version: its insertion counter + 1, increasing in insertion order)
          seq: typeof d['mseq'] === 'number' ? d['mseq'] : typeof d['seq'] === 'number' ? d['seq'] + 1 : 0,
        }),
      );
    });
  }

  /**
   * Append items; a key already stored is ignored (an upsert that only sets fields on insert).
   * @throws {InvalidArgumentError} (rejects, nothing queued) on malformed items.
   * @throws {StorageError} when the batch fails. @throws {ClosedError} after `close()`.
   */
  push(items: StoredItem[]): Promise<void> {
    return this.write(() => {
      checkItems(items);
      return items.map((it) => ({
        updateOne: {
          filter: { kind: 'item', queue: it.queue, uuid: it.uuid },
          update: { $setOnInsert: { ttl: it.ttl, flags: it.flags, body: it.body, seq: this.seq++, mseq: it.seq } },
          upsert: true,
        },
      }));
    });
  }

  /**
   * Delete items by key; unknown keys are ignored.
   * @throws {InvalidArgumentError} (rejects) on malformed keys. @throws {StorageError} when the
   *   batch fails. @throws {ClosedError} after `close()`.
   */
  delete(keys: ItemKey[]): Promise<void> {
    return this.write(() => {
      checkKeys(keys);
      return keys.map((k) => ({ deleteOne: { filter: { kind: 'item', queue: k.queue, uuid: k.uuid } } }));
    });
  }

  /**
   * Rewrite remaining TTLs (ms, `null` = infinite); unknown keys are ignored.
   * @throws {InvalidArgumentError} (rejects) on malformed updates. @throws {StorageError} when
   *   the batch fails. @throws {ClosedError} after `close()`.
   */
  updateTtls(updates: TtlUpdate[]): Promise<void> {
    return this.write(() => {
      checkKeys(updates, true);
      return updates.map((u) => ({
        updateOne: { filter: { kind: 'item', queue: u.queue, uuid: u.uuid }, update: { $set: { ttl: u.ttl } } },
      }));
    });
  }

  /**
   * Delete every item of `queue`, or of all queues when omitted.
   * @throws {StorageError} (rejects) when the batch fails. @throws {ClosedError} after `close()`.
   */
  deleteAll(queue?: string): Promise<void> {
    return this.write(() => {
      if (queue !== undefined) checkKeys([{ queue, uuid: Buffer.alloc(0) }]);
      return [{ deleteMany: { filter: queue === undefined ? { kind: 'item' } : { kind: 'item', queue } } }];
    });
  }

  /**
   * Record marks, each replacing the one stored for its peer (the last of a peer wins).
   * @throws {InvalidArgumentError} (rejects, nothing queued) on a malformed mark.
   * @throws {StorageError} when the batch fails. @throws {ClosedError} after `close()`.
   */
  putDelivered(marks: DeliveredMark[]): Promise<void> {
    return this.write(() => {
      checkMarks(marks);
      return marks.map((m) => ({
        updateOne: {
          filter: { _id: deliveredId(m.peer) } as Document,
          update: { $set: { kind: 'delivered', peer: m.peer, incarnation: m.incarnation, seq: m.seq } },
          upsert: true,
        },
      }));
    });
  }

  /**
   * Every stored mark, one per peer. Waits for earlier writes first.
   * @throws {StorageError} (rejects) on a driver error. @throws {ClosedError} after `close()`.
   */
  loadDelivered(): Promise<DeliveredMark[]> {
    return this.read(async () => {
      const docs = await this.coll.find({ kind: 'delivered' }, { projection: { _id: 0, peer: 1, incarnation: 1, seq: 1 } }).toArray();
      return docs.map(
        (d): DeliveredMark => ({
          peer: d['peer'] as string,
          incarnation: toBuffer(d['incarnation'], 'incarnation'),
          seq: d['seq'] as number,
        }),
      );
    });
  }

  /**
   * Delete the marks of these peers; unknown peers are ignored.
   * @throws {InvalidArgumentError} (rejects) unless `peers` is an array of strings.
   * @throws {StorageError} when the batch fails. @throws {ClosedError} after `close()`.
   */
  forgetDelivered(peers: string[]): Promise<void> {
    return this.write(() => {
      checkPeers(peers);
      return peers.map((peer) => ({ deleteOne: { filter: { _id: deliveredId(peer) } as Document } }));
    });
  }

  /**
   * A bookkeeping value, or `null` when absent. Waits for earlier writes first.
   * @throws {StorageError} (rejects) on a driver error. @throws {ClosedError} after `close()`.
   */
  getMeta(key: string): Promise<Buffer | null> {
    return this.read(async () => {
      checkMeta(key);
      const d = await this.coll.findOne({ _id: metaId(key) } as Document);
      return d ? toBuffer(d['value'], 'meta value') : null;
    });
  }

  /**
   * Set a bookkeeping value, or delete it with `null`.
   * @throws {InvalidArgumentError} (rejects) on malformed arguments. @throws {StorageError} when
   *   the batch fails. @throws {ClosedError} after `close()`.
   */
  setMeta(key: string, value: Buffer | null): Promise<void> {
    return this.write(() => {
      checkMeta(key, value);
      const filter = { _id: metaId(key) } as Document;
      return [
        value === null
          ? { deleteOne: { filter } }
          : { updateOne: { filter, update: { $set: { kind: 'meta', value } }, upsert: true } },
      ];
    });
  }

  /**
   * Wait for pending writes, then close the client. Idempotent; every later operation rejects
   * with `ERR_CLOSED`. A failure of the last batch is reported to that batch's callers.
   * @throws {StorageError} (rejects) when the client fails to close.
   */
  close(): Promise<void> {
    if (!this.closing) {
      this.closed = true;
      this.closing = (async () => {
        await this.drain();
        try {
          await this.client.close();
        } catch (err) {
          throw toWrapped(err, 'close');
        }
      })();
    }
    return this.closing;
  }

  /** Validate and build the bulk operations at call time, append them to the pending batch. */
  private write(build: () => AnyBulkWriteOperation<Document>[]): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    const b = (this.pending ??= newBatch());
    let ops: AnyBulkWriteOperation<Document>[];
    try {
      ops = build();
    } catch (err) {
      return Promise.reject(err);
    }
    for (const op of ops) b.ops.push(op);
    if (!this.running && !this.scheduled) {
      this.scheduled = true;
      setImmediate(this.kick);
    }
    return b.promise;
  }

  private readonly kick = (): void => {
    this.scheduled = false;
    this.startNext();
  };

  /** Start writing the pending batch unless one is in flight (one at a time keeps call order). */
  private startNext(): void {
    if (this.running || !this.pending) return;
    const b = this.pending;
    this.pending = null;
    this.running = this.writeBatch(b).finally(() => {
      this.running = null;
      this.startNext();
    });
  }

  /** Write one batch and settle its promise. Never rejects. */
  private async writeBatch(b: Batch): Promise<void> {
    try {
      if (b.ops.length) await this.coll.bulkWrite(b.ops, { ordered: true });
    } catch (err) {
      b.reject(new StorageError(`MongoDB write of ${b.ops.length} operations failed: ${errMessage(err)}`, { cause: err }));
      return;
    }
    b.resolve();
  }

  /** Resolve once every write called so far has been written (or has failed). */
  private async drain(): Promise<void> {
    while (this.pending || this.running) {
      if (!this.running) this.startNext();
      await this.running;
    }
  }

  private async read<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new ClosedError('storage');
    await this.drain();
    try {
      return await fn();
    } catch (err) {
      throw toWrapped(err, 'read');
    }
  }
}

function metaId(key: string): string {
  return `meta:${key}`;
}

function deliveredId(peer: string): string {
  return `delivered:${peer}`;
}

/** Whether a connection string names a database (`mongodb://host/db?...`). */
function urlHasDb(url: string): boolean {
  const m = /^mongodb(?:\+srv)?:\/\/[^/]*\/([^?]*)/.exec(url);
  return !!m && m[1] !== '';
}
