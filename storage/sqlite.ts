/**
 * A {@link QueuesStorage} in one SQLite file (better-sqlite3), with group commit: every write
 * made in one turn of the event loop goes into a single transaction.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import Database from 'better-sqlite3';
import { ClosedError, SnakeMQError, StorageError } from '../src/errors.js';
import type { DeliveredMark, ItemKey, QueuesStorage, StoredItem, TtlUpdate } from '../src/storage.js';
import { checkItems, checkKeys, checkMarks, checkMeta, checkPeers, deferred } from '../src/storage-checks.js';
import { UuidMap } from '../src/uuid-map.js';

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
 * The schema version this code writes (`PRAGMA user_version`). 1: `items` (one row per item)
 * with a unique `(queue, uuid)` index, `seen` with one row per uuid. 2: no unique index (the
 * key → seq index is kept in memory), `seen_chunks` with many uuids per row. 3: `items`
 * replaced by `item_chunks` (many items per row) with `item_dead` and `item_ttls`. 4: each
 * item's entry in `item_chunks.keys` also holds its message sequence number
 * ({@link StoredItem.seq}); the per-uuid dedup tables (`seen`, `seen_chunks`) are replaced by
 * `delivered`, one row per sending peer. Version 1, 2 and 3 files are migrated (their items
 * get message seqs 1, 2, … in insertion order, so that they stay in increasing order along each
 * queue and below every seq given later; their seen uuids are dropped).
 */
const SCHEMA_VERSION = 4;

/** Most items in one `item_chunks` row. */
const CHUNK_ITEMS = 4096;
/** A chunk takes no more items once it holds this many bytes (one larger item gets its own). */
const CHUNK_BYTES = 1 << 20;
/** Bytes of the fixed part of an item's entry in `item_chunks.keys`. */
const ENTRY_FIXED = 36;
/** ...in a schema version 3 file (no message seq). */
const ENTRY_FIXED_V3 = 28;
/** A chunk is compacted when less than a quarter of its bytes is live and at least this much is dead. */
const COMPACT_MIN_DEAD = 16 * 1024;
/** ...and none of its items was deleted in this many batches (so chunks being drained in order are left alone). */
const COMPACT_COLD_BATCHES = 32;
/**
 * Write-ahead log size at which SQLite checkpoints (copies it into the database file and, at
 * either `synchronous` level, fsyncs): 32 MiB instead of SQLite's 1000 pages (4 MiB). A checkpoint
 * blocks the event loop on two fsyncs; fewer, larger ones cost less (a page rewritten many
 * times is copied once), at the cost of a larger `-wal` file on disk.
 */
const WAL_CHECKPOINT_BYTES = 32 << 20;

const enum Op {
  Push,
  Delete,
  Ttl,
  DeleteQueue,
  DeleteAllItems,
  PutDelivered,
  ForgetDelivered,
  SetMeta,
  DelMeta,
}

type PendingOp =
  | { op: Op.Push; items: StoredItem[] }
  | { op: Op.Delete; keys: ItemKey[] }
  | { op: Op.Ttl; updates: TtlUpdate[] }
  | { op: Op.DeleteQueue; queue: string }
  | { op: Op.DeleteAllItems }
  | { op: Op.PutDelivered; marks: DeliveredMark[] }
  | { op: Op.ForgetDelivered; peers: string[] }
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
 * One `item_chunks` row: items with seqs `seq + off` (`off` < `span`), written together.
 * Deleted items stay in the row until it is deleted (when its last item is) or compacted;
 * `item_dead` records them.
 */
interface ItemChunk {
  /** Row key: the seq of its first item as written (kept when compacted). */
  seq: number;
  span: number;
  /** Bytes each live item takes in the row (entry + body), by `off`; 0 = deleted or absent. */
  sizes: Uint32Array;
  /** Bit `off` set: the item was deleted (the `item_dead` row, when `hasDeadRow`). */
  dead: Buffer;
  live: number;
  /** Bytes of the row (both blobs) and of its live items. */
  bytes: number;
  liveBytes: number;
  hasDeadRow: boolean;
  /** Some `item_ttls` rows may lie in this chunk's seq range. */
  hasTtls: boolean;
  /** Batch number of the last delete in it. */
  touched: number;
  /** Deleted from the database (and soon from {@link SqliteQueuesStorage.chunks}). */
  gone: boolean;
}

