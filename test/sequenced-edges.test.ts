/**
 * Edges of sequenced delivery found in review: acks and resumes cannot take away what was never
 * sent; a resume does not skip slow start; close() records the deliveries of a connection that
 * ended in the same turn; while storage loads, plain peers are served and keepalive waits for
 * our greeting; a failed load refuses sends instead of numbering without a reservation.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import type { ConnId } from '../src/link.js';
import { FLAG_PERSISTENT, Message, Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import {
  FEATURE_ACKS,
  FEATURE_FLOW,
  FRAME_SEQ_MESSAGE,
  MAX_SEQ,
  encodeMessage,
  encodeResume,
  encodeSeqAck,
  encodeSeqMessage,
} from '../src/protocol.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { memoryPair, tick } from './helpers/memory-transport.js';
import { RAW_INCARNATION, helloIncarnation, introduce } from './helpers/raw-peer.js';
import { holdUntilReleased } from './helpers/wait.js';

async function settle(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await tick();
}

/** A Messaging 'snd' and a raw v2 peer 'peer' that records what it gets; `resume(seq)` sends its resume. */
async function senderRig(options = {}) {
  const [ta, tb] = memoryPair();
  const snd = new Messaging('snd', '', new Packeter(ta), { keepaliveInterval: 0, ...options });
  const raw = new Packeter(tb);
  let inc: Buffer = Buffer.alloc(8);
  let written = 0;
  raw.on('packet', (_c, p) => {
    inc = helloIncarnation(p) ?? inc;
    if (p[0] === FRAME_SEQ_MESSAGE) written++;
  });
  const c = 'c1' as ConnId;
  ta.connectTo(c, 'connector');
  tb.connectTo(c);
  introduce(raw, c, 'peer', FEATURE_ACKS | FEATURE_FLOW);
  await settle();
  return {
    snd,
    written: () => written,
    resume: (seq: number) => void raw.sendPacket(c, encodeResume({ incarnation: inc, seq })),
    ack: (seq: number) => void raw.sendPacket(c, encodeSeqAck({ incarnation: inc, seq })),
  };
}

describe('sequenced delivery: edges', () => {
  it('an ack beyond what was written removes only what was written (no hang when a listener sends the next one)', async () => {
    const r = await senderRig();
    let delivered = 0;
    r.snd.on('message-delivered', () => {
      // "send the next one": each would be covered by an unbounded ack, for ever
      if (++delivered < 10_000) r.snd.queueMessage('peer', new Message('next'));
    });
    await r.snd.sendMessage('peer', new Message('first'));
    r.resume(0);
    await settle();
    expect(r.written()).toBe(1);
    r.ack(MAX_SEQ);
    await settle();
    // the one written is delivered; its follower queued by the listener is not "acknowledged"
    expect(delivered).toBe(1);
    expect(r.snd.queueSize('peer')).toBe(1);
    await r.snd.close();
  });

  it('a resume beyond every number given is reported, and numbering goes on above it', async () => {
    const r = await senderRig();
    const errors: string[] = [];
    r.snd.on('error', (e) => errors.push((e as { code?: string }).code ?? ''));
    await r.snd.sendMessage('peer', new Message('a'));
    r.resume(1000);
    await settle();
    expect(errors).toEqual(['ERR_SEQ_REUSED']);
    // 'a' (seq 1) is covered by the peer's claim; the next message is numbered past 1000
    expect(r.snd.queueSize('peer')).toBe(0);
    await r.snd.sendMessage('peer', new Message('b'));
    await settle();
    expect(r.written()).toBe(1);
    r.ack(1001);
    await settle();
    expect(r.snd.queueSize('peer')).toBe(0);
    await r.snd.close();
  });

  it('what a resume covers does not raise the in-flight allowance (slow start still starts small)', async () => {
    const r = await senderRig({ initialInFlight: 64 });
    for (let i = 0; i < 2000; i++) r.snd.queueMessage('peer', new Message(`m${i}`));
    r.resume(1000);
    await settle();
    expect(r.snd.queueSize('peer')).toBe(1000);
    expect(r.written()).toBe(64);
    await r.snd.close();
  });

  it('close() records the deliveries of a connection that ended in the same turn', async () => {
    const storage = new MemoryQueuesStorage();
    const [tr, ts] = memoryPair();
    const rcv = new Messaging('rcv', '', new Packeter(tr), { storage, keepaliveInterval: 0 });
    await rcv.ready;
    const raw = new Packeter(ts);
    const c = 'c1' as ConnId;
    let closing: Promise<void> | undefined;
    rcv.on('message', (_c, _i, m) => {
      if (m.body.toString() === '3') {
        tr.closeConnection(c);
        closing = rcv.close();
      }
    });
    tr.connectTo(c, 'listener');
    ts.connectTo(c);
    introduce(raw, c, 'snd', FEATURE_ACKS | FEATURE_FLOW);
    for (const seq of [1, 2, 3]) raw.sendPacket(c, encodeSeqMessage({ seq, uuid: Buffer.alloc(16, seq), ttlMs: null, flags: 0, body: Buffer.from(String(seq)) }));
    await settle(30);
    await closing;
    expect(await storage.loadDelivered()).toEqual([{ peer: 'snd', incarnation: RAW_INCARNATION, seq: 3 }]);
  });

  it('while storage loads, a plain snakeMQ peer is served at once (nothing held), and no ping goes out before our greeting', async () => {
    const storage = new MemoryQueuesStorage();
    const release = holdUntilReleased(storage, 'load');
    const clock = new ManualClock(0);
    const [tr, ts] = memoryPair();
    const rcv = new Messaging('rcv', '', new Packeter(tr), { storage, keepaliveInterval: 100, keepaliveWait: 50, clock });
    let got = 0;
    rcv.on('message', () => got++);
    const plain = new Packeter(ts);
    const types: number[] = [];
    plain.on('packet', (_c, p) => types.push(p[0]));
    const conn = 'c1' as ConnId;
    tr.connectTo(conn, 'listener');
    ts.connectTo(conn);
    introduce(plain, conn, 'py16');
    const body = Buffer.alloc(64 * 1024);
    for (let i = 0; i < 300; i++) plain.sendPacket(conn, encodeMessage({ uuid: Buffer.alloc(16, i & 255), ttlMs: null, flags: 0, body }));
    await settle(20);
    expect(got).toBe(300);
    clock.advance(1000);
    await settle();
    expect(types).toEqual([]); // no ping (nor anything) before our version frame
    expect(tr.open.has(conn)).toBe(true);
    release();
    await rcv.ready;
    await settle();
    expect(types.slice(0, 2)).toEqual([0, 0x10]);
    await rcv.close();
  });

  it('a failed load refuses sends with a typed error (numbers could not be reserved)', async () => {
    const storage = new MemoryQueuesStorage();
    storage.loadDelivered = () => Promise.reject(new Error('disk on fire'));
    const [tr] = memoryPair();
    const m = new Messaging('me', '', new Packeter(tr), { storage, keepaliveInterval: 0 });
    m.on('error', () => {});
    await expect(m.ready).rejects.toThrow('disk on fire');
    await expect(m.sendMessage('you', new Message('x', { flags: FLAG_PERSISTENT }))).rejects.toMatchObject({ code: 'ERR_STORAGE' });
    expect(await storage.load()).toEqual([]);
    await m.close();
  });
});
