/**
 * Fuzzing with a seeded mutator (test/helpers/mutator.ts; no extra dependency):
 * - 100,000+ random and mutated inputs into the pure core (PacketDecoder + decodeFrame);
 * - 100,000+ mutated sessions into a Messaging over the in-memory transport, while a
 *   well-behaved peer keeps exchanging messages with it;
 * - 1,000 sessions over loopback into a live peer in a child process run with --expose-gc,
 *   which reports its heap after gc().
 * Nothing may escape as an exception; bad input only closes its own connection with a typed error.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BadFrameError, FrameTooLargeError, SnakeMQError } from '../src/errors.js';
import { Message } from '../src/message.js';
import { Messaging } from '../src/messaging.js';
import { PacketDecoder } from '../src/packet-decoder.js';
import { Packeter } from '../src/packeter.js';
import {
  type Frame,
  decodeFrame,
  encodeAck,
  encodeHello,
  encodeIdentification,
  encodeMessage,
  encodeProtocolVersion,
} from '../src/protocol.js';
import { killAllChildren, spawnFixture } from './helpers/children.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { Mutator } from './helpers/mutator.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { waitFor } from './helpers/wait.js';

const SEED = Number(process.env.SNAKEMQ_FUZZ_SEED ?? 424242);

afterEach(async () => {
  await killAllChildren();
  await closeAllPeers();
});

/** Decode `input` fed as `chunks`; returns the packets (copied) and the error, if any. */
function decodeAll(chunks: Buffer[], max: number): { packets: Buffer[]; error?: unknown } {
  const d = new PacketDecoder(max);
  const packets: Buffer[] = [];
  try {
    for (const c of chunks) d.push(c, (p) => packets.push(Buffer.from(p)));
  } catch (error) {
    return { packets, error };
  }
  return { packets };
}

/** Re-encode a decoded frame whose encoding is canonical; undefined for the others. */
function reencode(f: Frame, raw: Buffer): Buffer | undefined {
  switch (f.kind) {
    case 'version':
      return encodeProtocolVersion(f.version);
    case 'ident':
      return raw.subarray(1).equals(Buffer.from(f.ident, 'utf8')) ? encodeIdentification(f.ident) : undefined;
    case 'message':
      return encodeMessage({ uuid: f.uuid, ttlMs: f.ttlMs, flags: f.flags, body: f.body });
    case 'ack':
      return encodeAck(f.uuids);
    case 'hello':
      return raw.length === 11 ? encodeHello(f) : undefined;
    default:
      return undefined;
  }
}

describe('fuzzing the pure core: PacketDecoder + decodeFrame', () => {
  it(
    '100,000 random and mutated inputs: only typed errors, chunking never changes the result, frames re-encode to their bytes',
    () => {
      const m = new Mutator(SEED);
      const N = 100_000;
      const kinds = new Map<string, number>();
      let tooLarge = 0;
      let badFrames = 0;
      let packetsTotal = 0;
      // Plain checks in the hot loop (expect() per packet would dominate the run time); the
      // first failure throws with the input in hex, to replay.
      const check = (ok: boolean, what: string, input: Buffer): void => {
        if (!ok) throw new Error(`${what}; input ${input.toString('hex')}`);
      };
      for (let i = 0; i < N; i++) {
        const input = m.input();
        const max = m.rand() < 0.5 ? 1024 : m.pick([0, 1, 24, 25, 64 * 1024 * 1024]);
        const whole = decodeAll([input], max);
        const split = decodeAll(m.chunks(input, 8), max);
        // The same packets, the same error, whatever the chunking.
        check(split.packets.length === whole.packets.length, 'chunking changed the packet count', input);
        for (let k = 0; k < whole.packets.length; k++) {
          check(split.packets[k].equals(whole.packets[k]), 'chunking changed a packet', input);
        }
        check((split.error === undefined) === (whole.error === undefined), 'chunking changed the outcome', input);
        if (whole.error !== undefined) {
          check(whole.error instanceof FrameTooLargeError && split.error instanceof FrameTooLargeError, `untyped decoder error ${whole.error}`, input);
          tooLarge++;
        }
        packetsTotal += whole.packets.length;
        for (const p of whole.packets) {
          check(p.length <= max, 'a packet above the limit', input);
          let f: Frame;
          try {
            f = decodeFrame(p);
          } catch (err) {
            check(err instanceof BadFrameError && err.code === 'ERR_BAD_FRAME', `untyped frame error ${err}`, input);
            badFrames++;
            continue;
          }
          kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
          const again = reencode(f, p);
          if (again) check(again.equals(p), `${f.kind} frame does not re-encode to its bytes`, input);
        }
      }
      // The mutator reached every kind of frame and both kinds of error.
      for (const k of ['version', 'incompatible', 'ident', 'message', 'ping', 'pong', 'hello', 'ack', 'unknown']) {
        expect(kinds.get(k) ?? 0).toBeGreaterThan(50);
      }
      expect(tooLarge).toBeGreaterThan(1000);
      expect(badFrames).toBeGreaterThan(1000);
      expect(packetsTotal).toBeGreaterThan(N);
    },
    60_000,
  );

  it('a failed decoder stays failed with the same error, and a huge prefix allocates nothing', () => {
    const d = new PacketDecoder(100);
    const huge = Buffer.from('ffffffff', 'hex');
    let first: unknown;
    try {
      d.push(huge, () => {});
    } catch (err) {
      first = err;
    }
    expect(first).toBeInstanceOf(FrameTooLargeError);
    expect(d.state).toBe('failed');
    expect(d.buffered).toBe(0);
    expect(() => d.push(Buffer.from('00000000', 'hex'), () => {})).toThrow(first as Error);
  });
});

