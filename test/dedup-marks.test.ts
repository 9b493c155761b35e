/**
 * The receiver's dedup marks (extension version 2): per sender identity, its incarnation and
 * the highest sequence number delivered. A repeat at or below it is acknowledged and not
 * handed over; the resume sent after identification names it; a new incarnation starts over.
 * Marks of peers that left are bounded (`dedupIdlePeers`): past the bound the mark of the peer
 * identified longest ago is forgotten, in memory and storage. And a receiver whose storage
 * loads slowly does nothing with a connection before its marks are in.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../src/errors.js';
import type { ConnId } from '../src/link.js';
import { Messaging, type MessagingOptions } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import { FEATURE_ACKS, FEATURE_FLOW, FRAME_RESUME, FRAME_SEQ_ACK, encodeSeqMessage, readSeq } from '../src/protocol.js';
import type { QueuesStorage } from '../src/storage.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { RAW_INCARNATION, introduce } from './helpers/raw-peer.js';
import { cleanupTemp, sqlite, tempDir } from './helpers/temp.js';
import { holdUntilReleased, until } from './helpers/wait.js';

/** Ticks enough for a hop over the memory transport, the turn after it and storage. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await tick();
}

const open: Messaging[] = [];
afterEach(async () => {
  for (const m of open.splice(0)) await m.close();
  await cleanupTemp();
});

/** Wait until the storage holds the marks of exactly `peers`. */
async function storedMarks(storage: QueuesStorage, peers: string[]): Promise<void> {
  const end = Date.now() + 5000;
  for (;;) {
    const have = (await storage.loadDelivered()).map((m) => m.peer).sort();
    if (JSON.stringify(have) === JSON.stringify(peers)) return;
    if (Date.now() > end) expect(have).toEqual(peers);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * A Messaging ('rcv') and a raw extension peer on memory transports. `visit(ident, seq)`
 * connects as `ident`, sends one sequenced message, waits for its acknowledgement and
 * disconnects. `resumes` holds, per connection, the seq of the resume 'rcv' sent.
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
  const resumes = new Map<ConnId, number>();
  raw.on('packet', (c, p) => {
    if (p[0] === FRAME_SEQ_ACK) acked.set(c, readSeq(p, 9));
    if (p[0] === FRAME_RESUME) resumes.set(c, readSeq(p, 9));
  });
  let n = 0;
  /** Open a connection as `ident` (on our side a `side` one) and send these [seq, body] messages. */
  const arrive = (ident: string, msgs: [number, string][], side: 'connector' | 'listener' = 'connector', incarnation = RAW_INCARNATION): ConnId => {
    const c = `c${++n}` as ConnId;
    tr.connectTo(c, side);
    ts.connectTo(c);
    introduce(raw, c, ident, FEATURE_ACKS | FEATURE_FLOW, { incarnation });
    for (const [seq, body] of msgs) raw.sendPacket(c, encodeSeqMessage({ seq, uuid: Buffer.alloc(16, seq), ttlMs: null, flags: 0, body: Buffer.from(body) }));
    return c;
  };
  const visit = async (ident: string, seq: number, body: string, incarnation = RAW_INCARNATION): Promise<ConnId> => {
    const c = arrive(ident, [[seq, body]], 'connector', incarnation);
    // acknowledged: recorded in the marks (and in storage, when there is one)
    await until(() => (acked.get(c) ?? 0) >= seq, 5000, `ack to ${ident}`);
    tr.closeConnection(c);
    await settle();
    return c;
  };
  /** Peers with a mark in memory (white-box: the bound is about this table). */
  const marks = (): string[] => {
    const t = (rcv as unknown as { marks: { slots: Map<string, number> } }).marks;
    return [...t.slots.keys()].sort();
  };
  return { rcv, got, visit, arrive, acked, resumes, tr, marks };
}

describe('dedup marks', () => {
  it('a repeat at or below the highest delivered seq is acknowledged, not handed over; the resume names that seq', async () => {
    const { got, arrive, acked, resumes, tr } = await rig({});
    const c1 = arrive('a', [
      [1, 'one'],
      [2, 'two'],
      [2, 'two again'],
      [5, 'five'],
      [3, 'three, late'],
    ]);
    await until(() => acked.get(c1) === 5);
    expect(resumes.get(c1)).toBe(0);
    expect(got).toEqual(['a:one', 'a:two', 'a:five']);
    tr.closeConnection(c1);
    await settle();
    const c2 = arrive('a', [
      [5, 'five again'],
      [6, 'six'],
    ]);
    await until(() => acked.get(c2) === 6);
    expect(resumes.get(c2)).toBe(5);
    expect(got).toEqual(['a:one', 'a:two', 'a:five', 'a:six']);
  });

  it('a sender under a new incarnation (restarted without storage) starts over from 0', async () => {
    const { got, visit, arrive, resumes, acked } = await rig({});
    await visit('a', 7, 'old');
    const c = arrive('a', [[1, 'new']], 'connector', Buffer.from('another!'));
    await until(() => acked.get(c) === 1);
    expect(resumes.get(c)).toBe(0);
    expect(got).toEqual(['a:old', 'a:new']);
  });

  it('keeps the marks of the last dedupIdlePeers peers that left, and forgets older ones', async () => {
    const { got, visit, marks } = await rig({ dedupIdlePeers: 2 });
    for (const p of ['a', 'b', 'c', 'd']) await visit(p, 1, p);
    expect(marks()).toEqual(['c', 'd']);
    // d is remembered: its resend is acknowledged again and not handed over twice
    await visit('d', 1, 'd');
    expect(got.filter((x) => x === 'd:d')).toHaveLength(1);
    // a was forgotten: its resend is a new message (the documented cost of the bound)
    await visit('a', 1, 'a');
    expect(got.filter((x) => x === 'a:a')).toHaveLength(2);
    expect(marks()).toEqual(['a', 'd']);
  });

  it('many peers coming and going under new identities leave at most dedupIdlePeers marks, in memory and in storage', async () => {
    const storage = new MemoryQueuesStorage();
    const { got, visit, marks } = await rig({ dedupIdlePeers: 5 }, storage);
    for (let i = 0; i < 200; i++) await visit(`peer-${i}`, 1, 'x');
    expect(got).toHaveLength(200);
    expect(marks()).toEqual(['peer-195', 'peer-196', 'peer-197', 'peer-198', 'peer-199']);
    await storedMarks(storage, marks());
  });

  it('with SQLite: marks survive a restart (repeats dropped, the resume names them); forgotten ones leave storage', async () => {
    const file = join(tempDir(), 'q.db');
    const storage = sqlite(file);
    const first = await rig({ dedupIdlePeers: 2 }, storage);
    for (const p of ['c', 'a', 'b']) await first.visit(p, 3, p);
    await first.rcv.close();
    await storedMarks(storage, ['a', 'b']);
    const second = await rig({}, storage);
    const c = await second.visit('a', 3, 'a');
    expect(second.resumes.get(c)).toBe(3);
    await second.visit('b', 2, 'b');
    expect(second.got).toEqual([]);
  });

  it('never forgets the mark of a peer connected now', async () => {
    const { got, arrive, acked, visit, marks, tr } = await rig({ dedupIdlePeers: 1 });
    await visit('x', 1, 'earlier');
    const c = arrive('x', [[2, 'x']]);
    await until(() => acked.get(c) === 2);
    for (let i = 0; i < 5; i++) await visit(`p${i}`, 1, 'p');
    expect(marks()).toEqual(['p4', 'x']);
    tr.closeConnection(c);
    await settle();
    await visit('x', 2, 'x');
    expect(got.filter((g) => g === 'x:x')).toHaveLength(1);
  });

  it('a connection replaced by a new one of the same peer keeps its mark, even with dedupIdlePeers 0', async () => {
    const { got, arrive, acked, marks, resumes } = await rig({ dedupIdlePeers: 0 });
    // 'rcv' < 'z': between extension peers the connection we opened (connector side) wins
    const old = arrive('z', [[1, 'm']], 'listener');
    await until(() => acked.get(old) === 1);
    const replacing = arrive('z', [[1, 'm']], 'connector');
    await until(() => acked.get(replacing) === 1);
    await settle();
    expect(resumes.get(replacing)).toBe(1);
    expect(got).toEqual(['z:m']);
    expect(marks()).toEqual(['z']);
  });

  it('with dedupIdlePeers 0 a mark goes as soon as its peer leaves, from storage too', async () => {
    const storage = new MemoryQueuesStorage();
    const { got, visit, marks } = await rig({ dedupIdlePeers: 0 }, storage);
    await visit('a', 1, 'a');
    expect(marks()).toEqual([]);
    await storedMarks(storage, []);
    await visit('a', 1, 'a');
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

describe('a receiver whose storage loads slowly', () => {
  it('greets and handles nothing before its marks are loaded; then the repeats sent meanwhile are recognised', async () => {
    const storage = new MemoryQueuesStorage();
    await storage.putDelivered([{ peer: 'snd', incarnation: RAW_INCARNATION, seq: 2 }]); // from before the restart
    const release = holdUntilReleased(storage, 'loadDelivered');
    const [tr, ts] = memoryPair();
    const receiver = new Messaging('rcv', '', new Packeter(tr), { storage, keepaliveInterval: 0 });
    open.push(receiver);
    const sender = new Packeter(ts);
    const packets: number[] = [];
    sender.on('packet', (_c, p) => packets.push(p[0]));
    const got: string[] = [];
    receiver.on('message', (_c, _i, m) => got.push(m.body.toString()));
    const conn = 'c1' as ConnId;
    connectPair(tr, ts, conn);
    introduce(sender, conn, 'snd', FEATURE_ACKS | FEATURE_FLOW);
    for (const [seq, body] of [
      [2, 'resent'],
      [3, 'new'],
    ] as const) {
      sender.sendPacket(conn, encodeSeqMessage({ seq, uuid: Buffer.alloc(16, seq), ttlMs: null, flags: 0, body: Buffer.from(body) }));
    }
    await settle();
    expect(got).toEqual([]);
    expect(packets).toEqual([]);
    release();
    await receiver.ready;
    await settle();
    expect(got).toEqual(['new']);
    // version, hello, identity, then the resume
    expect(packets.slice(0, 4)).toEqual([0, 0x10, 2, FRAME_RESUME]);
  });
});
