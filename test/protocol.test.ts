/**
 * The frame codec against the bytes recorded from a real snakeMQ 1.6 peer, plus properties.
 *
 * Vectors covered here: handshake-from-snakemq, message-ttl-600, message-ttl-none-persistent-flag,
 * message-ttl-0-empty-body, message-ttl-fraction, message-to-snakemq, ping-pong,
 * unknown-frame-type-ignored, short-message-closes, incompatible-version, keepalive-ping (its
 * ping frame only).
 *
 * Vectors whose behaviour needs a connection, a clock or the RPC codec are tested elsewhere
 * (messaging / packeter / rpc tests), not here: message-before-ident-closes,
 * duplicate-ident-closes, huge-length-prefix, keepalive-ping (ping after the interval, close
 * without pong), rpc-call-add, rpc-call-exception; also the connection reactions (`closed`) of
 * unknown-frame-type-ignored, short-message-closes and incompatible-version.
 */
import { wireVectors } from './helpers/fixtures.js';
import { prng } from './helpers/prng.js';
import { describe, expect, it } from 'vitest';
import { BadFrameError, SnakeMQError } from '../src/errors.js';
import {
  decodeFrame,
  encodeAck,
  encodeHello,
  encodeResume,
  encodeSeqAck,
  encodeSeqMessage,
  encodeSeqMessageHeader,
  MAX_SEQ,
  SEQ_MESSAGE_FRAME_HEAD_SIZE,
  encodeIdentification,
  encodeIncompatibleProtocol,
  encodeMessage,
  encodeMessageHeader,
  encodePing,
  encodePong,
  encodeProtocolVersion,
  EXTENSION_VERSION,
  FEATURE_ACKS,
  FEATURE_FLOW,
  FLAG_PERSISTENT,
  FRAME_HELLO,
  MAX_REMOTE_IDENT_BYTES,
  TTL_INFINITE_WIRE,
  ttlMsToWire,
  type Frame,
} from '../src/protocol.js';

interface Vector {
  name: string;
  frames?: string[];
  sent?: string;
  decoded?: [string, string, string, number | null, number][];
  [key: string]: unknown;
}

const vectors = wireVectors<Vector>();

function vector(name: string): Vector {
  const v = vectors.find((x) => x.name === name);
  if (!v) throw new Error(`no vector ${name}`);
  return v;
}

/** Prefix a frame with its uint32 BE length, as the packet layer does. */
function packet(frame: Uint8Array): Buffer {
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(frame.length);
  return Buffer.concat([prefix, frame]);
}

/** Split length-prefixed bytes into frames, checking each prefix against what follows. */
function unpack(hex: string): Buffer[] {
  const bytes = Buffer.from(hex, 'hex');
  const frames: Buffer[] = [];
  let off = 0;
  while (off < bytes.length) {
    expect(bytes.length - off).toBeGreaterThanOrEqual(4);
    const n = bytes.readUInt32BE(off);
    expect(bytes.length - off - 4).toBeGreaterThanOrEqual(n);
    frames.push(bytes.subarray(off + 4, off + 4 + n));
    off += 4 + n;
  }
  return frames;
}

/** Strip the length prefix of one recorded packet, checking the prefix equals the payload length. */
function single(hex: string): Buffer {
  const bytes = Buffer.from(hex, 'hex');
  expect(bytes.readUInt32BE(0)).toBe(bytes.length - 4);
  return bytes.subarray(4);
}

/** One recorded frame: what it must decode to, and the encoder call that must reproduce it. */
interface Expected {
  frame: Frame;
  encode?: () => Buffer;
}

const uuid = (hex: string): Buffer => Buffer.from(hex, 'hex');