describe('fuzzing Messaging over the in-memory transport', () => {
  it(
    '100,000 mutated sessions: no exception escapes, only typed errors, the well-behaved peer keeps working',
    async () => {
      const m = new Mutator(SEED + 1);
      const [aT, bT] = memoryPair();
      const alice = new Messaging('alice', '', new Packeter(aT, { maxPacketSize: 4096 }));
      const bob = new Messaging('bob', '', new Packeter(bT));
      const codes = new Map<string, number>();
      const untyped: unknown[] = [];
      const onError = (err: Error): void => {
        if (err instanceof SnakeMQError) codes.set(err.code, (codes.get(err.code) ?? 0) + 1);
        else untyped.push(err);
      };
      alice.on('error', onError);
      alice.packeter.on('error', onError);
      bob.on('error', (err) => untyped.push(err));
      let bobDisconnects = 0;
      bob.on('disconnect', () => bobDisconnects++);
      const aliceGotFromBob: string[] = [];
      const bobGot: string[] = [];
      alice.on('message', (_c, ident, msg) => {
        if (ident === 'bob') aliceGotFromBob.push(msg.body.toString());
      });
      bob.on('message', (_c, _i, msg) => bobGot.push(msg.body.toString()));
      connectPair(aT, bT, 'good');
      for (let i = 0; i < 10 && !(alice.isConnected('bob') && bob.isConnected('alice')); i++) await tick();
      expect(alice.isConnected('bob')).toBe(true);

      const N = 100_000;
      let rounds = 0;
      let fuzzMessages = 0;
      alice.on('message', (_c, ident) => {
        if (ident !== 'bob') fuzzMessages++;
      });
      for (let i = 0; i < N; i++) {
        const connId = `f${i}`;
        aT.connectTo(connId); // only alice's end: what alice writes to it goes nowhere
        // A few sessions claim the good peer's identity.
        const input = m.rand() < 0.03 ? m.mutate(m.session('bob'), 2) : m.input();
        for (const chunk of m.chunks(input, 5)) {
          aT.deliver(connId, chunk); // synchronous: an exception would surface right here
          if (!aT.open.has(connId)) break;
        }
        if (aT.open.has(connId)) aT.closeConnection(connId);
        if (i % 2000 === 1999) {
          // The well-behaved peer: a message each way, both must arrive.
          rounds++;
          await bob.sendMessage('alice', new Message(`b${rounds}`));
          await alice.sendMessage('bob', new Message(`a${rounds}`));
          for (let t = 0; t < 20 && !(aliceGotFromBob.length === rounds && bobGot.length === rounds); t++) await tick();
          expect(aliceGotFromBob.length).toBe(rounds);
          expect(bobGot.length).toBe(rounds);
          aT.written.clear();
          bT.written.clear();
        }
      }
      expect(untyped).toEqual([]);
      expect(bobDisconnects).toBe(0);
      expect(alice.isConnected('bob')).toBe(true);
      expect(aliceGotFromBob).toEqual(Array.from({ length: rounds }, (_, i) => `b${i + 1}`));
      expect(bobGot).toEqual(Array.from({ length: rounds }, (_, i) => `a${i + 1}`));
      // The sessions went deep: messages were taken, and each kind of refusal happened.
      expect(fuzzMessages).toBeGreaterThan(10_000);
      for (const code of ['ERR_BAD_FRAME', 'ERR_FRAME_TOO_LARGE', 'ERR_NOT_IDENTIFIED', 'ERR_DUPLICATE_IDENTITY', 'ERR_INCOMPATIBLE_PROTOCOL']) {
        expect(codes.get(code) ?? 0).toBeGreaterThan(0);
      }
      // Only the connections that were open remain: the good one.
      expect(alice.connectedPeers().includes('bob')).toBe(true);
      await alice.close();
      await bob.close();
    },
    90_000,
  );
});

