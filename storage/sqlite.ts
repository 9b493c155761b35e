/**
 * A {@link QueuesStorage} in one SQLite file (better-sqlite3), with group commit: every write
 * made in one turn of the event loop goes into a single transaction.
 *
 * @module
 */
import Database from 'better-sqlite3';
import { ClosedError, SnakeMQError, StorageError } from '../src/errors.js';
import type { ItemKey, QueuesStorage, StoredItem, TtlUpdate } from '../src/storage.js';
import { checkItems, checkKeys, checkMeta, checkSeen, deferred } from '../src/storage-checks.js';

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
   * SQLite `synchronous` level (the journal is always WAL).
   *
   * `'normal'` (the default): a commit writes its pages to the write-ahead log with `write()`
   * but does not fsync it (checkpoints still fsync). Once `write()` returned, the data is in the
   * operating system's page cache, which outlives the process: **a resolved write survives the
   * process being killed or crashing (SIGKILL, OOM kill, uncaught exception)**, which is the
   * promise Messaging's persistent messages rely on. What it does not survive is the machine
   * losing power or the OS crashing before the kernel wrote the cache out (usually within
   * seconds): then the newest commits can be lost — the file stays consistent, it just ends at
   * an earlier commit. About 1.5× the throughput of `'full'` here (no fsync per batch).
   *
   * `'full'`: also fsyncs the log on every commit, so a resolved write survives power loss and
   * OS crashes too, at the cost of one fsync per batch.
   */
  synchronous?: 'full' | 'normal';
}

/**
 * The schema version this code writes (`PRAGMA user_version`). 1: `items` with a unique
 * `(queue, uuid)` index, `seen` with one row per uuid. 2: no unique index (the key → seq index
 * is kept in memory), `seen_chunks` with many uuids per row. Version 1 files are migrated.
 */
const SCHEMA_VERSION = 2;

/** Rows per multi-row INSERT statement. */
const INSERT_ROWS = 64;
/** Most uuids in one `seen_chunks` row. */
const SEEN_CHUNK = 256;

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
  return { ops: [], ...deferred() };
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Map key of a uuid, from which its bytes can be rebuilt ({@link keyBytes}): a 16-byte uuid
 * gives 8 UTF-16 code units (two bytes each); any other length `'x'` + hex (an odd length, so
 * never 8).
 */
function keyOf(u: Buffer): string {
  if (u.length === 16) {
    return String.fromCharCode(
      u[0]! | (u[1]! << 8),
      u[2]! | (u[3]! << 8),
      u[4]! | (u[5]! << 8),
      u[6]! | (u[7]! << 8),
      u[8]! | (u[9]! << 8),
      u[10]! | (u[11]! << 8),
      u[12]! | (u[13]! << 8),
      u[14]! | (u[15]! << 8),
    );
  }
  return 'x' + u.toString('hex');
}

/** Write the uuid behind a {@link keyOf} key into `out` at `off`. */
function keyBytes(k: string, out: Buffer, off: number): void {
  if (k.length === 8) {
    for (let i = 0; i < 8; i++) {
      const c = k.charCodeAt(i);
      out[off + 2 * i] = c & 0xff;
      out[off + 2 * i + 1] = c >>> 8;
    }
  } else out.write(k.slice(1), off, 'hex');
}

/**
 * Consecutive received uuids of one peer, one `seen_chunks` row: all of one width, oldest first.
 * Entries trimmed from the front or moved to a newer chunk become `null`.
 */
interface SeenChunk {
  seq: number;
  peer: string;
  width: number;
  keys: (string | null)[];
  /** Index of the oldest entry that may be live. */
  start: number;
  live: number;
  /** The row exists in the database (as of the last commit). */
  inDb: boolean;
}

/** The dedup window of one peer: its chunks oldest first, and where each uuid is. */
interface PeerSeen {
  chunks: SeenChunk[];
  head: number;
  size: number;
  where: Map<string, SeenChunk>;
}

/** A `seen_chunks` row. */
interface SeenRow {
  seq: number;
  peer: string;
  width: number;
  n: number;
  uuids: Buffer;
}

/** Take `k` out of chunk `c` (it is being re-added, so it moves to the newest place). */
function dropKey(c: SeenChunk, k: string, dirty: Set<SeenChunk>): void {
  const i = c.keys.indexOf(k, c.start);
  if (i < 0) return;
  c.keys[i] = null;
  c.live--;
  dirty.add(c);
}

