import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { SqliteQueuesStorage } from '../storage/sqlite.js';
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
    other.exec(`CREATE TRIGGER poison BEFORE INSERT ON items WHEN NEW.queue = 'poison'
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

  it('uses WAL with synchronous=FULL by default', async () => {
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
    expect(s.db.pragma('synchronous', { simple: true })).toBe(2);
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
