/**
 * A plain snakeMQ 1.6-style peer (ours with `extensions: false`, or raw bytes as snakeMQ sends
 * them) and an extension peer: messages flow both ways with version-1 semantics — no hello from
 * the plain peer, no ack frames to it, and a message to it leaves the queue once written.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { PacketDecoder } from '../src/packet-decoder.js';
import { type Frame, decodeFrame, encodeIdentification, encodeMessage, encodeProtocolVersion } from '../src/protocol.js';
import { closeAllPeers, connect, listen, makePeer, type Peer } from './helpers/peers.js';
import { until } from './helpers/wait.js';

const raws: net.Socket[] = [];
afterEach(async () => {
  for (const s of raws.splice(0)) s.destroy();
  await closeAllPeers();
});

/** Kinds of the frames a peer receives, per remote identity once known (by connection). */
function tapFrames(peer: Peer): Map<string, Frame['kind'][]> {
  const byConn = new Map<string, Frame['kind'][]>();
  peer.packeter.on('packet', (connId, payload) => {
    const list = byConn.get(connId) ?? [];
    byConn.set(connId, list);
    try {
      list.push(decodeFrame(payload).kind);
    } catch {
      list.push('unknown');
    }
  });
  return byConn;
}

function framesFrom(peer: Peer, tap: Map<string, Frame['kind'][]>, ident: string): Frame['kind'][] {
  const connId = peer.messaging.connectionOf(ident);
  expect(connId).toBeDefined();
  return tap.get(connId!) ?? [];
}

/** Record message-sent / message-delivered order per uuid. */
function lifecycle(peer: Peer): Array<[string, string]> {
  const events: Array<[string, string]> = [];
  peer.messaging.on('message-sent', (_c, _i, uuid) => events.push(['sent', uuid.toString('hex')]));
  peer.messaging.on('message-delivered', (_i, uuid) => events.push(['delivered', uuid.toString('hex')]));
  return events;
}