/** Remove the `null` entries of a chunk. */
function compact(c: SeenChunk): void {
  const keys: string[] = [];
  for (let i = c.start; i < c.keys.length; i++) if (c.keys[i] != null) keys.push(c.keys[i]!);
  c.keys = keys;
  c.start = 0;
}

/** Bring a version 0 (new) or 1 file to {@link SCHEMA_VERSION}; runs in a transaction. */
function migrate(db: Database.Database): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS items (
      seq   INTEGER PRIMARY KEY,
      queue TEXT    NOT NULL,
      uuid  BLOB    NOT NULL,
      ttl   INTEGER,
      flags INTEGER NOT NULL,
      body  BLOB    NOT NULL
    );
    DROP INDEX IF EXISTS items_key;
    CREATE TABLE IF NOT EXISTS seen_chunks (
      seq   INTEGER PRIMARY KEY,
      peer  TEXT    NOT NULL,
      width INTEGER NOT NULL,
      n     INTEGER NOT NULL,
      uuids BLOB    NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (
      key   TEXT PRIMARY KEY,
      value BLOB NOT NULL
    ) WITHOUT ROWID;
  `);
  if (db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'`).get()) {
    // version 1: one row per uuid, oldest first by seq
    const perPeer = new Map<string, Buffer[]>();
    for (const [peer, uuid] of db.prepare('SELECT peer, uuid FROM seen ORDER BY seq').raw().iterate() as IterableIterator<[string, Buffer]>) {
      const list = perPeer.get(peer);
      if (list) list.push(uuid);
      else perPeer.set(peer, [uuid]);
    }
    const ins = db.prepare('INSERT INTO seen_chunks (peer, width, n, uuids) VALUES (?, ?, ?, ?)');
    for (const [peer, uuids] of perPeer) {
      for (let i = 0; i < uuids.length; ) {
        const width = uuids[i]!.length;
        let j = i + 1;
        while (j < uuids.length && j - i < SEEN_CHUNK && uuids[j]!.length === width) j++;
        ins.run(peer, width, j - i, Buffer.concat(uuids.slice(i, j)));
        i = j;
      }
    }
    db.exec('DROP TABLE seen');
  }
  db.pragma(`user_version = ${SCHEMA_VERSION}`);
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
 * - **Durability.** WAL journal with `synchronous=NORMAL` by default: a resolved write survives
 *   a process kill or crash, not necessarily a power loss or OS crash; pass
 *   `synchronous: 'full'` for that. See {@link SqliteQueuesStorageOptions.synchronous}.
 * - Buffers and item objects are copied by reference when a write is called and read when the
 *   batch is written: do not modify them until the returned promise settles.
 * - One `SqliteQueuesStorage` per file: the key index and the sequence numbers are kept in
 *   memory, so another writer to the same file would corrupt the queues.
 *
 * Schema (version 2): `items(seq INTEGER PRIMARY KEY, queue, uuid, ttl, flags, body)`. `seq` is
 * assigned by this class, one more than the largest ever used since the file was opened (and
 * at least one more than the largest present), so it grows with insertion order. The (queue,
 * uuid) → seq index lives in memory, built when the file is opened (one pass over the
 * stored keys): a push of a present key is ignored there, and deletes and TTL updates go by
 * seq — consecutive seqs deleted in one batch by one range `DELETE`. New items are written by
 * multi-row `INSERT`s. `seen_chunks(seq INTEGER PRIMARY KEY, peer, width, n, uuids)`: a peer's
 * dedup window as rows of up to 256 uuids of `width` bytes concatenated, oldest row first; an
 * `addSeen` batch adds rows, trimming deletes the oldest rows and rewrites the one row it cuts
 * into, and re-adding a uuid rewrites the row it was in. `meta(key PRIMARY KEY, value)`. The
 * schema version is kept in `PRAGMA user_version`; a version 1 file is migrated when opened.
 */
export class SqliteQueuesStorage implements QueuesStorage {
  private readonly db: Database.Database;
  private readonly delayMs: number;
  private readonly stmt: {
    del: Database.Statement;
    ttl: Database.Statement;
    delQueue: Database.Statement;
    delAll: Database.Statement;
    seenIns: Database.Statement;
    seenUpd: Database.Statement;
    seenDel: Database.Statement;
    setMeta: Database.Statement;
    delMeta: Database.Statement;
    load: Database.Statement;
    loadSeen: Database.Statement;
    getMeta: Database.Statement;
  };
  /** Multi-row INSERT statements by row count, prepared when first needed. */
  private readonly insertStmts: (Database.Statement | undefined)[] = [];
  private readonly insertArgs: unknown[] = new Array(INSERT_ROWS * 6);
  private readonly writeBatch: (ops: PendingOp[]) => void;
  private batch: Batch | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private timeout: NodeJS.Timeout | null = null;
  private closed = false;
  /** A batch failed: {@link rebuild} before the next one. */
  private stale = false;

