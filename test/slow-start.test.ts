/**
 * Slow start: on every new connection to an extension peer the sender starts with a small
 * in-flight allowance (`initialInFlight`, `initialInFlightBytes`) and raises it by what is
 * acknowledged, up to `maxInFlight`. In memory, with a raw Packeter as the receiving peer that
 * acknowledges by hand.
 */
import { describe, expect, it } from 'vitest';
import type { ConnId } from '../src/link.js';
import { MESSAGING_DEFAULTS, Message, Messaging, type MessagingOptions } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import { FEATURE_ACKS, FEATURE_FLOW, FRAME_SEQ_MESSAGE, encodeResume, encodeSeqAck, readSeq } from '../src/protocol.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { helloIncarnation, introduce } from './helpers/raw-peer.js';

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await tick();
}

/** A Messaging 'snd' with `n` messages queued for 'rcv', a raw peer 'rcv' that acknowledges only when told. */
async function rig(n: number, bodySize: number, options: MessagingOptions = {}) {
  const [ts, tr] = memoryPair();
  const sender = new Messaging('snd', '', new Packeter(ts), { keepaliveInterval: 0, ...options });
  const receiver = new Packeter(tr);
  for (let i = 0; i < n; i++) {
    const body = Buffer.alloc(bodySize);
    body.writeUInt32BE(i, 0);
    await sender.sendMessage('rcv', new Message(body));
  }
  /** Messages received on the current connection and not yet acknowledged; the highest seq received and acknowledged. */
  let unacked = 0;
  let highest = 0;
  let acked = 0;
  let inc: Buffer = Buffer.alloc(8);
  const got: number[] = [];
  receiver.on('packet', (_c, p) => {
    inc = helloIncarnation(p) ?? inc;
    if (p[0] !== FRAME_SEQ_MESSAGE) return;
    unacked++;
    highest = Math.max(highest, readSeq(p, 1));
    got.push(p.readUInt32BE(33));
  });
  let conn = 0;
  let current = '' as ConnId;
  const open = async (): Promise<void> => {
    const before = got.length;
    current = `c${++conn}` as ConnId;
    unacked = 0;
    connectPair(ts, tr, current);
    introduce(receiver, current, 'rcv', FEATURE_ACKS | FEATURE_FLOW);
    await settle();
    // (nothing is sent before our resume: what we acknowledged before)
    expect(got.length - before).toBe(0);
    receiver.sendPacket(current, encodeResume({ incarnation: inc, seq: acked }));
    await settle();
  };
  /** Acknowledge everything received so far on this connection; resolves with how many arrived since. */
  const ackAll = async (): Promise<number> => {
    const before = got.length;
    receiver.sendPacket(current, encodeSeqAck({ incarnation: inc, seq: highest }));
    acked = highest;
    unacked = 0;
    await settle();
    return got.length - before;
  };
  const drop = async (): Promise<void> => {
    tr.closeConnection(current);
    await settle();
  };
  return { sender, got, open, ackAll, drop, unacked: () => unacked };
}

describe('slow start of the in-flight window', () => {
  it('sends initialInFlight messages first, then doubles the allowance with every round of acknowledgements', async () => {
    const r = await rig(2000, 8);
    await r.open();
    expect(r.got.length).toBe(MESSAGING_DEFAULTS.initialInFlight);
    const rounds: number[] = [];
    for (let i = 0; i < 5; i++) rounds.push(await r.ackAll());
    expect(rounds).toEqual([128, 256, 512, 1024, 2000 - 1984]);
    expect(r.got).toEqual(Array.from({ length: 2000 }, (_, i) => i));
    await r.sender.close();
  });

  it('never goes past maxInFlight', async () => {
    const r = await rig(1000, 8, { maxInFlight: 100, initialInFlight: 30 });
    await r.open();
    expect(r.got.length).toBe(30);
    expect([await r.ackAll(), await r.ackAll(), await r.ackAll()]).toEqual([60, 100, 100]);
    await r.sender.close();
  });

  it('starts again from the initial allowance on every new connection, resending the unacknowledged first', async () => {
    const r = await rig(1000, 8);
    await r.open();
    await r.ackAll(); // 64 acknowledged, 128 in flight
    await r.ackAll(); // 192 acknowledged, 256 in flight
    expect(r.unacked()).toBe(256);
    await r.drop();
    const before = r.got.length;
    await r.open();
    // the 256 never acknowledged come again first, but only 64 of them for now
    expect(r.got.slice(before)).toEqual(Array.from({ length: 64 }, (_, i) => 192 + i));
    await r.sender.close();
  });

  it('counts body bytes too: initialInFlightBytes holds back large messages (one always goes)', async () => {
    const r = await rig(100, 1000);
    await r.open();
    // 16 KiB: the 17th message is the first to reach it
    expect(r.got.length).toBe(17);
    // the allowance grew by the 17,000 bytes acknowledged: 33,384, reached by the 34th
    expect(await r.ackAll()).toBe(34);
    await r.sender.close();
    const big = await rig(3, 100_000);
    await big.open();
    expect(big.got.length).toBe(1);
    await big.sender.close();
  });

  it('an allowance given above the maximum is the maximum', async () => {
    const r = await rig(50, 8, { maxInFlight: 10, initialInFlight: 1000 });
    await r.open();
    expect(r.got.length).toBe(10);
    await r.sender.close();
  });
});
