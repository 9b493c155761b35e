/**
 * A receiver restarted with storage whose stored dedup window loads slowly: resends that arrive
 * once the window is loaded are recognised, even though the connection's first message came
 * before (and found the window still empty).
 */
import { describe, expect, it } from 'vitest';
import type { ConnId } from '../src/link.js';
import { Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import {
  FEATURE_ACKS,
  FEATURE_FLOW,
  encodeMessage,
} from '../src/protocol.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { introduce } from './helpers/raw-peer.js';

describe('dedup window loaded from storage after messages arrived', () => {
  it('recognises a resend that arrives after loading, though the lookup set was made before', async () => {
    const U1 = Buffer.alloc(16, 1);
    const U2 = Buffer.alloc(16, 2);
    const U3 = Buffer.alloc(16, 3);
    const storage = new MemoryQueuesStorage();
    await storage.addSeen('snd', [U1, U2], 100); // received and recorded before the restart
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const loadSeen = storage.loadSeen.bind(storage);
    storage.loadSeen = async () => {
      await gate;
      return loadSeen();
    };
    const [tr, ts] = memoryPair();
    const receiver = new Messaging('rcv', '', new Packeter(tr), { storage, keepaliveInterval: 0 });
    const sender = new Packeter(ts);
    const got: number[] = [];
    receiver.on('message', (_c, _i, m) => got.push(m.uuid[0]));
    const conn = 'c1' as ConnId;
    connectPair(tr, ts, conn);
    introduce(sender, conn, 'snd', FEATURE_ACKS | FEATURE_FLOW);
    sender.sendPacket(conn, encodeMessage({ uuid: U3, ttlMs: null, flags: 0, body: Buffer.from('new') }));
    for (let i = 0; i < 5; i++) await tick();
    expect(got).toEqual([3]);
    release();
    await receiver.ready;
    sender.sendPacket(conn, encodeMessage({ uuid: U2, ttlMs: null, flags: 0, body: Buffer.from('resent') }));
    sender.sendPacket(conn, encodeMessage({ uuid: U3, ttlMs: null, flags: 0, body: Buffer.from('resent') }));
    for (let i = 0; i < 5; i++) await tick();
    expect(got).toEqual([3]);
    await receiver.close();
  });
});
