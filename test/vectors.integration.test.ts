/**
 * The recorded bytes of a real Python snakeMQ 1.6 peer, replayed over a real socket into our
 * peer: it must react as snakeMQ did (except huge-length-prefix, which we refuse at once).
 * Encoding of every vector's frames is checked byte for byte in protocol.test.ts.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { PacketDecoder } from '../src/packet-decoder.js';
import { wireVectors } from './helpers/fixtures.js';
import { closeAllPeers, listen, makePeer } from './helpers/peers.js';
import { until, waitFor } from './helpers/wait.js';

interface Vector {
  name: string;
  frames?: string[];
  sent?: string;
  decoded?: Array<[string, string, string, number, number]>;
  closed?: boolean;
  first_closed?: boolean;
  second_closed?: boolean;
}
const vectors = wireVectors<Vector>();
const vector = (name: string): Vector => {
  const v = vectors.find((x) => x.name === name);
  if (!v) throw new Error(`no vector ${name}`);
  return v;
};

const VERSION = '000000050000000001';
const identFrame = (ident: string): string => {
  const b = Buffer.from(ident);
  const h = Buffer.alloc(5);
  h.writeUInt32BE(b.length + 1);
  h[4] = 2;
  return Buffer.concat([h, b]).toString('hex');
};

/** A raw TCP client that plays a plain snakeMQ 1.6 peer byte by byte. */
class RawPeer {
  readonly sock: net.Socket;
  readonly frames: string[] = [];
  closed = false;
  private readonly decoder = new PacketDecoder();
  constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.on('data', (d) =>
      this.decoder.push(d, (p) => {
        const h = Buffer.alloc(4);
        h.writeUInt32BE(p.length);
        this.frames.push(Buffer.concat([h, p]).toString('hex'));
      }),
    );
    this.sock.on('close', () => (this.closed = true));
    this.sock.on('error', () => {});
    raws.push(this);
  }
  write(hex: string): void {
    this.sock.write(Buffer.from(hex, 'hex'));
  }
  /** Version + identification, as snakeMQ sends on connect. */
  handshake(ident: string): void {
    this.write(VERSION + identFrame(ident));
  }
}
const raws: RawPeer[] = [];

afterEach(async () => {
  for (const r of raws.splice(0)) r.sock.destroy();
  await closeAllPeers();
});

