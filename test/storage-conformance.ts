/**
 * One behaviour suite for every {@link QueuesStorage} backend (in the spirit of MQTT.js's
 * abstractStoreTest). Call {@link queuesStorageConformance} from a `*.test.ts` file.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { QueuesStorage, StoredItem } from '../src/storage.js';

/** What a backend's `build` gives the suite: a fresh, empty storage per test. */
export interface ConformanceSubject {
  storage: QueuesStorage;
  /** Open the same data again (after the suite closed `storage`). Omit for non-persistent backends. */
  reopen?: () => Promise<QueuesStorage>;
  /** Remove what `build` created (files, collections). Called after every storage was closed. */
  cleanup?: () => Promise<void>;
}

/** A deterministic 16-byte uuid: `n` in the last 4 bytes, `0xA5` marker first. */
export function uuidOf(n: number): Buffer {
  const b = Buffer.alloc(16);
  b[0] = 0xa5;
  b.writeUInt32BE(n >>> 0, 12);
  return b;
}

/** A stored item with body `body-<n>` unless given. */
export function itemOf(queue: string, n: number, extra: Partial<StoredItem> = {}): StoredItem {
  return { queue, uuid: uuidOf(n), ttl: null, flags: 1, body: Buffer.from(`body-${n}`), ...extra };
}

/** `queue:n` of every item, for readable order assertions. */
function keysOf(items: StoredItem[]): string[] {
  return items.map((it) => `${it.queue}:${it.uuid.readUInt32BE(12)}`);
}

async function rejection(p: Promise<unknown>): Promise<{ code?: unknown; cause?: unknown }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: unknown; cause?: unknown };
  }
  throw new Error('expected the promise to reject');
}

/**
 * Define `describe(name)` with the conformance tests. `build` is called once per test and must
 * return an empty storage; the suite closes every storage it got and then calls `cleanup`.
 */
