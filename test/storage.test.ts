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
import { itemOf, queuesStorageConformance, uuidOf } from './storage-conformance.js';

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

  it('migrates a schema version 1 file (unique key index, one seen row per uuid)', async () => {
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
    expect((await s.load()).map((i) => `${i.queue}:${i.uuid.readUInt32BE(12)}`)).toEqual(['b:1', 'b:3']);
    let w = await s.loadSeen();
    expect(w.get('p')).toEqual(Array.from({ length: 300 }, (_, i) => uuidOf(2 * i + 1)));
    expect(w.get('r')).toEqual(Array.from({ length: 300 }, (_, i) => uuidOf(2 * i)));
    expect(w.get('odd')).toEqual([Buffer.from('short')]);
    expect(await s.getMeta('k')).toEqual(Buffer.from('v'));
    // keys still dedupe, and new items go last
    await s.push([itemOf('b', 1, { body: Buffer.from('dup') }), itemOf('a', 2)]);
    await s.delete([{ queue: 'b', uuid: uuidOf(3) }]);
    await s.addSeen('p', [uuidOf(1), uuidOf(1000)], 3);
    const items = await s.load();
    expect(items.map((i) => `${i.queue}:${i.uuid.readUInt32BE(12)}`)).toEqual(['b:1', 'a:2']);
    expect(items[0]!.body.toString()).toBe('body-1');
    w = await s.loadSeen();
    expect(w.get('p')).toEqual([uuidOf(599), uuidOf(1), uuidOf(1000)]);
    const raw = opened[0] as unknown as { db: Database.Database };
    expect(raw.db.pragma('user_version', { simple: true })).toBe(3);
    const names = raw.db.prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all();
    expect(names).not.toContain('seen');
    expect(names).not.toContain('items');
    expect(names).not.toContain('items_key');
  });

  it('migrates a schema version 2 file (one items row per item), keeping order, TTLs, seen windows and meta', async () => {
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
      const it = itemOf(i % 3 ? 'a' : 'ünï', i, { ttl: i % 4 ? i * 1.5 : null, flags: i % 2, body: i % 500 ? Buffer.from(`body-${i}`) : Buffer.alloc(0) });
      ins.run(10 + 3 * i, it.queue, it.uuid, it.ttl, it.flags, it.body);
      want.push(it);
    }
    const big = itemOf('a', 9000, { body: Buffer.alloc(3 << 20, 7) });
    ins.run(2 ** 40, big.queue, big.uuid, big.ttl, big.flags, big.body);
    want.push(big);
    v2.prepare('INSERT INTO seen_chunks (peer, width, n, uuids) VALUES (?, ?, ?, ?)').run('p', 16, 2, Buffer.concat([uuidOf(1), uuidOf(2)]));
    v2.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('k', Buffer.from('v'));
    v2.close();

    // (compared as strings: a deep equality over megabytes of Buffer takes very long)
    const show = (items: StoredItem[]): string[] =>
      items.map((it) => `${it.queue}|${it.uuid.toString('hex')}|${it.ttl}|${it.flags}|${createHash('sha1').update(it.body).digest('hex')}`);
    let s = open(file);
    expect(show(await s.load())).toEqual(show(want));
    expect((await s.loadSeen()).get('p')).toEqual([uuidOf(1), uuidOf(2)]);
    expect(await s.getMeta('k')).toEqual(Buffer.from('v'));
    const raw = s as unknown as { db: Database.Database };
    expect(raw.db.pragma('user_version', { simple: true })).toBe(3);
    expect(raw.db.prepare(`SELECT name FROM sqlite_master WHERE name = 'items'`).get()).toBeUndefined();
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

  it('keeps large seen windows exact across chunks, re-adds, trims and reopens', async () => {
    const file = newFile();
    let s = open(file);
    // a reference model: the memory backend's semantics
    const model = new Map<string, Buffer[]>();
    const add = (peer: string, uuids: Buffer[], keep: number): Promise<void> => {
      let list = model.get(peer) ?? [];
      for (const u of uuids) list = [...list.filter((x) => !x.equals(u)), u];
      list = list.slice(Math.max(0, list.length - keep));
      if (list.length) model.set(peer, list);
      else model.delete(peer);
      return s.addSeen(peer, uuids, keep);
    };
    let n = 0;
    let rnd = 12345;
    const next = (m: number): number => {
      rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
      return rnd % m;
    };
    for (let round = 0; round < 12; round++) {
      const ps: Promise<void>[] = [];
      for (let call = 0; call < 5; call++) {
        const peer = `p${next(2)}`;
        const uuids: Buffer[] = [];
        const count = next(700);
        for (let i = 0; i < count; i++) uuids.push(next(5) === 0 && n > 10 ? uuidOf(n - 1 - next(Math.min(n, 900))) : uuidOf(n++));
        if (next(7) === 0) uuids.push(Buffer.from([n & 0xff, 1, 2]));
        ps.push(add(peer, uuids, next(9) === 0 ? next(300) : 1000));
      }
      await Promise.all(ps);
      if (round % 4 === 3) {
        await s.close();
        s = open(file);
      }
      const got = await s.loadSeen();
      expect([...got.keys()].sort()).toEqual([...model.keys()].sort());
      for (const [peer, list] of model) expect(got.get(peer)).toEqual(list);
    }
  });

  it('keeps seen windows exact with uuids of any length, re-adds within a batch, shrinking keeps and reopens', async () => {
    const file = newFile();
    let s = open(file);
    const model = new Map<string, Buffer[]>();
    const add = (peer: string, uuids: Buffer[], keep: number): Promise<void> => {
      let list = model.get(peer) ?? [];
      for (const u of uuids) list = [...list.filter((x) => !x.equals(u)), Buffer.from(u)];
      list = list.slice(Math.max(0, list.length - keep));
      if (list.length) model.set(peer, list);
      else model.delete(peer);
      return s.addSeen(peer, uuids, keep);
    };
    let rnd = 777;
    const next = (m: number): number => {
      rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
      return rnd % m;
    };
    // a small pool, so that re-adds (in the same call, the same chunk, older chunks) are frequent;
    // 16-byte uuids that differ in one word only, and uuids of other lengths (empty included)
    const pool: Buffer[] = [];
    for (let i = 0; i < 3000; i++) {
      const u = Buffer.alloc(16, 0x11);
      u.writeUInt32LE(i % 1000, 4 * Math.floor(i / 1000));
      pool.push(u);
    }
    for (const len of [0, 1, 3, 15, 17, 32]) for (let i = 0; i < 40; i++) pool.push(Buffer.alloc(len, i));
    const check = async (): Promise<void> => {
      const got = await s.loadSeen();
      expect([...got.keys()].sort()).toEqual([...model.keys()].sort());
      for (const [peer, list] of model) expect(got.get(peer)).toEqual(list);
    };
    for (let round = 0; round < 30; round++) {
      const ps: Promise<void>[] = [];
      for (let call = 0; call < 4; call++) {
        const uuids: Buffer[] = [];
        const count = next(5) === 0 ? 0 : next(600);
        for (let i = 0; i < count; i++) uuids.push(pool[next(5) === 0 ? 3000 + next(240) : next(3000)]!);
        const r = next(20);
        const keep = r === 0 ? 0 : r === 1 ? next(50) : r === 2 ? Infinity : 700 + next(1500);
        ps.push(add(`p${next(3)}`, uuids, keep));
      }
      await Promise.all(ps);
      // the caller may reuse its buffers once the call resolved
      if (round === 5) for (const u of pool) u.reverse();
      if (round % 7 === 6) {
        await s.close();
        s = open(file);
      }
      await check();
    }
    // a window can be emptied by keep 0, and starts over afterwards
    await add('p0', [], 0);
    await add('p0', [pool[1]!, pool[2]!, pool[1]!], 2);
    await check();
    await s.close();
    s = open(file);
    await check();
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
    const newer = newFile();
    const db = new Database(newer);
    db.pragma('user_version = 99');
    db.close();
    expect(() => new SqliteQueuesStorage(newer)).toThrow(expect.objectContaining({ code: 'ERR_STORAGE' }));
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
    });
  });
});
