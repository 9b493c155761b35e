/**
 * MsgpackCodec.decodeRange (the RPC layer decodes the parts of its envelopes with it) behaves
 * exactly as decode() of a copy of the range: same values, same refusals, and nothing outside
 * the range is read, whatever bytes surround it.
 */
import { describe, expect, it } from 'vitest';
import { MsgpackCodec } from '../src/rpc-codec.js';
import { RpcDecodeError } from '../src/rpc-errors.js';
import { prng } from './helpers/prng.js';

const codec = new MsgpackCodec();

function outcome(f: () => unknown): { ok: true; value: unknown } | { ok: false; code: string; message: string } {
  try {
    return { ok: true, value: f() };
  } catch (err) {
    expect(err).toBeInstanceOf(RpcDecodeError);
    return { ok: false, code: (err as RpcDecodeError).code, message: (err as Error).message };
  }
}

describe('MsgpackCodec.decodeRange', () => {
  const values: unknown[] = [
    0,
    -1,
    300,
    1.5,
    'short',
    'x'.repeat(300),
    Buffer.from([1, 2, 3]),
    [1, [2, [3]]],
    { a: 1, b: 'two', c: [null, true, undefined] },
    new Date(123456789),
    2n ** 70n,
    { when: new Date(1), big: -(2n ** 65n), list: [new Date(2)] },
  ];

  it('gives the value of the range, whatever surrounds it', () => {
    const rnd = prng(11);
    for (const v of values) {
      const bytes = codec.encode(v);
      for (const [before, after] of [
        [0, 0],
        [3, 0],
        [0, 5],
        [7, 9],
      ]) {
        const buf = Buffer.alloc(before + bytes.length + after);
        for (let i = 0; i < buf.length; i++) buf[i] = Math.floor(rnd() * 256);
        bytes.copy(buf, before);
        expect(codec.decodeRange(buf, before, before + bytes.length)).toStrictEqual(codec.decode(bytes));
      }
    }
  });

  it('refuses a cut range exactly as decode refuses the cut bytes, even when valid bytes follow', () => {
    for (const v of values) {
      const bytes = codec.encode(v);
      // the whole value followed by itself again: the range ends inside the first copy
      const buf = Buffer.concat([Buffer.from([0xc0]), bytes, bytes]);
      for (let end = 1; end < 1 + bytes.length; end++) {
        const cut = Buffer.from(buf.subarray(1, end));
        expect(outcome(() => codec.decodeRange(buf, 1, end))).toStrictEqual(outcome(() => codec.decode(cut)));
      }
    }
  });

  it('refuses trailing bytes inside the range and a range outside the buffer', () => {
    const bytes = codec.encode([1, 2]);
    const buf = Buffer.concat([bytes, Buffer.from([0x01])]);
    expect(() => codec.decodeRange(buf, 0, buf.length)).toThrow(RpcDecodeError);
    expect(() => codec.decodeRange(buf, 0, buf.length + 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => codec.decodeRange(buf, 2, 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});
