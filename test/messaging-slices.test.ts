/**
 * How Messaging hands a burst of received messages to the application (in slices, so that what
 * the application answers is written while the rest waits), and its internal faces for the RPC
 * layer (`queueMessage`, `observeDelivery`). In memory, driven by a raw Packeter as the peer.
 */
import { describe, expect, it } from 'vitest';
import type { ConnId } from '../src/link.js';
import { BACKLOG_LIMIT, DELIVERIES_PER_SLICE, FLAG_PERSISTENT, Message, Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import {
  FEATURE_ACKS,
  FEATURE_FLOW,
  FRAME_SEQ_ACK,
  encodeMessage,
  encodeResume,
  encodeSeqAck,
  encodeSeqMessage,
  readSeq,
} from '../src/protocol.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { helloIncarnation, introduce } from './helpers/raw-peer.js';

const CONN = 'c1' as ConnId;

/** A Messaging ('rcv') and a raw Packeter peer ('snd') on an in-memory connection. */
async function rig(options: { ext?: boolean } = {}) {
  const [tr, ts] = memoryPair();
  const receiver = new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0 });
  const sender = new Packeter(ts);
  const ext = options.ext !== false;
  /** The sequence numbers of the cumulative acks received. */
  const acked: number[] = [];
  let ackFrames = 0;
  let inc: Buffer = Buffer.alloc(8);
  sender.on('packet', (_c, p) => {
    inc = helloIncarnation(p) ?? inc;
    if (p[0] !== FRAME_SEQ_ACK) return;
    ackFrames++;
    acked.push(readSeq(p, 9));
  });
  connectPair(tr, ts, CONN);
  introduce(sender, CONN, 'snd', ext ? FEATURE_ACKS | FEATURE_FLOW : undefined);
  for (let i = 0; i < 5; i++) await tick();
  if (ext) sender.sendPacket(CONN, encodeResume({ incarnation: inc, seq: 0 }));
  // turns of the event loop, counted by an immediate that re-arms itself
  let turn = 0;
  let counting = true;
  const count = (): void => {
    turn++;
    if (counting) setImmediate(count);
  };
  setImmediate(count);
  const got: { n: number; turn: number }[] = [];
  receiver.on('message', (_c, _i, m) => got.push({ n: m.body.readUInt32BE(0), turn }));
  const uuid = (n: number): Buffer => {
    const u = Buffer.alloc(16, 7);
    u.writeUInt32BE(n, 0);
    return u;
  };
  const burst = (from: number, n: number): void => {
    for (let i = from; i < from + n; i++) {
      const body = Buffer.alloc(8);
      body.writeUInt32BE(i, 0);
      if (ext) sender.sendPacket(CONN, encodeSeqMessage({ seq: i + 1, uuid: uuid(i), ttlMs: null, flags: 0, body }));
      else sender.sendPacket(CONN, encodeMessage({ uuid: uuid(i), ttlMs: null, flags: 0, body }));
    }
  };
  const perTurn = (): number[] => {
    const m = new Map<number, number>();
    for (const g of got) m.set(g.turn, (m.get(g.turn) ?? 0) + 1);
    return [...m.values()];
  };
  const stop = (): void => {
    counting = false;
  };
  const ackUpTo = (seq: number): void => void sender.sendPacket(CONN, encodeSeqAck({ incarnation: inc, seq }));
  return { tr, ts, receiver, sender, got, acked, burst, perTurn, stop, ackFrames: () => ackFrames, ackUpTo };
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

