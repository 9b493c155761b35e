import { describe, expect, it } from 'vitest';
import { Packr, Unpackr } from 'msgpackr';
import { MapShape, MsgpackCodec, scanMsgpack } from '../src/rpc-codec.js';

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

describe("MsgpackCodec's own encoder and decoder", () => {
  // msgpackr with the codec's options: the reference the own encoder must match byte for byte
  const reference = new Packr({
    useRecords: false,
    moreTypes: false,
    structuredClone: false,
    bundleStrings: false,
    int64AsType: 'bigint',
    copyBuffers: true,
    mapsAsObjects: true,
    useBigIntExtension: true,
    variableMapSize: true,
  });
  const referenceUnpackr = new Unpackr({ useRecords: false, moreTypes: false, structuredClone: false, int64AsType: 'bigint', copyBuffers: true, mapsAsObjects: true });

  /** Values of every type the own encoder writes, at every size boundary of their headers. */
  function samples(): unknown[] {
    const nums = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, 0.5, -0, NaN, Infinity, 2 ** 53 + 2, 1e-320];
    const strs = ['', 'a', 'x'.repeat(31), 'x'.repeat(32), 'x'.repeat(63), 'x'.repeat(64), 'x'.repeat(255), 'x'.repeat(256), 'x'.repeat(65535), 'x'.repeat(65536), 'é'.repeat(20), '☃'.repeat(21), '𝄞'.repeat(40), 'é'.repeat(100), '\ud800 lone', 'a\udc00'];
    const bins = [0, 1, 32, 33, 255, 256, 65535, 65536].map((n) => Buffer.alloc(n, 7));
    const objects = [{}, { a: 1 }, Object.fromEntries(Array.from({ length: 15 }, (_, i) => [`k${i}`, i])), Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i]))];
    const arrays = [[], [1], Array.from({ length: 15 }, (_, i) => i), Array.from({ length: 16 }, (_, i) => i), Array.from({ length: 65536 }, () => 0)];
    return [null, undefined, true, false, ...nums, ...strs, ...bins, new Uint8Array([1, 2]), ...objects, ...arrays, { nested: [{ deep: [null, 'x', Buffer.from('ab')] }] }];
  }

  it('encodes the common types byte for byte as msgpackr does', () => {
    for (const v of samples()) {
      expect(codec.encode(v).equals(reference.pack(v)), String(v).slice(0, 40)).toBe(true);
    }
  });

  it('decodes them as msgpackr does, and values with Dates and BigInts through msgpackr', () => {
    const values = [...samples(), { d: new Date(5), b: 2n ** 70n, n: [1n] }, [new Date(0)]];
    for (const v of values) {
      const enc = reference.pack(v);
      expect(codec.decode(enc)).toStrictEqual(referenceUnpackr.unpack(enc));
    }
    // 64-bit integers arrive as BigInts, as msgpackr gives them
    expect(codec.decode(hex('cf 0000000100000000'))).toBe(2n ** 32n);
    expect(codec.decode(hex('d3 ffffffffffffffff'))).toBe(-1n);
    expect(codec.decode(hex('ca 3fc00000'))).toBe(1.5);
  });

  it('gives out encodings that later encodings do not overwrite', () => {
    const a = codec.encode({ a: 'first' });
    const copy = Buffer.from(a);
    for (let i = 0; i < 10_000; i++) codec.encode({ i, s: 'y'.repeat(i % 100) });
    expect(a.equals(copy)).toBe(true);
    const big = codec.encode(Buffer.alloc(200_000, 1));
    expect(big.length).toBe(200_005);
    expect(big.buffer.byteLength).toBeLessThan(250_000);
  });

  it('hands a value to msgpackr when a getter encodes during the encoding', () => {
    const inner = { get x(): number {
      codec.encode({ inner: 'z'.repeat(50) });
      return 1;
    } };
    const v = { before: 'b'.repeat(40), inner, after: [1, 2, 3] };
    expect(codec.decode(codec.encode(v))).toStrictEqual({ before: 'b'.repeat(40), inner: { x: 1 }, after: [1, 2, 3] });
  });

  it('decodes invalid UTF-8 to U+FFFD, and a long run of short strings from its cache unchanged', () => {
    expect(codec.decode(hex('a2 ff41'))).toBe('\ufffdA');
    const keys = Array.from({ length: 5000 }, (_, i) => `key${i}`);
    const o = Object.fromEntries(keys.map((k) => [k, k]));
    expect(codec.decode(codec.encode(o))).toStrictEqual(o);
  });

  it('gives typed errors, never a RangeError, for nesting too deep for the stack under maxDepth 10000', () => {
    const deepCodec = new MsgpackCodec({ maxDepth: 10_000 });
    let deep: unknown = 1;
    for (let i = 0; i < 2000; i++) deep = [deep];
    expect(deepCodec.decode(deepCodec.encode(deep))).toStrictEqual(deep);
    for (let i = 2000; i < 10_000; i++) deep = [deep];
    expect(() => deepCodec.encode(deep)).toThrow(expect.objectContaining({ code: 'ERR_RPC_ENCODE' }));
    const bytes = Buffer.alloc(10_001, 0x91);
    bytes[10_000] = 0x01;
    expect(() => deepCodec.decode(bytes)).toThrow(expect.objectContaining({ code: 'ERR_RPC_DECODE' }));
  });
});

describe('MapShape envelopes', () => {
  const shape = new MapShape(['command', 'req_id', 'args']);
  const prefix = Buffer.from('pre');

  it('encode like the plain object with those keys, after the prefix', () => {
    const values = ['call', Buffer.alloc(16, 3), [1, 'two', { three: 3 }]];
    const enc = codec.encodeShapedPrefixed(prefix, shape, values);
    expect(enc.equals(codec.encodePrefixed(prefix, { command: 'call', req_id: Buffer.alloc(16, 3), args: [1, 'two', { three: 3 }] }))).toBe(true);
    expect(codec.decodeShapedAt(enc, prefix.length, shape)).toStrictEqual(values);
    // through msgpackr when a value needs it
    const withBig = codec.encodeShapedPrefixed(prefix, shape, ['call', Buffer.alloc(16), [5n, new Date(1)]]);
    expect(codec.decodeShapedAt(withBig, prefix.length, shape)).toStrictEqual(['call', Buffer.alloc(16), [5n, new Date(1)]]);
  });

  it('decode keys in any order, missing keys as undefined, other keys ignored, non-maps as undefined', () => {
    const enc = Buffer.concat([prefix, codec.encode({ other: { x: [1] }, args: [], zzz: 1, command: 'signal' })]);
    expect(codec.decodeShapedAt(enc, prefix.length, shape)).toStrictEqual(['signal', undefined, []]);
    expect(codec.decodeShapedAt(Buffer.concat([prefix, codec.encode([1, 2])]), prefix.length, shape)).toBeUndefined();
    expect(codec.decodeShapedAt(Buffer.concat([prefix, codec.encode({ d: new Date(0) })]), prefix.length, shape)).toStrictEqual([undefined, undefined, undefined]);
  });

  it('refuse hostile bytes as decode does', () => {
    expect(() => codec.decodeShapedAt(Buffer.concat([prefix, hex('81 a7 636f6d6d616e64 d4 73 00')]), prefix.length, shape)).toThrow(
      expect.objectContaining({ code: 'ERR_RPC_DECODE' }),
    );
  });
});
