/**
 * The pickle codec on bodies recorded from Python snakeMQ 1.6 (test/fixtures), on our own
 * encoding, and on hostile pickles: every problem is a typed RpcDecodeError, nothing else escapes.
 */
import { describe, expect, it } from 'vitest';
import { PickleCodec, PickledException, PickleTuple, looksLikePickle } from '../src/rpc-pickle.js';
import { RemoteError, RpcDecodeError, RpcEncodeError } from '../src/rpc-errors.js';
import { MAX_REMOTE_MESSAGE, errorFromPython, exceptionMessage } from '../src/rpc-python.js';
import { EXPECTED, FILE, body } from './helpers/pickle-vectors.js';
import { prng } from './helpers/prng.js';

const codec = new PickleCodec();

/** The typed error of a decode, or the value; anything else fails the test by throwing. */
function attempt(b: Buffer, exceptions = true): unknown {
  try {
    return exceptions ? codec.decodeWithExceptions(b).value : codec.decode(b);
  } catch (err) {
    if (err instanceof RpcDecodeError) return err;
    throw err;
  }
}

function expectRefused(b: Buffer, pattern?: RegExp, exceptions = true): RpcDecodeError {
  const r = attempt(b, exceptions);
  expect(r).toBeInstanceOf(RpcDecodeError);
  const e = r as RpcDecodeError;
  expect(e.code).toBe('ERR_RPC_DECODE');
  expect(e.fault).toBe('remote');
  if (pattern) expect(e.message).toMatch(pattern);
  return e;
}