describe('replaying snakeMQ 1.6 vectors into our peer', () => {
  it('handshake-from-snakemq: we send version then identification, the same bytes (hello between when offering extensions)', async () => {
    const v = vector('handshake-from-snakemq');
    const plain = makePeer('py', { extensions: false });
    const raw = new RawPeer(await listen(plain));
    await until(() => raw.frames.length >= 2);
    expect(raw.frames.slice(0, 2)).toEqual(v.frames);

    const ext = makePeer('py');
    const raw2 = new RawPeer(await listen(ext));
    await until(() => raw2.frames.length >= 3);
    expect(raw2.frames[0]).toBe(v.frames![0]);
    expect(raw2.frames[1].slice(8, 10)).toBe('10'); // hello
    expect(raw2.frames[2]).toBe(v.frames![1]);
  });

  it('accepts a plain peer that sends no hello and identifies it', async () => {
    const v = vector('handshake-from-snakemq');
    const us = makePeer('us');
    const raw = new RawPeer(await listen(us));
    const connected = waitFor<[string, string]>(us.messaging, 'connect');
    raw.write(v.frames!.join(''));
    expect((await connected)[1]).toBe('py');
  });

  for (const name of ['message-ttl-600', 'message-ttl-none-persistent-flag', 'message-ttl-0-empty-body', 'message-ttl-fraction']) {
    it(`${name}: decoded as snakeMQ meant it`, async () => {
      const frame = vector(name).frames![0];
      const bytes = Buffer.from(frame, 'hex');
      const us = makePeer('us');
      const raw = new RawPeer(await listen(us));
      const got = waitFor<[string, string, Message]>(us.messaging, 'message');
      raw.handshake('py');
      raw.write(frame);
      const [, ident, m] = await got;
      expect(ident).toBe('py');
      expect(m.uuid.equals(bytes.subarray(5, 21))).toBe(true);
      const wireTtl = bytes.readUInt32BE(21);
      expect(m.ttl).toBe(wireTtl === 0xffffffff ? null : wireTtl * 1000);
      expect(m.flags).toBe(bytes.readUInt32BE(25));
      expect(m.body.equals(bytes.subarray(29))).toBe(true);
      // a plain peer gets no acknowledgement frames
      expect(raw.frames.some((f) => f.slice(8, 10) === '11')).toBe(false);
    });
  }

  it('message-to-snakemq: what we send to a plain peer is the recorded frame', async () => {
    const v = vector('message-to-snakemq');
    const [ident, body, uuidHex, ttlS, flags] = v.decoded![0];
    const us = makePeer('us');
    const raw = new RawPeer(await listen(us));
    raw.handshake(ident);
    await waitFor(us.messaging, 'connect');
    const delivered = waitFor(us.messaging, 'message-delivered');
    await us.messaging.sendMessage(ident, new Message(body, { uuid: Buffer.from(uuidHex, 'hex'), ttl: ttlS * 1000, flags }));
    await until(() => raw.frames.includes(v.sent!));
    await delivered; // fully written to a plain peer = delivered
    expect(us.messaging.queueSize(ident)).toBe(0);
  });

  it('ping-pong: a ping is answered with a pong', async () => {
    const v = vector('ping-pong');
    const us = makePeer('us');
    const raw = new RawPeer(await listen(us));
    raw.handshake('py');
    raw.write(v.sent!);
    await until(() => raw.frames.includes(v.frames![0]));
  });

  it('unknown-frame-type-ignored: the connection stays open and the ping after it is answered', async () => {
    const v = vector('unknown-frame-type-ignored');
    const us = makePeer('us');
    const raw = new RawPeer(await listen(us));
    raw.handshake('py');
    await waitFor(us.messaging, 'connect');
    raw.write(v.sent!);
    await until(() => raw.frames.includes(v.frames![0]));
    expect(raw.closed).toBe(false);
    expect(us.messaging.isConnected('py')).toBe(true);
  });

  it('short-message-closes: a message frame under 25 bytes closes the connection with ERR_BAD_FRAME', async () => {
    const v = vector('short-message-closes');
    const us = makePeer('us');
    const errors: Array<Error & { code?: string }> = [];
    us.messaging.on('error', (e) => errors.push(e));
    const raw = new RawPeer(await listen(us));
    raw.handshake('py');
    raw.write(v.sent!);
    await until(() => raw.closed);
    expect(v.closed).toBe(true);
    expect(errors.map((e) => e.code)).toEqual(['ERR_BAD_FRAME']);
  });

  it('incompatible-version: answered with an incompatible-protocol frame, then closed', async () => {
    const v = vector('incompatible-version');
    const us = makePeer('us');
    const errors: Array<Error & { code?: string }> = [];
    us.messaging.on('error', (e) => errors.push(e));
    const raw = new RawPeer(await listen(us));
    raw.write(v.sent!);
    await until(() => raw.closed);
    expect(raw.frames).toContain(v.frames![0]);
    expect(errors.map((e) => e.code)).toEqual(['ERR_INCOMPATIBLE_PROTOCOL']);
  });

  it('receiving an incompatible-protocol frame is reported, nothing is closed', async () => {
    const us = makePeer('us');
    const raw = new RawPeer(await listen(us));
    raw.handshake('py');
    await waitFor(us.messaging, 'connect');
    const err = waitFor<[Error & { code: string }]>(us.messaging, 'error');
    raw.write('0000000101' + '0000000104');
    expect((await err)[0].code).toBe('ERR_INCOMPATIBLE_PROTOCOL');
    await until(() => raw.frames.includes('0000000105'));
    expect(raw.closed).toBe(false);
  });

  it('message-before-ident-closes: a message before identification closes with ERR_NOT_IDENTIFIED', async () => {
    expect(vector('message-before-ident-closes').closed).toBe(true);
    const us = makePeer('us');
    const errors: Array<Error & { code?: string }> = [];
    us.messaging.on('error', (e) => errors.push(e));
    const raw = new RawPeer(await listen(us));
    raw.write(VERSION + vector('message-ttl-600').frames![0]);
    await until(() => raw.closed);
    expect(errors.map((e) => e.code)).toEqual(['ERR_NOT_IDENTIFIED']);
  });

  it('duplicate-ident-closes: the second connection claiming an identity is closed, the first stays', async () => {
    const v = vector('duplicate-ident-closes');
    const us = makePeer('us');
    const port = await listen(us);
    const first = new RawPeer(port);
    first.handshake('dup');
    await waitFor(us.messaging, 'connect');
    const err = waitFor<[Error & { code: string }]>(us.messaging, 'error');
    const second = new RawPeer(port);
    second.handshake('dup');
    expect((await err)[0].code).toBe('ERR_DUPLICATE_IDENTITY');
    await until(() => second.closed);
    expect(second.closed).toBe(v.second_closed);
    first.write('0000000104');
    await until(() => first.frames.includes('0000000105'));
    expect(first.closed).toBe(v.first_closed);
    expect(us.messaging.isConnected('dup')).toBe(true);
  });

  it('huge-length-prefix: refused at once with ERR_FRAME_TOO_LARGE (snakeMQ would buffer), other connections unaffected', async () => {
    expect(vector('huge-length-prefix').closed).toBe(false); // what snakeMQ did; we do better
    const us = makePeer('us');
    const errors: Array<Error & { code?: string }> = [];
    us.packeter.on('error', (e) => errors.push(e));
    const port = await listen(us);
    const good = new RawPeer(port);
    good.handshake('good');
    await waitFor(us.messaging, 'connect');
    const bad = new RawPeer(port);
    bad.write('fffffff0');
    await until(() => bad.closed);
    expect(errors.map((e) => e.code)).toEqual(['ERR_FRAME_TOO_LARGE']);
    good.write('0000000104');
    await until(() => good.frames.includes('0000000105'));
    expect(us.messaging.isConnected('good')).toBe(true);
  });

  it('keepalive-ping: pinged after the interval, closed when nothing arrives within the wait', async () => {
    const v = vector('keepalive-ping');
    const us = makePeer('us', { keepaliveInterval: 500, keepaliveWait: 500 });
    const raw = new RawPeer(await listen(us));
    raw.handshake('py');
    const start = performance.now();
    await until(() => raw.frames.includes(v.frames![0]), 5000);
    expect(performance.now() - start).toBeGreaterThanOrEqual(450);
    await until(() => raw.closed, 5000);
    expect(performance.now() - start).toBeGreaterThanOrEqual(900);
  });

  it('a remote identity up to 255 bytes is accepted, a longer one closes the connection', async () => {
    const us = makePeer('us');
    const port = await listen(us);
    const ok = new RawPeer(port);
    const long = 'é'.repeat(127) + 'x'; // 255 bytes
    ok.handshake(long);
    expect((await waitFor<[string, string]>(us.messaging, 'connect'))[1]).toBe(long);
    const tooLong = new RawPeer(port);
    const errors: Array<Error & { code?: string }> = [];
    us.messaging.on('error', (e) => errors.push(e));
    tooLong.handshake('y'.repeat(256));
    await until(() => tooLong.closed);
    expect(errors.map((e) => e.code)).toEqual(['ERR_BAD_FRAME']);
  });
});
