/**
 * A {@link QueuesStorage} in one SQLite file (better-sqlite3), with group commit: every write
 * made in one turn of the event loop goes into a single transaction.
 *
 * @module
 */
import Database from 'better-sqlite3';
import { ClosedError, SnakeMQError, StorageError } from '../src/errors.js';
import type { ItemKey, QueuesStorage, StoredItem, TtlUpdate } from '../src/storage.js';
import { checkItems, checkKeys, checkMeta, checkSeen } from '../src/storage-checks.js';

/** Options of {@link SqliteQueuesStorage}. */
export interface SqliteQueuesStorageOptions {
  /**
   * Longest time in milliseconds a write waits for others to join its transaction. `0` (the
   * default) writes the batch on the next turn of the event loop (`setImmediate`), which already
   * puts every write made in one synchronous run into one transaction. A larger value batches
   * more under a trickle of writes, at the cost of that much latency per write.
   */
  groupCommitMaxDelayMs?: number;
  /**
   * SQLite `synchronous` level. `'full'` (the default) fsyncs the write-ahead log on every
   * commit: a resolved write survives a process kill and a power loss. `'normal'` skips that
   * fsync: a resolved write still survives the process being killed (SIGKILL, crash), since the
   * data is in the operating system's cache, but the newest commits can be lost on power loss or
   * an OS crash. The database is never corrupted either way.
   */
  synchronous?: 'full' | 'normal';
}

/** The schema version this code writes (`PRAGMA user_version`). */
const SCHEMA_VERSION = 1;

const enum Op {
  Push,
  Delete,
  Ttl,
  DeleteQueue,
  DeleteAllItems,
  Seen,
  SetMeta,
  DelMeta,
}

type PendingOp =
  | { op: Op.Push; items: StoredItem[] }
  | { op: Op.Delete; keys: ItemKey[] }
  | { op: Op.Ttl; updates: TtlUpdate[] }
  | { op: Op.DeleteQueue; queue: string }
  | { op: Op.DeleteAllItems }
  | { op: Op.Seen; peer: string; uuids: Buffer[]; keep: number }
  | { op: Op.SetMeta; key: string; value: Buffer }
  | { op: Op.DelMeta; key: string };