/** The state of a row of `span` seqs and `bytes` bytes, none of its items live or dead yet. */
function newItemChunk(seq: number, span: number, sizes: Uint32Array, bytes: number, touched: number): ItemChunk {
  return {
    seq,
    span,
    sizes,
    dead: Buffer.alloc((span + 7) >> 3),
    live: 0,
    bytes,
    liveBytes: 0,
    hasDeadRow: false,
    hasTtls: false,
    touched,
    gone: false,
  };
}

/** An item and the seq it is stored under. */
interface SeqItem {
  seq: number;
  item: StoredItem;
}

/** The encoded form of a queue name last seen, as most items go to the same few queues. */
let lastQueue = '';
let lastQueueBytes = Buffer.alloc(0);

function queueBytes(queue: string): Buffer {
  if (queue !== lastQueue) {
    lastQueueBytes = Buffer.from(queue, 'utf8');
    lastQueue = queue;
  }
  return lastQueueBytes;
}

/**
 * Encode items (ascending seqs, all within 2^32 of the first) as the two blobs of an
 * `item_chunks` row. `keys`: per item, in order, `u32 off, u32 flags, f64 ttl (-1 = null),
 * f64 message seq ({@link StoredItem.seq}, an integer below 2^53 so exact), u32 body length,
 * u32 queue length, u32 uuid length` (little-endian), the queue (UTF-8) and the uuid; `data`:
 * the bodies, concatenated in the same order. (Schema version 3 entries lack the message seq.)
 */
function encodeChunk(items: readonly SeqItem[]): { keys: Buffer; data: Buffer; span: number; sizes: Uint32Array } {
  const base = items[0]!.seq;
  let keyLen = 0;
  let dataLen = 0;
  for (const { item } of items) {
    keyLen += ENTRY_FIXED + queueBytes(item.queue).length + item.uuid.length;
    dataLen += item.body.length;
  }
  const span = items[items.length - 1]!.seq - base + 1;
  const keys = Buffer.allocUnsafe(keyLen);
  const data = Buffer.allocUnsafe(dataLen);
  const sizes = new Uint32Array(span);
  const view = new DataView(keys.buffer, keys.byteOffset, keys.length);
  let p = 0;
  let d = 0;
  for (const { seq, item } of items) {
    const q = queueBytes(item.queue);
    const u = item.uuid;
    const b = item.body;
    view.setUint32(p, seq - base, true);
    view.setUint32(p + 4, item.flags, true);
    view.setFloat64(p + 8, item.ttl === null ? -1 : item.ttl, true);
    view.setFloat64(p + 16, item.seq, true);
    view.setUint32(p + 24, b.length, true);
    view.setUint32(p + 28, q.length, true);
    view.setUint32(p + 32, u.length, true);
    p += ENTRY_FIXED;
    for (let i = 0; i < q.length; i++) keys[p++] = q[i]!;
    for (let i = 0; i < u.length; i++) keys[p++] = u[i]!;
    if (b.length > 64) data.set(b, d);
    else for (let i = 0; i < b.length; i++) data[d + i] = b[i]!;
    d += b.length;
    sizes[seq - base] = ENTRY_FIXED + q.length + u.length + b.length;
  }
  return { keys, data, span, sizes };
}

/** One entry of an `item_chunks.keys` blob, as {@link forEachEntry} reads it. */
interface Entry {
  off: number;
  flags: number;
  ttl: number | null;
  /** The message's sequence number ({@link StoredItem.seq}). */
  msgSeq: number;
  /** Where the queue name and the uuid are in `keys`, and the body in `data`. */
  queueAt: number;
  queueLen: number;
  uuidAt: number;
  uuidLen: number;
  bodyAt: number;
  bodyLen: number;
}

/** Call `fn` for every entry of a `keys` blob, in order (the object is reused). */
function forEachEntry(keys: Buffer, fn: (e: Entry) => void): void {
  const e: Entry = { off: 0, flags: 0, ttl: null, msgSeq: 0, queueAt: 0, queueLen: 0, uuidAt: 0, uuidLen: 0, bodyAt: 0, bodyLen: 0 };
  let d = 0;
  for (let p = 0; p < keys.length; ) {
    e.off = keys.readUInt32LE(p);
    e.flags = keys.readUInt32LE(p + 4);
    const ttl = keys.readDoubleLE(p + 8);
    e.ttl = ttl < 0 ? null : ttl;
    e.msgSeq = keys.readDoubleLE(p + 16);
    e.bodyAt = d;
    e.bodyLen = keys.readUInt32LE(p + 24);
    e.queueLen = keys.readUInt32LE(p + 28);
    e.uuidLen = keys.readUInt32LE(p + 32);
    e.queueAt = p + ENTRY_FIXED;
    e.uuidAt = e.queueAt + e.queueLen;
    p = e.uuidAt + e.uuidLen;
    d += e.bodyLen;
    fn(e);
  }
}

