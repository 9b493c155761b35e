/**
 * Received messages keep their own bytes: bodies and uuids are copied out of the received
 * chunks (a stretch of a chunk at a time, see Messaging's copyMessage), so a Message the
 * application keeps stays intact however much arrives after it, and a transport that hands
 * over one buffer again with new bytes still gives each message its own.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ConnId } from '../src/link.js';
import { Message, Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import { encodeIdentification, encodeMessage, encodeProtocolVersion } from '../src/protocol.js';
import { MemoryTransport, connectPair, tick } from './helpers/memory-transport.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { until } from './helpers/wait.js';

afterEach(closeAllPeers);

/** Body `i` of `n` bytes, different for every `i`. */
function bodyOf(i: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let k = 0; k < n; k++) b[k] = (k * 29 + i * 7 + (i >>> 8)) & 0xff;
  return b;
}

describe('received messages', () => {
  it('stay intact while thousands more arrive after them (real sockets)', async () => {
    const alice = makePeer('alice');
    const bob = makePeer('bob');
    const kept: Message[] = [];
    alice.messaging.on('message', (_c, _i, m) => kept.push(m));
    connect(bob, await listen(alice), 10);
    // small ones many to a chunk, some across chunk ends, a few above half a receive slab
    const sizes: number[] = [];
    for (let i = 0; i < 6000; i++) sizes.push(i % 211 === 3 ? 6000 : i % 499 === 9 ? 70_000 : (i * 37) % 400);
    const sent = sizes.map((n, i) => new Message(bodyOf(i, n)));
    for (let i = 0; i < sent.length; i += 500) {
      await Promise.all(sent.slice(i, i + 500).map((m) => bob.messaging.sendMessage('alice', m)));
    }
    await until(() => kept.length === sent.length, 20_000);
    for (let i = 0; i < sent.length; i++) {
      expect(kept[i].body.equals(sent[i].body), `body ${i}`).toBe(true);
      expect(kept[i].uuid.equals(sent[i].uuid), `uuid ${i}`).toBe(true);
    }
  });

  it('are each their own when the transport hands over one buffer again with new bytes', async () => {
    // Every chunk of the same length arrives in the same Buffer object, rewritten.
    class RecyclingTransport extends MemoryTransport {
      private readonly reused = new Map<number, Buffer>();
      override deliver(connId: ConnId, data: Buffer): void {
        let b = this.reused.get(data.length);
        if (b === undefined) this.reused.set(data.length, (b = Buffer.alloc(data.length)));
        data.copy(b);
        super.deliver(connId, b);
      }
    }
    const tr = new RecyclingTransport();
    const ts = new MemoryTransport();
    tr.peer = ts;
    ts.peer = tr;
    const receiver = new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0 });
    const sender = new Packeter(ts);
    const kept: Message[] = [];
    receiver.on('message', (_c, _i, m) => kept.push(m));
    const conn = 'c1' as ConnId;
    connectPair(tr, ts, conn);
    sender.sendPacket(conn, encodeProtocolVersion());
    sender.sendPacket(conn, encodeIdentification('snd'));
    await tick();
    await tick();
    const uuids: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const uuid = Buffer.alloc(16, i + 1);
      uuids.push(uuid);
      // one packet per turn: each arrives alone, in a chunk of the same length as the last
      sender.sendPacket(conn, encodeMessage({ uuid, ttlMs: null, flags: 0, body: bodyOf(i, 50) }));
      await tick();
      await tick();
    }
    expect(kept.length).toBe(20);
    for (let i = 0; i < 20; i++) {
      expect(kept[i].body.equals(bodyOf(i, 50)), `body ${i}`).toBe(true);
      expect(kept[i].uuid.equals(uuids[i]), `uuid ${i}`).toBe(true);
    }
    await receiver.close();
  });
});
