/**
 * Received messages keep their own bytes: bodies and uuids are copied out of the received
 * chunks (a stretch of a chunk at a time, see Messaging's copyMessage), so a Message the
 * application keeps stays intact however much arrives after it, and a transport that hands
 * over one buffer again with new bytes still gives each message its own. And the uuids that
 * acknowledgements hand to message-delivered listeners and to storage.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConnId } from '../src/link.js';
import { FLAG_PERSISTENT, Message, Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import {
  EXTENSION_VERSION,
  FEATURE_ACKS,
  encodeAck,
  encodeResume,
  encodeSeqAck,
  encodeSeqMessage,
  encodeHello,
  encodeIdentification,
  encodeMessage,
  encodePing,
  encodeProtocolVersion,
} from '../src/protocol.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { MemoryTransport, connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { prng } from './helpers/prng.js';
import { helloIncarnation, introduce } from './helpers/raw-peer.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { until } from './helpers/wait.js';

afterEach(closeAllPeers);

/** Length prefix and payload. */
function framed(payload: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(payload.length);
  return Buffer.concat([h, payload]);
}

/**
 * A Messaging ('rcv') on a memory transport whose peer ('snd', a plain snakeMQ peer) has
 * identified itself; what arrives next is handed over with `tr.deliver(conn, bytes)`. `kept`:
 * every message received.
 */
function identifiedReceiver() {
  const tr = new MemoryTransport();
  tr.peer = new MemoryTransport();
  const receiver = new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0 });
  const kept: Message[] = [];
  receiver.on('message', (_c, _i, m) => kept.push(m));
  const conn = 'c1' as ConnId;
  tr.connectTo(conn);
  tr.deliver(conn, Buffer.concat([framed(encodeProtocolVersion()), framed(encodeIdentification('snd'))]));
  return { tr, conn, receiver, kept };
}

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
      readonly lengths: number[] = [];
      override deliver(connId: ConnId, data: Buffer): void {
        this.lengths.push(data.length);
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
    introduce(sender, conn, 'snd');
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
    // each message came alone, in a chunk of the same length (so in the same Buffer object)
    expect(tr.lengths.slice(-40).filter((n) => n === 4 + 25 + 50).length).toBe(20);
    for (let i = 0; i < 20; i++) {
      expect(kept[i].body.equals(bodyOf(i, 50)), `body ${i}`).toBe(true);
      expect(kept[i].uuid.equals(uuids[i]), `uuid ${i}`).toBe(true);
    }
    await receiver.close();
  });

  it('are views of one copy per chunk, and small ones between large ones take only their own room', async () => {
    const { tr, conn, receiver, kept } = identifiedReceiver();
    // chunk after chunk: 40 small ones in a row, then small and large (10,000 B) taking turns
    const sent: { uuid: Buffer; body: Buffer }[] = [];
    for (let k = 0; k < 50; k++) {
      const parts: Buffer[] = [];
      for (let i = 0; i < 52; i++) {
        const n = i < 40 ? 100 : i % 2 === 0 ? 100 : 10_000;
        const m = { uuid: randomBytes(16), body: bodyOf(sent.length, n) };
        sent.push(m);
        parts.push(framed(encodeMessage({ uuid: m.uuid, ttlMs: null, flags: 0, body: m.body })));
      }
      tr.deliver(conn, Buffer.concat(parts));
    }
    expect(kept.length).toBe(sent.length);
    for (let i = 0; i < sent.length; i++) {
      expect(kept[i].body.equals(sent[i].body), `body ${i}`).toBe(true);
      expect(kept[i].uuid.equals(sent[i].uuid), `uuid ${i}`).toBe(true);
    }
    // the 40 in a row of a chunk are views of one copy of the chunk (at most two, when a slab
    // fills up): each body lies one packet (4 + 25 + 100 bytes) after the one before
    for (let k = 0; k < 50; k++) {
      const run = kept.slice(k * 52, k * 52 + 40);
      let apart = 0;
      for (let i = 1; i < run.length; i++) {
        if (run[i].body.buffer === run[i - 1].body.buffer && run[i].body.byteOffset - run[i - 1].body.byteOffset === 129) apart++;
      }
      expect(apart).toBeGreaterThanOrEqual(38);
    }
    // 2300 small messages of 125 bytes (with their uuids) fit in about 36 slabs of 8 KiB; a
    // copy that ran on into the large ones would take a slab or more for each
    const slabs = new Set(kept.filter((m) => m.body.length === 100).map((m) => m.body.buffer));
    expect(slabs.size).toBeLessThan(60);
    await receiver.close();
  });

  it('small messages between ack frames take only their own room', async () => {
    const { tr, conn, receiver, kept } = identifiedReceiver();
    // as an extension peer sends them: its own messages with ack frames (here 250 uuids) between
    for (let k = 0; k < 50; k++) {
      const parts: Buffer[] = [];
      for (let i = 0; i < 12; i++) {
        parts.push(framed(encodeMessage({ uuid: randomBytes(16), ttlMs: null, flags: 0, body: bodyOf(k * 12 + i, 32) })));
        parts.push(framed(encodeAck(Array.from({ length: 250 }, () => randomBytes(16)))));
      }
      tr.deliver(conn, Buffer.concat(parts));
    }
    expect(kept.length).toBe(600);
    for (let i = 0; i < 600; i++) expect(kept[i].body.equals(bodyOf(i, 32)), `body ${i}`).toBe(true);
    // 600 × 56 bytes (aligned: 64) fit in 5 slabs of 8 KiB; copying the ack frames along took 200
    expect(new Set(kept.map((m) => m.body.buffer)).size).toBeLessThanOrEqual(6);
    await receiver.close();
  });
});