describe('a plain snakeMQ 1.6-style peer and an extension peer', () => {
  for (const plainListens of [true, false]) {
    it(
      `exchange messages both ways with version-1 semantics (${plainListens ? 'plain' : 'extension'} peer listens)`,
      async () => {
        // A tiny in-flight window: with acks expected from a plain peer it would stall at once.
        const ext = makePeer('ext', { maxInFlight: 4 });
        const plain = makePeer('py', { extensions: false });
        const extTap = tapFrames(ext);
        const plainTap = tapFrames(plain);
        const extEvents = lifecycle(ext);
        const plainEvents = lifecycle(plain);
        const toPlain: string[] = [];
        const toExt: string[] = [];
        plain.messaging.on('message', (_c, ident, m) => {
          expect(ident).toBe('ext');
          toPlain.push(m.body.toString());
        });
        ext.messaging.on('message', (_c, ident, m) => {
          expect(ident).toBe('py');
          toExt.push(m.body.toString());
        });
        if (plainListens) connect(ext, await listen(plain));
        else connect(plain, await listen(ext));
        const N = 2000;
        const sends: Promise<void>[] = [];
        for (let i = 0; i < N; i++) {
          sends.push(ext.messaging.sendMessage('py', new Message(`e${i}`)));
          sends.push(plain.messaging.sendMessage('ext', new Message(`p${i}`)));
        }
        await Promise.all(sends);
        await until(() => toPlain.length === N && toExt.length === N, 20_000, 'both directions');
        await until(() => ext.messaging.queueSize('py') === 0 && plain.messaging.queueSize('ext') === 0);
        expect(toPlain).toEqual(Array.from({ length: N }, (_, i) => `e${i}`));
        expect(toExt).toEqual(Array.from({ length: N }, (_, i) => `p${i}`));

        // On the wire: the plain peer sent no hello and no ack; it was sent no ack.
        const fromPlain = framesFrom(ext, extTap, 'py');
        const fromExt = framesFrom(plain, plainTap, 'ext');
        expect(fromPlain).not.toContain('hello');
        expect(fromPlain).not.toContain('ack');
        expect(fromExt).not.toContain('ack');
        expect(fromPlain.filter((k) => k === 'message')).toHaveLength(N);
        expect(fromExt.filter((k) => k === 'message')).toHaveLength(N);
        // The extension peer still offered its hello (a plain peer ignores it, as snakeMQ 1.6 does).
        expect(fromExt).toContain('hello');

        // Each message left the queue when written: delivered right after sent, never before.
        for (const events of [extEvents, plainEvents]) {
          const sentAt = new Map<string, number>();
          events.forEach(([kind, u], i) => {
            if (kind === 'sent') sentAt.set(u, i);
            else {
              expect(sentAt.has(u)).toBe(true);
              expect(sentAt.get(u)!).toBeLessThan(i);
            }
          });
          expect(events.filter(([k]) => k === 'delivered')).toHaveLength(N);
        }
      },
      30_000,
    );
  }

  it(
    'an extension peer with one extension and one plain neighbour: sequenced delivery and acks only with the extension one',
    async () => {
      const alice = makePeer('alice');
      const bob = makePeer('bob');
      const py = makePeer('py', { extensions: false });
      const aliceTap = tapFrames(alice);
      const bobTap = tapFrames(bob);
      const pyTap = tapFrames(py);
      const port = await listen(alice);
      connect(bob, port);
      connect(py, port);
      const got: string[] = [];
      alice.messaging.on('message', (_c, ident, m) => got.push(`${ident}:${m.body}`));
      const bobGot: string[] = [];
      const pyGot: string[] = [];
      bob.messaging.on('message', (_c, _i, m) => bobGot.push(m.body.toString()));
      py.messaging.on('message', (_c, _i, m) => pyGot.push(m.body.toString()));
      for (let i = 0; i < 100; i++) {
        await bob.messaging.sendMessage('alice', new Message(`b${i}`));
        await py.messaging.sendMessage('alice', new Message(`p${i}`));
        await alice.messaging.sendMessage('bob', new Message(`a${i}`));
        await alice.messaging.sendMessage('py', new Message(`a${i}`));
      }
      await until(() => got.length === 200 && bobGot.length === 100 && pyGot.length === 100, 10_000);
      await until(() => bob.messaging.queueSize('alice') === 0 && alice.messaging.queueSize('bob') === 0);
      expect(got.filter((s) => s.startsWith('bob:'))).toEqual(Array.from({ length: 100 }, (_, i) => `bob:b${i}`));
      expect(got.filter((s) => s.startsWith('py:'))).toEqual(Array.from({ length: 100 }, (_, i) => `py:p${i}`));
      // extension peers: sequenced messages, a resume each way, cumulative acks; the plain one
      // gets exactly version 1
      for (const kind of ['ack', 'seq-ack', 'resume', 'seq-message']) {
        expect(framesFrom(py, pyTap, 'alice')).not.toContain(kind);
        expect(framesFrom(alice, aliceTap, 'py')).not.toContain(kind);
      }
      for (const kind of ['seq-ack', 'resume', 'seq-message']) {
        expect(framesFrom(bob, bobTap, 'alice')).toContain(kind);
        expect(framesFrom(alice, aliceTap, 'bob')).toContain(kind);
      }
      expect(framesFrom(alice, aliceTap, 'bob')).not.toContain('message');
      expect(framesFrom(alice, aliceTap, 'py')).toContain('message');
      expect(framesFrom(alice, aliceTap, 'py')).not.toContain('hello');
    },
    20_000,
  );

  it(
    'raw snakeMQ 1.6 bytes: the extension peer takes its messages, sends it messages, and never an ack',
    async () => {
      const ext = makePeer('ext', { maxInFlight: 1 });
      const port = await listen(ext);
      const got: string[] = [];
      ext.messaging.on('message', (_c, ident, m) => got.push(`${ident}:${m.body}`));
      const delivered: string[] = [];
      ext.messaging.on('message-delivered', (_i, uuid) => delivered.push(uuid.toString('hex')));
      const sock = net.connect(port, '127.0.0.1');
      raws.push(sock);
      const frames: Frame[] = [];
      const decoder = new PacketDecoder();
      sock.on('data', (d) => decoder.push(d, (p) => frames.push(decodeFrame(Buffer.from(p)))));
      const packet = (frame: Buffer): Buffer => {
        const h = Buffer.alloc(4);
        h.writeUInt32BE(frame.length);
        return Buffer.concat([h, frame]);
      };
      // Exactly what snakeMQ 1.6 sends: version, identification, then messages.
      sock.write(packet(encodeProtocolVersion(1)));
      sock.write(packet(encodeIdentification('py')));
      for (let i = 0; i < 20; i++) {
        const uuid = Buffer.alloc(16, i);
        sock.write(packet(encodeMessage({ uuid, ttlMs: 600_000, flags: 0, body: Buffer.from(`m${i}`) })));
      }
      await until(() => got.length === 20);
      expect(got).toEqual(Array.from({ length: 20 }, (_, i) => `py:m${i}`));
      const out = Array.from({ length: 10 }, (_, i) => new Message(`r${i}`));
      for (const m of out) await ext.messaging.sendMessage('py', m);
      await until(() => frames.filter((f) => f.kind === 'message').length === 10);
      await until(() => delivered.length === 10);
      expect(ext.messaging.queueSize('py')).toBe(0);
      expect(delivered).toEqual(out.map((m) => m.uuidHex));
      const kinds = frames.map((f) => f.kind);
      expect(kinds.slice(0, 3)).toEqual(['version', 'hello', 'ident']);
      expect(kinds).not.toContain('ack');
      expect(
        frames.flatMap((f) => (f.kind === 'message' ? [f.body.toString()] : [])),
      ).toEqual(out.map((m) => m.body.toString()));
    },
    15_000,
  );
});
