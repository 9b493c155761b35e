import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { SqliteQueuesStorage } from '../storage/sqlite.js';
import type { StoredItem } from '../src/storage.js';
import { writeV3File, type V3Item } from './fixtures/sqlite-v3-file.js';
import { byPeer, itemOf, markOf, queuesStorageConformance, uuidOf } from './storage-conformance.js';

let dir = '';
let fileNo = 0;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'snakemq-storage-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});
const newFile = (): string => join(dir, `q${++fileNo}.db`);

queuesStorageConformance('memory storage', async () => ({ storage: new MemoryQueuesStorage() }));

queuesStorageConformance('sqlite storage', async () => {
  const file = newFile();
  return {
    storage: new SqliteQueuesStorage(file),
    reopen: async () => new SqliteQueuesStorage(file),
    cleanup: async () => {
      for (const suffix of ['', '-wal', '-shm']) rmSync(file + suffix, { force: true });
    },
  };
});

queuesStorageConformance('sqlite storage (groupCommitMaxDelayMs 5, synchronous normal)', async () => {
  const file = newFile();
  const open = () => new SqliteQueuesStorage(file, { groupCommitMaxDelayMs: 5, synchronous: 'normal' });
  return { storage: open(), reopen: async () => open() };
});

const mongoUrl = process.env['SNAKEMQ_MONGODB_URL'];
if (mongoUrl) {
  queuesStorageConformance('mongodb storage', async () => {
    const { MongoQueuesStorage } = await import('../storage/mongodb.js');
    const collection = `conformance_${randomBytes(6).toString('hex')}`;
    const open = () => MongoQueuesStorage.connect(mongoUrl, { collection, dbName: 'snakemq_test' });
    return {
      storage: await open(),
      reopen: open,
      cleanup: async () => {
        const { MongoClient } = await import('mongodb');
        const client = await MongoClient.connect(mongoUrl);
        try {
          await client.db('snakemq_test').collection(collection).drop();
        } finally {
          await client.close();
        }
      },
    };
  });
} else {
  describe.skip('mongodb storage (set SNAKEMQ_MONGODB_URL to run)', () => {
    it('runs the conformance suite against a MongoDB server', () => undefined);
  });
}