describe('received messages, random chunking', () => {
  // Two peers' packet streams cut at random, each chunk handed over as a fresh Buffer, as a
  // view of one large buffer, or in one Buffer object per length rewritten every time; and
  // sometimes a chunk of the other connection handed over from inside a message listener.
  // Every message must have its own uuid and body, at receipt and at the end.
  for (const mode of ['plain', 'legacy', 'sequenced'] as const) {
    const acks = mode !== 'plain';
    it(`keeps every message its own bytes (${mode === 'sequenced' ? 'extension peers' : mode === 'legacy' ? 'extension version 1 peers' : 'plain snakeMQ peers'})`, async () => {
      const rnd = prng(mode === 'sequenced' ? 5 : acks ? 7 : 11);
      const int = (n: number): number => Math.floor(rnd() * n);
      const stream = (ident: string, count: number) => {
        const parts: Buffer[] = [framed(encodeProtocolVersion())];
        if (acks) {
          const incarnation = mode === 'sequenced' ? Buffer.from('12345678') : undefined;
          parts.push(framed(encodeHello({ extVersion: incarnation ? EXTENSION_VERSION : 1, maxPacketSize: 64 << 20, features: FEATURE_ACKS, incarnation })));
        }
        parts.push(framed(encodeIdentification(ident)));
        const sent: { uuid: Buffer; body: Buffer }[] = [];
        for (let i = 0; i < count; i++) {
          const r = int(100);
          const n = r < 70 ? int(300) : r < 85 ? 3000 + int(2500) : r < 95 ? 9000 + int(3000) : r < 98 ? 0 : 70_000;
          const m = { uuid: randomBytes(16), body: randomBytes(n) };
          sent.push(m);
          if (mode === 'sequenced') parts.push(framed(encodeSeqMessage({ seq: i + 1, uuid: m.uuid, ttlMs: null, flags: 0, body: m.body })));
          else parts.push(framed(encodeMessage({ uuid: m.uuid, ttlMs: null, flags: 0, body: m.body })));
          const x = int(20);
          if (x === 0) parts.push(framed(encodePing()));
          if (x === 1) parts.push(framed(encodeAck([randomBytes(16), randomBytes(16)])));
        }
        return { bytes: Buffer.concat(parts), sent };
      };
      const feeder = (tr: MemoryTransport, connId: ConnId, bytes: Buffer) => {
        const cuts = [0];
        for (let at = 0; at < bytes.length; ) {
          const r = int(10);
          const steps = [17, 37, 100, 300, 500, 4096, 9000, 65536, 200_000];
          const last = cuts.length > 1 ? cuts[cuts.length - 1] - cuts[cuts.length - 2] : 1;
          at = Math.min(bytes.length, at + (r < 4 ? last : r < 7 ? steps[int(steps.length)] : 1 + int(65536)));
          cuts.push(at);
        }
        const reused = new Map<number, Buffer>();
        let i = 0;
        return {
          get done() {
            return i + 1 >= cuts.length;
          },
          next() {
            const a = cuts[i];
            const b = cuts[++i];
            const mode = int(4) === 0 ? int(2) : 2;
            let chunk: Buffer;
            if (mode === 0) chunk = Buffer.from(bytes.subarray(a, b));
            else if (mode === 1) chunk = bytes.subarray(a, b);
            else {
              let r = reused.get(b - a);
              if (r === undefined) reused.set(b - a, (r = Buffer.alloc(b - a)));
              bytes.copy(r, 0, a, b);
              chunk = r;
            }
            tr.deliver(connId, chunk);
          },
        };
      };
      for (let round = 0; round < 3; round++) {
        const tr = new MemoryTransport();
        tr.peer = new MemoryTransport();
        tr.peer.peer = tr;
        const m = new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0 });
        const A = 'cA' as ConnId;
        const B = 'cB' as ConnId;
        tr.connectTo(A);
        tr.connectTo(B);
        const streams = { sa: stream('sa', 300), sb: stream('sb', 300) };
        const fA = feeder(tr, A, streams.sa.bytes);
        const fB = feeder(tr, B, streams.sb.bytes);
        const got: Record<string, Message[]> = { sa: [], sb: [] };
        let nested = false;
        m.on('message', (_c, ident, msg) => {
          const list = got[ident];
          const want = streams[ident as 'sa' | 'sb'].sent[list.length];
          expect(msg.body.equals(want.body), `${ident} body ${list.length} at receipt`).toBe(true);
          expect(msg.uuid.equals(want.uuid), `${ident} uuid ${list.length} at receipt`).toBe(true);
          list.push(msg);
          if (!nested && ident === 'sa' && !fB.done && int(4) === 0) {
            nested = true;
            try {
              fB.next();
            } finally {
              nested = false;
            }
          }
        });
        while (!fA.done || !fB.done) {
          if (!fA.done && (fB.done || int(2) === 0)) fA.next();
          else fB.next();
          if (int(5) === 0) await tick();
        }
        for (let k = 0; k < 20; k++) await tick();
        for (const ident of ['sa', 'sb'] as const) {
          const sent = streams[ident].sent;
          expect(got[ident].length, ident).toBe(sent.length);
          for (let i = 0; i < sent.length; i++) {
            expect(got[ident][i].body.equals(sent[i].body), `${ident} body ${i} at end`).toBe(true);
            expect(got[ident][i].uuid.equals(sent[i].uuid), `${ident} uuid ${i} at end`).toBe(true);
          }
        }
        await m.close();
      }
    });
  }
});