const isDead = (bits: Uint8Array | undefined, off: number): boolean =>
  bits !== undefined && off >> 3 < bits.length && (bits[off >> 3]! & (1 << (off & 7))) !== 0;

/** Write `items` (ascending seqs) as `item_chunks` rows of at most {@link CHUNK_ITEMS} / {@link CHUNK_BYTES}. */
function chunkItems(items: readonly SeqItem[], write: (part: SeqItem[]) => void): void {
  let part: SeqItem[] = [];
  let bytes = 0;
  for (const si of items) {
    const size = ENTRY_FIXED + si.item.uuid.length + si.item.body.length + si.item.queue.length;
    if (part.length > 0 && (part.length >= CHUNK_ITEMS || bytes + size > CHUNK_BYTES || si.seq - part[0]!.seq >= 2 ** 31)) {
      write(part);
      part = [];
      bytes = 0;
    }
    part.push(si);
    bytes += size;
  }
  if (part.length) write(part);
}

/**
 * A schema version 3 `item_chunks.keys` blob in the version 4 layout: each entry gets message
 * seq 0 (the rest, and the `data` blob, stay as they are).
 */
function upgradeKeysV3(keys: Buffer, next: { seq: number }): Buffer {
  let n = 0;
  for (let p = 0; p < keys.length; n++) p += ENTRY_FIXED_V3 + keys.readUInt32LE(p + 20) + keys.readUInt32LE(p + 24);
  const out = Buffer.alloc(keys.length + n * (ENTRY_FIXED - ENTRY_FIXED_V3));
  for (let p = 0, o = 0; p < keys.length; ) {
    const tail = keys.readUInt32LE(p + 20) + keys.readUInt32LE(p + 24);
    keys.copy(out, o, p, p + 16); // off, flags, ttl
    out.writeDoubleLE(next.seq++, o + 16);
    keys.copy(out, o + 24, p + 16, p + ENTRY_FIXED_V3 + tail); // lengths, queue, uuid
    p += ENTRY_FIXED_V3 + tail;
    o += ENTRY_FIXED + tail;
  }
  return out;
}