describe('pickle codec on the bodies recorded from snakeMQ 1.6 (Python 3.11, protocol 4)', () => {
  it('has a test for every vector', () => {
    expect(FILE.vectors.map((v) => v.name).sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  for (const v of FILE.vectors) {
    it(`decodes ${v.name} (${v.description}) to the values Python made`, () => {
      const e = EXPECTED[v.name];
      const b = body(v.name);
      expect(b.subarray(0, 6).toString('latin1')).toBe(e.prefix);
      expect(looksLikePickle(b, 6)).toBe(true);
      const d = codec.decodeWithExceptions(b, 6);
      expect(d.value).toEqual(e.value);
      expect(d.exceptions).toBe(e.exceptions ?? 0);
      expect(Object.getPrototypeOf(d.value)).toBe(Object.prototype);
    });

    it(`encodes ${v.name}'s values as protocol 2, which decodes back to the same values`, () => {
      const e = EXPECTED[v.name];
      const enc = codec.encode(e.encodable);
      expect(enc.subarray(0, 2)).toEqual(Buffer.from([0x80, 0x02]));
      const d = codec.decodeWithExceptions(enc);
      expect(d.value).toEqual(e.value);
      expect(d.exceptions).toBe(e.exceptions ?? 0);
    });
  }

  it('refuses the exception replies without decodeWithExceptions (decode reads only data)', () => {
    expectRefused(body('rpc-py-reply-valueerror').subarray(6), /GLOBAL builtins\.ValueError is refused/, false);
    expectRefused(body('rpc-py-reply-custom-exception').subarray(6), /GLOBAL myservice\.CustomError is refused/, false);
  });
});

describe('pickle codec values', () => {
  const roundTrip = (v: unknown): unknown => codec.decode(codec.encode(v));

  it('carries ints of every size: numbers while safe, BigInts past 2^53', () => {
    for (const n of [0, 1, 255, 256, 65535, 65536, -1, -128, -129, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, 2 ** 53 - 1, -(2 ** 53 - 1)]) {
      expect(roundTrip(n)).toBe(n);
    }
    for (const n of [2n ** 53n, -(2n ** 53n), 2n ** 64n, -(2n ** 64n) - 1n, 2n ** 1000n, -(2n ** 2040n)]) expect(roundTrip(n)).toBe(n);
    expect(roundTrip(5n)).toBe(5);
    expect(() => codec.encode(2n ** 9000n)).toThrow(RpcEncodeError);
  });

  it('carries floats, strings, bytes, null, booleans, lists, tuples (as arrays) and dicts', () => {
    for (const v of [1.5, -0.25, 1e300, Infinity, -Infinity, 'ž☃𝄞\u0000', '', null, true, false, [], {}, [1, [2, [3]]], { a: { b: [Buffer.from('x')] } }]) {
      expect(roundTrip(v)).toEqual(v);
    }
    expect(Number.isNaN(roundTrip(NaN))).toBe(true);
    expect(roundTrip(undefined)).toBe(null);
    expect(roundTrip(new PickleTuple([1, 'a', new PickleTuple([])]))).toEqual([1, 'a', []]);
    expect(roundTrip(new Uint8Array([0, 255]))).toEqual(Buffer.from([0, 255]));
    expect(roundTrip(Buffer.alloc(0))).toEqual(Buffer.alloc(0));
    expect(roundTrip(Buffer.alloc(70_000, 0xab))).toEqual(Buffer.alloc(70_000, 0xab));
  });

  it('keeps a __proto__ key as an own property, never as a prototype', () => {
    const v = roundTrip(JSON.parse('{"__proto__": {"polluted": "yes"}}')) as object;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(v, '__proto__')!.value).toEqual({ polluted: 'yes' });
    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
  });

  it('refuses what it cannot carry, with RpcEncodeError', () => {
    for (const v of [new Map(), new Set(), new Date(), () => 1, Symbol('s'), new Uint16Array(2), new (class X {})()]) {
      expect(() => codec.encode(v)).toThrow(RpcEncodeError);
    }
    const cyclic: unknown[] = [];
    cyclic.push(cyclic);
    expect(() => codec.encode(cyclic)).toThrow(/nested deeper than 512/);
  });

  it('reads the protocol 0 and 2 forms Python writes (hand-checked bytes)', () => {
    // pickle.dumps(b'\x00\xff', 2) and pickle.dumps(b'ab', 0) on Python 3.11
    expect(codec.decode(Buffer.from('8002635f636f646563730a656e636f64650a7100580300000000c3bf710158060000006c6174696e3171028671035271042e', 'hex'))).toEqual(Buffer.from([0, 0xff]));
    // pickle.dumps(b'', 2), pickle.dumps(bytearray(b'ab'), 2), pickle.dumps(ValueError('x'), 2)
    expect(codec.decode(Buffer.from('\x80\x02c__builtin__\nbytes\nq\x00)Rq\x01.', 'latin1'))).toEqual(Buffer.alloc(0));
    expect(
      codec.decode(Buffer.from('\x80\x02c__builtin__\nbytearray\nq\x00c_codecs\nencode\nq\x01X\x02\x00\x00\x00abq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07.', 'latin1')),
    ).toEqual(Buffer.from('ab'));
    expect(codec.decodeWithExceptions(Buffer.from('\x80\x02cexceptions\nValueError\nq\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03.', 'latin1')).value).toEqual(
      new PickledException('builtins', 'ValueError', ['x']),
    );
    expect(codec.decode(Buffer.from("c_codecs\nencode\np0\n(Vab\np1\nVlatin1\np2\ntp3\nRp4\n.", 'latin1'))).toEqual(Buffer.from('ab'));
    // pickle.dumps({'a': [1, 2.5, u'\u017e', None, True]}, 0) and Python 2's str as STRING
    expect(codec.decode(Buffer.from("(dp0\nVa\np1\n(lp2\nI1\naF2.5\naV\\u017e\np3\naNaI01\nas.", 'latin1'))).toEqual({ a: [1, 2.5, 'ž', null, true] });
    expect(codec.decode(Buffer.from("S'a\\x00\\'b'\np0\n.", 'latin1'))).toEqual(Buffer.from("a\u0000'b", 'latin1'));
    expect(codec.decode(Buffer.from('L12345678901234567890L\n.', 'latin1'))).toBe(12345678901234567890n);
    // dict keys: int and bytes become strings; memo GET shares a value
    expect(codec.decode(Buffer.from('\x80\x02}q\x00(K\x01U\x01aC\x01kX\x01\x00\x00\x00bu.', 'latin1'))).toEqual({ 1: Buffer.from('a'), k: 'b' });
    const shared = codec.decode(Buffer.from('\x80\x02](]q\x01h\x01e.', 'latin1')) as unknown[][];
    expect(shared).toEqual([[], []]);
    expect(shared[0]).toBe(shared[1]);
  });
});

describe('pickle codec on hostile pickles: every one a typed RpcDecodeError', () => {
  const p = (s: string): Buffer => Buffer.from(s, 'latin1');

  it("refuses os.system via GLOBAL + REDUCE in data, and describes it (never runs it) only where exceptions are allowed", () => {
    const evil = p("cos\nsystem\n(S'echo pwned > /tmp/pwned'\ntR.");
    expectRefused(evil, /GLOBAL os\.system is refused/, false);
    const d = codec.decodeWithExceptions(evil);
    expect(d.exceptions).toBe(1);
    expect(d.value).toBeInstanceOf(PickledException);
    expect(d.value).toMatchObject({ module: 'os', name: 'system' });
    expectRefused(p('\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.'), /os\.system is refused/, false);
  });

  it('refuses BUILD on a class, INST, OBJ, NEWOBJ, PERSID, EXT, sets and out-of-band buffers', () => {
    expectRefused(p('cbuiltins\nValueError\n)R}b.'), /BUILD is refused/);
    expectRefused(p('\x80\x02c__main__\nEvil\n)\x81}b.'), /NEWOBJ is refused/);
    expectRefused(p('(i__main__\nEvil\n.'), /INST is refused/);
    expectRefused(p('(c__main__\nEvil\no.'), /OBJ is refused/);
    expectRefused(p('P1\n.'), /PERSID is refused/);
    expectRefused(p('\x80\x02\x82\x01.'), /EXT1 is refused/);
    expectRefused(p('\x80\x04\x8f.'), /EMPTY_SET is refused/);
    expectRefused(p('\x80\x05\x97.'), /NEXT_BUFFER is refused/);
    expectRefused(p('\x80\x02cos\nsystem\n.'), /GLOBAL not followed by REDUCE/);
    expectRefused(p('\x80\x02]cos\nsystem\na.'), /GLOBAL not followed by REDUCE/);
    expectRefused(p('\x80\x02cos\nsystem\nK\x01R.'), /arguments that are not a tuple/);
    expectRefused(p('\x80\x02K\x01)R.'), /not a GLOBAL/);
  });

  it('refuses a 2^31 length (and 2^63) before allocating anything', () => {
    expectRefused(p('\x80\x04X\x00\x00\x00\x80abc.'), /length 2147483648 beyond/);
    expectRefused(p('\x80\x04B\xff\xff\xff\xff.'), /beyond/);
    expectRefused(p('\x80\x04\x8e\x00\x00\x00\x00\x00\x00\x00\x80.'), /beyond/);
    expectRefused(p('\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f.'), /beyond/);
    expectRefused(p('\x80\x02\x8b\xff\xff\xff\x7f.'), /beyond|limit/);
    expectRefused(p('\x80\x02T\x00\x00\x00\x80.'), /negative length/);
  });

  it('refuses 10^6 nested lists, tuples and dicts, and a cycle through the memo', () => {
    const n = 1_000_000;
    expectRefused(Buffer.concat([p('\x80\x04'), Buffer.alloc(n, 0x5d), Buffer.alloc(n - 1, 0x61), p('.')]), /nested deeper than 512/);
    expectRefused(Buffer.concat([p('\x80\x04)'), Buffer.alloc(n, 0x85), p('.')]), /nested deeper than 512/);
    expectRefused(Buffer.concat([p('\x80\x04'), Buffer.alloc(n, 0x28), p(')t'.repeat(1)), Buffer.alloc(n - 1, 0x74), p('.')]), /nested deeper than 512|marks/);
    expectRefused(p('\x80\x02]q\x00h\x00a.'), /a cycle/);
    // an exception met again through the memo, wrapped 600 deep: found by the walk
    // (args 500 deep, fetched again, then 100 tuples around it: each step within the limit)
    const deepArgs = Buffer.concat([p('\x80\x02cbuiltins\nValueError\n)'), Buffer.alloc(499, 0x85), p('Rq\x000h\x00')]);
    expect(codec.decodeWithExceptions(Buffer.concat([deepArgs, Buffer.alloc(5, 0x85), p('.')])).exceptions).toBe(1);
    expectRefused(Buffer.concat([deepArgs, Buffer.alloc(100, 0x85), p('.')]), /nested deeper than 512 \(a cycle\?\)/);
    expectRefused(p(`${'\x80\x02c'}${'x'.repeat(5000)}\nsystem\n)R.`), /GLOBAL x{80}…\.system is refused/, false);
    expectRefused(p('\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.'), /a cycle/);
    expectRefused(p('\x80\x02}q\x00(K\x01U\x01aC\x01kh\x00u.'), /a cycle/);
  });

  it('refuses memo references out of range and stack misuse', () => {
    expectRefused(p('\x80\x02h\x05.'), /memo index 5 was never stored/);
    expectRefused(p('\x80\x02j\xff\xff\xff\xff.'), /out of range/);
    expectRefused(p('\x80\x02N\x94h\x01.'), /never stored/);
    expectRefused(p('\x80\x02q\x00.'), /PUT with nothing/);
    expectRefused(p('\x80\x02a.'), /nothing on the stack/);
    expectRefused(p('\x80\x02NN.'), /not one value/);
    expectRefused(p('\x80\x02N.N'), /bytes after STOP/);
    expectRefused(p('\x80\x02t.'), /without a MARK/);
    expectRefused(p('\x80\x06N.'), /protocol 6/);
    expectRefused(p('\x80\x02K\x01K\x02s.'), /too few|not a dict/);
    expectRefused(p('\x80\x02}(]K\x01u.'), /dict key/);
    expectRefused(p('\x80\x02}(K\x01K\x01U\x011K\x02u.'), /duplicate dict key/);
    expectRefused(p('\x80\x02X\x02\x00\x00\x00\xc3\x28.'), /invalid UTF-8/);
    expectRefused(Buffer.from([0x80, 0x02, 0xff, 0x2e]), /unknown opcode 0xff/);
  });

  it("reads protocol 0 UNICODE backslashes as Python's raw-unicode-escape does, and refuses an INT with a leading zero", () => {
    // each expected value is what Python 3.11's pickle.loads gave for the same bytes
    const cases: Array<[string, string]> = [
      ['V\\\\u0041\n.', '\\\\u0041'], // an even run: all literal
      ['V\\u0041\n.', 'A'],
      ['V\\\\\\u0041\n.', '\\\\A'], // an odd run: the last one escapes
      ['V\\\\\\\n.', '\\\\\\'],
      ['Va\\b\n.', 'a\\b'],
    ];
    for (const [pickle, value] of cases) expect(attempt(Buffer.from(pickle, 'latin1'))).toBe(value);
    // Python reads I010 as octal 8; we refuse rather than guess
    expectRefused(Buffer.from('I010\n.', 'latin1'), /leading zero/);
    expect(attempt(Buffer.from('I01\n.', 'latin1'))).toBe(true);
    expect(attempt(Buffer.from('I0\n.', 'latin1'))).toBe(0);
    expect(attempt(Buffer.from('I-7\n.', 'latin1'))).toBe(-7);
  });

  it('refuses a FLOAT line of a million digits at once (the pattern does not backtrack over them)', () => {
    // \x80\x02 F 111...1x \n . : with a backtracking pattern this took minutes (64 kB: 5 s)
    const digits = Buffer.alloc(1 << 20, 0x31);
    expectRefused(Buffer.concat([Buffer.from([0x80, 0x02, 0x46]), digits, Buffer.from('x\n.', 'latin1')]), /FLOAT/);
    // and a plain long float line is refused by its length, before any pattern
    expectRefused(Buffer.concat([Buffer.from('F', 'latin1'), Buffer.alloc(2000, 0x31), Buffer.from('.5\n.', 'latin1')]), /FLOAT/);
    expect(attempt(Buffer.from('F-12.5e3\n.', 'latin1'))).toBe(-12500);
  });

  it('refuses every truncation of every recorded body', () => {
    let cases = 0;
    for (const v of FILE.vectors) {
      const b = body(v.name).subarray(6);
      for (let i = 0; i < b.length; i++) {
        expectRefused(b.subarray(0, i));
        cases++;
      }
      const enc = codec.encode(EXPECTED[v.name].encodable);
      for (let i = 0; i < enc.length; i++) expectRefused(enc.subarray(0, i));
    }
    expect(cases).toBeGreaterThan(1000);
  });

  it('gives a value or a typed error on 100,000 random and mutated inputs, nothing else', () => {
    const rnd = prng(15);
    const corpus = [...FILE.vectors.map((v) => body(v.name).subarray(6)), ...Object.values(EXPECTED).map((e) => codec.encode(e.encodable))];
    const opcodes = Buffer.from('()0123FIJKLMNRSTUVXabcd}eghjl]pqrst)uG\x80\x85\x86\x87\x88\x89\x8a\x8bBC\x8c\x8d\x8e\x93\x94\x95\x96.', 'latin1');
    let refused = 0;
    for (let i = 0; i < 100_000; i++) {
      let b: Buffer;
      const kind = i % 3;
      if (kind === 0) {
        b = Buffer.alloc(Math.floor(rnd() * 48));
        for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
      } else if (kind === 1) {
        b = Buffer.alloc(1 + Math.floor(rnd() * 40));
        for (let j = 0; j < b.length; j++) b[j] = rnd() < 0.7 ? opcodes[Math.floor(rnd() * opcodes.length)] : Math.floor(rnd() * 256);
        b[b.length - 1] = 0x2e;
      } else {
        b = Buffer.from(corpus[Math.floor(rnd() * corpus.length)]);
        const edits = 1 + Math.floor(rnd() * 4);
        for (let j = 0; j < edits; j++) {
          const at = Math.floor(rnd() * b.length);
          const r = rnd();
          if (r < 0.5) b[at] = Math.floor(rnd() * 256);
          else if (r < 0.75) b[at] = opcodes[Math.floor(rnd() * opcodes.length)];
          else b[at] = [0, 0x7f, 0x80, 0xff][Math.floor(rnd() * 4)];
        }
      }
      const r = attempt(b, i % 2 === 0);
      if (r instanceof RpcDecodeError) refused++;
    }
    expect(refused).toBeGreaterThan(50_000);
    // and the codec still decodes afterwards
    expect(codec.decodeWithExceptions(body('rpc-py-call-add'), 6).value).toEqual(EXPECTED['rpc-py-call-add'].value);
  });
});

describe('a Python exception reply turned into a RemoteError', () => {
  it("builds str(exc)'s text as Python does for small arguments", () => {
    expect(exceptionMessage(['bad value', 42n])).toBe("('bad value', 42)");
    expect(exceptionMessage(['just this'])).toBe('just this');
    expect(exceptionMessage([[1, null, true, Buffer.from('ab')]])).toBe("[1, None, True, b'ab']");
    expect(exceptionMessage([])).toBe('');
  });

  it('cuts the message of huge arguments (one string a thousand times through the memo) without building it whole', () => {
    // a crafted reply: ValueError(['A' * 2**20] * 1000, 0) costs ~1 MB on the wire, a GB as text
    const big = 'A'.repeat(1 << 20);
    const exc = codec.decodeWithExceptions(
      Buffer.concat([
        Buffer.from([0x80, 0x02]),
        Buffer.from('cbuiltins\nValueError\n', 'latin1'),
        // ( [ X'big' (memoised) and 999 fetches of it ] 0 )
        Buffer.from([0x28, 0x5d, 0x58]),
        Buffer.from([0, 0, 0x10, 0]), // BINUNICODE length 2^20
        Buffer.from(big, 'latin1'),
        Buffer.from([0x71, 0x00, 0x61]), // BINPUT 0, APPEND
        Buffer.concat(Array.from({ length: 999 }, () => Buffer.from([0x68, 0x00, 0x61]))), // BINGET 0, APPEND
        Buffer.from([0x4b, 0x00, 0x74, 0x52, 0x2e]), // BININT1 0, TUPLE, REDUCE, STOP
      ]),
    ).value;
    expect(exc).toBeInstanceOf(PickledException);
    const err = errorFromPython(exc, 'Traceback ...', 'calc') as RemoteError;
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.remoteName).toBe('ValueError');
    expect(err.remoteMessage.length).toBeLessThanOrEqual(MAX_REMOTE_MESSAGE + 1);
    expect(err.remoteMessage.startsWith("(['AAAA")).toBe(true);
    expect(err.remoteMessage.endsWith('…')).toBe(true);
    // the values themselves are kept, not copied
    expect((err.remoteArgs![0] as string[]).length).toBe(1000);
  });
});
