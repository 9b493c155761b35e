/**
 * Dedup windows of peers that left are bounded (`dedupIdlePeers`): past the bound the window
 * of the peer gone longest is forgotten, in memory and in storage, so that peers coming and
 * going under ever new identities cannot grow the receiver's memory or its storage. Peers
 * within the bound keep their deduplication across reconnects (and restarts, with storage).
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConnId } from '../src/link.js';
import { ManualClock } from '../src/clock.js';
import { InvalidArgumentError } from '../src/errors.js';
import { LOADED_WINDOWS_GRACE_MS, Messaging, type MessagingOptions } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import { FEATURE_ACKS, FRAME_ACK, encodeMessage } from '../src/protocol.js';
import type { QueuesStorage } from '../src/storage.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { memoryPair, tick } from './helpers/memory-transport.js';
import { introduce } from './helpers/raw-peer.js';
import { cleanupTemp, sqlite, tempDir } from './helpers/temp.js';
import { until } from './helpers/wait.js';

/** Ticks enough for a hop over the memory transport, the turn after it and storage. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await tick();
}

const open: Messaging[] = [];

/** Wait until the storage holds the windows of exactly `peers`. */
async function storedWindows(storage: QueuesStorage, peers: string[]): Promise<void> {
  const end = Date.now() + 5000;
  for (;;) {
    const have = [...(await storage.loadSeen()).keys()].sort();
    if (JSON.stringify(have) === JSON.stringify(peers)) return;
    if (Date.now() > end) expect(have).toEqual(peers);
    await new Promise((r) => setTimeout(r, 5));
  }
}
afterEach(async () => {
  for (const m of open.splice(0)) await m.close();
  await cleanupTemp();
});

/**
 * A Messaging ('rcv') and a raw extension peer on memory transports. `visit(ident, uuid)`
 * connects as `ident`, sends one message, waits for its acknowledgement and disconnects.
 */
async function rig(options: MessagingOptions, storage?: QueuesStorage) {
  const [tr, ts] = memoryPair();
  const rcv = new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0, storage, ...options });
  open.push(rcv);
  await rcv.ready;
  const got: string[] = [];
  rcv.on('message', (_c, ident, m) => got.push(`${ident}:${m.body.toString()}`));
  const raw = new Packeter(ts);
  const acked = new Map<ConnId, number>();
  raw.on('packet', (c, p) => {
    if (p[0] === FRAME_ACK) acked.set(c, (acked.get(c) ?? 0) + (p.length - 1) / 16);
  });
  let n = 0;
  /** Open a connection as `ident` (on our side a `side` one) and send messages with these uuids. */
  const arrive = (ident: string, msgs: [Buffer, string][], side: 'connector' | 'listener' = 'connector'): ConnId => {
    const c = `c${++n}` as ConnId;
    tr.connectTo(c, side);
    ts.connectTo(c);
    introduce(raw, c, ident, FEATURE_ACKS);
    for (const [uuid, body] of msgs) raw.sendPacket(c, encodeMessage({ uuid, ttlMs: null, flags: 0, body: Buffer.from(body) }));
    return c;
  };
  const visit = async (ident: string, uuid: Buffer, body: string): Promise<void> => {
    const c = arrive(ident, [[uuid, body]]);
    // acknowledged: recorded in the window (and in storage, when there is one)
    await until(() => (acked.get(c) ?? 0) >= 1, 5000, `ack to ${ident}`);
    tr.closeConnection(c);
    await settle();
  };
  /** Peers with a window in memory (white-box: the bound is about this map). */
  const windows = (): string[] => [...(rcv as unknown as { seen: Map<string, unknown> }).seen.keys()].sort();
  return { rcv, got, visit, arrive, acked, tr, windows };
}