/** The writes of one transaction and the one promise all their callers were handed. */
interface Batch {
  ops: PendingOp[];
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function newBatch(): Batch {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { ops: [], promise, resolve, reject };
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * {@link QueuesStorage} in an SQLite database file.
 *
 * - **Group commit.** A write (`push`, `delete`, `updateTtls`, `deleteAll`, `addSeen`, `setMeta`)
 *   is queued in memory and returns a promise; the queue is written in ONE transaction on the
 *   next turn of the event loop (or after `groupCommitMaxDelayMs`), in call order, and then
 *   every promise of that batch resolves together — or all reject with a `StorageError`
 *   (`ERR_STORAGE`, the SQLite error as `cause`) and none of the batch is applied. All writes of
 *   one batch share one promise object.
 * - **Reads** (`load`, `loadSeen`, `getMeta`) first write the pending batch, so they see every
 *   write called before them.
 * - **Durability.** WAL journal; `synchronous=FULL` by default, so a resolved write survives a
 *   process kill and a power loss. See {@link SqliteQueuesStorageOptions.synchronous}.
 * - Buffers and item objects are copied by reference when a write is called and read when the
 *   batch is written: do not modify them until the returned promise settles.
 * - One `SqliteQueuesStorage` per file: the insertion sequence is SQLite's and two writers
 *   would interleave their queues.
 *
 * Schema: `items(seq INTEGER PRIMARY KEY, queue, uuid, ttl, flags, body)` with a unique index on
 * `(queue, uuid)`. `seq` is the rowid, which SQLite assigns as one more than the largest present,
 * so it always grows with insertion order among the rows that exist (the `AUTOINCREMENT`
 * keyword would only stop reuse of numbers of deleted newest rows, and costs about 10% of
 * write throughput); `seen(seq, peer, uuid)` trimmed to the newest `keep` per
 * peer (re-adding a uuid moves it to the newest position); `meta(key PRIMARY KEY, value)`.
 * The schema version is kept in `PRAGMA user_version`.
 */
export class SqliteQueuesStorage implements QueuesStorage {
  private readonly db: Database.Database;
  private readonly delayMs: number;
  private readonly stmt: {
    push: Database.Statement;
    del: Database.Statement;
    ttl: Database.Statement;
    delQueue: Database.Statement;
    delAll: Database.Statement;
    seen: Database.Statement;
    trimSeen: Database.Statement;
    setMeta: Database.Statement;
    delMeta: Database.Statement;
    load: Database.Statement;
    loadSeen: Database.Statement;
    getMeta: Database.Statement;
  };
  private readonly writeBatch: (ops: PendingOp[]) => void;
  private batch: Batch | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private timeout: NodeJS.Timeout | null = null;
  private closed = false;

  /**
   * Open (creating if needed) the database file and its tables.
   * @param filename Path of the database file (`':memory:'` works but keeps nothing).
   * @param options See {@link SqliteQueuesStorageOptions}.
   * @throws {StorageError} when the file cannot be opened, is not a database, or holds a schema
   *   from a newer version.
   */
  constructor(filename: string, options: SqliteQueuesStorageOptions = {}) {
    const delay = options.groupCommitMaxDelayMs ?? 0;
    if (!(Number.isFinite(delay) && delay >= 0)) {
      throw new StorageError('groupCommitMaxDelayMs must be a finite number >= 0');
    }
    this.delayMs = delay;
    let db: Database.Database | undefined;
    try {
      db = new Database(filename);
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new StorageError(`${filename} has schema version ${version}; this code knows up to ${SCHEMA_VERSION}`);
      }
      db.exec(`
        CREATE TABLE IF NOT EXISTS items (
          seq   INTEGER PRIMARY KEY,
          queue TEXT    NOT NULL,
          uuid  BLOB    NOT NULL,
          ttl   INTEGER,
          flags INTEGER NOT NULL,
          body  BLOB    NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS items_key ON items (queue, uuid);
        CREATE TABLE IF NOT EXISTS seen (
          seq  INTEGER PRIMARY KEY,
          peer TEXT NOT NULL,
          uuid BLOB NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS seen_key ON seen (peer, uuid);
        CREATE INDEX IF NOT EXISTS seen_order ON seen (peer, seq);
        CREATE TABLE IF NOT EXISTS meta (
          key   TEXT PRIMARY KEY,
          value BLOB NOT NULL
        ) WITHOUT ROWID;
      `);
      if (version < SCHEMA_VERSION) db.pragma(`user_version = ${SCHEMA_VERSION}`);
      this.stmt = {
        push: db.prepare('INSERT OR IGNORE INTO items (queue, uuid, ttl, flags, body) VALUES (?, ?, ?, ?, ?)'),
        del: db.prepare('DELETE FROM items WHERE queue = ? AND uuid = ?'),
        ttl: db.prepare('UPDATE items SET ttl = ? WHERE queue = ? AND uuid = ?'),
        delQueue: db.prepare('DELETE FROM items WHERE queue = ?'),
        delAll: db.prepare('DELETE FROM items'),
        // REPLACE deletes the old row and inserts a new one with a new seq: the uuid becomes newest.
        seen: db.prepare('INSERT OR REPLACE INTO seen (peer, uuid) VALUES (?, ?)'),
        // Delete everything at or below the seq of the (keep+1)-th newest entry; nothing when fewer.
        trimSeen: db.prepare(
          'DELETE FROM seen WHERE peer = @peer AND seq <= (SELECT seq FROM seen WHERE peer = @peer ORDER BY seq DESC LIMIT 1 OFFSET @keep)',
        ),
        setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
        delMeta: db.prepare('DELETE FROM meta WHERE key = ?'),
        load: db.prepare('SELECT queue, uuid, ttl, flags, body FROM items ORDER BY seq'),
        loadSeen: db.prepare('SELECT peer, uuid FROM seen ORDER BY seq'),
        getMeta: db.prepare('SELECT value FROM meta WHERE key = ?').pluck(),
      };
    } catch (err) {
      db?.close();
      if (err instanceof StorageError) throw err;
      throw new StorageError(`cannot open SQLite storage ${filename}: ${errMessage(err)}`, { cause: err });
    }
    this.db = db;
    const s = this.stmt;
    this.writeBatch = db.transaction((ops: PendingOp[]) => {
      // Seen trimming is done once per peer at the end of the batch. The cap composes the
      // per-call rule "keep the newest `keep`": after a call the window holds
      // min(before + added, keep), so over a batch it holds min(before + total added, cap).
      let caps: Map<string, number> | undefined;
      for (const o of ops) {
        switch (o.op) {
          case Op.Push:
            for (const it of o.items) s.push.run(it.queue, it.uuid, it.ttl, it.flags, it.body);
            break;
          case Op.Delete:
            for (const k of o.keys) s.del.run(k.queue, k.uuid);
            break;
          case Op.Ttl:
            for (const u of o.updates) s.ttl.run(u.ttl, u.queue, u.uuid);
            break;
          case Op.DeleteQueue:
            s.delQueue.run(o.queue);
            break;
          case Op.DeleteAllItems:
            s.delAll.run();
            break;
          case Op.Seen: {
            for (const u of o.uuids) s.seen.run(o.peer, u);
            caps ??= new Map();
            const prev = caps.get(o.peer) ?? Infinity;
            caps.set(o.peer, Math.min(prev + o.uuids.length, o.keep));
            break;
          }
          case Op.SetMeta:
            s.setMeta.run(o.key, o.value);
            break;
          case Op.DelMeta:
            s.delMeta.run(o.key);
            break;
        }
      }
      if (caps) for (const [peer, cap] of caps) if (cap !== Infinity) s.trimSeen.run({ peer, keep: cap });
    });
  }

  /**
   * Every stored item, all queues, in insertion order. Writes pending writes first.
   * @throws {StorageError} (rejects) when SQLite fails. @throws {ClosedError} after `close()`.
   */
  load(): Promise<StoredItem[]> {
    return this.read(() => this.stmt.load.all() as StoredItem[]);
  }

  /**
   * Append items; a key already stored is ignored (its data and position are kept).
   * @throws {InvalidArgumentError} (rejects, nothing queued) on malformed items.
   * @throws {StorageError} (rejects) when the batch's transaction fails.
   * @throws {ClosedError} (rejects) after `close()`.
   */
  push(items: StoredItem[]): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkItems(items);
    } catch (err) {
      return Promise.reject(err);
    }
    const copy: StoredItem[] = new Array(items.length);
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      copy[i] = { queue: it.queue, uuid: it.uuid, ttl: it.ttl, flags: it.flags, body: it.body };
    }
    return this.enqueue({ op: Op.Push, items: copy });
  }

  /**
   * Delete items by key; unknown keys are ignored.
   * @throws {InvalidArgumentError} (rejects) on malformed keys. @throws {StorageError} when the
   *   batch fails. @throws {ClosedError} after `close()`.
   */
  delete(keys: ItemKey[]): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkKeys(keys);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue({ op: Op.Delete, keys: keys.map((k) => ({ queue: k.queue, uuid: k.uuid })) });
  }

  /**
   * Rewrite remaining TTLs (ms, `null` = infinite); unknown keys are ignored.
   * @throws {InvalidArgumentError} (rejects) on malformed updates. @throws {StorageError} when
   *   the batch fails. @throws {ClosedError} after `close()`.
   */
  updateTtls(updates: TtlUpdate[]): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkKeys(updates, true);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue({ op: Op.Ttl, updates: updates.map((u) => ({ queue: u.queue, uuid: u.uuid, ttl: u.ttl })) });
  }

  /**
   * Delete every item of `queue`, or of all queues when omitted.
   * @throws {StorageError} (rejects) when the batch fails. @throws {ClosedError} after `close()`.
   */
  deleteAll(queue?: string): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    if (queue === undefined) return this.enqueue({ op: Op.DeleteAllItems });
    try {
      checkKeys([{ queue, uuid: Buffer.alloc(0) }]);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue({ op: Op.DeleteQueue, queue });
  }

  /**
   * Record uuids received from `peer` and keep only its newest `keep` (`Infinity`: all).
   * @throws {InvalidArgumentError} (rejects) on malformed arguments. @throws {StorageError} when
   *   the batch fails. @throws {ClosedError} after `close()`.
   */
  addSeen(peer: string, uuids: Buffer[], keep: number): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkSeen(peer, uuids, keep);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue({ op: Op.Seen, peer, uuids: uuids.slice(), keep });
  }

  /**
   * The dedup window of every peer, oldest first. Writes pending writes first.
   * @throws {StorageError} (rejects) when SQLite fails. @throws {ClosedError} after `close()`.
   */
  loadSeen(): Promise<Map<string, Buffer[]>> {
    return this.read(() => {
      const out = new Map<string, Buffer[]>();
      for (const row of this.stmt.loadSeen.iterate() as IterableIterator<{ peer: string; uuid: Buffer }>) {
        const list = out.get(row.peer);
        if (list) list.push(row.uuid);
        else out.set(row.peer, [row.uuid]);
      }
      return out;
    });
  }

  /**
   * A bookkeeping value, or `null` when absent. Writes pending writes first.
   * @throws {StorageError} (rejects) when SQLite fails. @throws {ClosedError} after `close()`.
   */
  getMeta(key: string): Promise<Buffer | null> {
    return this.read(() => {
      checkMeta(key);
      return (this.stmt.getMeta.get(key) as Buffer | undefined) ?? null;
    });
  }

  /**
   * Set a bookkeeping value, or delete it with `null`.
   * @throws {InvalidArgumentError} (rejects) on malformed arguments. @throws {StorageError} when
   *   the batch fails. @throws {ClosedError} after `close()`.
   */
  setMeta(key: string, value: Buffer | null): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkMeta(key, value);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue(value === null ? { op: Op.DelMeta, key } : { op: Op.SetMeta, key, value });
  }

  /**
   * Write pending writes, then close the database. Idempotent. Every later operation rejects
   * with `ERR_CLOSED`. A failure of the last batch is reported to that batch's callers.
   * @throws {StorageError} (rejects) when SQLite fails to close the file.
   */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.flush();
    try {
      this.db.close();
    } catch (err) {
      return Promise.reject(new StorageError(`closing SQLite storage failed: ${errMessage(err)}`, { cause: err }));
    }
    return Promise.resolve();
  }

  private enqueue(op: PendingOp): Promise<void> {
    let b = this.batch;
    if (!b) {
      b = this.batch = newBatch();
      if (this.delayMs > 0) this.timeout = setTimeout(this.flushCb, this.delayMs);
      else this.immediate = setImmediate(this.flushCb);
    }
    b.ops.push(op);
    return b.promise;
  }

  private readonly flushCb = (): void => {
    this.immediate = this.timeout = null;
    this.flush();
  };

  /** Write the pending batch in one transaction now (synchronously) and settle its promise. */
  private flush(): void {
    if (this.immediate) clearImmediate(this.immediate);
    if (this.timeout) clearTimeout(this.timeout);
    this.immediate = this.timeout = null;
    const b = this.batch;
    if (!b) return;
    this.batch = null;
    try {
      this.writeBatch(b.ops);
    } catch (err) {
      b.reject(new StorageError(`SQLite write of ${b.ops.length} operations failed: ${errMessage(err)}`, { cause: err }));
      return;
    }
    b.resolve();
  }

  private read<T>(fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    this.flush();
    try {
      return Promise.resolve(fn());
    } catch (err) {
      if (err instanceof SnakeMQError) return Promise.reject(err);
      return Promise.reject(new StorageError(`SQLite read failed: ${errMessage(err)}`, { cause: err }));
    }
  }
}