  /** queue → uuid key → seq of every stored item (as of the ops applied so far). */
  private index = new Map<string, Map<string, number>>();
  private nextSeq = 1;
  /** Items of the current transaction not yet written; item `i` gets seq `insSeq0 + i`. */
  private pendingIns: (StoredItem | null)[] = [];
  private insSeq0 = 1;
  /** Seqs of stored rows to delete, and TTLs of stored rows to rewrite, in this transaction. */
  private pendingDel: number[] = [];
  private pendingTtl = new Map<number, number | null>();

  private seen = new Map<string, PeerSeen>();
  private nextSeenSeq = 1;
  /** Chunks added, changed or emptied in this transaction. */
  private seenDirty = new Set<SeenChunk>();

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
    if (options.synchronous !== undefined && options.synchronous !== 'full' && options.synchronous !== 'normal') {
      throw new StorageError(`synchronous must be 'full' or 'normal'`);
    }
    this.delayMs = delay;
    let db: Database.Database | undefined;
    try {
      db = new Database(filename);
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new StorageError(`${filename} has schema version ${version}; this code knows up to ${SCHEMA_VERSION}`);
      }
      if (version < SCHEMA_VERSION) db.transaction(() => migrate(db!))();
      this.stmt = {
        del: db.prepare('DELETE FROM items WHERE seq BETWEEN ? AND ?'),
        ttl: db.prepare('UPDATE items SET ttl = ? WHERE seq = ?'),
        delQueue: db.prepare('DELETE FROM items WHERE queue = ?'),
        delAll: db.prepare('DELETE FROM items'),
        seenIns: db.prepare('INSERT INTO seen_chunks (seq, peer, width, n, uuids) VALUES (?, ?, ?, ?, ?)'),
        seenUpd: db.prepare('UPDATE seen_chunks SET n = ?, uuids = ? WHERE seq = ?'),
        seenDel: db.prepare('DELETE FROM seen_chunks WHERE seq = ?'),
        setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
        delMeta: db.prepare('DELETE FROM meta WHERE key = ?'),
        load: db.prepare('SELECT queue, uuid, ttl, flags, body FROM items ORDER BY seq'),
        loadSeen: db.prepare('SELECT seq, peer, width, n, uuids FROM seen_chunks ORDER BY seq'),
        getMeta: db.prepare('SELECT value FROM meta WHERE key = ?').pluck(),
      };
      this.db = db;
      this.rebuild();
    } catch (err) {
      db?.close();
      if (err instanceof StorageError) throw err;
      throw new StorageError(`cannot open SQLite storage ${filename}: ${errMessage(err)}`, { cause: err });
    }
    this.writeBatch = db.transaction((ops: PendingOp[]) => {
      for (const o of ops) {
        switch (o.op) {
          case Op.Push:
            this.applyPush(o.items);
            break;
          case Op.Delete:
            this.applyDelete(o.keys);
            break;
          case Op.Ttl:
            this.applyTtls(o.updates);
            break;
          case Op.DeleteQueue:
            this.writeItems();
            this.stmt.delQueue.run(o.queue);
            this.index.delete(o.queue);
            break;
          case Op.DeleteAllItems:
            this.writeItems();
            this.stmt.delAll.run();
            this.index.clear();
            break;
          case Op.Seen:
            this.applySeen(o.peer, o.uuids, o.keep);
            break;
          case Op.SetMeta:
            this.stmt.setMeta.run(o.key, o.value);
            break;
          case Op.DelMeta:
            this.stmt.delMeta.run(o.key);
            break;
        }
      }
      this.writeItems();
      this.writeSeen();
    });
  }

  /** (Re)build the in-memory state from the database: at open, and after a failed batch. */
  private rebuild(): void {
    this.pendingIns = [];
    this.pendingDel = [];
    this.pendingTtl.clear();
    this.seenDirty.clear();
    const index = new Map<string, Map<string, number>>();
    let maxSeq = 0;
    const rows = this.db.prepare('SELECT seq, queue, uuid FROM items').raw().iterate() as IterableIterator<[number, string, Buffer]>;
    for (const [seq, queue, uuid] of rows) {
      let m = index.get(queue);
      if (!m) index.set(queue, (m = new Map()));
      const k = keyOf(uuid);
      if (!m.has(k)) m.set(k, seq);
      if (seq > maxSeq) maxSeq = seq;
    }
    this.index = index;
    this.nextSeq = this.insSeq0 = Math.max(this.nextSeq, maxSeq + 1);
    const seen = new Map<string, PeerSeen>();
    let maxSeen = 0;
    for (const row of this.stmt.loadSeen.iterate() as IterableIterator<SeenRow>) {
      let p = seen.get(row.peer);
      if (!p) seen.set(row.peer, (p = { chunks: [], head: 0, size: 0, where: new Map() }));
      const c: SeenChunk = { seq: row.seq, peer: row.peer, width: row.width, keys: [], start: 0, live: 0, inDb: true };
      for (let i = 0; i < row.n; i++) {
        const k = keyOf(row.uuids.subarray(i * row.width, (i + 1) * row.width));
        // (a uuid present twice, which this code never writes, counts at its newest place)
        const old = p.where.get(k);
        if (old) dropKey(old, k, this.seenDirty);
        else p.size++;
        c.keys.push(k);
        c.live++;
        p.where.set(k, c);
      }
      p.chunks.push(c);
      if (row.seq > maxSeen) maxSeen = row.seq;
    }
    this.seen = seen;
    this.nextSeenSeq = Math.max(this.nextSeenSeq, maxSeen + 1);
  }

  private applyPush(items: StoredItem[]): void {
    for (const it of items) {
      let m = this.index.get(it.queue);
      if (!m) this.index.set(it.queue, (m = new Map()));
      const k = keyOf(it.uuid);
      if (m.has(k)) continue;
      m.set(k, this.nextSeq++);
      this.pendingIns.push(it);
    }
  }

  private applyDelete(keys: ItemKey[]): void {
    for (const key of keys) {
      const m = this.index.get(key.queue);
      if (!m) continue;
      const k = keyOf(key.uuid);
      const seq = m.get(k);
      if (seq === undefined) continue;
      m.delete(k);
      if (m.size === 0) this.index.delete(key.queue);
      if (seq >= this.insSeq0) this.pendingIns[seq - this.insSeq0] = null;
      else {
        this.pendingDel.push(seq);
        if (this.pendingTtl.size) this.pendingTtl.delete(seq);
      }
    }
  }

  private applyTtls(updates: TtlUpdate[]): void {
    for (const u of updates) {
      const seq = this.index.get(u.queue)?.get(keyOf(u.uuid));
      if (seq === undefined) continue;
      if (seq >= this.insSeq0) this.pendingIns[seq - this.insSeq0]!.ttl = u.ttl; // our own copy
      else this.pendingTtl.set(seq, u.ttl);
    }
  }

  /** Write the item changes gathered so far in this transaction. */
  private writeItems(): void {
    const ins = this.pendingIns;
    if (ins.length) {
      const args = this.insertArgs;
      let seq = this.insSeq0;
      let n = 0;
      for (let i = 0; i < ins.length; i++, seq++) {
        const it = ins[i];
        if (!it) continue;
        const a = n * 6;
        args[a] = seq;
        args[a + 1] = it.queue;
        args[a + 2] = it.uuid;
        args[a + 3] = it.ttl;
        args[a + 4] = it.flags;
        args[a + 5] = it.body;
        if (++n === INSERT_ROWS) {
          this.insertStatement(n).run(args);
          n = 0;
        }
      }
      if (n > 0) {
        args.length = n * 6;
        this.insertStatement(n).run(args);
        args.length = INSERT_ROWS * 6;
      }
      args.fill(null);
      this.pendingIns = [];
    }
    this.insSeq0 = this.nextSeq;
    const del = this.pendingDel;
    if (del.length) {
      let sorted = true;
      for (let i = 1; i < del.length; i++) {
        if (del[i]! < del[i - 1]!) {
          sorted = false;
          break;
        }
      }
      if (!sorted) del.sort((a, b) => a - b);
      let lo = del[0]!;
      let hi = lo;
      for (let i = 1; i < del.length; i++) {
        const s = del[i]!;
        if (s === hi + 1) hi = s;
        else {
          this.stmt.del.run(lo, hi);
          lo = hi = s;
        }
      }
      this.stmt.del.run(lo, hi);
      this.pendingDel = [];
    }
    if (this.pendingTtl.size) {
      for (const [seq, ttl] of this.pendingTtl) this.stmt.ttl.run(ttl, seq);
      this.pendingTtl.clear();
    }
  }

  private insertStatement(rows: number): Database.Statement {
    let s = this.insertStmts[rows];
    if (!s) {
      const values = new Array<string>(rows).fill('(?, ?, ?, ?, ?, ?)').join(', ');
      s = this.insertStmts[rows] = this.db.prepare(`INSERT INTO items (seq, queue, uuid, ttl, flags, body) VALUES ${values}`);
    }
    return s;
  }

  private applySeen(peer: string, uuids: Buffer[], keep: number): void {
    let p = this.seen.get(peer);
    if (!p) {
      if (uuids.length === 0) return;
      this.seen.set(peer, (p = { chunks: [], head: 0, size: 0, where: new Map() }));
    }
    const dirty = this.seenDirty;
    let open = p.chunks.length > p.head ? p.chunks[p.chunks.length - 1]! : undefined;
    if (open && (open.inDb || open.keys.length >= SEEN_CHUNK)) open = undefined;
    for (const u of uuids) {
      const k = keyOf(u);
      const old = p.where.get(k);
      if (old) dropKey(old, k, dirty);
      else p.size++;
      if (!open || open.width !== u.length || open.keys.length >= SEEN_CHUNK) {
        open = { seq: this.nextSeenSeq++, peer, width: u.length, keys: [], start: 0, live: 0, inDb: false };
        p.chunks.push(open);
        dirty.add(open);
      }
      open.keys.push(k);
      open.live++;
      p.where.set(k, open);
    }
    // trim to the newest `keep`
    let excess = p.size - keep;
    while (excess > 0) {
      const c = p.chunks[p.head]!;
      if (c.live <= excess) {
        for (let i = c.start; i < c.keys.length; i++) {
          const k = c.keys[i];
          if (k !== null) p.where.delete(k!);
        }
        excess -= c.live;
        p.size -= c.live;
        c.live = 0;
        c.start = c.keys.length;
        p.head++;
      } else {
        while (excess > 0) {
          const k = c.keys[c.start];
          c.keys[c.start++] = null;
          if (k != null) {
            p.where.delete(k);
            c.live--;
            p.size--;
            excess--;
          }
        }
      }
      dirty.add(c);
    }
    // drop emptied chunks from the front (middle ones go when they reach it)
    while (p.head < p.chunks.length && p.chunks[p.head]!.live === 0) p.head++;
    if (p.head === p.chunks.length) {
      p.chunks = [];
      p.head = 0;
    } else if (p.head > 64 && p.head * 2 > p.chunks.length) {
      p.chunks = p.chunks.slice(p.head);
      p.head = 0;
    }
    if (p.size === 0) this.seen.delete(peer);
  }

  /** Write the seen chunks changed in this transaction. */
  private writeSeen(): void {
    if (this.seenDirty.size === 0) return;
    const s = this.stmt;
    for (const c of this.seenDirty) {
      if (c.live === 0) {
        if (c.inDb) s.seenDel.run(c.seq);
        c.inDb = false;
        continue;
      }
      if (c.start > 0 || c.live !== c.keys.length) compact(c);
      const blob = Buffer.allocUnsafe(c.live * c.width);
      for (let i = 0; i < c.keys.length; i++) keyBytes(c.keys[i]!, blob, i * c.width);
      if (c.inDb) s.seenUpd.run(c.live, blob, c.seq);
      else s.seenIns.run(c.seq, c.peer, c.width, c.live, blob);
      c.inDb = true;
    }
    this.seenDirty.clear();
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
      for (const row of this.stmt.loadSeen.iterate() as IterableIterator<SeenRow>) {
        let list = out.get(row.peer);
        if (!list) out.set(row.peer, (list = []));
        for (let i = 0; i < row.n; i++) list.push(Buffer.from(row.uuids.subarray(i * row.width, (i + 1) * row.width)));
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
      // after a failed batch, the in-memory index is rebuilt from the database first
      if (this.stale) {
        this.rebuild();
        this.stale = false;
      }
      this.writeBatch(b.ops);
    } catch (err) {
      // the transaction was rolled back: the in-memory state must forget this batch too
      this.stale = true;
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