describe('dedup windows of peers that left', () => {
  it('keeps the windows of the last dedupIdlePeers peers that left, and forgets older ones', async () => {
    const { got, visit, windows } = await rig({ dedupIdlePeers: 2 });
    const u = { a: randomBytes(16), b: randomBytes(16), c: randomBytes(16), d: randomBytes(16) };
    for (const p of ['a', 'b', 'c', 'd'] as const) await visit(p, u[p], p);
    expect(windows()).toEqual(['c', 'd']);
    // d is remembered: its resend is acknowledged again and not handed over twice
    await visit('d', u.d, 'd');
    expect(got.filter((x) => x === 'd:d')).toHaveLength(1);
    // a was forgotten: its resend is a new message (the documented cost of the bound)
    await visit('a', u.a, 'a');
    expect(got.filter((x) => x === 'a:a')).toHaveLength(2);
    expect(windows()).toEqual(['a', 'd']);
  });

  it('many peers coming and going under new identities leave at most dedupIdlePeers windows, in memory and in storage', async () => {
    const storage = new MemoryQueuesStorage();
    const { got, visit, windows } = await rig({ dedupIdlePeers: 5 }, storage);
    for (let i = 0; i < 200; i++) await visit(`peer-${i}`, randomBytes(16), 'x');
    expect(got).toHaveLength(200);
    expect(windows()).toEqual(['peer-195', 'peer-196', 'peer-197', 'peer-198', 'peer-199']);
    await storedWindows(storage, windows());
  });

  it('with SQLite: forgotten windows leave storage, and kept ones survive a restart', async () => {
    const file = join(tempDir(), 'q.db');
    const storage = sqlite(file);
    const u = { a: randomBytes(16), b: randomBytes(16), c: randomBytes(16) };
    const first = await rig({ dedupIdlePeers: 2 }, storage);
    for (const p of ['c', 'a', 'b'] as const) await first.visit(p, u[p], p);
    await first.rcv.close();
    await storedWindows(storage, ['a', 'b']);
    const second = await rig({}, storage);
    await second.visit('a', u.a, 'a');
    await second.visit('b', u.b, 'b');
    expect(second.got).toEqual([]);
  });

  it('after a restart every stored window is kept for a grace period, then the bound applies', async () => {
    const storage = new MemoryQueuesStorage();
    const u = [randomBytes(16), randomBytes(16), randomBytes(16)];
    for (let i = 0; i < 3; i++) await storage.addSeen(`p${i}`, [u[i]], 100);
    const clock = new ManualClock(1000);
    const { got, visit, windows } = await rig({ dedupIdlePeers: 1, clock }, storage);
    // peers that were connected before the restart come back and resend: not handed over again
    await visit('p0', u[0], 'p0');
    await visit('p1', u[1], 'p1');
    expect(got).toEqual([]);
    expect(windows()).toEqual(['p0', 'p1', 'p2']);
    clock.advance(LOADED_WINDOWS_GRACE_MS - 1);
    await settle();
    expect(windows()).toHaveLength(3);
    clock.advance(1);
    await settle();
    // the one that left last is kept
    expect(windows()).toEqual(['p1']);
    await storedWindows(storage, ['p1']);
  });

  it('never forgets the window of a peer connected now', async () => {
    const { got, arrive, acked, visit, windows, tr } = await rig({ dedupIdlePeers: 1 });
    const ux = randomBytes(16);
    // x has been here before (its window was idle), and is back
    await visit('x', randomBytes(16), 'earlier');
    const c = arrive('x', [[ux, 'x']]);
    await until(() => (acked.get(c) ?? 0) >= 1);
    for (let i = 0; i < 5; i++) await visit(`p${i}`, randomBytes(16), 'p');
    expect(windows()).toEqual(['p4', 'x']);
    tr.closeConnection(c);
    await settle();
    await visit('x', ux, 'x');
    expect(got.filter((g) => g === 'x:x')).toHaveLength(1);
  });

  it('a connection replaced by a new one of the same peer keeps its window, even with dedupIdlePeers 0', async () => {
    const { got, arrive, acked, windows } = await rig({ dedupIdlePeers: 0 });
    const u = randomBytes(16);
    // 'rcv' < 'z': between extension peers the connection we opened (connector side) wins
    const old = arrive('z', [[u, 'm']], 'listener');
    await until(() => (acked.get(old) ?? 0) >= 1);
    const replacing = arrive('z', [[u, 'm']], 'connector');
    await until(() => (acked.get(replacing) ?? 0) >= 1);
    await settle();
    expect(got).toEqual(['z:m']);
    expect(windows()).toEqual(['z']);
  });

  it('a listener that closes the connection leaves no window in storage once its window is forgotten', async () => {
    const storage = new MemoryQueuesStorage();
    const { rcv, got, arrive, tr, windows } = await rig({ dedupIdlePeers: 0 }, storage);
    rcv.on('message', (c) => tr.closeConnection(c));
    arrive('a', [[randomBytes(16), 'bye']]);
    await until(() => got.length === 1);
    await settle();
    expect(windows()).toEqual([]);
    await storedWindows(storage, []);
    await settle();
    expect((await storage.loadSeen()).size).toBe(0);
  });

  it('with dedupIdlePeers 0 a window goes as soon as its peer leaves', async () => {
    const { got, visit, windows } = await rig({ dedupIdlePeers: 0 });
    const u = randomBytes(16);
    await visit('a', u, 'a');
    expect(windows()).toEqual([]);
    await visit('a', u, 'a');
    expect(got).toEqual(['a:a', 'a:a']);
  });

  it('dedupIdlePeers takes an integer >= 0 or Infinity', () => {
    const [tr] = memoryPair();
    for (const bad of [-1, 1.5, Number.NaN, '3' as unknown as number]) {
      expect(() => new Messaging('rcv', '', new Packeter(tr), { dedupIdlePeers: bad }), String(bad)).toThrow(InvalidArgumentError);
    }
    for (const ok of [0, 7, Infinity]) open.push(new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0, dedupIdlePeers: ok }));
  });
});
