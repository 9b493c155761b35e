/**
 * The session rules on their own (src/session.ts: pure, time passed in), and the two ways a
 * Messaging peer meets peers that are not of version 2: an extension version 1 peer (plain
 * delivery, its messages acknowledged by uuid) and a version 2 peer that never sends its
 * resume (the sender starts after the wait).
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import type { ConnId } from '../src/link.js';
import { Message, Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import {
  FEATURE_ACKS,
  FEATURE_FLOW,
  FRAME_ACK,
  FRAME_MESSAGE,
  FRAME_SEQ_MESSAGE,
  type HelloFrame,
  encodeMessage,
} from '../src/protocol.js';
import { Session, type SessionConfig } from '../src/session.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { introduce } from './helpers/raw-peer.js';

const CONFIG: SessionConfig = {
  extensions: true,
  keepaliveWait: 500,
  resumeWait: 1000,
  initialInFlight: 4,
  initialInFlightBytes: 100,
  maxInFlight: 10,
  maxInFlightBytes: 1000,
};
const INC = Buffer.from('incarnat');
const hello = (extVersion: number, features: number, incarnation?: Buffer): HelloFrame => ({ kind: 'hello', extVersion, maxPacketSize: 4096, features, incarnation });

describe('Session', () => {
  it('decides the delivery mode at identification from the hello before it', () => {
    const cases: [HelloFrame | undefined, string][] = [
      [undefined, 'plain'],
      [hello(1, FEATURE_ACKS | FEATURE_FLOW), 'legacy'],
      [hello(2, FEATURE_ACKS, INC), 'sequenced'],
      [hello(3, FEATURE_ACKS, INC), 'sequenced'],
      [hello(2, FEATURE_ACKS), 'legacy'], // version 2 without its incarnation: not usable
      [hello(2, FEATURE_FLOW, INC), 'plain'], // no acks
      [hello(0, FEATURE_ACKS, INC), 'plain'],
    ];
    for (const [h, mode] of cases) {
      const s = new Session(CONFIG, 1 << 20, 0);
      if (h) s.hello(h);
      expect(s.identified('p', 0)).toBe(true);
      expect(s.mode, JSON.stringify(h)).toBe(mode);
      expect(s.ext).toBe(h !== undefined && h.extVersion >= 1);
      // a second identification is ignored
      expect(s.identified('q', 0)).toBe(false);
      expect(s.ident).toBe('p');
    }
    // a hello after identification, or with our extensions off, changes nothing
    const late = new Session(CONFIG, 1 << 20, 0);
    late.identified('p', 0);
    expect(late.hello(hello(2, FEATURE_ACKS, INC))).toBe(false);
    expect(late.ext).toBe(false);
    const off = new Session({ ...CONFIG, extensions: false }, 1 << 20, 0);
    expect(off.hello(hello(2, FEATURE_ACKS, INC))).toBe(false);
    off.identified('p', 0);
    expect(off.mode).toBe('plain');
  });

  it('a sequenced sender waits for the first resume (or resumeWait); only its own incarnation counts', () => {
    const s = new Session(CONFIG, 1 << 20, 0);
    s.hello(hello(2, FEATURE_ACKS, INC));
    s.identified('p', 100);
    expect(s.mayWrite(0, 0)).toBe(false);
    expect(s.resumeTimedOut(1099)).toBe(false);
    expect(s.resume(Buffer.from('someone!'), 50, INC)).toBe(0); // not ours: covers nothing
    expect(s.mayWrite(0, 0)).toBe(true);
    expect(s.resume(INC, 50, INC)).toBe(-1); // only the first one counts
    const t = new Session(CONFIG, 1 << 20, 0);
    t.hello(hello(2, FEATURE_ACKS, INC));
    t.identified('p', 100);
    expect(t.resume(INC, 50, INC)).toBe(50);
    const u = new Session(CONFIG, 1 << 20, 0);
    u.hello(hello(2, FEATURE_ACKS, INC));
    u.identified('p', 100);
    expect(u.resumeTimedOut(1100)).toBe(true);
    expect(u.mayWrite(0, 0)).toBe(true);
    expect(u.resumeTimedOut(2000)).toBe(false);
    // plain and legacy peers get no resume and need none
    const plain = new Session(CONFIG, 1 << 20, 0);
    plain.identified('p', 0);
    expect(plain.mayWrite(1000, 1 << 30)).toBe(true);
    expect(plain.resume(INC, 5, INC)).toBe(-1);
  });

  it('slow start: the allowance starts small, grows by what is acknowledged, one message always fits', () => {
    const s = new Session(CONFIG, 1 << 20, 0);
    s.hello(hello(2, FEATURE_ACKS, INC));
    s.identified('p', 0);
    s.resume(INC, 0, INC);
    expect(s.mayWrite(3, 10)).toBe(true);
    expect(s.mayWrite(4, 10)).toBe(false);
    expect(s.mayWrite(1, 100)).toBe(false);
    expect(s.mayWrite(0, 0)).toBe(true);
    s.acknowledged(4, 100);
    expect([s.window, s.windowBytes]).toEqual([8, 200]);
    s.acknowledged(100, 10_000);
    expect([s.window, s.windowBytes]).toEqual([10, 1000]);
    expect(Session.isNew(5, 4)).toBe(true);
    expect(Session.isNew(4, 4)).toBe(false);
  });

  it('keepalive: ping after keepaliveAfter of silence, close when the ping goes unanswered within keepaliveWait', () => {
    const s = new Session(CONFIG, 1 << 20, 0);
    s.keepaliveAfter = 1000;
    expect(s.keepaliveStep(400)).toEqual({ action: 'none', at: 1000 });
    s.received(600);
    expect(s.keepaliveStep(1000)).toEqual({ action: 'none', at: 1600 });
    expect(s.keepaliveStep(1600)).toEqual({ action: 'ping', at: 2100 });
    expect(s.keepaliveStep(1800)).toEqual({ action: 'none', at: 2100 });
    expect(s.keepaliveStep(2100)).toEqual({ action: 'close', at: 0 });
    const t = new Session(CONFIG, 1 << 20, 0);
    t.keepaliveAfter = 1000;
    expect(t.keepaliveStep(1000).action).toBe('ping');
    t.received(1200); // the pong
    expect(t.keepaliveStep(1500)).toEqual({ action: 'none', at: 2200 });
  });
});

describe('Messaging with peers that are not of extension version 2', () => {
  it('an extension version 1 peer gets version 1 frames (leaving the queue once written) and uuid acks of its messages', async () => {
    const [tr, ts] = memoryPair();
    const m = new Messaging('me', '', new Packeter(tr), { keepaliveInterval: 0 });
    const raw = new Packeter(ts);
    const kinds: number[] = [];
    const acks: string[] = [];
    raw.on('packet', (_c, p) => {
      kinds.push(p[0]);
      if (p[0] === FRAME_ACK) for (let o = 1; o < p.length; o += 16) acks.push(p.toString('hex', o, o + 16));
    });
    const got: string[] = [];
    m.on('message', (_c, _i, msg) => got.push(msg.body.toString()));
    const conn = 'c1' as ConnId;
    connectPair(tr, ts, conn);
    introduce(raw, conn, 'old', FEATURE_ACKS | FEATURE_FLOW, { extVersion: 1 });
    const uuids = [Buffer.alloc(16, 1), Buffer.alloc(16, 2), Buffer.alloc(16, 1)];
    for (const [i, uuid] of uuids.entries()) raw.sendPacket(conn, encodeMessage({ uuid, ttlMs: null, flags: 0, body: Buffer.from(`m${i}`) }));
    for (let i = 0; i < 100; i++) await m.sendMessage('old', new Message(`to-old ${i}`));
    for (let i = 0; i < 10; i++) await tick();
    // no dedup (version 1 keeps it by uuid, on its side only), every message acknowledged
    expect(got).toEqual(['m0', 'm1', 'm2']);
    expect(acks).toEqual(uuids.map((u) => u.toString('hex')));
    expect(m.peerSpeaksExtensions('old')).toBe(true);
    expect(kinds.filter((k) => k === FRAME_MESSAGE)).toHaveLength(100);
    expect(kinds).not.toContain(FRAME_SEQ_MESSAGE);
    expect(m.queueSize('old')).toBe(0);
    await m.close();
  });

  it('a version 2 peer that never sends its resume gets our messages after keepaliveWait', async () => {
    const clock = new ManualClock(0);
    const [tr, ts] = memoryPair();
    const m = new Messaging('me', '', new Packeter(tr), { keepaliveInterval: 0, keepaliveWait: 3000, clock });
    const raw = new Packeter(ts);
    let seqMessages = 0;
    raw.on('packet', (_c, p) => void (p[0] === FRAME_SEQ_MESSAGE && seqMessages++));
    await m.sendMessage('mute', new Message('hello'));
    const conn = 'c1' as ConnId;
    connectPair(tr, ts, conn);
    introduce(raw, conn, 'mute', FEATURE_ACKS | FEATURE_FLOW);
    for (let i = 0; i < 10; i++) await tick();
    clock.advance(2999);
    for (let i = 0; i < 10; i++) await tick();
    expect(seqMessages).toBe(0);
    clock.advance(1);
    for (let i = 0; i < 10; i++) await tick();
    expect(seqMessages).toBe(1);
    expect(m.queueSize('mute')).toBe(1); // sent, not acknowledged
    await m.close();
  });
});