export function queuesStorageConformance(name: string, build: () => Promise<ConformanceSubject>): void {
  describe(name, () => {
    let subject: ConformanceSubject | undefined;
    const open: QueuesStorage[] = [];

    async function fresh(): Promise<QueuesStorage> {
      subject = await build();
      open.push(subject.storage);
      return subject.storage;
    }

    /** Close `s` and open the same data again; null when the backend cannot. */
    async function reopen(s: QueuesStorage): Promise<QueuesStorage | null> {
      if (!subject?.reopen) return null;
      await s.close();
      const again = await subject.reopen();
      open.push(again);
      return again;
    }

    afterEach(async () => {
      for (const s of open.splice(0)) await s.close().catch(() => undefined);
      await subject?.cleanup?.();
      subject = undefined;
    });

    it('starts empty', async () => {
      const s = await fresh();
      expect(await s.load()).toEqual([]);
      expect((await s.loadSeen()).size).toBe(0);
      expect(await s.getMeta('anything')).toBeNull();
    });

    it('loads items of several queues in insertion order', async () => {
      const s = await fresh();
      await s.push([itemOf('b', 1), itemOf('a', 2)]);
      await s.push([itemOf('c', 3)]);
      await s.push([itemOf('a', 4), itemOf('b', 5), itemOf('a', 6)]);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['b:1', 'a:2', 'c:3', 'a:4', 'b:5', 'a:6']);
      expect(items[0]).toEqual(itemOf('b', 1));
    });

    it('ignores a push of a key that is already stored, keeping data and position', async () => {
      const s = await fresh();
      await s.push([itemOf('q', 1, { body: Buffer.from('first'), ttl: 10 }), itemOf('q', 2)]);
      await s.push([itemOf('q', 1, { body: Buffer.from('second'), ttl: 99, flags: 0 }), itemOf('q', 3)]);
      // the same uuid in another queue is a different key
      await s.push([itemOf('other', 1)]);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['q:1', 'q:2', 'q:3', 'other:1']);
      expect(items[0]!.body.toString()).toBe('first');
      expect(items[0]!.ttl).toBe(10);
      expect(items[0]!.flags).toBe(1);
    });

    it('ignores a duplicate key within one push call', async () => {
      const s = await fresh();
      await s.push([itemOf('q', 1, { body: Buffer.from('a') }), itemOf('q', 1, { body: Buffer.from('b') })]);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['q:1']);
      expect(items[0]!.body.toString()).toBe('a');
    });

    it('deletes by key, ignores unknown keys, leaves the same uuid in other queues', async () => {
      const s = await fresh();
      await s.push([itemOf('a', 1), itemOf('a', 2), itemOf('b', 1), itemOf('a', 3)]);
      await s.delete([{ queue: 'a', uuid: uuidOf(1) }, { queue: 'a', uuid: uuidOf(3) }, { queue: 'zzz', uuid: uuidOf(2) }]);
      await s.delete([{ queue: 'a', uuid: uuidOf(777) }]);
      expect(keysOf(await s.load())).toEqual(['a:2', 'b:1']);
    });

    it('a deleted key can be pushed again and then goes last', async () => {
      const s = await fresh();
      await s.push([itemOf('q', 1), itemOf('q', 2)]);
      await s.delete([{ queue: 'q', uuid: uuidOf(1) }]);
      await s.push([itemOf('q', 1, { body: Buffer.from('again') })]);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['q:2', 'q:1']);
      expect(items[1]!.body.toString()).toBe('again');
    });

    it('updates TTLs; null and 0 round-trip as themselves; unknown keys ignored', async () => {
      const s = await fresh();
      await s.push([itemOf('q', 1, { ttl: 5000 }), itemOf('q', 2, { ttl: null }), itemOf('q', 3, { ttl: 0 }), itemOf('r', 1, { ttl: 7 })]);
      let items = await s.load();
      expect(items.map((i) => i.ttl)).toEqual([5000, null, 0, 7]);
      await s.updateTtls([
        { queue: 'q', uuid: uuidOf(1), ttl: null },
        { queue: 'q', uuid: uuidOf(2), ttl: 0 },
        { queue: 'q', uuid: uuidOf(3), ttl: 2 ** 40 },
        { queue: 'nope', uuid: uuidOf(1), ttl: 1 },
      ]);
      items = await s.load();
      expect(items.map((i) => i.ttl)).toEqual([null, 0, 2 ** 40, 7]);
      expect(keysOf(items)).toEqual(['q:1', 'q:2', 'q:3', 'r:1']);
      expect(items.every((i) => i.body.toString().startsWith('body-'))).toBe(true);
    });

    it('deleteAll(queue) empties one queue; deleteAll() empties every queue but keeps seen and meta', async () => {
      const s = await fresh();
      await s.push([itemOf('a', 1), itemOf('b', 2), itemOf('a', 3), itemOf('c', 4)]);
      await s.addSeen('peer', [uuidOf(9)], 10);
      await s.setMeta('k', Buffer.from('v'));
      await s.deleteAll('a');
      expect(keysOf(await s.load())).toEqual(['b:2', 'c:4']);
      await s.deleteAll('no-such-queue');
      expect(keysOf(await s.load())).toEqual(['b:2', 'c:4']);
      await s.deleteAll();
      expect(await s.load()).toEqual([]);
      expect((await s.loadSeen()).get('peer')).toEqual([uuidOf(9)]);
      expect(await s.getMeta('k')).toEqual(Buffer.from('v'));
      await s.push([itemOf('a', 1)]);
      expect(keysOf(await s.load())).toEqual(['a:1']);
    });

    it('round-trips buffers byte-exact: empty body, every byte value, a large body, odd queue names', async () => {
      const s = await fresh();
      const every = Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 7) % 256));
      const large = Buffer.alloc(1 << 20);
      for (let i = 0; i < large.length; i++) large[i] = (i * 31 + (i >> 8)) & 0xff;
      const zeroUuid = Buffer.alloc(16);
      const ffUuid = Buffer.alloc(16, 0xff);
      const pushed: StoredItem[] = [
        { queue: 'q', uuid: zeroUuid, ttl: null, flags: 0, body: Buffer.alloc(0) },
        { queue: 'q', uuid: ffUuid, ttl: 1, flags: 0xffffffff, body: every },
        { queue: 'ünï—☃ \u0000x', uuid: uuidOf(3), ttl: 2, flags: 1, body: large },
        { queue: '', uuid: uuidOf(4), ttl: 3, flags: 1, body: Buffer.from([0]) },
      ];
      await s.push(pushed);
      const items = await s.load();
      expect(items).toHaveLength(4);
      for (let i = 0; i < pushed.length; i++) {
        const got = items[i]!;
        const want = pushed[i]!;
        expect(got.queue).toBe(want.queue);
        expect(Buffer.isBuffer(got.uuid) && Buffer.isBuffer(got.body)).toBe(true);
        expect(got.uuid.equals(want.uuid)).toBe(true);
        expect(got.body.length).toBe(want.body.length);
        expect(got.body.equals(want.body)).toBe(true);
        expect(got.flags).toBe(want.flags);
        expect(got.ttl).toBe(want.ttl);
      }
    });

    it('is not affected by later changes to pushed or loaded buffers', async () => {
      const s = await fresh();
      const item = itemOf('q', 1, { body: Buffer.from('original') });
      await s.push([item]);
      item.body.fill(0x58);
      item.uuid.fill(0);
      const loaded = await s.load();
      expect(loaded[0]!.body.toString()).toBe('original');
      loaded[0]!.body.fill(0x59);
      loaded[0]!.uuid.fill(1);
      const again = await s.load();
      expect(again[0]!.body.toString()).toBe('original');
      expect(again[0]!.uuid.equals(uuidOf(1))).toBe(true);
      const meta = Buffer.from('meta');
      await s.setMeta('k', meta);
      meta.fill(0);
      const got = await s.getMeta('k');
      expect(got!.toString()).toBe('meta');
      got!.fill(0);
      expect((await s.getMeta('k'))!.toString()).toBe('meta');
    });

    it('keeps every push made in one tick, in call order', async () => {
      const s = await fresh();
      const n = 5000;
      const promises: Promise<void>[] = [];
      for (let i = 0; i < n; i++) promises.push(s.push([itemOf(`q${i % 7}`, i)]));
      await Promise.all(promises);
      const items = await s.load();
      expect(items).toHaveLength(n);
      expect(items.every((it, i) => it.uuid.equals(uuidOf(i)) && it.queue === `q${i % 7}` && it.body.toString() === `body-${i}`)).toBe(true);
    });

    it('applies operations made in one tick in call order', async () => {
      const s = await fresh();
      const ps = [
        // push then delete of the same key: nothing left
        s.push([itemOf('a', 1)]),
        s.delete([{ queue: 'a', uuid: uuidOf(1) }]),
        // delete then push: it stays
        s.delete([{ queue: 'a', uuid: uuidOf(2) }]),
        s.push([itemOf('a', 2, { ttl: 100 })]),
        // push, ttl update, queue cleared, push again
        s.push([itemOf('b', 3)]),
        s.updateTtls([{ queue: 'b', uuid: uuidOf(3), ttl: 5 }]),
        s.deleteAll('b'),
        s.push([itemOf('b', 4)]),
        s.updateTtls([{ queue: 'a', uuid: uuidOf(2), ttl: 0 }]),
        // meta set, delete, set
        s.setMeta('m', Buffer.from('1')),
        s.setMeta('m', null),
        s.setMeta('m', Buffer.from('3')),
        s.setMeta('gone', Buffer.from('x')),
        s.setMeta('gone', null),
      ];
      await Promise.all(ps);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['a:2', 'b:4']);
      expect(items[0]!.ttl).toBe(0);
      expect((await s.getMeta('m'))!.toString()).toBe('3');
      expect(await s.getMeta('gone')).toBeNull();
    });

    it('reads see writes that were called before them and not yet awaited', async () => {
      const s = await fresh();
      const writes = [s.push([itemOf('q', 1)]), s.addSeen('p', [uuidOf(1)], 5), s.setMeta('k', Buffer.from('v'))];
      const [items, seen, meta] = await Promise.all([s.load(), s.loadSeen(), s.getMeta('k')]);
      expect(keysOf(items)).toEqual(['q:1']);
      expect(seen.get('p')).toEqual([uuidOf(1)]);
      expect(meta).toEqual(Buffer.from('v'));
      await Promise.all(writes);
    });

    it('trims the seen window to the newest `keep` per peer and loads it oldest first', async () => {
      const s = await fresh();
      await s.addSeen('alice', [uuidOf(1), uuidOf(2), uuidOf(3)], 4);
      await s.addSeen('bob', [uuidOf(100)], 4);
      await s.addSeen('alice', [uuidOf(4), uuidOf(5)], 4);
      let seen = await s.loadSeen();
      expect(seen.get('alice')).toEqual([2, 3, 4, 5].map(uuidOf));
      expect(seen.get('bob')).toEqual([uuidOf(100)]);
      // keep applies to the peer named only
      await s.addSeen('bob', [uuidOf(101), uuidOf(102)], 2);
      seen = await s.loadSeen();
      expect(seen.get('alice')).toEqual([2, 3, 4, 5].map(uuidOf));
      expect(seen.get('bob')).toEqual([uuidOf(101), uuidOf(102)]);
      // an empty add still trims to a smaller keep
      await s.addSeen('alice', [], 1);
      expect((await s.loadSeen()).get('alice')).toEqual([uuidOf(5)]);
      // keep 0 empties that peer's window
      await s.addSeen('bob', [uuidOf(103)], 0);
      seen = await s.loadSeen();
      expect(seen.get('bob') ?? []).toEqual([]);
      expect(seen.get('alice')).toEqual([uuidOf(5)]);
      // an empty add with keep 0 forgets the peer (Messaging's dedupIdlePeers bound)
      await s.addSeen('alice', [], 0);
      seen = await s.loadSeen();
      expect(seen.has('alice')).toBe(false);
    });

    it('trims correctly when many addSeen calls land in one tick', async () => {
      const s = await fresh();
      const ps: Promise<void>[] = [];
      for (let i = 0; i < 300; i++) {
        ps.push(s.addSeen('a', [uuidOf(i)], 50));
        ps.push(s.addSeen(`b`, [uuidOf(10_000 + i)], 1000));
      }
      // a smaller keep in the middle of the stream, then growth again
      ps.push(s.addSeen('c', [uuidOf(1), uuidOf(2), uuidOf(3), uuidOf(4)], 10));
      ps.push(s.addSeen('c', [uuidOf(5)], 2));
      ps.push(s.addSeen('c', [uuidOf(6), uuidOf(7)], 10));
      await Promise.all(ps);
      const seen = await s.loadSeen();
      expect(seen.get('a')).toEqual(Array.from({ length: 50 }, (_, i) => uuidOf(250 + i)));
      expect(seen.get('b')).toEqual(Array.from({ length: 300 }, (_, i) => uuidOf(10_000 + i)));
      expect(seen.get('c')).toEqual([4, 5, 6, 7].map(uuidOf));
    });

    it('re-adding a seen uuid moves it to the newest position', async () => {
      const s = await fresh();
      await s.addSeen('p', [uuidOf(1), uuidOf(2), uuidOf(3)], 3);
      await s.addSeen('p', [uuidOf(1)], 3);
      expect((await s.loadSeen()).get('p')).toEqual([2, 3, 1].map(uuidOf));
      await s.addSeen('p', [uuidOf(4)], 3);
      expect((await s.loadSeen()).get('p')).toEqual([3, 1, 4].map(uuidOf));
    });

    it('gets, overwrites and deletes meta values', async () => {
      const s = await fresh();
      expect(await s.getMeta('a')).toBeNull();
      await s.setMeta('a', Buffer.from([0, 1, 2, 255]));
      await s.setMeta('b', Buffer.alloc(0));
      expect(await s.getMeta('a')).toEqual(Buffer.from([0, 1, 2, 255]));
      const empty = await s.getMeta('b');
      expect(empty).not.toBeNull();
      expect(empty!.length).toBe(0);
      await s.setMeta('a', Buffer.from('new'));
      expect((await s.getMeta('a'))!.toString()).toBe('new');
      await s.setMeta('a', null);
      expect(await s.getMeta('a')).toBeNull();
      expect(await s.getMeta('b')).toEqual(Buffer.alloc(0));
      await s.setMeta('never-set', null);
      expect(await s.getMeta('never-set')).toBeNull();
    });

    it('rejects a malformed call with ERR_INVALID_ARGUMENT without disturbing other calls of the same tick', async () => {
      const s = await fresh();
      const good1 = s.push([itemOf('q', 1)]);
      const bad = s.push([itemOf('q', 2), { queue: 'q', uuid: uuidOf(3), ttl: null, flags: 1, body: 'not a buffer' as unknown as Buffer }]);
      const badTtl = s.updateTtls([{ queue: 'q', uuid: uuidOf(1), ttl: Number.NaN }]);
      const good2 = s.push([itemOf('q', 4)]);
      expect((await rejection(bad)).code).toBe('ERR_INVALID_ARGUMENT');
      expect((await rejection(badTtl)).code).toBe('ERR_INVALID_ARGUMENT');
      await Promise.all([good1, good2]);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['q:1', 'q:4']);
      expect(items[0]!.ttl).toBeNull();
    });

    it('writes called before close() complete; every operation after it rejects with ERR_CLOSED', async () => {
      const s = await fresh();
      const before = s.push([itemOf('q', 1)]);
      const meta = s.setMeta('k', Buffer.from('v'));
      await s.close();
      await expect(before).resolves.toBeUndefined();
      await expect(meta).resolves.toBeUndefined();
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['load', () => s.load()],
        ['push', () => s.push([itemOf('q', 2)])],
        ['delete', () => s.delete([{ queue: 'q', uuid: uuidOf(1) }])],
        ['updateTtls', () => s.updateTtls([{ queue: 'q', uuid: uuidOf(1), ttl: 1 }])],
        ['deleteAll(queue)', () => s.deleteAll('q')],
        ['deleteAll()', () => s.deleteAll()],
        ['addSeen', () => s.addSeen('p', [uuidOf(1)], 3)],
        ['loadSeen', () => s.loadSeen()],
        ['getMeta', () => s.getMeta('k')],
        ['setMeta', () => s.setMeta('k', null)],
      ];
      for (const [what, call] of calls) {
        const err = await rejection(call());
        expect({ what, code: err.code }).toEqual({ what, code: 'ERR_CLOSED' });
      }
      // closing again is harmless
      await expect(s.close()).resolves.toBeUndefined();
      const again = await reopen(s);
      if (again) {
        expect(keysOf(await again.load())).toEqual(['q:1']);
        expect(await again.getMeta('k')).toEqual(Buffer.from('v'));
      }
    });

    it('keeps items (order, TTLs, bytes), seen windows and meta across close and reopen', async ({ skip }) => {
      const s = await fresh();
      if (!subject?.reopen) return skip('backend is not persistent (no reopen)');
      await s.push([itemOf('b', 1), itemOf('a', 2, { ttl: 0 }), itemOf('a', 3, { ttl: 1234, body: Buffer.alloc(0) })]);
      await s.push([itemOf('b', 4, { flags: 0 }), itemOf('c', 5)]);
      await s.delete([{ queue: 'b', uuid: uuidOf(4) }]);
      await s.updateTtls([{ queue: 'b', uuid: uuidOf(1), ttl: 42 }]);
      await s.addSeen('p', [uuidOf(1), uuidOf(2), uuidOf(3)], 2);
      await s.addSeen('r', [uuidOf(9)], 2);
      await s.setMeta('cache', Buffer.from([1, 2, 3]));
      const s2 = (await reopen(s))!;
      const items = await s2.load();
      expect(items).toEqual([
        itemOf('b', 1, { ttl: 42 }),
        itemOf('a', 2, { ttl: 0 }),
        itemOf('a', 3, { ttl: 1234, body: Buffer.alloc(0) }),
        itemOf('c', 5),
      ]);
      const seen = await s2.loadSeen();
      expect(seen.get('p')).toEqual([uuidOf(2), uuidOf(3)]);
      expect(seen.get('r')).toEqual([uuidOf(9)]);
      expect(await s2.getMeta('cache')).toEqual(Buffer.from([1, 2, 3]));
      // the insertion sequence continues after a reopen: new items go after the old ones
      await s2.push([itemOf('a', 6)]);
      await s2.addSeen('p', [uuidOf(4)], 2);
      const s3 = (await reopen(s2))!;
      expect(keysOf(await s3.load())).toEqual(['b:1', 'a:2', 'a:3', 'c:5', 'a:6']);
      expect((await s3.loadSeen()).get('p')).toEqual([uuidOf(3), uuidOf(4)]);
    });

    it('keeps a large burst made in one tick across close and reopen, in order', async ({ skip }) => {
      const s = await fresh();
      if (!subject?.reopen) return skip('backend is not persistent (no reopen)');
      const n = 3000;
      const ps: Promise<void>[] = [];
      for (let i = 0; i < n; i++) ps.push(s.push([itemOf(`q${i % 3}`, i)]));
      ps.push(s.delete([{ queue: 'q0', uuid: uuidOf(0) }]));
      await Promise.all(ps);
      const s2 = (await reopen(s))!;
      const items = await s2.load();
      expect(items).toHaveLength(n - 1);
      expect(items.every((it, i) => it.uuid.equals(uuidOf(i + 1)))).toBe(true);
    });
  });
}