/** Expectations for each vector's `frames` (what snakeMQ sent), in order. */
const expectedFrames: Record<string, Expected[]> = {
  'handshake-from-snakemq': [
    { frame: { kind: 'version', version: 1 }, encode: () => encodeProtocolVersion() },
    { frame: { kind: 'ident', ident: 'py' }, encode: () => encodeIdentification('py') },
  ],
  'message-ttl-600': [
    {
      frame: {
        kind: 'message',
        uuid: uuid('000102030405060708090a0b0c0d0e0f'),
        ttlMs: 600_000,
        flags: 0,
        body: Buffer.from('hello'),
      },
      encode: () =>
        encodeMessage({ uuid: uuid('000102030405060708090a0b0c0d0e0f'), ttlMs: 600_000, flags: 0, body: Buffer.from('hello') }),
    },
  ],
  'message-ttl-none-persistent-flag': [
    {
      frame: {
        kind: 'message',
        uuid: uuid('101112131415161718191a1b1c1d1e1f'),
        ttlMs: null,
        flags: FLAG_PERSISTENT,
        body: Buffer.from('00ff62696e617279', 'hex'),
      },
      encode: () =>
        encodeMessage({
          uuid: uuid('101112131415161718191a1b1c1d1e1f'),
          ttlMs: null,
          flags: FLAG_PERSISTENT,
          body: Buffer.from('\x00\xffbinary', 'latin1'),
        }),
    },
  ],
  'message-ttl-0-empty-body': [
    {
      frame: { kind: 'message', uuid: uuid('202122232425262728292a2b2c2d2e2f'), ttlMs: 0, flags: 0, body: Buffer.alloc(0) },
      encode: () => encodeMessage({ uuid: uuid('202122232425262728292a2b2c2d2e2f'), ttlMs: 0, flags: 0, body: new Uint8Array(0) }),
    },
  ],
  'message-ttl-fraction': [
    {
      // snakeMQ was given 2.9 s and sent 2: we give 2900 ms and must send 2 as well.
      frame: { kind: 'message', uuid: uuid('303132333435363738393a3b3c3d3e3f'), ttlMs: 2000, flags: 0, body: Buffer.from('xxx') },
      encode: () => encodeMessage({ uuid: uuid('303132333435363738393a3b3c3d3e3f'), ttlMs: 2900, flags: 0, body: Buffer.from('xxx') }),
    },
  ],
  'ping-pong': [{ frame: { kind: 'pong' }, encode: () => encodePong() }],
  'unknown-frame-type-ignored': [{ frame: { kind: 'pong' }, encode: () => encodePong() }],
  'incompatible-version': [{ frame: { kind: 'incompatible' }, encode: () => encodeIncompatibleProtocol() }],
  'keepalive-ping': [{ frame: { kind: 'ping' }, encode: () => encodePing() }],
};

/** Expectations for each vector's `sent` bytes (what was sent to snakeMQ), in order. */
const expectedSent: Record<string, Expected[] | 'bad-frame'> = {
  'message-to-snakemq': [
    {
      frame: {
        kind: 'message',
        uuid: uuid('000102030405060708090a0b0c0d0e0f'),
        ttlMs: 30_000,
        flags: FLAG_PERSISTENT,
        body: Buffer.from('payload from raw'),
      },
      encode: () =>
        encodeMessage({
          uuid: uuid('000102030405060708090a0b0c0d0e0f'),
          ttlMs: 30_000,
          flags: FLAG_PERSISTENT,
          body: Buffer.from('payload from raw'),
        }),
    },
  ],
  'ping-pong': [{ frame: { kind: 'ping' }, encode: () => encodePing() }],
  // 0x10 is our hello type; 3 payload bytes are too short for a hello, so it is ignored like
  // any unknown frame, as snakeMQ does. The ping after it still decodes.
  'unknown-frame-type-ignored': [{ frame: { kind: 'unknown', type: FRAME_HELLO } }, { frame: { kind: 'ping' }, encode: () => encodePing() }],
  'short-message-closes': 'bad-frame',
  'incompatible-version': [{ frame: { kind: 'version', version: 2 }, encode: () => encodeProtocolVersion(2) }],
};