describe('regressions found by the fuzzer', () => {
  // A frame that makes Messaging close the connection, then a length prefix above the limit,
  // in one chunk: the decoder went on with the rest of the chunk after the close, threw
  // ERR_FRAME_TOO_LARGE, and the Packeter rethrew it out of the socket's data handler.
  const poison = Buffer.from('00000000' + 'ffffffff', 'hex');

  it('a broken frame then a too-large length prefix in one chunk: only that connection closes (in memory)', () => {
    const [aT] = memoryPair();
    const alice = new Messaging('alice', '', new Packeter(aT, { maxPacketSize: 4096 }));
    const errors: string[] = [];
    alice.on('error', (e) => errors.push((e as SnakeMQError).code));
    aT.connectTo('x');
    expect(() => aT.deliver('x', poison)).not.toThrow();
    expect(aT.open.has('x')).toBe(false);
    expect(errors).toEqual(['ERR_BAD_FRAME']);
    void alice.close();
  });

  it('the same bytes over loopback leave the peer serving others', async () => {
    const alice = makePeer('alice');
    const bob = makePeer('bob');
    const errors: string[] = [];
    alice.messaging.on('error', (e) => errors.push((e as SnakeMQError).code));
    const port = await listen(alice);
    const sock = net.connect(port, '127.0.0.1');
    sock.on('error', () => {});
    sock.resume(); // read (and drop) alice's handshake, so the end of the stream is seen
    await new Promise((r) => sock.once('connect', r));
    sock.write(poison);
    await new Promise((r) => sock.once('close', r));
    expect(errors).toEqual(['ERR_BAD_FRAME']);
    const got = waitFor<[string, string, Message]>(alice.messaging, 'message');
    connect(bob, port);
    await bob.messaging.sendMessage('alice', new Message('still here'));
    expect((await got)[2].body.toString()).toBe('still here');
    await closeAllPeers();
  });
});

describe('fuzzing a live peer over loopback', () => {
  it(
    '1,000 mutated sessions: no exception escapes, the well-behaved connection keeps working, heap after gc() grows < 10 MB',
    async () => {
      const child = spawnFixture('faults-fuzz-live.ts', [String(SEED + 2), '1000'], ['--expose-gc']);
      const line = await child.waitLine((l) => l.startsWith('{'), 80_000);
      expect(await child.exited).toBe(0);
      const r = JSON.parse(line) as {
        sessions: number;
        heapBefore: number;
        heapAfter: number;
        goodRounds: number;
        goodDisconnects: number;
        goodMissing: number;
        untypedErrors: string[];
        codes: Record<string, number>;
        fuzzMessages: number;
      };
      expect(r.sessions).toBe(1000);
      expect(r.untypedErrors).toEqual([]);
      expect(r.goodDisconnects).toBe(0);
      expect(r.goodMissing).toBe(0);
      expect(r.goodRounds).toBeGreaterThan(10);
      expect(r.fuzzMessages).toBeGreaterThan(100);
      expect(Object.keys(r.codes)).toContain('ERR_BAD_FRAME');
      expect(r.heapAfter - r.heapBefore).toBeLessThan(10 * 1024 * 1024);
    },
    90_000,
  );
});