describe('acknowledgements', () => {
  /** A Messaging with storage ('rcv') that queues persistent messages for a raw Packeter peer ('snd'). */
  async function rig() {
    const [tr, ts] = memoryPair();
    const storage = new MemoryQueuesStorage();
    const messaging = new Messaging('rcv', '', new Packeter(tr), { keepaliveInterval: 0, storage });
    await messaging.ready;
    const peer = new Packeter(ts);
    let inc: Buffer = Buffer.alloc(8);
    peer.on('packet', (_c, p) => void (inc = helloIncarnation(p) ?? inc));
    connectPair(tr, ts, 'c1' as ConnId);
    introduce(peer, 'c1' as ConnId, 'snd', FEATURE_ACKS);
    for (let i = 0; i < 5; i++) await tick();
    peer.sendPacket('c1' as ConnId, encodeResume({ incarnation: inc, seq: 0 }));
    const queue = async (n: number): Promise<Buffer[]> => {
      const uuids: Buffer[] = [];
      for (let i = 0; i < n; i++) {
        const m = new Message(Buffer.from(`m${i}`), { flags: FLAG_PERSISTENT });
        uuids.push(Buffer.from(m.uuid));
        await messaging.sendMessage('snd', m);
      }
      for (let i = 0; i < 5; i++) await tick();
      return uuids;
    };
    /** Acknowledge everything up to the n-th message queued (1-based: sequence numbers start at 1). */
    const ack = (n: number, incarnation = inc): void => {
      peer.sendPacket('c1' as ConnId, encodeSeqAck({ incarnation, seq: n }));
    };
    return { messaging, storage, queue, ack };
  }

  it('a cumulative ack reports each message it covers once, in order, and deletes it from storage', async () => {
    const { messaging, storage, queue, ack } = await rig();
    const delivered: string[] = [];
    messaging.on('message-delivered', (_i, u) => delivered.push(u.toString('hex')));
    const uuids = await queue(40);
    expect((await storage.load()).length).toBe(40);
    // in order; then an older one again, one of another incarnation, and one past everything
    ack(10);
    ack(5);
    ack(30, Buffer.from('stranger'));
    for (let i = 0; i < 10; i++) await tick();
    expect(delivered).toEqual(uuids.slice(0, 10).map((u) => u.toString('hex')));
    expect((await storage.load()).length).toBe(30);
    ack(25);
    ack(25);
    ack(1000);
    for (let i = 0; i < 10; i++) await tick();
    expect(delivered).toEqual(uuids.map((u) => u.toString('hex')));
    expect(await storage.load()).toEqual([]);
    expect(messaging.queueSize('snd')).toBe(0);
    await messaging.close();
  });

  it('delete from storage even when a message-delivered listener changes the uuid it was given', async () => {
    const { messaging, storage, queue, ack } = await rig();
    messaging.on('message-delivered', (_i, u) => void u.reverse());
    await queue(4);
    ack(4);
    for (let i = 0; i < 10; i++) await tick();
    expect(await storage.load()).toEqual([]);
    await messaging.close();
  });
});