describe('snakeMQ 1.6 wire vectors', () => {
  it('every vector is covered here or named as covered elsewhere', () => {
    const elsewhere = [
      'message-before-ident-closes',
      'duplicate-ident-closes',
      'huge-length-prefix',
      'rpc-call-add',
      'rpc-call-exception',
    ];
    for (const v of vectors) {
      const here = v.name in expectedFrames || v.name in expectedSent;
      expect(here || elsewhere.includes(v.name), v.name).toBe(true);
      if (v.frames) expect(expectedFrames[v.name], `${v.name} frames`).toBeDefined();
      if (v.sent !== undefined) expect(expectedSent[v.name], `${v.name} sent`).toBeDefined();
    }
  });

  for (const v of vectors.filter((x) => x.frames)) {
    it(`${v.name}: the recorded frames decode as expected and our encoder produces them`, () => {
      const expected = expectedFrames[v.name]!;
      expect(v.frames).toHaveLength(expected.length);
      v.frames!.forEach((hex, i) => {
        const e = expected[i]!;
        expect(decodeFrame(single(hex))).toEqual(e.frame);
        expect(e.encode, `${v.name} frame ${i} encoder`).toBeDefined();
        expect(packet(e.encode!()).toString('hex')).toBe(hex);
      });
    });
  }

  for (const v of vectors.filter((x) => x.sent !== undefined)) {
    it(`${v.name}: the bytes sent to snakeMQ decode as expected`, () => {
      const expected = expectedSent[v.name]!;
      const frames = unpack(v.sent!);
      if (expected === 'bad-frame') {
        expect(frames).toHaveLength(1);
        let caught: unknown;
        try {
          decodeFrame(frames[0]!);
        } catch (err) {
          caught = err;
        }
        expect(caught).toBeInstanceOf(BadFrameError);
        expect((caught as BadFrameError).code).toBe('ERR_BAD_FRAME');
        expect((caught as BadFrameError).fault).toBe('remote');
        return;
      }
      expect(frames).toHaveLength(expected.length);
      frames.forEach((f, i) => {
        const e = expected[i]!;
        expect(decodeFrame(f)).toEqual(e.frame);
        if (e.encode) expect(e.encode().equals(f)).toBe(true);
      });
      if (expected.every((e) => e.encode)) {
        expect(Buffer.concat(expected.map((e) => packet(e.encode!()))).toString('hex')).toBe(v.sent);
      }
    });
  }

  it('message-to-snakemq: the fields agree with what snakeMQ decoded (ident is the sender, not in the frame)', () => {
    const v = vector('message-to-snakemq');
    const [ident, body, uuidHex, ttlS, flags] = v.decoded![0]!;
    expect(ident).toBe('raw');
    const f = decodeFrame(unpack(v.sent!)[0]!);
    expect(f.kind).toBe('message');
    if (f.kind !== 'message') return;
    expect(f.body.toString('utf8')).toBe(body);
    expect(f.uuid.toString('hex')).toBe(uuidHex);
    expect(f.ttlMs).toBe(ttlS === null ? null : ttlS * 1000);
    expect(f.flags).toBe(flags);
  });
});


function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

