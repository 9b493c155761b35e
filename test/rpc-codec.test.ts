import { describe, expect, it } from 'vitest';
import { MsgpackCodec, scanMsgpack } from '../src/rpc-codec.js';

const codec = new MsgpackCodec();
const roundTrip = (v: unknown): unknown => codec.decode(codec.encode(v));
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function decodeError(bytes: Buffer): unknown {
  try {
    codec.decode(bytes);
  } catch (err) {
    return err;
  }
  throw new Error('decoded without error');
}

describe('MsgpackCodec round trips', () => {
  it('carries scalars exactly', () => {
    for (const v of [null, undefined, true, false, 0, 1, -1, 127, 128, -33, 2 ** 31, 2 ** 53 - 1, -(2 ** 53 - 1), 1.5, -1e-300, Infinity, -Infinity, '', 'héllo ☃ 𝄞']) {
      expect(roundTrip(v)).toStrictEqual(v);
    }
    expect(roundTrip(NaN)).toBeNaN();
  });

  it('carries BigInts of any size up to the limit, as BigInts', () => {
    for (const v of [0n, 5n, -5n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n, 2n ** 64n, -(2n ** 64n) - 1n, 3n ** 500n, -(7n ** 900n)]) {
      expect(roundTrip(v)).toBe(v);
    }
    expect(() => codec.encode(2n ** 10_000n)).toThrow(expect.objectContaining({ code: 'ERR_RPC_ENCODE' }));
  });

  it('carries Dates with millisecond precision, before 1970 and far ahead', () => {
    for (const t of [0, 123, -1, -86_400_001, Date.UTC(2038, 0, 19, 3, 14, 8, 7), 8.64e15, -8.64e15]) {
      const d = roundTrip(new Date(t)) as Date;
      expect(d).toBeInstanceOf(Date);
      expect(d.getTime()).toBe(t);
    }
    expect((roundTrip(new Date(NaN)) as Date).getTime()).toBeNaN();
  });

  it('carries Buffers and Uint8Arrays as Buffers, copied out of the body', () => {
    const b = Buffer.from([0, 1, 2, 255]);
    const enc = codec.encode({ b, u: new Uint8Array([9, 8]), empty: Buffer.alloc(0) });
    const out = codec.decode(enc) as { b: Buffer; u: Buffer; empty: Buffer };
    expect(Buffer.isBuffer(out.b)).toBe(true);
    expect(out.b.equals(b)).toBe(true);
    expect(Buffer.isBuffer(out.u) && out.u.equals(Buffer.from([9, 8]))).toBe(true);
    expect(out.empty.length).toBe(0);
    enc.fill(0);
    expect(out.b.equals(b)).toBe(true);
  });

  it('carries nested objects and arrays, sparse holes as undefined, null-prototype objects as plain', () => {
    const v = { a: [1, [2, [3, { b: 'c', d: [true, null] }]]], e: { f: { g: {} } }, h: [] as unknown[] };
    expect(roundTrip(v)).toStrictEqual(v);
    // eslint-disable-next-line no-sparse-arrays
    expect(roundTrip([1, , 3])).toStrictEqual([1, undefined, 3]);
    const bare = Object.assign(Object.create(null), { x: 1 });
    const out = roundTrip(bare) as object;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(out).toStrictEqual({ x: 1 });
  });

  it('carries objects with more than 65535 keys and big arrays', () => {
    const o: Record<string, number> = {};
    for (let i = 0; i < 70_000; i++) o[`k${i}`] = i;
    expect(roundTrip(o)).toStrictEqual(o);
    const a = Array.from({ length: 100_000 }, (_, i) => i);
    expect(roundTrip(a)).toStrictEqual(a);
  });

  it('keeps a __proto__ key as an own property, never as a prototype', () => {
    const v = JSON.parse('{"__proto__": {"polluted": 1}, "constructor": {"prototype": {"polluted": 2}}, "x": [{"__proto__": 3}]}');
    const out = roundTrip(v) as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.prototype.hasOwnProperty.call(out, '__proto__')).toBe(true);
    expect(Object.getOwnPropertyDescriptor(out, '__proto__')!.value).toStrictEqual(JSON.parse('{"polluted": 1}'));
    // (toStrictEqual compares .constructor, which is an own key here: compare the parts)
    expect(Object.keys(out)).toEqual(['__proto__', 'constructor', 'x']);
    expect(out.constructor).toStrictEqual({ prototype: { polluted: 2 } });
    expect(out.x).toStrictEqual(v.x);
    expect((out as { polluted?: unknown }).polluted).toBeUndefined();
    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
    expect(roundTrip({ __proto_: 1 })).toStrictEqual({ __proto_: 1 });
  });

  it('refuses to encode what it cannot carry, naming where', () => {
    const bad: Array<[unknown, RegExp]> = [
      [new Map(), /Map/],
      [new Set(), /Set/],
      [{ a: [new Float32Array(1)] }, /Float32Array \(at \$\.a\[0\]\)/],
      [() => 1, /function/],
      [Symbol('s'), /symbol/],
      [new (class Point {})(), /Point/],
      [new Error('e'), /Error/],
      [/re/, /RegExp/],
      [new ArrayBuffer(2), /ArrayBuffer/],
    ];
    for (const [v, re] of bad) {
      let err: unknown;
      try {
        codec.encode(v);
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: 'ERR_RPC_ENCODE', fault: 'local' });
      expect((err as Error).message).toMatch(re);
    }
  });

  it('refuses cycles and nesting beyond maxDepth on encode, and accepts maxDepth exactly', () => {
    const cyc: Record<string, unknown> = {};
    cyc.self = cyc;
    expect(() => codec.encode(cyc)).toThrow(expect.objectContaining({ code: 'ERR_RPC_ENCODE' }));
    let deep: unknown = 1;
    for (let i = 0; i < codec.maxDepth; i++) deep = [deep];
    expect(roundTrip(deep)).toStrictEqual(deep);
    expect(() => codec.encode([deep])).toThrow(expect.objectContaining({ code: 'ERR_RPC_ENCODE' }));
  });
});