describe('sending', () => {
  /**
   * A Messaging ('rcv') whose transport never reports writes done (the test reports them, by
   * `packets-sent`), identified by a raw Packeter peer ('snd'); `queue(n)` queues n messages
   * and returns their uuids and the run of packets they went out in.
   */
  async function rig(ext: boolean) {
    const [tr, ts] = memoryPair();
    tr.send = (connId, data) => {
      for (const b of Array.isArray(data) ? data : [data]) setImmediate(() => ts.deliver(connId, Buffer.from(b)));
      return true;
    };
    const packeter = new Packeter(tr);
    const runs: { id: number; count: number }[] = [];
    const sendFramedPackets = packeter.sendFramedPackets.bind(packeter);
    packeter.sendFramedPackets = (connId, framed, count) => {
      const id = sendFramedPackets(connId, framed, count);
      runs.push({ id, count });
      return id;
    };
    // (a plain peer's messages go one by one, as version 1 frames)
    const sendPacketParts = packeter.sendPacketParts.bind(packeter);
    let parts: number[] = [];
    packeter.sendPacketParts = (connId, head, body) => {
      const id = sendPacketParts(connId, head, body);
      parts.push(id);
      return id;
    };
    const messaging = new Messaging('rcv', '', packeter, { keepaliveInterval: 0 });
    const peer = new Packeter(ts);
    const conn = 'c1' as ConnId;
    connectPair(tr, ts, conn);
    // without a hello: a plain snakeMQ peer
    let inc: Buffer = Buffer.alloc(8);
    peer.on('packet', (_c, p) => void (inc = helloIncarnation(p) ?? inc));
    introduce(peer, conn, 'snd', ext ? FEATURE_ACKS : undefined);
    for (let i = 0; i < 5; i++) await tick();
    if (ext) peer.sendPacket(conn, encodeResume({ incarnation: inc, seq: 0 }));
    for (let i = 0; i < 5; i++) await tick();
    const queue = async (n: number) => {
      parts = [];
      const uuids: string[] = [];
      for (let i = 0; i < n; i++) {
        const m = new Message(`m${i}`);
        uuids.push(m.uuidHex);
        messaging.queueMessage('snd', m);
      }
      for (let i = 0; i < 3; i++) await tick();
      if (!ext) {
        // one packet each, numbered one after the other
        expect(parts).toHaveLength(n);
        expect(parts[n - 1] - parts[0]).toBe(n - 1);
        return { uuids, firstId: parts[0] };
      }
      const run = runs.find((r) => r.count === n)!;
      expect(run).toBeDefined();
      return { uuids, firstId: run.id };
    };
    const written = (lastId: number) => packeter.emit('packets-sent', conn, lastId);
    return { messaging, queue, written };
  }

  it('a write reported done in part reports the messages of that part of a run, the rest when it is done', async () => {
    const { messaging, queue, written } = await rig(true);
    const sent: string[] = [];
    messaging.on('message-sent', (_c, _i, u) => sent.push(u.toString('hex')));
    const { uuids, firstId } = await queue(10);
    written(firstId + 2);
    expect(sent).toEqual(uuids.slice(0, 3));
    written(firstId + 2); // again: nothing new
    written(firstId + 6);
    expect(sent).toEqual(uuids.slice(0, 7));
    written(firstId + 9);
    expect(sent).toEqual(uuids);
    expect(messaging.queueSize('snd')).toBe(10); // written, not yet acknowledged
    await messaging.close();
  });

  it('a listener throwing while a write reported in part is handled leaves nothing behind (plain peer)', async () => {
    const { messaging, queue, written } = await rig(false);
    const sent: string[] = [];
    messaging.on('message-sent', (_c, _i, u) => {
      sent.push(u.toString('hex'));
      if (sent.length === 2) throw new Error('listener');
    });
    const { uuids, firstId } = await queue(10);
    expect(() => written(firstId + 4)).toThrow('listener');
    written(firstId + 9);
    // written to a plain peer is delivered: every one reported once, none left queued
    expect(sent).toEqual(uuids);
    expect(messaging.queueSize('snd')).toBe(0);
    await messaging.close();
  });
});