function expectBadFrame(frame: Buffer): void {
  let caught: unknown;
  try {
    decodeFrame(frame);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(BadFrameError);
  expect((caught as BadFrameError).code).toBe('ERR_BAD_FRAME');
}

describe('message frames', () => {
  it('round-trip 2,000 random uuids, TTLs, flags and bodies; header + body equals the whole frame', () => {
    const rnd = prng(0x5eed);
    for (let i = 0; i < 2000; i++) {
      const id = randomBytes(rnd, 16);
      const pick = rnd();
      const ttlMs =
        pick < 0.1 ? null : pick < 0.2 ? 0 : pick < 0.6 ? rnd() * 100_000 : pick < 0.9 ? Math.floor(rnd() * 2 ** 32) * 1000 : rnd() * 1e13;
      const flags = rnd() < 0.5 ? Math.floor(rnd() * 2) : Math.floor(rnd() * 2 ** 32);
      const body = randomBytes(rnd, Math.floor(rnd() * (rnd() < 0.9 ? 64 : 4096)));
      const whole = encodeMessage({ uuid: id, ttlMs, flags, body });
      expect(Buffer.concat([encodeMessageHeader({ uuid: id, ttlMs, flags }), body]).equals(whole)).toBe(true);
      const f = decodeFrame(whole);
      const wire = ttlMs === null ? null : Math.min(Math.max(Math.floor(ttlMs / 1000), 0), 0xfffffffe);
      if (f.kind !== 'message') throw new Error(f.kind);
      expect([f.ttlMs, f.flags]).toEqual([wire === null ? null : wire * 1000, flags]);
      expect(f.uuid.equals(id) && f.body.equals(body)).toBe(true);
    }
  });

  it('truncates fractional TTL seconds: 2900 ms goes out as 2 s', () => {
    const f = encodeMessage({ uuid: new Uint8Array(16), ttlMs: 2900, flags: 0, body: new Uint8Array(0) });
    expect(f.readUInt32BE(17)).toBe(2);
    expect(ttlMsToWire(999)).toBe(0);
    expect(ttlMsToWire(1000)).toBe(1);
  });

  it('clamps TTL to 0..0xfffffffe and keeps 0xffffffff for infinite', () => {
    expect(ttlMsToWire(-5000)).toBe(0);
    expect(ttlMsToWire(0xffffffff * 1000)).toBe(0xfffffffe);
    expect(ttlMsToWire(Number.MAX_VALUE)).toBe(0xfffffffe);
    expect(ttlMsToWire(Infinity)).toBe(0xfffffffe);
    expect(ttlMsToWire(null)).toBe(TTL_INFINITE_WIRE);
    const f = encodeMessageHeader({ uuid: new Uint8Array(16), ttlMs: 1e15, flags: 0 });
    expect(f).toHaveLength(25);
    expect(f.readUInt32BE(17)).toBe(0xfffffffe);
    expect(decodeFrame(f)).toMatchObject({ ttlMs: 0xfffffffe * 1000 });
  });

  it('refuses bad arguments with InvalidArgumentError', () => {
    const ok = { uuid: new Uint8Array(16), ttlMs: 0, flags: 0, body: new Uint8Array(0) };
    expect(() => encodeMessage({ ...ok, uuid: new Uint8Array(15) })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeMessage({ ...ok, flags: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeMessage({ ...ok, flags: 2 ** 32 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeMessage({ ...ok, ttlMs: NaN })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('decodes uuid and body as views of the frame', () => {
    const frame = encodeMessage({ uuid: new Uint8Array(16).fill(7), ttlMs: null, flags: 0, body: Buffer.from('abc') });
    const f = decodeFrame(frame);
    if (f.kind !== 'message') throw new Error(f.kind);
    expect(f.body.buffer).toBe(frame.buffer);
    expect(f.uuid.buffer).toBe(frame.buffer);
  });

  it('a message frame of exactly 25 bytes has an empty body; 24 bytes is broken', () => {
    expect(decodeFrame(Buffer.concat([Buffer.from([3]), Buffer.alloc(24)]))).toMatchObject({ kind: 'message', body: Buffer.alloc(0) });
    expectBadFrame(Buffer.concat([Buffer.from([3]), Buffer.alloc(23)]));
  });
});

describe('other frames', () => {
  it('an empty frame is broken', () => {
    expectBadFrame(Buffer.alloc(0));
  });

  it('a protocol-version frame must carry exactly 4 payload bytes, as snakeMQ requires', () => {
    expect(decodeFrame(Buffer.from('0000000007', 'hex'))).toEqual({ kind: 'version', version: 7 });
    expectBadFrame(Buffer.from('00000001', 'hex'));
    expectBadFrame(Buffer.from('000000000100', 'hex'));
    expectBadFrame(Buffer.from('00', 'hex'));
  });

  it('ignores the payload of incompatible, ping and pong frames, as snakeMQ does', () => {
    expect(decodeFrame(Buffer.from('01ff', 'hex'))).toEqual({ kind: 'incompatible' });
    expect(decodeFrame(Buffer.from('04ff', 'hex'))).toEqual({ kind: 'ping' });
    expect(decodeFrame(Buffer.from('05ffff', 'hex'))).toEqual({ kind: 'pong' });
  });

  it('identification: UTF-8 up to 255 bytes, empty allowed, BOM kept; invalid UTF-8 or longer is broken', () => {
    expect(decodeFrame(encodeIdentification('čaj☕'))).toEqual({ kind: 'ident', ident: 'čaj☕' });
    expect(decodeFrame(Buffer.from([2]))).toEqual({ kind: 'ident', ident: '' });
    expect(decodeFrame(Buffer.from('02efbbbf61', 'hex'))).toEqual({ kind: 'ident', ident: '\ufeffa' });
    const max = 'x'.repeat(MAX_REMOTE_IDENT_BYTES);
    expect(decodeFrame(encodeIdentification(max))).toEqual({ kind: 'ident', ident: max });
    expectBadFrame(Buffer.concat([Buffer.from([2]), Buffer.alloc(MAX_REMOTE_IDENT_BYTES + 1, 0x78)]));
    expectBadFrame(Buffer.from('02ff', 'hex'));
    expectBadFrame(Buffer.from('02c3', 'hex')); // truncated sequence
    expectBadFrame(Buffer.from('02eda080', 'hex')); // encoded surrogate
    expect(() => encodeIdentification(max + 'x')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('hello round-trips; longer is accepted (future fields), shorter is ignored as unknown', () => {
    const h = { extVersion: EXTENSION_VERSION, maxPacketSize: 64 * 1024 * 1024, features: FEATURE_ACKS | FEATURE_FLOW };
    const frame = encodeHello(h);
    expect(frame.toString('hex')).toBe('1000020400000000000003');
    expect(decodeFrame(frame)).toEqual({ kind: 'hello', ...h });
    const max = { extVersion: 0xffff, maxPacketSize: 0xffffffff, features: 0xffffffff };
    expect(decodeFrame(encodeHello(max))).toEqual({ kind: 'hello', ...max });
    expect(decodeFrame(Buffer.concat([frame, Buffer.from('future')]))).toEqual({ kind: 'hello', ...h });
    expect(decodeFrame(frame.subarray(0, 10))).toEqual({ kind: 'unknown', type: FRAME_HELLO });
    expect(decodeFrame(Buffer.from([FRAME_HELLO]))).toEqual({ kind: 'unknown', type: FRAME_HELLO });
    expect(() => encodeHello({ ...h, extVersion: 0x10000 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('ack round-trips 0, 1 and 100 uuids; a payload not a multiple of 16 is broken', () => {
    const rnd = prng(42);
    for (const n of [0, 1, 100]) {
      const ids = Array.from({ length: n }, () => randomBytes(rnd, 16));
      const frame = encodeAck(ids);
      expect(frame).toHaveLength(1 + 16 * n);
      expect(frame[0]).toBe(0x11);
      expect(decodeFrame(frame)).toEqual({ kind: 'ack', uuids: ids });
    }
    expectBadFrame(Buffer.concat([Buffer.from([0x11]), Buffer.alloc(17)]));
    expectBadFrame(Buffer.from([0x11, 0]));
    expect(() => encodeAck([new Uint8Array(16), new Uint8Array(17)])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('hello of version 2 carries an 8-byte incarnation after the version 1 fields, byte for byte', () => {
    const incarnation = Buffer.from('0102030405060708', 'hex');
    const frame = encodeHello({ extVersion: 2, maxPacketSize: 1 << 20, features: FEATURE_ACKS | FEATURE_FLOW, incarnation });
    expect(frame.toString('hex')).toBe('10' + '0002' + '00100000' + '00000003' + '0102030405060708');
    expect(decodeFrame(frame)).toEqual({ kind: 'hello', extVersion: 2, maxPacketSize: 1 << 20, features: 3, incarnation });
    // a version 1 hello (10 bytes) has none; anything after the incarnation is ignored
    expect(decodeFrame(frame.subarray(0, 11))).not.toHaveProperty('incarnation');
    expect(decodeFrame(frame.subarray(0, 18))).not.toHaveProperty('incarnation');
    expect(decodeFrame(Buffer.concat([frame, Buffer.from('future')]))).toEqual(decodeFrame(frame));
    expect(() => encodeHello({ extVersion: 2, maxPacketSize: 1, features: 0, incarnation: Buffer.alloc(7) })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });

  it('sequenced message: type 0x12, uint64 seq, uuid, TTL, flags, body, byte for byte', () => {
    const uuid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const frame = encodeSeqMessage({ seq: 0x0102030405, uuid, ttlMs: 60_000, flags: 1, body: Buffer.from('hi') });
    expect(frame.toString('hex')).toBe('12' + '0000000102030405' + uuid.toString('hex') + '0000003c' + '00000001' + '6869');
    expect(decodeFrame(frame)).toEqual({ kind: 'seq-message', seq: 0x0102030405, uuid, ttlMs: 60_000, flags: 1, body: Buffer.from('hi') });
    expect(encodeSeqMessageHeader({ seq: 1, uuid, ttlMs: null, flags: 0 })).toHaveLength(SEQ_MESSAGE_FRAME_HEAD_SIZE);
    // the largest sequence number is 2^53 - 1; an empty body is fine
    const max = encodeSeqMessage({ seq: MAX_SEQ, uuid, ttlMs: null, flags: 0, body: Buffer.alloc(0) });
    expect(max.subarray(1, 9).toString('hex')).toBe('001fffffffffffff');
    expect(decodeFrame(max)).toMatchObject({ kind: 'seq-message', seq: MAX_SEQ, ttlMs: null, body: Buffer.alloc(0) });
    // broken: short header, seq 0, seq above 2^53 - 1
    expectBadFrame(max.subarray(0, SEQ_MESSAGE_FRAME_HEAD_SIZE - 1));
    const zero = Buffer.from(max);
    zero.fill(0, 1, 9);
    expectBadFrame(zero);
    const big = Buffer.from(max);
    big[2] = 0x20;
    expectBadFrame(big);
    expect(() => encodeSeqMessage({ seq: 0, uuid, ttlMs: null, flags: 0, body: Buffer.alloc(0) })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeSeqMessage({ seq: MAX_SEQ + 1, uuid, ttlMs: null, flags: 0, body: Buffer.alloc(0) })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });

  it('cumulative ack 0x13 and resume 0x14: 8-byte incarnation then uint64 seq, exactly 16 payload bytes', () => {
    const incarnation = Buffer.from('a1a2a3a4a5a6a7a8', 'hex');
    const ack = encodeSeqAck({ incarnation, seq: 258 });
    expect(ack.toString('hex')).toBe('13' + 'a1a2a3a4a5a6a7a8' + '0000000000000102');
    expect(decodeFrame(ack)).toEqual({ kind: 'seq-ack', incarnation, seq: 258 });
    const resume = encodeResume({ incarnation, seq: 0 });
    expect(resume.toString('hex')).toBe('14' + 'a1a2a3a4a5a6a7a8' + '0000000000000000');
    expect(decodeFrame(resume)).toEqual({ kind: 'resume', incarnation, seq: 0 });
    expect(decodeFrame(encodeResume({ incarnation, seq: MAX_SEQ }))).toEqual({ kind: 'resume', incarnation, seq: MAX_SEQ });
    for (const f of [ack, resume]) {
      expectBadFrame(f.subarray(0, 16));
      expectBadFrame(Buffer.concat([f, Buffer.from([0])]));
      const big = Buffer.from(f);
      big[9] = 0xff;
      expectBadFrame(big);
    }
    expect(() => encodeSeqAck({ incarnation: Buffer.alloc(9), seq: 1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeResume({ incarnation, seq: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('any other type decodes as unknown (snakeMQ ignores it)', () => {
    for (const type of [6, 7, 0x0f, 0x15, 0x16, 0x7f, 0xff]) {
      expect(decodeFrame(Buffer.from([type, 1, 2, 3]))).toEqual({ kind: 'unknown', type });
      expect(decodeFrame(Buffer.from([type]))).toEqual({ kind: 'unknown', type });
    }
  });

  it('never throws anything but SnakeMQError on 20,000 random byte strings', () => {
    const rnd = prng(0xbadf00d);
    const kinds = new Map<string, number>();
    for (let i = 0; i < 20_000; i++) {
      const len = Math.floor(rnd() * 65);
      let b = randomBytes(rnd, len);
      // Most first bytes land on known types so every branch gets exercised.
      if (len > 0 && rnd() < 0.8) b[0] = Math.floor(rnd() * 0x15);
      // (cumulative acks and resumes are valid at one length only: often pick it)
      if ((b[0] === 0x13 || b[0] === 0x14) && len > 17 && rnd() < 0.5) b = b.subarray(0, 17);
      // (and sequence numbers of random bytes are mostly above 2^53: often clear their top bytes)
      const seqAt = b[0] === 0x12 ? 1 : b[0] === 0x13 || b[0] === 0x14 ? 9 : -1;
      if (seqAt > 0 && b.length > seqAt + 1 && rnd() < 0.5) b[seqAt] = b[seqAt + 1] = 0;
      let kind: string;
      try {
        kind = decodeFrame(b).kind;
      } catch (err) {
        if (!(err instanceof SnakeMQError)) throw err;
        expect(err.code).toBe('ERR_BAD_FRAME');
        kind = 'error';
      }
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    }
    for (const k of ['version', 'incompatible', 'ident', 'message', 'ping', 'pong', 'hello', 'ack', 'seq-message', 'seq-ack', 'resume', 'unknown', 'error']) {
      expect(kinds.get(k) ?? 0, k).toBeGreaterThan(0);
    }
  });
});