/** Bring a version 0 (new), 1, 2 or 3 file to {@link SCHEMA_VERSION}; runs in a transaction. */
function migrate(db: Database.Database, version: number): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS item_chunks (
      seq  INTEGER PRIMARY KEY,
      keys BLOB    NOT NULL,
      data BLOB    NOT NULL
    );
    CREATE TABLE IF NOT EXISTS item_dead (
      seq  INTEGER PRIMARY KEY,
      bits BLOB    NOT NULL
    );
    CREATE TABLE IF NOT EXISTS item_ttls (
      seq  INTEGER PRIMARY KEY,
      ttl  INTEGER
    );
    CREATE TABLE IF NOT EXISTS delivered (
      peer        TEXT    PRIMARY KEY,
      incarnation BLOB    NOT NULL,
      seq         INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS meta (
      key   TEXT PRIMARY KEY,
      value BLOB NOT NULL
    ) WITHOUT ROWID;
  `);
  if (version === 3) {
    // item entries gain the message seq (0: stored without one); row keys, offsets, the dead
    // bitmaps and rewritten TTLs all stay valid (a page of rows at a time: the connection
    // cannot write while a statement iterates)
    const page = db.prepare('SELECT seq, keys FROM item_chunks WHERE seq > ? ORDER BY seq LIMIT 64').raw();
    const upd = db.prepare('UPDATE item_chunks SET keys = ? WHERE seq = ?');
    const next = { seq: 1 };
    for (let after = -Infinity; ; ) {
      const rows = page.all(after) as [number, Buffer][];
      if (rows.length === 0) break;
      for (const [seq, keys] of rows) upd.run(upgradeKeysV3(keys, next), seq);
      after = rows[rows.length - 1]![0];
    }
  }
  const hasTable = (name: string): boolean => !!db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name);
  if (hasTable('items')) {
    // versions 1 and 2: one row per item; the items keep their seqs (read a page at a time)
    // and get message seqs 1, 2, … in insertion order
    let next = 1;
    const page = db.prepare('SELECT seq, queue, uuid, ttl, flags, body FROM items WHERE seq > ? ORDER BY seq LIMIT ?');
    const ins = db.prepare('INSERT INTO item_chunks (seq, keys, data) VALUES (?, ?, ?)');
    for (let after = -Infinity; ; ) {
      const rows = page.all(after, CHUNK_ITEMS) as { seq: number; queue: string; uuid: Buffer; ttl: number | null; flags: number; body: Buffer }[];
      if (rows.length === 0) break;
      chunkItems(
        rows.map((r) => ({ seq: r.seq, item: { queue: r.queue, uuid: r.uuid, ttl: r.ttl, flags: r.flags, body: r.body, seq: next++ } })),
        (part) => {
          const c = encodeChunk(part);
          ins.run(part[0]!.seq, c.keys, c.data);
        },
      );
      after = rows[rows.length - 1]!.seq;
    }
    db.exec('DROP TABLE items');
  }
  // the per-uuid dedup windows of versions 1 (`seen`) and 2-3 (`seen_chunks`) have no
  // sequence-number equivalent: they are dropped (with their indexes)
  db.exec('DROP TABLE IF EXISTS seen; DROP TABLE IF EXISTS seen_chunks;');
  db.pragma(`user_version = ${SCHEMA_VERSION}`);
}

/**
 * {@link QueuesStorage} in an SQLite database file.
 *
 * - **Group commit.** A write (`push`, `delete`, `updateTtls`, `deleteAll`, `putDelivered`,
 *   `forgetDelivered`, `setMeta`) is queued in memory and returns a promise; the queue is written in ONE transaction on the
 *   next turn of the event loop (or after `groupCommitMaxDelayMs`), in call order, and then
 *   every promise of that batch resolves together — or all reject with a `StorageError`
 *   (`ERR_STORAGE`, the SQLite error as `cause`) and none of the batch is applied. All writes of
 *   one batch share one promise object.
 * - **Reads** (`load`, `loadDelivered`, `getMeta`) first write the pending batch, so they see every
 *   write called before them.
 * - **Durability.** WAL journal with `synchronous=NORMAL` by default: a resolved write survives
 *   a process kill or crash, not necessarily a power loss or OS crash; pass
 *   `synchronous: 'full'` for that. See {@link SqliteQueuesStorageOptions.synchronous}.
 * - Buffers and item objects are copied by reference when a write is called and read when the
 *   batch is written: do not modify them until the returned promise settles.
 * - One `SqliteQueuesStorage` per file: the key index and the sequence numbers are kept in
 *   memory, so another writer to the same file would corrupt the queues.
 *
 * Schema (version 4). Items: `item_chunks(seq INTEGER PRIMARY KEY, keys BLOB, data BLOB)`,
 * one row per batch of pushed items (up to 4096 items / 1 MiB): `keys` holds each item's
 * entry (seq offset, flags, TTL, message seq, lengths, queue, uuid — see `encodeChunk`), `data`
 * the bodies.
 * Item seqs are assigned by this class, one more than the largest ever used since the file was
 * opened (and than the largest present), so they grow with insertion order; a row's key is its
 * first item's seq. `item_dead(seq, bits)`: for a row with deleted items, a bitmap by seq
 * offset; the row itself is deleted with its last item. `item_ttls(seq, ttl)`: TTLs rewritten
 * after the item was written. A row less than a quarter live (and at least 16 KiB dead) is
 * rewritten with only its live items once no delete touched it for 32 batches. The (queue,
 * uuid) → seq index lives in memory, built when the file is opened (one pass over the `keys`
 * blobs): a push of a present key is ignored there; deletes and TTL updates go by seq.
 * `delivered(peer TEXT PRIMARY KEY, incarnation BLOB, seq INTEGER)`: the delivered marks, one
 * row per peer; a batch writes each peer it touched once (its last mark, or a delete).
 * `meta(key PRIMARY KEY, value)`. The schema version is kept in `PRAGMA user_version`; version
 * 1, 2 and 3 files are migrated when opened (see `SCHEMA_VERSION`). The WAL is checkpointed at 32 MiB (see `WAL_CHECKPOINT_BYTES`).
 */
export class SqliteQueuesStorage implements QueuesStorage {
  private readonly db: Database.Database;
  private readonly delayMs: number;
  private readonly stmt: {
    chunkIns: Database.Statement;
    chunkUpd: Database.Statement;
    chunkDel: Database.Statement;
    chunkGet: Database.Statement;
    deadSet: Database.Statement;
    deadDel: Database.Statement;
    ttlSet: Database.Statement;
    ttlDelRange: Database.Statement;
    markPut: Database.Statement;
    markDel: Database.Statement;
    setMeta: Database.Statement;
    delMeta: Database.Statement;
    loadChunks: Database.Statement;
    loadDead: Database.Statement;
    loadTtls: Database.Statement;
    loadMarks: Database.Statement;
    getMeta: Database.Statement;
  };
  private readonly writeBatch: (ops: PendingOp[]) => void;
  private batch: Batch | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private timeout: NodeJS.Timeout | null = null;
  private closed = false;
  /** A batch failed: {@link rebuild} before the next one. */
  private stale = false;

  /** queue → uuid → seq of every stored item (as of the ops applied so far). */
  private index = new Map<string, UuidMap<number>>();
  /** The last map of {@link index} that emptied, for the next queue (most often the same one). */
  private spareMap: UuidMap<number> | null = null;
  private nextSeq = 1;
  /** Items of the current transaction not yet written; item `i` gets seq `insSeq0 + i`. */
  private pendingIns: (StoredItem | null)[] = [];
  private insSeq0 = 1;
  /** TTLs of written items to rewrite in this transaction. */
  private pendingTtl = new Map<number, number | null>();
  /** The `item_chunks` rows, by seq (some may be `gone`, swept now and then). */
  private chunks: ItemChunk[] = [];
  private goneChunks = 0;
  /** The chunk the last lookup found (deletes tend to hit the same one). */
  private lastChunk: ItemChunk | null = null;
  /** Chunks with deletions not written yet. */
  private chunkDirty = new Set<ItemChunk>();
  /** Chunks that are mostly dead: compacted once cold. */
  private compactable = new Set<ItemChunk>();
  /** Number of the current batch. */
  private batchNo = 0;

  /** Delivered marks of this transaction by peer, its last one (`null`: forget the peer). */
  private pendingMarks = new Map<string, DeliveredMark | null>();

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
      const pageSize = db.pragma('page_size', { simple: true }) as number;
      db.pragma(`wal_autocheckpoint = ${Math.max(1000, Math.ceil(WAL_CHECKPOINT_BYTES / pageSize))}`);
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new StorageError(`${filename} has schema version ${version}; this code knows up to ${SCHEMA_VERSION}`);
      }
      if (version < SCHEMA_VERSION) db.transaction(() => migrate(db!, version))();
      this.stmt = {
        chunkIns: db.prepare('INSERT INTO item_chunks (seq, keys, data) VALUES (?, ?, ?)'),
        chunkUpd: db.prepare('UPDATE item_chunks SET keys = ?, data = ? WHERE seq = ?'),
        chunkDel: db.prepare('DELETE FROM item_chunks WHERE seq = ?'),
        chunkGet: db.prepare('SELECT keys, data FROM item_chunks WHERE seq = ?').raw(),
        deadSet: db.prepare('INSERT OR REPLACE INTO item_dead (seq, bits) VALUES (?, ?)'),
        deadDel: db.prepare('DELETE FROM item_dead WHERE seq = ?'),
        ttlSet: db.prepare('INSERT OR REPLACE INTO item_ttls (seq, ttl) VALUES (?, ?)'),
        ttlDelRange: db.prepare('DELETE FROM item_ttls WHERE seq BETWEEN ? AND ?'),
        markPut: db.prepare(
          'INSERT INTO delivered (peer, incarnation, seq) VALUES (?, ?, ?) ON CONFLICT (peer) DO UPDATE SET incarnation = excluded.incarnation, seq = excluded.seq',
        ),
        markDel: db.prepare('DELETE FROM delivered WHERE peer = ?'),
        setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
        delMeta: db.prepare('DELETE FROM meta WHERE key = ?'),
        loadChunks: db.prepare('SELECT seq, keys, data FROM item_chunks ORDER BY seq').raw(),
        loadDead: db.prepare('SELECT seq, bits FROM item_dead').raw(),
        loadTtls: db.prepare('SELECT seq, ttl FROM item_ttls').raw(),
        loadMarks: db.prepare('SELECT peer, incarnation, seq FROM delivered').raw(),
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
            this.applyDeleteQueue(o.queue);
            break;
          case Op.DeleteAllItems:
            this.applyDeleteAll();
            break;
          case Op.PutDelivered:
            for (const m of o.marks) this.pendingMarks.set(m.peer, m);
            break;
          case Op.ForgetDelivered:
            for (const p of o.peers) this.pendingMarks.set(p, null);
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
      this.writeMarks();
    });
  }

  /** (Re)build the in-memory state from the database: at open, and after a failed batch. */
  private rebuild(): void {
    this.pendingIns = [];
    this.pendingTtl.clear();
    this.pendingMarks.clear();
    this.chunkDirty.clear();
    this.compactable.clear();
    this.chunks = [];
    this.goneChunks = 0;
    this.lastChunk = null;
    const index = new Map<string, UuidMap<number>>();
    let maxSeq = 0;
    const deadRows = new Map(this.stmt.loadDead.all() as [number, Buffer][]);
    const rows = this.db.prepare('SELECT seq, keys, length(data) FROM item_chunks ORDER BY seq').raw().iterate() as IterableIterator<[number, Buffer, number]>;
    for (const [seq, keys, dataLen] of rows) {
      let span = 0;
      forEachEntry(keys, (e) => {
        if (e.off >= span) span = e.off + 1;
      });
      const c = newItemChunk(seq, span, new Uint32Array(span), keys.length + dataLen, -Infinity);
      const bits = deadRows.get(seq);
      if (bits) {
        c.dead.set(bits.subarray(0, c.dead.length));
        c.hasDeadRow = true;
      }
      forEachEntry(keys, (e) => {
        if (isDead(c.dead, e.off)) return;
        const queue = keys.toString('utf8', e.queueAt, e.queueAt + e.queueLen);
        let m = index.get(queue);
        if (!m) index.set(queue, (m = new UuidMap<number>()));
        // (a key present twice, which this code never writes, counts at its first place)
        if (m.add(keys.subarray(e.uuidAt, e.uuidAt + e.uuidLen), seq + e.off) !== undefined) return;
        const size = ENTRY_FIXED + e.queueLen + e.uuidLen + e.bodyLen;
        c.sizes[e.off] = size;
        c.live++;
        c.liveBytes += size;
      });
      this.chunks.push(c);
      if (seq + span - 1 > maxSeq) maxSeq = seq + span - 1;
      // an emptied row (never left behind by this code) goes with the next batch
      if (c.live === 0) this.chunkDirty.add(c);
      else this.checkCompactable(c);
    }
    for (const [seq] of this.stmt.loadTtls.iterate() as IterableIterator<[number]>) {
      const c = this.chunkOf(seq);
      if (c) c.hasTtls = true;
      // (a TTL row of a deleted item must never apply to a new one)
      if (seq > maxSeq) maxSeq = seq;
    }
    this.index = index;
    this.nextSeq = this.insSeq0 = Math.max(this.nextSeq, maxSeq + 1);
  }

  private applyPush(items: StoredItem[]): void {
    for (const it of items) {
      let m = this.index.get(it.queue);
      if (!m) {
        m = this.spareMap ?? new UuidMap<number>();
        this.spareMap = null;
        this.index.set(it.queue, m);
      }
      if (m.add(it.uuid, this.nextSeq) !== undefined) continue;
      this.nextSeq++;
      this.pendingIns.push(it);
    }
  }

  private applyDelete(keys: ItemKey[]): void {
    for (const key of keys) {
      const m = this.index.get(key.queue);
      if (!m) continue;
      const seq = m.delete(key.uuid);
      if (seq === undefined) continue;
      if (m.size === 0) {
        this.index.delete(key.queue);
        this.spareMap = m;
      }
      this.deleteSeq(seq);
    }
  }

  private applyDeleteQueue(queue: string): void {
    const m = this.index.get(queue);
    if (!m) return;
    this.index.delete(queue);
    m.forEachValue((seq) => this.deleteSeq(seq));
  }

  private applyDeleteAll(): void {
    this.index.clear();
    this.pendingIns = [];
    this.insSeq0 = this.nextSeq;
    this.pendingTtl.clear();
    this.chunks = [];
    this.goneChunks = 0;
    this.lastChunk = null;
    this.chunkDirty.clear();
    this.compactable.clear();
    this.db.exec('DELETE FROM item_chunks; DELETE FROM item_dead; DELETE FROM item_ttls;');
  }

  /** Forget the item stored (or to be written) under `seq`; it is no longer in the index. */
  private deleteSeq(seq: number): void {
    if (seq >= this.insSeq0) {
      this.pendingIns[seq - this.insSeq0] = null;
      return;
    }
    if (this.pendingTtl.size) this.pendingTtl.delete(seq);
    const c = this.chunkOf(seq);
    if (!c) return;
    const off = seq - c.seq;
    const size = c.sizes[off]!;
    if (size === 0) return;
    c.sizes[off] = 0;
    c.dead[off >> 3]! |= 1 << (off & 7);
    c.live--;
    c.liveBytes -= size;
    c.touched = this.batchNo;
    this.chunkDirty.add(c);
  }

  /** The chunk holding `seq`, if any. */
  private chunkOf(seq: number): ItemChunk | undefined {
    const last = this.lastChunk;
    if (last && !last.gone && seq >= last.seq && seq < last.seq + last.span) return last;
    const cs = this.chunks;
    let lo = 0;
    let hi = cs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (cs[mid]!.seq <= seq) lo = mid;
      else hi = mid - 1;
    }
    const c = cs[lo];
    if (!c || c.gone || seq < c.seq || seq >= c.seq + c.span) return undefined;
    this.lastChunk = c;
    return c;
  }

  private checkCompactable(c: ItemChunk): void {
    if (c.live > 0 && c.liveBytes * 4 < c.bytes && c.bytes - c.liveBytes >= COMPACT_MIN_DEAD) this.compactable.add(c);
  }

  private applyTtls(updates: TtlUpdate[]): void {
    for (const u of updates) {
      const seq = this.index.get(u.queue)?.get(u.uuid);
      if (seq === undefined) continue;
      if (seq >= this.insSeq0) this.pendingIns[seq - this.insSeq0]!.ttl = u.ttl; // our own copy
      else this.pendingTtl.set(seq, u.ttl);
    }
  }

  /** Write the item changes gathered so far in this transaction. */
  private writeItems(): void {
    this.batchNo++;
    const ins = this.pendingIns;
    if (ins.length) {
      const items: SeqItem[] = [];
      for (let i = 0; i < ins.length; i++) {
        const it = ins[i];
        if (it) items.push({ seq: this.insSeq0 + i, item: it });
      }
      if (items.length) chunkItems(items, (part) => this.writeChunk(part));
      this.pendingIns = [];
    }
    this.insSeq0 = this.nextSeq;
    if (this.pendingTtl.size) {
      for (const [seq, ttl] of this.pendingTtl) {
        const c = this.chunkOf(seq);
        if (!c) continue;
        this.stmt.ttlSet.run(seq, ttl);
        c.hasTtls = true;
      }
      this.pendingTtl.clear();
    }
    if (this.chunkDirty.size) {
      const s = this.stmt;
      for (const c of this.chunkDirty) {
        if (c.live === 0) {
          s.chunkDel.run(c.seq);
          if (c.hasDeadRow) s.deadDel.run(c.seq);
          if (c.hasTtls) s.ttlDelRange.run(c.seq, c.seq + c.span - 1);
          c.gone = true;
          this.goneChunks++;
        } else {
          s.deadSet.run(c.seq, c.dead);
          c.hasDeadRow = true;
          this.checkCompactable(c);
        }
      }
      this.chunkDirty.clear();
      if (this.goneChunks > 16 && this.goneChunks * 2 > this.chunks.length) {
        this.chunks = this.chunks.filter((c) => !c.gone);
        this.goneChunks = 0;
      }
    }
    if (this.compactable.size) {
      for (const c of this.compactable) {
        if (c.gone || c.live === 0) this.compactable.delete(c);
        else if (this.batchNo - c.touched >= COMPACT_COLD_BATCHES) {
          this.compactable.delete(c);
          this.compactChunk(c);
        }
      }
    }
  }

  /** Write one new `item_chunks` row. */
  private writeChunk(part: SeqItem[]): void {
    const e = encodeChunk(part);
    this.stmt.chunkIns.run(part[0]!.seq, e.keys, e.data);
    const c = newItemChunk(part[0]!.seq, e.span, e.sizes, e.keys.length + e.data.length, this.batchNo);
    c.live = part.length;
    c.liveBytes = c.bytes;
    this.chunks.push(c);
  }

  /** Rewrite a chunk's row with only its live items (same seqs), and drop its `item_dead` row. */
  private compactChunk(c: ItemChunk): void {
    const row = this.stmt.chunkGet.get(c.seq) as [Buffer, Buffer] | undefined;
    if (!row) return;
    const [keys, data] = row;
    const outKeys = Buffer.allocUnsafe(keys.length);
    const outData = Buffer.allocUnsafe(data.length);
    let p = 0;
    let d = 0;
    forEachEntry(keys, (e) => {
      if (c.sizes[e.off] === 0) {
        if (c.hasTtls) this.stmt.ttlDelRange.run(c.seq + e.off, c.seq + e.off);
        return;
      }
      const at = e.queueAt - ENTRY_FIXED;
      p += keys.copy(outKeys, p, at, e.uuidAt + e.uuidLen);
      d += data.copy(outData, d, e.bodyAt, e.bodyAt + e.bodyLen);
    });
    this.stmt.chunkUpd.run(outKeys.subarray(0, p), outData.subarray(0, d), c.seq);
    if (c.hasDeadRow) this.stmt.deadDel.run(c.seq);
    c.hasDeadRow = false;
    c.dead.fill(0);
    c.bytes = p + d;
  }

  /** Write the delivered marks of this transaction: one row write per peer touched. */
  private writeMarks(): void {
    if (this.pendingMarks.size === 0) return;
    const s = this.stmt;
    for (const [peer, m] of this.pendingMarks) {
      if (m) s.markPut.run(peer, m.incarnation, m.seq);
      else s.markDel.run(peer);
    }
    this.pendingMarks.clear();
  }

  /**
   * Every stored item, all queues, in insertion order. Writes pending writes first.
   * @throws {StorageError} (rejects) when SQLite fails. @throws {ClosedError} after `close()`.
   */
  load(): Promise<StoredItem[]> {
    return this.read(() => {
      const deadRows = new Map(this.stmt.loadDead.all() as [number, Buffer][]);
      const ttls = new Map(this.stmt.loadTtls.all() as [number, number | null][]);
      const out: StoredItem[] = [];
      for (const [seq, keys, data] of this.stmt.loadChunks.iterate() as IterableIterator<[number, Buffer, Buffer]>) {
        const bits = deadRows.get(seq);
        let queue = '';
        let queueAt = -1;
        let queueLen = 0;
        forEachEntry(keys, (e) => {
          if (isDead(bits, e.off)) return;
          // the same queue as the entry before: reuse its string
          if (queueAt < 0 || e.queueLen !== queueLen || keys.compare(keys, e.queueAt, e.queueAt + e.queueLen, queueAt, queueAt + queueLen) !== 0) {
            queue = keys.toString('utf8', e.queueAt, e.queueAt + e.queueLen);
          }
          queueAt = e.queueAt;
          queueLen = e.queueLen;
          const s = seq + e.off;
          out.push({
            queue,
            uuid: keys.subarray(e.uuidAt, e.uuidAt + e.uuidLen),
            ttl: ttls.size && ttls.has(s) ? ttls.get(s)! : e.ttl,
            flags: e.flags,
            body: data.subarray(e.bodyAt, e.bodyAt + e.bodyLen),
            seq: e.msgSeq,
          });
        });
      }
      return out;
    });
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
      copy[i] = { queue: it.queue, uuid: it.uuid, ttl: it.ttl, flags: it.flags, body: it.body, seq: it.seq };
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
   * Record marks, each replacing the one stored for its peer (the last of a peer wins). Goes
   * through the group commit like every write: each peer touched in a batch is one row write.
   * @throws {InvalidArgumentError} (rejects, nothing queued) on a malformed mark.
   * @throws {StorageError} (rejects) when the batch fails. @throws {ClosedError} after `close()`.
   */
  putDelivered(marks: DeliveredMark[]): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkMarks(marks);
    } catch (err) {
      return Promise.reject(err);
    }
    const copy: DeliveredMark[] = new Array(marks.length);
    for (let i = 0; i < marks.length; i++) {
      const m = marks[i]!;
      copy[i] = { peer: m.peer, incarnation: m.incarnation, seq: m.seq };
    }
    return this.enqueue({ op: Op.PutDelivered, marks: copy });
  }

  /**
   * Every stored mark, one per peer. Writes pending writes first.
   * @throws {StorageError} (rejects) when SQLite fails. @throws {ClosedError} after `close()`.
   */
  loadDelivered(): Promise<DeliveredMark[]> {
    return this.read(() => {
      const out: DeliveredMark[] = [];
      for (const [peer, incarnation, seq] of this.stmt.loadMarks.iterate() as IterableIterator<[string, Buffer, number]>) {
        out.push({ peer, incarnation, seq });
      }
      return out;
    });
  }

  /**
   * Delete the marks of these peers; unknown peers are ignored.
   * @throws {InvalidArgumentError} (rejects) unless `peers` is an array of strings.
   * @throws {StorageError} (rejects) when the batch fails. @throws {ClosedError} after `close()`.
   */
  forgetDelivered(peers: string[]): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('storage'));
    try {
      checkPeers(peers);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.enqueue({ op: Op.ForgetDelivered, peers: peers.slice() });
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