describe('MsgpackCodec on hostile bytes', () => {
  it('refuses msgpackr extensions that construct other types', () => {
    const vectors = {
      // Set ext 0x73 around [1]
      set: 'd4 73 00 91 01',
      // Error ext 0x65
      error: 'd4 65 00 93 a5 4572726f72 a1 78 c0',
      // RegExp ext 0x78
      regexp: 'd4 78 00 92 a2 6162 a0',
      // typed array ext 0x74
      typedArray: 'd5 74 01 00',
      // structured clone id / pointer
      cloneId: 'd6 69 00000001 80',
      pointer: 'd6 70 00000001',
      // record definition 0x72 then a record
      record: 'd4 72 40 91 a1 61 40 01',
      // bundled strings
      bundle: 'd6 62 00000010 c0',
      unknownExt: 'd4 10 00',
    };
    for (const [name, bytes] of Object.entries(vectors)) {
      const err = decodeError(hex(bytes));
      expect(err, name).toMatchObject({ code: 'ERR_RPC_DECODE', fault: 'remote' });
    }
  });

  it('refuses malformed input: truncated, trailing bytes, 0xc1, non-string keys, impossible counts', () => {
    const vectors = ['', '92 01', '01 02', 'c1', '81 01 02', 'a5 6162', 'dd ffffffff 01', 'df ffffffff', 'c6 ffffffff 00', 'cb 0000', 'd4 ff'];
    for (const v of vectors) {
      expect(decodeError(hex(v)), v).toMatchObject({ code: 'ERR_RPC_DECODE' });
    }
  });

  it('refuses nesting 100,000 deep without touching the stack, arrays and maps alike', () => {
    const arrays = Buffer.alloc(100_001, 0x91);
    arrays[100_000] = 0x01;
    expect(decodeError(arrays)).toMatchObject({ code: 'ERR_RPC_DECODE', message: expect.stringMatching(/deeper than 512/) });
    const maps = Buffer.concat([Buffer.from('81a161'.repeat(100_000), 'hex'), Buffer.from([0x01])]);
    expect(decodeError(maps)).toMatchObject({ code: 'ERR_RPC_DECODE' });
  });

  it('refuses a BigInt extension longer than maxBigIntBytes', () => {
    const big = Buffer.concat([hex('c9 00010000 42'), Buffer.alloc(0x10000, 1)]);
    expect(decodeError(big)).toMatchObject({ code: 'ERR_RPC_DECODE' });
  });

  it('decodes a 64 MiB string', () => {
    const s = 'x'.repeat(64 * 1024 * 1024);
    const enc = codec.encode(s);
    expect(codec.decode(enc)).toBe(s);
  });

  it('the scanner reports a __proto__ key anywhere', () => {
    expect(scanMsgpack(codec.encode({ a: [{ b: 1 }] }), 10, 64).protoKey).toBe(false);
    expect(scanMsgpack(codec.encode({ a: [JSON.parse('{"__proto__": 1}')] }), 10, 64).protoKey).toBe(true);
  });

  it('still works after every kind of refused input', () => {
    expect(roundTrip({ ok: [1, 'two', 3n] })).toStrictEqual({ ok: [1, 'two', 3n] });
  });
});