describe('sqlite storage specifics', () => {
  const children: ChildProcess[] = [];
  const opened: SqliteQueuesStorage[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    for (const s of opened.splice(0)) await s.close();
  });
  const open = (file: string, options?: ConstructorParameters<typeof SqliteQueuesStorage>[1]) => {
    const s = new SqliteQueuesStorage(file, options);
    opened.push(s);
    return s;
  };

  it('writes made in one tick share one transaction (one promise); the next tick starts another', async () => {
    const s = open(newFile());
    const a = s.push([itemOf('q', 1)]);
    const b = s.delete([{ queue: 'q', uuid: uuidOf(9) }]);
    const c = s.setMeta('k', Buffer.from('v'));
    expect(b).toBe(a);
    expect(c).toBe(a);
    await a;
    const d = s.push([itemOf('q', 2)]);
    expect(d).not.toBe(a);
    await d;
  });

  it('a failing batch rejects every call in it with ERR_STORAGE (cause attached) and applies none of it', async () => {
    const file = newFile();
    const s = open(file);
    await s.push([itemOf('q', 1)]);
    // another connection adds a trigger that aborts inserts into the 'poison' queue
    const other = new Database(file);
    other.exec(`CREATE TRIGGER poison BEFORE INSERT ON item_chunks WHEN instr(NEW.keys, CAST('poison' AS BLOB)) > 0
                BEGIN SELECT RAISE(ABORT, 'poisoned'); END;`);
    other.close();
    const calls = [
      s.push([itemOf('q', 2)]),
      s.setMeta('k', Buffer.from('v')),
      s.push([itemOf('poison', 3)]),
      s.delete([{ queue: 'q', uuid: uuidOf(1) }]),
    ];
    const results = await Promise.allSettled(calls);
    for (const r of results) {
      expect(r.status).toBe('rejected');
      const err = (r as PromiseRejectedResult).reason as { code: string; cause: unknown };
      expect(err.code).toBe('ERR_STORAGE');
      expect(String((err.cause as Error).message)).toContain('poisoned');
    }
    expect((await s.load()).map((i) => i.uuid.readUInt32BE(12))).toEqual([1]);
    expect(await s.getMeta('k')).toBeNull();
    // the storage keeps working afterwards
    await s.push([itemOf('q', 4)]);
    expect((await s.load()).map((i) => i.uuid.readUInt32BE(12))).toEqual([1, 4]);
  });

  it('groupCommitMaxDelayMs gathers writes from several ticks into one batch', async () => {
    const s = open(newFile(), { groupCommitMaxDelayMs: 50 });
    const a = s.push([itemOf('q', 1)]);
    await new Promise((r) => setImmediate(r));
    const b = s.push([itemOf('q', 2)]);
    expect(b).toBe(a);
    await a;
    expect((await s.load()).length).toBe(2);
  });

  it('uses WAL with synchronous=NORMAL by default, FULL on request', async () => {
    const file = newFile();
    await open(file).push([itemOf('q', 1)]);
    const db = new Database(file, { readonly: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      db.close();
    }
    // synchronous is per connection: read it from the storage's own connection
    const s = opened[0] as unknown as { db: Database.Database };
    expect(s.db.pragma('synchronous', { simple: true })).toBe(1);
    const full = open(newFile(), { synchronous: 'full' }) as unknown as { db: Database.Database };
    expect(full.db.pragma('synchronous', { simple: true })).toBe(2);
    expect(() => new SqliteQueuesStorage(newFile(), { synchronous: 'FULL' as 'full' })).toThrow(
      expect.objectContaining({ code: 'ERR_STORAGE' }),
    );
  });

  it('migrates a schema version 1 file (unique key index, one seen row per uuid): items get seqs 1, 2, … in order, seen is dropped', async () => {
    const file = newFile();
    const v1 = new Database(file);
    v1.pragma('journal_mode = WAL');
    v1.exec(`
      CREATE TABLE items (seq INTEGER PRIMARY KEY, queue TEXT NOT NULL, uuid BLOB NOT NULL, ttl INTEGER,
                          flags INTEGER NOT NULL, body BLOB NOT NULL);
      CREATE UNIQUE INDEX items_key ON items (queue, uuid);
      CREATE TABLE seen (seq INTEGER PRIMARY KEY, peer TEXT NOT NULL, uuid BLOB NOT NULL);
      CREATE UNIQUE INDEX seen_key ON seen (peer, uuid);
      CREATE INDEX seen_order ON seen (peer, seq);
      CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
      PRAGMA user_version = 1;
    `);
    const ins = v1.prepare('INSERT INTO items (queue, uuid, ttl, flags, body) VALUES (?, ?, ?, ?, ?)');
    for (const it of [itemOf('b', 1), itemOf('a', 2, { ttl: 7 }), itemOf('b', 3)]) ins.run(it.queue, it.uuid, it.ttl, it.flags, it.body);
    v1.prepare('DELETE FROM items WHERE seq = 2').run();
    const seen = v1.prepare('INSERT INTO seen (peer, uuid) VALUES (?, ?)');
    for (let i = 0; i < 600; i++) seen.run(i % 2 ? 'p' : 'r', uuidOf(i));
    seen.run('odd', Buffer.from('short'));
    v1.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('k', Buffer.from('v'));
    v1.close();

    const s = open(file);
    expect(await s.load()).toEqual([itemOf('b', 1, { seq: 1 }), itemOf('b', 3, { seq: 2 })]);
    expect(await s.loadDelivered()).toEqual([]);
    expect(await s.getMeta('k')).toEqual(Buffer.from('v'));
    // keys still dedupe, and new items go last
    await s.push([itemOf('b', 1, { body: Buffer.from('dup') }), itemOf('a', 2)]);
    await s.delete([{ queue: 'b', uuid: uuidOf(3) }]);
    await s.putDelivered([markOf('p', 1, 5)]);
    const items = await s.load();
    expect(items).toEqual([itemOf('b', 1, { seq: 1 }), itemOf('a', 2)]);
    expect(await s.loadDelivered()).toEqual([markOf('p', 1, 5)]);
    const raw = opened[0] as unknown as { db: Database.Database };
    expect(raw.db.pragma('user_version', { simple: true })).toBe(4);
    const names = raw.db.prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all();
    expect(names).toEqual(['delivered', 'item_chunks', 'item_dead', 'item_ttls', 'meta']);
  });

  it('migrates a schema version 2 file (one items row per item), keeping order, TTLs and meta; items get seqs 1, 2, … in order', async () => {
    const file = newFile();
    const v2 = new Database(file);
    v2.pragma('journal_mode = WAL');
    v2.exec(`
      CREATE TABLE items (seq INTEGER PRIMARY KEY, queue TEXT NOT NULL, uuid BLOB NOT NULL, ttl INTEGER,
                          flags INTEGER NOT NULL, body BLOB NOT NULL);
      CREATE TABLE seen_chunks (seq INTEGER PRIMARY KEY, peer TEXT NOT NULL, width INTEGER NOT NULL,
                                n INTEGER NOT NULL, uuids BLOB NOT NULL);
      CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
      PRAGMA user_version = 2;
    `);
    // 9000 items (more than one chunk's worth), with gaps in the seqs, odd queues and bodies
    const ins = v2.prepare('INSERT INTO items (seq, queue, uuid, ttl, flags, body) VALUES (?, ?, ?, ?, ?, ?)');
    const want: StoredItem[] = [];
    for (let i = 0; i < 9000; i++) {
      const it = itemOf(i % 3 ? 'a' : 'ünï', i, { ttl: i % 4 ? i * 1.5 : null, flags: i % 2, body: i % 500 ? Buffer.from(`body-${i}`) : Buffer.alloc(0), seq: i + 1 });
      ins.run(10 + 3 * i, it.queue, it.uuid, it.ttl, it.flags, it.body);
      want.push(it);
    }
    const big = itemOf('a', 9000, { body: Buffer.alloc(3 << 20, 7), seq: 9001 });
    ins.run(2 ** 40, big.queue, big.uuid, big.ttl, big.flags, big.body);
    want.push(big);
    v2.prepare('INSERT INTO seen_chunks (peer, width, n, uuids) VALUES (?, ?, ?, ?)').run('p', 16, 2, Buffer.concat([uuidOf(1), uuidOf(2)]));
    v2.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('k', Buffer.from('v'));
    v2.close();

    // (compared as strings: a deep equality over megabytes of Buffer takes very long)
    const show = (items: StoredItem[]): string[] =>
      items.map((it) => `${it.queue}|${it.uuid.toString('hex')}|${it.ttl}|${it.flags}|${it.seq}|${createHash('sha1').update(it.body).digest('hex')}`);
    let s = open(file);
    expect(show(await s.load())).toEqual(show(want));
    expect(await s.loadDelivered()).toEqual([]);
    expect(await s.getMeta('k')).toEqual(Buffer.from('v'));
    const raw = s as unknown as { db: Database.Database };
    expect(raw.db.pragma('user_version', { simple: true })).toBe(4);
    expect(raw.db.prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all()).toEqual([
      'delivered',
      'item_chunks',
      'item_dead',
      'item_ttls',
      'meta',
    ]);
    // keys still dedupe, deletes and TTL updates find the migrated items, new items go last
    await s.push([itemOf('a', 1, { body: Buffer.from('dup') }), itemOf('b', 9001)]);
    await s.delete([{ queue: 'a', uuid: uuidOf(2) }, { queue: 'ünï', uuid: uuidOf(0) }]);
    await s.updateTtls([{ queue: 'a', uuid: uuidOf(4), ttl: 99 }]);
    await s.close();
    s = open(file);
    const items = await s.load();
    const expected = want.filter((_, i) => i !== 2 && i !== 0).map((it) => (it.uuid.equals(uuidOf(4)) ? { ...it, ttl: 99 } : it));
    expected.push(itemOf('b', 9001));
    expect(show(items)).toEqual(show(expected));
  });

  it('migrates a schema version 3 file (item rows without message seqs, seen_chunks) in place: order, deletes, TTLs kept, seqs 1, 2, … in order (deleted ones count)', async () => {
    const file = newFile();
    // 150 rows (more than one page of the migration), items at gaps of offsets, some deleted,
    // some TTLs rewritten, uuids and queues of odd lengths
    const rows: { seq: number; items: V3Item[]; deadOffs?: number[] }[] = [];
    const want: StoredItem[] = [];
    const ttls: [number, number | null][] = [];
    let n = 0;
    for (let r = 0; r < 150; r++) {
      const seq = 1 + r * 40;
      const items: V3Item[] = [];
      const deadOffs: number[] = [];
      for (let k = 0; k < 12; k++) {
        const i = n++;
        const it: V3Item = {
          off: k * 3,
          queue: i % 5 ? `q${i % 3}` : 'ünï—☃',
          uuid: i % 37 === 5 ? Buffer.from(`short-${i}`) : uuidOf(i),
          ttl: i % 4 ? i * 2.5 : null,
          flags: i % 2 ? 1 : 0xffffffff,
          body: i % 50 ? Buffer.from(`body-${i}`) : Buffer.alloc(0),
        };
        items.push(it);
        if (i % 7 === 3) {
          deadOffs.push(it.off);
          continue;
        }
        let ttl = it.ttl;
        if (i % 11 === 4) {
          ttl = i % 2 ? null : 9000 + i;
          ttls.push([seq + it.off, ttl]);
        }
        want.push({ queue: it.queue, uuid: it.uuid, ttl, flags: it.flags, body: it.body, seq: i + 1 });
      }
      rows.push({ seq, items, deadOffs });
    }
    // a row of larger items (compacted below), and a large body alone in its row, far away
    const bulky: V3Item[] = Array.from({ length: 40 }, (_, j) => ({ off: j, queue: 'bulky', uuid: uuidOf(50_000 + j), ttl: j, flags: 1, body: Buffer.alloc(1000, j) }));
    rows.push({ seq: 2 ** 39, items: bulky });
    for (const [j, it] of bulky.entries()) want.push({ queue: it.queue, uuid: it.uuid, ttl: it.ttl, flags: it.flags, body: it.body, seq: n + j + 1 });
    const big: V3Item = { off: 0, queue: 'big', uuid: uuidOf(1 << 30), ttl: 1, flags: 1, body: Buffer.alloc(2 << 20, 9) };
    rows.push({ seq: 2 ** 40, items: [big] });
    want.push({ queue: big.queue, uuid: big.uuid, ttl: big.ttl, flags: big.flags, body: big.body, seq: n + bulky.length + 1 });
    writeV3File(file, {
      rows,
      ttls,
      seen: [
        ['p', [uuidOf(1), uuidOf(2)]],
        ['r', [Buffer.from('abc')]],
      ],
      meta: [['k', Buffer.from('v')]],
    });

    const show = (items: StoredItem[]): string[] =>
      items.map((it) => `${it.queue}|${it.uuid.toString('hex')}|${it.ttl}|${it.flags}|${it.seq}|${createHash('sha1').update(it.body).digest('hex')}`);
    let s = open(file);
    const raw = (x: SqliteQueuesStorage): Database.Database => (x as unknown as { db: Database.Database }).db;
    expect(raw(s).pragma('user_version', { simple: true })).toBe(4);
    expect(raw(s).prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all()).toEqual([
      'delivered',
      'item_chunks',
      'item_dead',
      'item_ttls',
      'meta',
    ]);
    expect(show(await s.load())).toEqual(show(want));
    expect(await s.loadDelivered()).toEqual([]);
    expect(await s.getMeta('k')).toEqual(Buffer.from('v'));
    // the migrated index finds every key: duplicates ignored, deletes and TTL updates apply,
    // new items (with their seqs) go last
    const first = want[0]!;
    const second = want[1]!;
    await s.push([{ ...first, body: Buffer.from('dup'), seq: 5 }, itemOf('new', 1, { seq: Number.MAX_SAFE_INTEGER })]);
    await s.delete([{ queue: second.queue, uuid: second.uuid }]);
    await s.updateTtls([{ queue: big.queue, uuid: big.uuid, ttl: 77 }]);
    await s.putDelivered([markOf('p', 2, 3)]);
    await s.close();
    s = open(file);
    const expected = [first, ...want.slice(2, -1), { ...want[want.length - 1]!, ttl: 77 }, itemOf('new', 1, { seq: Number.MAX_SAFE_INTEGER })];
    expect(show(await s.load())).toEqual(show(expected));
    expect(await s.loadDelivered()).toEqual([markOf('p', 2, 3)]);
    // deleting most of the migrated items, then idle batches: the rows are compacted (the
    // entry sizes of migrated rows are right) and what is left still loads, also after a reopen
    const size = (): number => raw(s).prepare('SELECT sum(length(keys) + length(data)) FROM item_chunks').pluck().get() as number;
    const keep = new Set([0, 100, 500, expected.length - 2, expected.length - 1]);
    const kept = (it: StoredItem, i: number): boolean => (it.queue === 'bulky' ? it.ttl! % 20 === 0 : keep.has(i));
    await s.delete(expected.filter((it, i) => !kept(it, i)).map((it) => ({ queue: it.queue, uuid: it.uuid })));
    const before = size();
    for (let i = 0; i < 40; i++) await s.setMeta('tick', Buffer.from([i]));
    expect(before - size()).toBeGreaterThan(30_000);
    expect(raw(s).prepare('SELECT count(*) FROM item_dead WHERE seq = ?').pluck().get(2 ** 39)).toBe(0);
    const left = expected.filter(kept);
    expect(left.filter((it) => it.queue === 'bulky')).toHaveLength(2);
    expect(show(await s.load())).toEqual(show(left));
    await s.close();
    s = open(file);
    expect(show(await s.load())).toEqual(show(left));
  });

  it('migrates in one transaction: a version 3 file it cannot convert is left as it was (ERR_STORAGE)', async () => {
    const file = newFile();
    writeV3File(file, {
      rows: [{ seq: 1, items: [{ off: 0, queue: 'q', uuid: uuidOf(1), ttl: null, flags: 1, body: Buffer.from('b') }] }],
      seen: [['p', [uuidOf(1)]]],
    });
    // a second row whose keys blob ends in the middle of an entry
    const db = new Database(file);
    db.prepare('INSERT INTO item_chunks (seq, keys, data) VALUES (?, ?, ?)').run(10, Buffer.alloc(20, 1), Buffer.alloc(0));
    db.close();
    expect(() => new SqliteQueuesStorage(file)).toThrow(expect.objectContaining({ code: 'ERR_STORAGE' }));
    const after = new Database(file, { readonly: true });
    try {
      expect(after.pragma('user_version', { simple: true })).toBe(3);
      expect(after.prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all()).toEqual(['item_chunks', 'item_dead', 'item_ttls', 'meta', 'seen_chunks']);
      // the first row was not rewritten either (still the 28-byte entry of version 3)
      expect((after.prepare('SELECT length(keys) FROM item_chunks WHERE seq = 1').pluck().get() as number)).toBe(28 + 1 + 16);
    } finally {
      after.close();
    }
  });

  it('stores the items written in one batch as one row, and keeps each delete across reopen', async () => {
    const file = newFile();
    let s = open(file);
    const ps: Promise<void>[] = [];
    for (let i = 0; i < 1000; i++) ps.push(s.push([itemOf(`q${i % 2}`, i)]));
    await Promise.all(ps);
    const rows = (x: SqliteQueuesStorage): number =>
      (x as unknown as { db: Database.Database }).db.prepare('SELECT count(*) FROM item_chunks').pluck().get() as number;
    expect(rows(s)).toBe(1);
    // deletes in several batches, in and out of order; TTL updates of written items
    await s.delete([5, 1, 999, 500].map((i) => ({ queue: `q${i % 2}`, uuid: uuidOf(i) })));
    await s.updateTtls([{ queue: 'q0', uuid: uuidOf(2), ttl: 1234 }]);
    await s.delete(Array.from({ length: 100 }, (_, i) => ({ queue: `q${(i + 100) % 2}`, uuid: uuidOf(i + 100) })));
    await s.deleteAll('q1');
    await s.close();
    s = open(file);
    let items = await s.load();
    const left = Array.from({ length: 1000 }, (_, i) => i).filter((i) => i % 2 === 0 && i !== 500 && !(i >= 100 && i < 200));
    expect(items.map((it) => it.uuid.readUInt32BE(12))).toEqual(left);
    expect(items[1]!.ttl).toBe(1234);
    expect(items[0]!.ttl).toBeNull();
    // deleting the rest removes the row and its bookkeeping
    await s.delete(left.map((i) => ({ queue: 'q0', uuid: uuidOf(i) })));
    expect(rows(s)).toBe(0);
    const db = (s as unknown as { db: Database.Database }).db;
    expect(db.prepare('SELECT count(*) FROM item_dead').pluck().get()).toBe(0);
    expect(db.prepare('SELECT count(*) FROM item_ttls').pluck().get()).toBe(0);
    // a deleted item's TTL never applies to a later item, even after a reopen
    await s.push([itemOf('q0', 5000)]);
    await s.close();
    s = open(file);
    await s.push([itemOf('q0', 5001)]);
    items = await s.load();
    expect(items.map((it) => [it.uuid.readUInt32BE(12), it.ttl])).toEqual([
      [5000, null],
      [5001, null],
    ]);
  });

  it('compacts a mostly deleted row once no delete touched it for a while, keeping its live items', async () => {
    const file = newFile();
    let s = open(file);
    const body = Buffer.alloc(1000, 1);
    await s.push(Array.from({ length: 200 }, (_, i) => itemOf(i % 20 ? 'gone' : 'kept', i, { body, ttl: i })));
    await s.updateTtls([{ queue: 'kept', uuid: uuidOf(20), ttl: 7 }]);
    await s.deleteAll('gone');
    const db = (s as unknown as { db: Database.Database }).db;
    const size = (): number => db.prepare('SELECT sum(length(keys) + length(data)) FROM item_chunks').pluck().get() as number;
    const before = size();
    expect(before).toBeGreaterThan(200_000);
    // other writes, in separate batches
    for (let i = 0; i < 40; i++) await s.setMeta('tick', Buffer.from([i]));
    expect(size()).toBeLessThan(before / 10);
    expect(db.prepare('SELECT count(*) FROM item_dead').pluck().get()).toBe(0);
    const want = Array.from({ length: 10 }, (_, j) => itemOf('kept', j * 20, { body, ttl: j === 1 ? 7 : j * 20 }));
    expect(await s.load()).toEqual(want);
    await s.close();
    s = open(file);
    expect(await s.load()).toEqual(want);
    await s.delete([{ queue: 'kept', uuid: uuidOf(40) }]);
    await s.push([itemOf('kept', 1000)]);
    expect((await s.load()).map((it) => it.uuid.readUInt32BE(12))).toEqual([0, 20, 60, 80, 100, 120, 140, 160, 180, 1000]);
  });

  it('putDelivered joins the batch of the other writes of its tick and writes one row per peer', async () => {
    const s = open(newFile());
    const db = (s as unknown as { db: Database.Database }).db;
    const changes = (): number => db.prepare('SELECT total_changes()').pluck().get() as number;
    await s.push([itemOf('q', 0)]);
    const a = s.push([itemOf('q', 1)]);
    const marks: Promise<void>[] = [];
    for (let i = 1; i <= 1000; i++) marks.push(s.putDelivered([markOf('p', 1, i)]));
    for (let i = 1; i <= 1000; i++) marks.push(s.putDelivered([markOf(`r${i % 3}`, 2, i)]));
    const f = s.forgetDelivered(['r0']);
    expect(marks.every((m) => m === a)).toBe(true);
    expect(f).toBe(a);
    const before = changes();
    await a;
    // one item_chunks row and one upsert each for p, r1 and r2 (r0: a delete of an absent row)
    expect(changes() - before).toBe(1 + 3);
    expect(byPeer(await s.loadDelivered())).toEqual([markOf('p', 1, 1000), markOf('r1', 2, 1000), markOf('r2', 2, 998)]);
    // a later batch replaces a row in place
    await s.putDelivered([markOf('p', 3, 1)]);
    expect(db.prepare('SELECT peer, incarnation, seq FROM delivered ORDER BY peer').raw().all()).toEqual([
      ['p', markOf('p', 3, 1).incarnation, 1],
      ['r1', markOf('r1', 2, 1000).incarnation, 1000],
      ['r2', markOf('r2', 2, 998).incarnation, 998],
    ]);
  });

  it('a failing batch applies none of its marks, and a later batch does not write them either', async () => {
    const file = newFile();
    const s = open(file);
    await s.putDelivered([markOf('kept', 1, 1)]);
    const other = new Database(file);
    other.exec(`CREATE TRIGGER poison BEFORE INSERT ON item_chunks WHEN instr(NEW.keys, CAST('poison' AS BLOB)) > 0
                BEGIN SELECT RAISE(ABORT, 'poisoned'); END;`);
    other.close();
    const calls = [s.putDelivered([markOf('lost', 1, 1), markOf('kept', 1, 2)]), s.forgetDelivered(['kept']), s.push([itemOf('poison', 1)])];
    for (const r of await Promise.allSettled(calls)) {
      expect(r.status).toBe('rejected');
      expect(((r as PromiseRejectedResult).reason as { code: string }).code).toBe('ERR_STORAGE');
    }
    expect(await s.loadDelivered()).toEqual([markOf('kept', 1, 1)]);
    await s.push([itemOf('q', 2)]);
    await s.putDelivered([markOf('other', 1, 1)]);
    await s.close();
    const again = open(file);
    expect(byPeer(await again.loadDelivered())).toEqual([markOf('kept', 1, 1), markOf('other', 1, 1)]);
    expect(await again.load()).toEqual([itemOf('q', 2)]);
  });

  it('keeps the key index exact through many pushes, deletes, re-pushes and reopens, for uuids of any length', async () => {
    const file = newFile();
    let s = open(file);
    // reference: queue -> uuid hex -> item (in insertion order across queues via `order`)
    const live = new Map<string, StoredItem>();
    const order: string[] = [];
    const keyOf = (queue: string, uuid: Buffer): string => `${queue}/${uuid.toString('hex')}`;
    let rnd = 4242;
    const next = (m: number): number => {
      rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
      return rnd % m;
    };
    const uuidFor = (i: number): Buffer => (i % 50 === 7 ? Buffer.from(`short-${i}`) : i % 97 === 3 ? Buffer.alloc(0) : uuidOf(i));
    let serial = 0;
    for (let round = 0; round < 16; round++) {
      const ps: Promise<void>[] = [];
      // pushes: new keys, keys already present (ignored), keys deleted before (they go last)
      const items: StoredItem[] = [];
      for (let i = 0; i < 1500; i++) {
        const n = next(4) === 0 ? next(20000) : 20000 + serial++;
        const queue = `q${next(3)}`;
        const it = itemOf(queue, 0, { uuid: uuidFor(n), body: Buffer.from(`b${round}-${i}`), ttl: next(2) ? null : n });
        items.push(it);
        const k = keyOf(queue, it.uuid);
        if (!live.has(k)) {
          live.set(k, it);
          order.push(k);
        }
      }
      for (let i = 0; i < items.length; i += 100) ps.push(s.push(items.slice(i, i + 100)));
      // deletes of present and absent keys, TTL updates
      const keys = [...live.keys()];
      const dels: { queue: string; uuid: Buffer }[] = [];
      for (let i = 0; i < 1200 && keys.length; i++) {
        const k = keys[next(keys.length)]!;
        const it = live.get(k);
        if (!it) continue;
        dels.push({ queue: it.queue, uuid: it.uuid });
        live.delete(k);
      }
      dels.push({ queue: 'q0', uuid: uuidOf(999_999) }, { queue: 'nowhere', uuid: Buffer.from('x') });
      ps.push(s.delete(dels));
      const rest = [...live.values()];
      if (rest.length) {
        const it = rest[next(rest.length)]!;
        live.set(keyOf(it.queue, it.uuid), { ...it, ttl: 4321 });
        ps.push(s.updateTtls([{ queue: it.queue, uuid: it.uuid, ttl: 4321 }]));
      }
      if (round === 9) {
        ps.push(s.deleteAll('q2'));
        for (const [k, it] of live) if (it.queue === 'q2') live.delete(k);
      }
      await Promise.all(ps);
      if (round % 5 === 4) {
        await s.close();
        s = open(file);
      }
      const want = order.filter((k) => live.has(k)).map((k) => live.get(k)!);
      const got = await s.load();
      expect(got.map((it) => keyOf(it.queue, it.uuid))).toEqual(want.map((it) => keyOf(it.queue, it.uuid)));
      expect(got.map((it) => `${it.body.toString()}|${it.ttl}`)).toEqual(want.map((it) => `${it.body.toString()}|${it.ttl}`));
      // drop the order entries of deleted keys (a key pushed again goes last)
      const kept = order.filter((k) => live.has(k));
      order.length = 0;
      order.push(...kept);
    }
  });

  it('a queue emptied and refilled, and another queue after it, see only their own keys', async () => {
    const s = open(newFile());
    await s.push([itemOf('a', 1), itemOf('a', 2)]);
    await s.delete([{ queue: 'a', uuid: uuidOf(1) }, { queue: 'a', uuid: uuidOf(2) }]);
    // the same uuid in another queue is new there; in the emptied queue it is new again
    await s.push([itemOf('b', 1), itemOf('a', 2), itemOf('b', 1, { body: Buffer.from('dup') })]);
    await s.delete([{ queue: 'a', uuid: uuidOf(1) }]);
    const items = await s.load();
    expect(items.map((it) => `${it.queue}:${it.uuid.readUInt32BE(12)}:${it.body.toString()}`)).toEqual(['b:1:body-1', 'a:2:body-2']);
    // a large queue drained down to a few keys (its index shrinks) still finds each of them
    await s.push(Array.from({ length: 20000 }, (_, i) => itemOf('big', 100 + i)));
    const keepIdx = new Set([100, 5000, 19999]);
    const doomed = Array.from({ length: 20000 }, (_, i) => 100 + ((i * 7919) % 20000)).filter((n) => !keepIdx.has(n - 100));
    await s.delete(doomed.slice(0, 15000).map((n) => ({ queue: 'big', uuid: uuidOf(n) })));
    await s.delete(doomed.slice(15000).map((n) => ({ queue: 'big', uuid: uuidOf(n) })));
    await s.push([itemOf('big', 200, { body: Buffer.from('dup') }), itemOf('big', 5100, { body: Buffer.from('dup') })]);
    await s.updateTtls([{ queue: 'big', uuid: uuidOf(20099), ttl: 9 }]);
    const big = (await s.load()).filter((it) => it.queue === 'big');
    expect(big.map((it) => `${it.uuid.readUInt32BE(12)}:${it.body.toString()}:${it.ttl}`)).toEqual([
      '200:body-200:null',
      '5100:body-5100:null',
      '20099:body-20099:9',
    ]);
  });

  it('deletes only the keys asked for when their sequence numbers are not consecutive', async () => {
    const s = open(newFile());
    await s.push(Array.from({ length: 10 }, (_, i) => itemOf(i % 2 ? 'odd' : 'even', i)));
    await s.delete([0, 2, 3, 4, 6, 9].map((i) => ({ queue: i % 2 ? 'odd' : 'even', uuid: uuidOf(i) })));
    await s.updateTtls([{ queue: 'odd', uuid: uuidOf(5), ttl: 55 }]);
    const items = await s.load();
    expect(items.map((i) => i.uuid.readUInt32BE(12))).toEqual([1, 5, 7, 8]);
    expect(items[1]!.ttl).toBe(55);
  });

  it('refuses a file that is not a database, and a schema from a newer version, with ERR_STORAGE', async () => {
    const junk = newFile();
    writeFileSync(junk, Buffer.alloc(4096, 0x41));
    expect(() => new SqliteQueuesStorage(junk)).toThrow(expect.objectContaining({ code: 'ERR_STORAGE' }));
    for (const version of [5, 99]) {
      const newer = newFile();
      const db = new Database(newer);
      db.exec('CREATE TABLE item_chunks (seq INTEGER PRIMARY KEY, keys BLOB NOT NULL, data BLOB NOT NULL)');
      db.pragma(`user_version = ${version}`);
      db.close();
      expect(() => new SqliteQueuesStorage(newer)).toThrow(
        expect.objectContaining({ code: 'ERR_STORAGE', message: expect.stringContaining(`schema version ${version}`) }),
      );
      // and the file is left as it was
      const after = new Database(newer, { readonly: true });
      expect(after.pragma('user_version', { simple: true })).toBe(version);
      expect(after.prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all()).toEqual(['item_chunks']);
      after.close();
    }
  });

  it('every push resolved before a SIGKILL is in the file afterwards, in order', async () => {
    const file = newFile();
    const n = 2000;
    const script = fileURLToPath(new URL('./fixtures/sqlite-push-child.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', script, file, String(n)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('done')) {
          child.kill('SIGKILL');
          resolve();
        }
      });
      child.on('exit', (code) => reject(new Error(`child exited (${code}) before printing done: ${out}`)));
    });
    expect(await exited).toBe('SIGKILL');
    const items = await open(file).load();
    expect(items.length).toBeGreaterThanOrEqual(n);
    // all n acknowledged pushes, then possibly a gap-free prefix of the ones in flight at the kill
    items.forEach((it, i) => {
      expect(it.uuid.readUInt32BE(12)).toBe(i);
      expect(it.queue).toBe(`q${i % 3}`);
      expect(it.body.toString()).toBe(`body-${i}`);
      expect(it.ttl).toBe(i % 2 ? null : i);
      expect(it.seq).toBe(i + 1);
    });
  });
});
