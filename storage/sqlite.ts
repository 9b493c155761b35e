/**
 * A {@link QueuesStorage} in one SQLite file (better-sqlite3), with group commit: every write
 * made in one turn of the event loop goes into a single transaction.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import Database from 'better-sqlite3';
import { readI32 } from '../src/bytes.js';
import { ClosedError, SnakeMQError, StorageError } from '../src/errors.js';
import type { ItemKey, QueuesStorage, StoredItem, TtlUpdate } from '../src/storage.js';
import { checkItems, checkKeys, checkMeta, checkSeen, deferred } from '../src/storage-checks.js';
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
 * replaced by `item_chunks` (many items per row) with `item_dead` and `item_ttls`. Version 1
 * and 2 files are migrated.
 */
const SCHEMA_VERSION = 3;

/** Most items in one `item_chunks` row. */
const CHUNK_ITEMS = 4096;
/** A chunk takes no more items once it holds this many bytes (one larger item gets its own). */
const CHUNK_BYTES = 1 << 20;
/** Bytes of the fixed part of an item's entry in `item_chunks.keys`. */
const ENTRY_FIXED = 28;
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
 * u32 body length, u32 queue length, u32 uuid length` (little-endian), the queue (UTF-8) and
 * the uuid; `data`: the bodies, concatenated in the same order.
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
    view.setUint32(p + 16, b.length, true);
    view.setUint32(p + 20, q.length, true);
    view.setUint32(p + 24, u.length, true);
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
  const e: Entry = { off: 0, flags: 0, ttl: null, queueAt: 0, queueLen: 0, uuidAt: 0, uuidLen: 0, bodyAt: 0, bodyLen: 0 };
  let d = 0;
  for (let p = 0; p < keys.length; ) {
    e.off = keys.readUInt32LE(p);
    e.flags = keys.readUInt32LE(p + 4);
    const ttl = keys.readDoubleLE(p + 8);
    e.ttl = ttl < 0 ? null : ttl;
    e.bodyAt = d;
    e.bodyLen = keys.readUInt32LE(p + 16);
    e.queueLen = keys.readUInt32LE(p + 20);
    e.uuidLen = keys.readUInt32LE(p + 24);
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
 * Consecutive received uuids of one peer, one `seen_chunks` row: all of one width, oldest first,
 * as raw bytes. Slots before `start` were trimmed; a slot whose uuid was added again later (and
 * so moved to a newer slot) is marked in `dead`.
 */
interface SeenChunk {
  seq: number;
  /** Number of the chunk in its peer's window: it is `PeerSeen.chunks[no - PeerSeen.first]`. */
  no: number;
  peer: string;
  width: number;
  /** `cap` slots of `width` bytes. */
  bytes: Buffer;
  cap: number;
  /** Slots in use. */
  n: number;
  /** First slot not trimmed. */
  start: number;
  live: number;
  /** By slot, 1: the uuid moved to a newer slot (allocated on the first such move). */
  dead: Uint8Array | null;
  /** The row exists in the database (as of the last commit). */
  inDb: boolean;
  /** In {@link SqliteQueuesStorage.seenDirty}. */
  dirty: boolean;
}

/** The dedup window of one peer: its chunks oldest first, and which chunk each uuid is in. */
interface PeerSeen {
  chunks: SeenChunk[];
  /** Chunks before it are empty. */
  head: number;
  /** `no` of `chunks[0]`. */
  first: number;
  /** uuid → `no` of the chunk holding it. */
  where: UuidMap<number>;
}

/** A `seen_chunks` row. */
interface SeenRow {
  seq: number;
  peer: string;
  width: number;
  n: number;
  uuids: Buffer;
}

function newSeenChunk(seq: number, no: number, peer: string, width: number, cap: number): SeenChunk {
  const c: SeenChunk = { seq, no, peer, width, bytes: EMPTY, cap: 0, n: 0, start: 0, live: 0, dead: null, inDb: false, dirty: false };
  growSeenChunk(c, cap);
  return c;
}

const EMPTY = Buffer.alloc(0);

/** Give `c` room for at least `cap` slots (its width-0 chunks need no memory). */
function growSeenChunk(c: SeenChunk, cap: number): void {
  if (c.width === 0) {
    c.cap = Math.max(cap, SEEN_CHUNK);
    return;
  }
  const bytes = Buffer.allocUnsafeSlow(cap * c.width);
  c.bytes.copy(bytes, 0, 0, c.n * c.width);
  c.bytes = bytes;
  c.cap = cap;
  if (c.dead && c.dead.length < cap) {
    const dead = new Uint8Array(cap);
    dead.set(c.dead);
    c.dead = dead;
  }
}

/** Mark `c` as changed in this transaction. */
function touchSeen(c: SeenChunk, dirty: Set<SeenChunk>): void {
  if (!c.dirty) {
    c.dirty = true;
    dirty.add(c);
  }
}

/** Mark the live slot of `u` (of `p`'s chunk number `no`) dead: `u` moved to a newer slot. */
function killSeen(p: PeerSeen, no: number, u: Buffer, dirty: Set<SeenChunk>): void {
  const c = p.chunks[no - p.first]!;
  const w = c.width;
  // its newest slot in the chunk (older ones are dead already)
  for (let s = c.n - 1; s >= c.start; s--) {
    if (c.dead && c.dead[s] === 1) continue;
    if (u.compare(c.bytes, s * w, s * w + w) !== 0) continue;
    (c.dead ??= new Uint8Array(Math.max(c.cap, SEEN_CHUNK)))[s] = 1;
    c.live--;
    touchSeen(c, dirty);
    return;
  }
}

/** Trim the oldest live uuid of `p` (which has one). */
function evictSeen(p: PeerSeen, dirty: Set<SeenChunk>): void {
  let c = p.chunks[p.head]!;
  while (c.live === 0) c = p.chunks[++p.head]!;
  let s = c.start;
  const dead = c.dead;
  if (dead !== null) while (dead[s] === 1) s++;
  c.start = s + 1;
  c.live--;
  touchSeen(c, dirty);
  if (c.width === 16) {
    const b = c.bytes;
    const o = s << 4;
    p.where.delete4(readI32(b, o), readI32(b, o + 4), readI32(b, o + 8), readI32(b, o + 12));
  } else p.where.delete(c.bytes.subarray(s * c.width, s * c.width + c.width));
}

/** Append `u` to `c` (which has room) as the newest uuid of `p`; a uuid already present moves here. */
function appendSeen(p: PeerSeen, c: SeenChunk, u: Buffer, dirty: Set<SeenChunk>): void {
  const s = c.n++;
  c.live++;
  let old: number | undefined;
  if (c.width === 16) {
    const bytes = c.bytes;
    const o = s << 4;
    for (let k = 0; k < 16; k++) bytes[o + k] = u[k]!;
    old = p.where.put4(readI32(u, 0), readI32(u, 4), readI32(u, 8), readI32(u, 12), c.no);
  } else {
    u.copy(c.bytes, s * c.width);
    old = p.where.putOther(u, c.no);
  }
  if (old !== undefined) {
    // (its old slot is found by content: the new one is not live yet for that search)
    c.n--;
    killSeen(p, old, u, dirty);
    c.n++;
  }
}

/** Bring a version 0 (new), 1 or 2 file to {@link SCHEMA_VERSION}; runs in a transaction. */
function migrate(db: Database.Database): void {
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
  const hasTable = (name: string): boolean => !!db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name);
  if (hasTable('items')) {
    // versions 1 and 2: one row per item; the items keep their seqs (read a page at a time:
    // the connection cannot write while a statement iterates)
    const page = db.prepare('SELECT seq, queue, uuid, ttl, flags, body FROM items WHERE seq > ? ORDER BY seq LIMIT ?');
    const ins = db.prepare('INSERT INTO item_chunks (seq, keys, data) VALUES (?, ?, ?)');
    for (let after = -Infinity; ; ) {
      const rows = page.all(after, CHUNK_ITEMS) as (StoredItem & { seq: number })[];
      if (rows.length === 0) break;
      chunkItems(
        rows.map((r) => ({ seq: r.seq, item: r })),
        (part) => {
          const c = encodeChunk(part);
          ins.run(part[0]!.seq, c.keys, c.data);
        },
      );
      after = rows[rows.length - 1]!.seq;
    }
    db.exec('DROP TABLE items');
  }
  if (hasTable('seen')) {
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
 * Schema (version 3). Items: `item_chunks(seq INTEGER PRIMARY KEY, keys BLOB, data BLOB)`,
 * one row per batch of pushed items (up to 4096 items / 1 MiB): `keys` holds each item's
 * entry (seq offset, flags, TTL, lengths, queue, uuid — see `encodeChunk`), `data` the bodies.
 * Item seqs are assigned by this class, one more than the largest ever used since the file was
 * opened (and than the largest present), so they grow with insertion order; a row's key is its
 * first item's seq. `item_dead(seq, bits)`: for a row with deleted items, a bitmap by seq
 * offset; the row itself is deleted with its last item. `item_ttls(seq, ttl)`: TTLs rewritten
 * after the item was written. A row less than a quarter live (and at least 16 KiB dead) is
 * rewritten with only its live items once no delete touched it for 32 batches. The (queue,
 * uuid) → seq index lives in memory, built when the file is opened (one pass over the `keys`
 * blobs): a push of a present key is ignored there; deletes and TTL updates go by seq.
 * `seen_chunks(seq INTEGER PRIMARY KEY, peer, width, n, uuids)`: a peer's
 * dedup window as rows of up to 256 uuids of `width` bytes concatenated, oldest row first; an
 * `addSeen` batch adds rows, trimming deletes the oldest rows and rewrites the one row it cuts
 * into, and re-adding a uuid rewrites the row it was in. `meta(key PRIMARY KEY, value)`. The
 * schema version is kept in `PRAGMA user_version`; version 1 and 2 files are migrated when
 * opened. The WAL is checkpointed at 32 MiB (see `WAL_CHECKPOINT_BYTES`).
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
    seenIns: Database.Statement;
    seenUpd: Database.Statement;
    seenDel: Database.Statement;
    setMeta: Database.Statement;
    delMeta: Database.Statement;
    loadChunks: Database.Statement;
    loadDead: Database.Statement;
    loadTtls: Database.Statement;
    loadSeen: Database.Statement;
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
      const pageSize = db.pragma('page_size', { simple: true }) as number;
      db.pragma(`wal_autocheckpoint = ${Math.max(1000, Math.ceil(WAL_CHECKPOINT_BYTES / pageSize))}`);
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new StorageError(`${filename} has schema version ${version}; this code knows up to ${SCHEMA_VERSION}`);
      }
      if (version < SCHEMA_VERSION) db.transaction(() => migrate(db!))();
      this.stmt = {
        chunkIns: db.prepare('INSERT INTO item_chunks (seq, keys, data) VALUES (?, ?, ?)'),
        chunkUpd: db.prepare('UPDATE item_chunks SET keys = ?, data = ? WHERE seq = ?'),
        chunkDel: db.prepare('DELETE FROM item_chunks WHERE seq = ?'),
        chunkGet: db.prepare('SELECT keys, data FROM item_chunks WHERE seq = ?').raw(),
        deadSet: db.prepare('INSERT OR REPLACE INTO item_dead (seq, bits) VALUES (?, ?)'),
        deadDel: db.prepare('DELETE FROM item_dead WHERE seq = ?'),
        ttlSet: db.prepare('INSERT OR REPLACE INTO item_ttls (seq, ttl) VALUES (?, ?)'),
        ttlDelRange: db.prepare('DELETE FROM item_ttls WHERE seq BETWEEN ? AND ?'),
        seenIns: db.prepare('INSERT INTO seen_chunks (seq, peer, width, n, uuids) VALUES (?, ?, ?, ?, ?)'),
        seenUpd: db.prepare('UPDATE seen_chunks SET n = ?, uuids = ? WHERE seq = ?'),
        seenDel: db.prepare('DELETE FROM seen_chunks WHERE seq = ?'),
        setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
        delMeta: db.prepare('DELETE FROM meta WHERE key = ?'),
        loadChunks: db.prepare('SELECT seq, keys, data FROM item_chunks ORDER BY seq').raw(),
        loadDead: db.prepare('SELECT seq, bits FROM item_dead').raw(),
        loadTtls: db.prepare('SELECT seq, ttl FROM item_ttls').raw(),
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
            this.applyDeleteQueue(o.queue);
            break;
          case Op.DeleteAllItems:
            this.applyDeleteAll();
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
    this.pendingTtl.clear();
    this.seenDirty.clear();
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
    const seen = new Map<string, PeerSeen>();
    let maxSeen = 0;
    for (const row of this.stmt.loadSeen.iterate() as IterableIterator<SeenRow>) {
      let p = seen.get(row.peer);
      if (!p) seen.set(row.peer, (p = { chunks: [], head: 0, first: 0, where: new UuidMap<number>() }));
      const c = newSeenChunk(row.seq, p.chunks.length, row.peer, row.width, row.n);
      c.inDb = true;
      // (an empty row, which this code never writes, goes with the next batch)
      if (row.n === 0) touchSeen(c, this.seenDirty);
      p.chunks.push(c);
      // (a uuid present twice, which this code never writes, counts at its newest place)
      for (let i = 0; i < row.n; i++) appendSeen(p, c, row.uuids.subarray(i * row.width, (i + 1) * row.width), this.seenDirty);
      if (row.seq > maxSeen) maxSeen = row.seq;
    }
    this.seen = seen;
    this.nextSeenSeq = Math.max(this.nextSeenSeq, maxSeen + 1);
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

  private applySeen(peer: string, uuids: Buffer[], keep: number): void {
    let p = this.seen.get(peer);
    if (!p) {
      if (uuids.length === 0) return;
      this.seen.set(peer, (p = { chunks: [], head: 0, first: 0, where: new UuidMap<number>() }));
    }
    const dirty = this.seenDirty;
    const where = p.where;
    // new uuids go on in the newest chunk while it is not in the database yet
    let open = p.chunks.length > p.head ? p.chunks[p.chunks.length - 1]! : undefined;
    if (open && (open.inDb || open.n >= SEEN_CHUNK)) open = undefined;
    for (let i = 0; i < uuids.length; i++) {
      const u = uuids[i]!;
      if (!open || open.width !== u.length || open.n >= SEEN_CHUNK) {
        open = newSeenChunk(this.nextSeenSeq++, p.first + p.chunks.length, peer, u.length, Math.min(SEEN_CHUNK, uuids.length - i));
        p.chunks.push(open);
        touchSeen(open, dirty);
      } else if (open.n === open.cap) {
        growSeenChunk(open, Math.min(SEEN_CHUNK, Math.max(open.cap * 2, open.n + uuids.length - i)));
      }
      appendSeen(p, open, u, dirty);
      // trim to the newest `keep` as we go (the table never holds more than one extra)
      if (where.size > keep) evictSeen(p, dirty);
    }
    while (where.size > keep) evictSeen(p, dirty);
    // drop emptied chunks from the front (middle ones go when they reach it)
    while (p.head < p.chunks.length && p.chunks[p.head]!.live === 0) p.head++;
    if (p.head === p.chunks.length) {
      p.first += p.chunks.length;
      p.chunks = [];
      p.head = 0;
    } else if (p.head > 64 && p.head * 2 > p.chunks.length) {
      p.first += p.head;
      p.chunks = p.chunks.slice(p.head);
      p.head = 0;
    }
    if (where.size === 0) this.seen.delete(peer);
  }

  /** Write the seen chunks changed in this transaction. */
  private writeSeen(): void {
    if (this.seenDirty.size === 0) return;
    const s = this.stmt;
    for (const c of this.seenDirty) {
      c.dirty = false;
      if (c.live === 0) {
        if (c.inDb) s.seenDel.run(c.seq);
        c.inDb = false;
        continue;
      }
      const w = c.width;
      let blob: Buffer;
      if (c.live === c.n - c.start) blob = c.bytes.subarray(c.start * w, c.n * w);
      else {
        // skip the slots of uuids that moved on
        blob = Buffer.allocUnsafe(c.live * w);
        let o = 0;
        for (let i = c.start; i < c.n; i++) if (c.dead![i] !== 1) o += c.bytes.copy(blob, o, i * w, i * w + w);
      }
      if (c.inDb) s.seenUpd.run(c.live, blob, c.seq);
      else s.seenIns.run(c.seq, c.peer, w, c.live, blob);
      c.inDb = true;
    }
    this.seenDirty.clear();
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
