/**
 * One behaviour suite for every {@link QueuesStorage} backend (in the spirit of MQTT.js's
 * abstractStoreTest). Call {@link queuesStorageConformance} from a `*.test.ts` file.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { DeliveredMark, QueuesStorage, StoredItem } from '../src/storage.js';

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

/** A stored item with body `body-<n>` and message seq `n` unless given. */
export function itemOf(queue: string, n: number, extra: Partial<StoredItem> = {}): StoredItem {
  return { queue, uuid: uuidOf(n), ttl: null, flags: 1, body: Buffer.from(`body-${n}`), seq: n, ...extra };
}

/** A deterministic 8-byte incarnation id: `n` in the last 4 bytes, `0x5A` marker first. */
export function incarnationOf(n: number): Buffer {
  const b = Buffer.alloc(8);
  b[0] = 0x5a;
  b.writeUInt32BE(n >>> 0, 4);
  return b;
}

/** A delivered mark. */
export function markOf(peer: string, incarnation: number, seq: number): DeliveredMark {
  return { peer, incarnation: incarnationOf(incarnation), seq };
}

/** Marks sorted by peer (loadDelivered's order is unspecified). */
export function byPeer(marks: DeliveredMark[]): DeliveredMark[] {
  return [...marks].sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
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
      expect(await s.loadDelivered()).toEqual([]);
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

    it('deleteAll(queue) empties one queue; deleteAll() empties every queue but keeps delivered marks and meta', async () => {
      const s = await fresh();
      await s.push([itemOf('a', 1), itemOf('b', 2), itemOf('a', 3), itemOf('c', 4)]);
      await s.putDelivered([markOf('peer', 1, 9)]);
      await s.setMeta('k', Buffer.from('v'));
      await s.deleteAll('a');
      expect(keysOf(await s.load())).toEqual(['b:2', 'c:4']);
      await s.deleteAll('no-such-queue');
      expect(keysOf(await s.load())).toEqual(['b:2', 'c:4']);
      await s.deleteAll();
      expect(await s.load()).toEqual([]);
      expect(await s.loadDelivered()).toEqual([markOf('peer', 1, 9)]);
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
        { queue: 'q', uuid: zeroUuid, ttl: null, flags: 0, body: Buffer.alloc(0), seq: 0 },
        { queue: 'q', uuid: ffUuid, ttl: 1, flags: 0xffffffff, body: every, seq: Number.MAX_SAFE_INTEGER },
        { queue: 'ünï—☃ \u0000x', uuid: uuidOf(3), ttl: 2, flags: 1, body: large, seq: 1 },
        { queue: '', uuid: uuidOf(4), ttl: 3, flags: 1, body: Buffer.from([0]), seq: 2 ** 32 },
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
        expect(got.seq).toBe(want.seq);
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
      const writes = [s.push([itemOf('q', 1)]), s.putDelivered([markOf('p', 3, 7)]), s.setMeta('k', Buffer.from('v'))];
      const [items, marks, meta] = await Promise.all([s.load(), s.loadDelivered(), s.getMeta('k')]);
      expect(keysOf(items)).toEqual(['q:1']);
      expect(marks).toEqual([markOf('p', 3, 7)]);
      expect(meta).toEqual(Buffer.from('v'));
      await Promise.all(writes);
    });

    it('round-trips the message seq of items: 0, small, 2^31, 2^32, 2^53-1', async () => {
      const s = await fresh();
      const seqs = [0, 1, 2, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 32 + 1, 123_456_789_012, Number.MAX_SAFE_INTEGER - 1, Number.MAX_SAFE_INTEGER];
      // not in seq order: the seq is data, insertion order stays the order of the pushes
      const pushed = seqs.map((seq, i) => itemOf(i % 2 ? 'a' : 'b', 100 - i, { seq })).reverse();
      await s.push(pushed.slice(0, 4));
      await s.push(pushed.slice(4));
      const items = await s.load();
      expect(items).toEqual(pushed);
      expect(items.map((i) => i.seq)).toEqual([...seqs].reverse());
      // the seq stays with its item through deletes, TTL updates and a duplicate push
      await s.delete([{ queue: pushed[0]!.queue, uuid: pushed[0]!.uuid }]);
      await s.updateTtls([{ queue: pushed[9]!.queue, uuid: pushed[9]!.uuid, ttl: 5 }]);
      await s.push([{ ...pushed[5]!, seq: 42 }]);
      expect((await s.load()).map((i) => i.seq)).toEqual([...seqs].reverse().slice(1));
      expect((await s.load())[8]!.ttl).toBe(5);
    });

    it('putDelivered upserts by peer: a later mark replaces the earlier one, other peers untouched', async () => {
      const s = await fresh();
      await s.putDelivered([markOf('alice', 1, 5), markOf('bob', 2, 1)]);
      expect(byPeer(await s.loadDelivered())).toEqual([markOf('alice', 1, 5), markOf('bob', 2, 1)]);
      // a higher seq of the same incarnation
      await s.putDelivered([markOf('alice', 1, 9)]);
      expect(byPeer(await s.loadDelivered())).toEqual([markOf('alice', 1, 9), markOf('bob', 2, 1)]);
      // a new incarnation, seq back to 0; and a lower seq is stored as given (no max taken)
      await s.putDelivered([markOf('alice', 7, 0)]);
      await s.putDelivered([markOf('bob', 2, 0)]);
      expect(byPeer(await s.loadDelivered())).toEqual([markOf('alice', 7, 0), markOf('bob', 2, 0)]);
      // within one call the last mark of a peer wins; an empty call changes nothing
      await s.putDelivered([markOf('carol', 1, 1), markOf('alice', 8, 3), markOf('carol', 2, Number.MAX_SAFE_INTEGER)]);
      await s.putDelivered([]);
      expect(byPeer(await s.loadDelivered())).toEqual([markOf('alice', 8, 3), markOf('bob', 2, 0), markOf('carol', 2, Number.MAX_SAFE_INTEGER)]);
      // odd peer names are peers like any other
      await s.putDelivered([markOf('', 3, 3), markOf('ünï—☃ \u0000x', 4, 4)]);
      const got = byPeer(await s.loadDelivered());
      expect(got).toHaveLength(5);
      expect(got.find((m) => m.peer === '')).toEqual(markOf('', 3, 3));
      expect(got.find((m) => m.peer === 'ünï—☃ \u0000x')).toEqual(markOf('ünï—☃ \u0000x', 4, 4));
    });

    it('forgetDelivered deletes the marks of the peers named, ignores unknown peers', async () => {
      const s = await fresh();
      await s.putDelivered([markOf('a', 1, 1), markOf('b', 1, 2), markOf('c', 1, 3)]);
      await s.forgetDelivered(['b', 'nobody']);
      expect(byPeer(await s.loadDelivered())).toEqual([markOf('a', 1, 1), markOf('c', 1, 3)]);
      await s.forgetDelivered([]);
      await s.forgetDelivered(['b']);
      expect(byPeer(await s.loadDelivered())).toEqual([markOf('a', 1, 1), markOf('c', 1, 3)]);
      // a forgotten peer can get a mark again
      await s.putDelivered([markOf('b', 2, 0)]);
      await s.forgetDelivered(['a', 'c']);
      expect(await s.loadDelivered()).toEqual([markOf('b', 2, 0)]);
    });

    it('applies many putDelivered / forgetDelivered calls of one tick in call order, with pushes and deletes', async () => {
      const s = await fresh();
      const ps: Promise<void>[] = [];
      for (let i = 0; i < 2000; i++) {
        ps.push(s.putDelivered([markOf(`p${i % 10}`, 1, i + 1)]));
        if (i % 100 === 0) ps.push(s.push([itemOf('q', i)]));
        if (i % 200 === 0) ps.push(s.delete([{ queue: 'q', uuid: uuidOf(i) }]));
      }
      // put then forget: gone; forget then put: there
      ps.push(s.putDelivered([markOf('x', 1, 1)]), s.forgetDelivered(['x']));
      ps.push(s.forgetDelivered(['y']), s.putDelivered([markOf('y', 2, 2)]));
      // forget then put of a peer with an earlier mark in this tick
      ps.push(s.forgetDelivered(['p3']), s.putDelivered([markOf('p3', 9, 99)]));
      ps.push(s.forgetDelivered(['p4']));
      await Promise.all(ps);
      const want = Array.from({ length: 10 }, (_, k) => markOf(`p${k}`, 1, 1990 + k + 1)).filter((m) => m.peer !== 'p4');
      want[3] = markOf('p3', 9, 99);
      want.push(markOf('y', 2, 2));
      expect(byPeer(await s.loadDelivered())).toEqual(byPeer(want));
      expect(keysOf(await s.load())).toEqual(Array.from({ length: 20 }, (_, k) => k * 100).filter((n) => n % 200 !== 0).map((n) => `q:${n}`));
    });

    it('keeps marks of 10,000 peers exact', async () => {
      let s = await fresh();
      const want: DeliveredMark[] = [];
      for (let i = 0; i < 10_000; i++) want.push(markOf(`peer-${i}`, i * 7919, i % 3 ? Number.MAX_SAFE_INTEGER - i : i));
      // some in one call, the rest one call each (all in one tick)
      const ps = [s.putDelivered(want.slice(0, 4000))];
      for (const m of want.slice(4000)) ps.push(s.putDelivered([m]));
      await Promise.all(ps);
      expect(byPeer(await s.loadDelivered())).toEqual(byPeer(want));
      const again = await reopen(s);
      if (again) {
        s = again;
        expect(byPeer(await s.loadDelivered())).toEqual(byPeer(want));
      }
      await s.forgetDelivered(want.filter((_, i) => i % 2).map((m) => m.peer));
      expect(byPeer(await s.loadDelivered())).toEqual(byPeer(want.filter((_, i) => i % 2 === 0)));
    });

    it('is not affected by later changes to the buffers of marks put or loaded', async () => {
      const s = await fresh();
      const m = markOf('p', 1, 5);
      await s.putDelivered([m]);
      m.incarnation.fill(0);
      m.seq = 6;
      const loaded = await s.loadDelivered();
      expect(loaded).toEqual([markOf('p', 1, 5)]);
      loaded[0]!.incarnation.fill(0xff);
      expect(await s.loadDelivered()).toEqual([markOf('p', 1, 5)]);
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
      const bad = s.push([itemOf('q', 2), { queue: 'q', uuid: uuidOf(3), ttl: null, flags: 1, body: 'not a buffer' as unknown as Buffer, seq: 3 }]);
      const badTtl = s.updateTtls([{ queue: 'q', uuid: uuidOf(1), ttl: Number.NaN }]);
      const good2 = s.push([itemOf('q', 4)]);
      expect((await rejection(bad)).code).toBe('ERR_INVALID_ARGUMENT');
      expect((await rejection(badTtl)).code).toBe('ERR_INVALID_ARGUMENT');
      await Promise.all([good1, good2]);
      const items = await s.load();
      expect(keysOf(items)).toEqual(['q:1', 'q:4']);
      expect(items[0]!.ttl).toBeNull();
    });

    it('rejects a malformed item seq or delivered mark with ERR_INVALID_ARGUMENT, storing nothing of that call', async () => {
      const s = await fresh();
      const good = [s.push([itemOf('q', 1)]), s.putDelivered([markOf('ok', 1, 1)])];
      const badSeqs = [-1, 1.5, Number.NaN, Infinity, 2 ** 53, undefined, '3', null];
      const bad: Promise<void>[] = [];
      for (const seq of badSeqs) bad.push(s.push([itemOf('q', 2), itemOf('q', 3, { seq: seq as unknown as number })]));
      const badMarks: unknown[] = [
        { peer: 'x', incarnation: Buffer.alloc(7), seq: 1 },
        { peer: 'x', incarnation: Buffer.alloc(9), seq: 1 },
        { peer: 'x', incarnation: 'abcdefgh', seq: 1 },
        { peer: 'x', incarnation: Buffer.alloc(8), seq: -1 },
        { peer: 'x', incarnation: Buffer.alloc(8), seq: 0.5 },
        { peer: 'x', incarnation: Buffer.alloc(8), seq: 2 ** 53 },
        { peer: 'x', incarnation: Buffer.alloc(8) },
        { peer: 5, incarnation: Buffer.alloc(8), seq: 1 },
        null,
      ];
      for (const m of badMarks) bad.push(s.putDelivered([markOf('x', 1, 1), m as DeliveredMark]));
      bad.push(s.putDelivered('nope' as unknown as DeliveredMark[]));
      bad.push(s.forgetDelivered(['ok', 5 as unknown as string]));
      bad.push(s.forgetDelivered('ok' as unknown as string[]));
      for (const p of bad) expect((await rejection(p)).code).toBe('ERR_INVALID_ARGUMENT');
      await Promise.all(good);
      expect(keysOf(await s.load())).toEqual(['q:1']);
      expect(await s.loadDelivered()).toEqual([markOf('ok', 1, 1)]);
    });

    it('writes called before close() complete; every operation after it rejects with ERR_CLOSED', async () => {
      const s = await fresh();
      const before = s.push([itemOf('q', 1)]);
      const meta = s.setMeta('k', Buffer.from('v'));
      const mark = s.putDelivered([markOf('p', 1, 10), markOf('gone', 1, 1)]);
      const forget = s.forgetDelivered(['gone']);
      await s.close();
      await expect(before).resolves.toBeUndefined();
      await expect(meta).resolves.toBeUndefined();
      await expect(mark).resolves.toBeUndefined();
      await expect(forget).resolves.toBeUndefined();
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['load', () => s.load()],
        ['push', () => s.push([itemOf('q', 2)])],
        ['delete', () => s.delete([{ queue: 'q', uuid: uuidOf(1) }])],
        ['updateTtls', () => s.updateTtls([{ queue: 'q', uuid: uuidOf(1), ttl: 1 }])],
        ['deleteAll(queue)', () => s.deleteAll('q')],
        ['deleteAll()', () => s.deleteAll()],
        ['putDelivered', () => s.putDelivered([markOf('p', 1, 11)])],
        ['loadDelivered', () => s.loadDelivered()],
        ['forgetDelivered', () => s.forgetDelivered(['p'])],
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
        expect(await again.load()).toEqual([itemOf('q', 1)]);
        expect(await again.getMeta('k')).toEqual(Buffer.from('v'));
        expect(await again.loadDelivered()).toEqual([markOf('p', 1, 10)]);
      }
    });

    it('keeps items (order, TTLs, seqs, bytes), delivered marks and meta across close and reopen', async ({ skip }) => {
      const s = await fresh();
      if (!subject?.reopen) return skip('backend is not persistent (no reopen)');
      await s.push([itemOf('b', 1), itemOf('a', 2, { ttl: 0 }), itemOf('a', 3, { ttl: 1234, body: Buffer.alloc(0) })]);
      await s.push([itemOf('b', 4, { flags: 0 }), itemOf('c', 5)]);
      await s.delete([{ queue: 'b', uuid: uuidOf(4) }]);
      await s.updateTtls([{ queue: 'b', uuid: uuidOf(1), ttl: 42 }]);
      await s.push([itemOf('c', 6, { seq: 0 }), itemOf('c', 7, { seq: Number.MAX_SAFE_INTEGER })]);
      await s.putDelivered([markOf('p', 1, 3), markOf('r', 2, 9), markOf('gone', 3, 1)]);
      await s.putDelivered([markOf('p', 1, 4)]);
      await s.forgetDelivered(['gone']);
      await s.setMeta('cache', Buffer.from([1, 2, 3]));
      const s2 = (await reopen(s))!;
      const items = await s2.load();
      expect(items).toEqual([
        itemOf('b', 1, { ttl: 42 }),
        itemOf('a', 2, { ttl: 0 }),
        itemOf('a', 3, { ttl: 1234, body: Buffer.alloc(0) }),
        itemOf('c', 5),
        itemOf('c', 6, { seq: 0 }),
        itemOf('c', 7, { seq: Number.MAX_SAFE_INTEGER }),
      ]);
      expect(byPeer(await s2.loadDelivered())).toEqual([markOf('p', 1, 4), markOf('r', 2, 9)]);
      expect(await s2.getMeta('cache')).toEqual(Buffer.from([1, 2, 3]));
      // the insertion sequence continues after a reopen: new items go after the old ones
      await s2.push([itemOf('a', 8)]);
      await s2.putDelivered([markOf('p', 5, 1)]);
      const s3 = (await reopen(s2))!;
      expect(keysOf(await s3.load())).toEqual(['b:1', 'a:2', 'a:3', 'c:5', 'c:6', 'c:7', 'a:8']);
      expect(byPeer(await s3.loadDelivered())).toEqual([markOf('p', 5, 1), markOf('r', 2, 9)]);
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
      expect(items.every((it, i) => it.uuid.equals(uuidOf(i + 1)) && it.seq === i + 1)).toBe(true);
    });

    it('a putDelivered not awaited before close() is there after a reopen, with the writes around it', async ({ skip }) => {
      const s = await fresh();
      if (!subject?.reopen) return skip('backend is not persistent (no reopen)');
      await s.push([itemOf('q', 1), itemOf('q', 2)]);
      void s.delete([{ queue: 'q', uuid: uuidOf(1) }]);
      void s.putDelivered([markOf('p', 1, 41)]);
      void s.push([itemOf('q', 3, { seq: 2 ** 40 })]);
      void s.putDelivered([markOf('p', 1, 42), markOf('r', 6, 0)]);
      void s.forgetDelivered(['r']);
      const s2 = (await reopen(s))!;
      expect(await s2.load()).toEqual([itemOf('q', 2), itemOf('q', 3, { seq: 2 ** 40 })]);
      expect(await s2.loadDelivered()).toEqual([markOf('p', 1, 42)]);
    });
  });
}