describe('Messaging hands a burst from an ack peer over in slices', () => {
  it('all of it, in order, a slice per turn, each slice acknowledged on its own', async () => {
    const r = await rig();
    const n = 4 * DELIVERIES_PER_SLICE + 17;
    r.burst(0, n);
    for (let i = 0; i < 20; i++) await tick();
    expect(r.got.map((g) => g.n)).toEqual(range(0, n));
    const per = r.perTurn();
    expect(Math.max(...per)).toBeLessThanOrEqual(DELIVERIES_PER_SLICE);
    expect(per.length).toBeGreaterThanOrEqual(5);
    // cumulative, growing slice by slice, up to the last one
    expect(r.ackFrames()).toBeGreaterThanOrEqual(5);
    for (let i = 1; i < r.acked.length; i++) expect(r.acked[i]).toBeGreaterThan(r.acked[i - 1]);
    expect(r.acked.at(-1)).toBe(n);
    r.stop();
    await r.receiver.close();
  });

  it('messages arriving while a backlog waits go behind it', async () => {
    const r = await rig();
    r.burst(0, 3 * DELIVERIES_PER_SLICE);
    await tick();
    await tick();
    r.burst(3 * DELIVERIES_PER_SLICE, 10);
    for (let i = 0; i < 20; i++) await tick();
    expect(r.got.map((g) => g.n)).toEqual(range(0, 3 * DELIVERIES_PER_SLICE + 10));
    r.stop();
    await r.receiver.close();
  });

  it('a peer sending past its window never has more than BACKLOG_LIMIT messages waiting', async () => {
    const r = await rig();
    const n = 40 * DELIVERIES_PER_SLICE;
    r.burst(0, n);
    for (let i = 0; i < 20; i++) await tick();
    expect(r.got.map((g) => g.n)).toEqual(range(0, n));
    const per = r.perTurn();
    expect(per[0]).toBeGreaterThanOrEqual(n - BACKLOG_LIMIT); // the turn it all arrived in
    expect(Math.max(...per.slice(1))).toBeLessThanOrEqual(DELIVERIES_PER_SLICE);
    r.stop();
    await r.receiver.close();
  });

  it('a disconnect hands the waiting messages over before the disconnect event', async () => {
    const r = await rig();
    const events: string[] = [];
    r.receiver.on('message', () => events.push('message'));
    r.receiver.on('disconnect', () => events.push('disconnect'));
    const n = 3 * DELIVERIES_PER_SLICE;
    r.burst(0, n);
    r.receiver.once('message', () => setImmediate(() => r.tr.closeConnection(CONN)));
    for (let i = 0; i < 10; i++) await tick();
    expect(r.got.map((g) => g.n)).toEqual(range(0, n));
    expect(events.lastIndexOf('message')).toBe(n - 1);
    expect(events[n]).toBe('disconnect');
    r.stop();
    await r.receiver.close();
  });

  it('close() hands the waiting messages over first', async () => {
    const r = await rig();
    const n = 3 * DELIVERIES_PER_SLICE;
    r.burst(0, n);
    let closing: Promise<void> | undefined;
    r.receiver.once('message', () => setImmediate(() => (closing = r.receiver.close())));
    for (let i = 0; i < 10 && closing === undefined; i++) await tick();
    await closing;
    expect(r.got.map((g) => g.n)).toEqual(range(0, n));
    r.stop();
  });

  it('close(): a listener that throws while the waiting messages are handed over neither stops that nor the closing', async () => {
    const r = await rig();
    const n = 3 * DELIVERIES_PER_SLICE;
    r.burst(0, n);
    let closing: Promise<void> | undefined;
    let inClose = false;
    let thrown = false;
    r.receiver.once('message', () =>
      setImmediate(() => {
        inClose = true;
        closing = r.receiver.close();
        closing.catch(() => {}); // looked at below
      }),
    );
    r.receiver.on('message', () => {
      if (inClose && !thrown) {
        thrown = true; // the first message close() hands over
        throw new Error('listener bug');
      }
    });
    for (let i = 0; i < 10 && closing === undefined; i++) await tick();
    await expect(closing).rejects.toThrow('listener bug');
    expect(thrown).toBe(true);
    expect(r.got.map((g) => g.n)).toEqual(range(0, n));
    await expect(r.receiver.sendMessage('snd', new Message('x'))).rejects.toMatchObject({ code: 'ERR_CLOSED' });
    r.stop();
  });

  it('a plain snakeMQ peer (no acks) gets no slicing: its burst is handed over at once', async () => {
    const r = await rig({ ext: false });
    const n = 3 * DELIVERIES_PER_SLICE;
    r.burst(0, n);
    for (let i = 0; i < 10; i++) await tick();
    expect(r.got.map((g) => g.n)).toEqual(range(0, n));
    expect(r.perTurn()).toEqual([n]);
    r.stop();
    await r.receiver.close();
  });
});

describe('Messaging faces for the RPC layer', () => {
  it('observeDelivery tells the uuids of message-sent and message-delivered, in the same order', async () => {
    for (const ext of [true, false]) {
      const r = await rig({ ext });
      const events: string[] = [];
      const observed: string[] = [];
      r.receiver.on('message-sent', (_c, _i, u) => events.push(`sent ${u.toString('hex')}`));
      r.receiver.on('message-delivered', (_i, u) => events.push(`delivered ${u.toString('hex')}`));
      const stop = r.receiver.observeDelivery({
        sent: (_c, _i, src, off) => observed.push(`sent ${src.toString('hex', off, off + 16)}`),
        delivered: (_i, src, off) => observed.push(`delivered ${src.toString('hex', off, off + 16)}`),
      });
      const uuids: Buffer[] = [];
      for (let i = 0; i < 5; i++) {
        const m = new Message(Buffer.from(`m${i}`));
        uuids.push(m.uuid);
        await r.receiver.sendMessage('snd', m);
      }
      for (let i = 0; i < 5; i++) await tick();
      if (ext) {
        // the peer acknowledges them
        r.ackUpTo(5);
        for (let i = 0; i < 5; i++) await tick();
      }
      expect(events.length).toBe(10);
      expect(observed).toEqual(events);
      stop();
      await r.receiver.sendMessage('snd', new Message('after'));
      for (let i = 0; i < 5; i++) await tick();
      expect(observed.length).toBe(10);
      r.stop();
      await r.receiver.close();
    }
  });

  it('queueMessage: undefined when queued at once, a promise for a storage commit, throws for bad calls', async () => {
    const [tr] = memoryPair();
    const storage = new MemoryQueuesStorage();
    const m = new Messaging('me', '', new Packeter(tr), { storage, keepaliveInterval: 0, queueLimit: 1 });
    await m.ready;
    expect(m.queueMessage('other', new Message('x'))).toBeUndefined();
    expect(() => m.queueMessage('other', new Message('y'))).toThrow(expect.objectContaining({ code: 'ERR_QUEUE_FULL' }));
    expect(() => m.queueMessage('me', new Message('z'))).toThrow(expect.objectContaining({ code: 'ERR_SEND_TO_SELF' }));
    const p = m.queueMessage('third', new Message('p', { flags: FLAG_PERSISTENT }));
    expect(p).toBeInstanceOf(Promise);
    await p;
    expect((await storage.load()).length).toBe(1);
    await m.close();
    expect(() => m.queueMessage('other', new Message('w'))).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
  });
});
