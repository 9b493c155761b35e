/**
 * Differential fuzzing of the RPC codec's own MessagePack encoder and decoder against msgpackr
 * (configured as the codec configures it), with random values and mutated (hostile) bodies:
 * - encode: our bytes equal msgpackr's for every value of the carried types;
 * - decode: every mutated input either decodes to what msgpackr decodes (after the same scan), or is
 *   refused with ERR_RPC_DECODE; nothing else escapes, and nothing hangs.
 */
import { Packr, Unpackr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { MSGPACKR_PACK_OPTIONS, MSGPACKR_UNPACK_OPTIONS, MsgpackCodec } from '../src/rpc-codec.js';
import { prng } from './helpers/prng.js';

const packr = new Packr(MSGPACKR_PACK_OPTIONS);
const unpackr = new Unpackr(MSGPACKR_UNPACK_OPTIONS);
const codec = new MsgpackCodec();

function randomValue(rnd: () => number, depth: number): unknown {
  const k = Math.floor(rnd() * (depth >= 2 ? 9 : 12));
  const int = (bits: number): number => Math.floor(rnd() * 2 ** bits) * (rnd() < 0.5 ? -1 : 1);
  switch (k) {
    case 0:
      return null;
    case 1:
      return rnd() < 0.5;
    case 2:
      return int([4, 7, 8, 15, 16, 31, 32, 52][Math.floor(rnd() * 8)]);
    case 3:
      return (rnd() - 0.5) * 10 ** Math.floor(rnd() * 40 - 20);
    case 4:
    case 5: {
      const n = rnd() < 0.002 ? 70_000 : [0, 1, 5, 31, 32, 200, 256][Math.floor(rnd() * 7)];
      let s = '';
      for (let i = 0; i < n; i++) s += rnd() < 0.9 ? String.fromCharCode(32 + Math.floor(rnd() * 90)) : ['é', '☃', '𝄞', '\u0000'][Math.floor(rnd() * 4)];
      return s;
    }
    case 6: {
      const n = rnd() < 0.002 ? 70_000 : [0, 1, 16, 255, 256][Math.floor(rnd() * 5)];
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i += 97) b[i] = Math.floor(rnd() * 256);
      return b;
    }
    case 7:
      return undefined;
    case 8:
      return int(8);
    case 9:
    case 10: {
      const n = [0, 1, 3, 15, 16, 17][Math.floor(rnd() * 6)];
      return Array.from({ length: n }, () => randomValue(rnd, depth + 1));
    }
    default: {
      const n = [0, 1, 3, 15, 16, 17][Math.floor(rnd() * 6)];
      const o: Record<string, unknown> = {};
      for (let i = 0; i < n; i++) o[`k${Math.floor(rnd() * 1000)}${rnd() < 0.1 ? 'é' : ''}`] = randomValue(rnd, depth + 1);
      return o;
    }
  }
}

/** Our decode, msgpackr's decode, as comparable results ('refused' for a typed refusal). */
function ours(bytes: Buffer): unknown {
  try {
    return { v: codec.decode(bytes) };
  } catch (err) {
    expect((err as { code?: string }).code).toBe('ERR_RPC_DECODE');
    return 'refused';
  }
}

function mutate(rnd: () => number, b: Buffer): Buffer {
  const out = Buffer.from(b);
  const n = 1 + Math.floor(rnd() * 4);
  for (let i = 0; i < n && out.length > 0; i++) {
    const at = Math.floor(rnd() * out.length);
    const r = rnd();
    if (r < 0.5) out[at] = Math.floor(rnd() * 256);
    else if (r < 0.7) out[at] = [0xc0, 0xc1, 0xc4, 0xd9, 0xdc, 0xdd, 0xde, 0xdf, 0xcb, 0x9f, 0x8f, 0xbf][Math.floor(rnd() * 12)];
    else if (r < 0.85) return out.subarray(0, at);
    else return Buffer.concat([out.subarray(0, at), Buffer.from([Math.floor(rnd() * 256)]), out.subarray(at)]);
  }
  return out;
}

describe('RPC codec fuzzing against msgpackr', () => {
  it('encodes 2,000 random values to the same bytes as msgpackr, and decodes them back alike', () => {
    const rnd = prng(7);
    for (let i = 0; i < 2000; i++) {
      const v = randomValue(rnd, 0);
      const mine = codec.encode(v);
      const theirs = packr.pack(v);
      if (!mine.equals(theirs)) throw new Error(`encoding differs for ${JSON.stringify(v)?.slice(0, 200)}`);
      expect(codec.decode(mine)).toStrictEqual(unpackr.unpack(theirs));
    }
  });

  it('10,000 mutated bodies: each decodes as msgpackr decodes it, or is refused with ERR_RPC_DECODE', () => {
    const rnd = prng(11);
    let decoded = 0;
    let refused = 0;
    for (let i = 0; i < 10_000; i++) {
      const input = mutate(rnd, codec.encode(randomValue(rnd, 0)));
      const r = ours(input);
      if (r === 'refused') {
        refused++;
        continue;
      }
      decoded++;
      // what we accepted, msgpackr (which the scan guarded before) reads the same way
      let theirs: unknown;
      try {
        theirs = unpackr.unpack(input);
      } catch (err) {
        throw new Error(`we decoded what msgpackr refuses (${String(err)}): ${input.toString('hex').slice(0, 200)}`);
      }
      expect((r as { v: unknown }).v).toStrictEqual(theirs);
    }
    // both outcomes happen, so the comparison means something
    expect(decoded).toBeGreaterThan(500);
    expect(refused).toBeGreaterThan(500);
  });
});
