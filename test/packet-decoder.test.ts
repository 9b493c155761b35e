import { describe, expect, it, vi } from 'vitest';
import { FrameTooLargeError } from '../src/errors.js';
import { DIRECT_READ_MIN, EAGER_ALLOC_LIMIT, PacketDecoder, encodePacketHeader } from '../src/packet-decoder.js';
import { prng } from './helpers/prng.js';

function packet(payload: Buffer): Buffer {
  return Buffer.concat([encodePacketHeader(payload.length), payload]);
}

function decodeAll(decoder: PacketDecoder, chunks: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) decoder.push(c, (p) => out.push(Buffer.from(p)));
  return out;
}


const payloads = [Buffer.alloc(0), Buffer.from([0x42]), Buffer.from('hello world'), Buffer.alloc(300, 7), Buffer.alloc(0)];
const stream = Buffer.concat(payloads.map(packet));

describe('PacketDecoder', () => {
  it('frames a 0-byte, a 1-byte and a 16 MiB packet', () => {
    const big = Buffer.alloc(16 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4093) big[i] = i & 0xff;
    const d = new PacketDecoder();
    const out = decodeAll(d, [packet(Buffer.alloc(0)), packet(Buffer.from([9])), packet(big)]);
    expect(out.map((b) => b.length)).toEqual([0, 1, big.length]);
    expect(out[1][0]).toBe(9);
    expect(out[2].equals(big)).toBe(true);
    expect(d.state).toBe('header');
  });

  it('decodes a stream fed one byte at a time, recording each state', () => {
    const d = new PacketDecoder();
    const out: Buffer[] = [];
    const states: string[] = [];
    for (const byte of stream) {
      d.push(Buffer.from([byte]), (p) => out.push(Buffer.from(p)));
      states.push(d.state);
    }
    expect(out).toEqual(payloads);
    // the 4th byte of a non-empty packet's header moves it to 'payload'
    expect(states.slice(0, 8)).toEqual(['header', 'header', 'header', 'header', 'header', 'header', 'header', 'payload']);
    expect(d.state).toBe('header');
    expect(d.buffered).toBe(0);
  });

  it('decodes every split of the stream into two chunks identically', () => {
    for (let i = 0; i <= stream.length; i++) {
      const d = new PacketDecoder();
      expect(decodeAll(d, [stream.subarray(0, i), stream.subarray(i)])).toEqual(payloads);
    }
  });

  it('decodes every split into three chunks identically', () => {
    const small = Buffer.concat([Buffer.alloc(0), Buffer.from('ab'), Buffer.from('xyz12')].map(packet));
    const want = [Buffer.alloc(0), Buffer.from('ab'), Buffer.from('xyz12')];
    for (let i = 0; i <= small.length; i++) {
      for (let j = i; j <= small.length; j++) {
        const d = new PacketDecoder();
        expect(decodeAll(d, [small.subarray(0, i), small.subarray(i, j), small.subarray(j)])).toEqual(want);
      }
    }
  });

  it('decodes random chunkings of random packets', () => {
    const rnd = prng(1234);
    for (let round = 0; round < 200; round++) {
      const ps = Array.from({ length: 1 + Math.floor(rnd() * 20) }, () => {
        const b = Buffer.alloc(Math.floor(rnd() * (rnd() < 0.1 ? 5000 : 40)));
        for (let i = 0; i < b.length; i++) b[i] = Math.floor(rnd() * 256);
        return b;
      });
      const s = Buffer.concat(ps.map(packet));
      const chunks: Buffer[] = [];
      for (let off = 0; off < s.length; ) {
        const n = 1 + Math.floor(rnd() * 64);
        chunks.push(s.subarray(off, off + n));
        off += n;
      }
      expect(decodeAll(new PacketDecoder(), chunks)).toEqual(ps);
    }
  });

  it('accepts a packet of exactly maxPacketSize', () => {
    const d = new PacketDecoder(10);
    expect(decodeAll(d, [packet(Buffer.alloc(10, 1))])).toEqual([Buffer.alloc(10, 1)]);
  });

  it('refuses an oversized length prefix at its fourth byte, before any payload', () => {
    const d = new PacketDecoder(10);
    d.push(Buffer.from([0, 0, 0]), () => {});
    let err: unknown;
    try {
      d.push(Buffer.from([11]), () => {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FrameTooLargeError);
    expect((err as FrameTooLargeError).code).toBe('ERR_FRAME_TOO_LARGE');
    expect((err as FrameTooLargeError).length).toBe(11);
    expect(d.state).toBe('failed');
    // and stays failed
    expect(() => d.push(Buffer.from([1]), () => {})).toThrow(FrameTooLargeError);
  });

  it('refuses the huge-length-prefix vector (0xFFFFFFF0) with the default limit', () => {
    const d = new PacketDecoder();
    expect(() => d.push(Buffer.from('fffffff0', 'hex'), () => {})).toThrow(
      expect.objectContaining({ code: 'ERR_FRAME_TOO_LARGE', length: 0xfffffff0 }),
    );
  });

  it('delivers packets that precede an oversized one', () => {
    const d = new PacketDecoder(4);
    const got: Buffer[] = [];
    expect(() =>
      d.push(Buffer.concat([packet(Buffer.from('ok')), encodePacketHeader(5)]), (p) => got.push(Buffer.from(p))),
    ).toThrow(FrameTooLargeError);
    expect(got).toEqual([Buffer.from('ok')]);
  });

  it('counts only the bytes that arrived as buffered for a partial packet', () => {
    const d = new PacketDecoder();
    d.push(Buffer.concat([encodePacketHeader(1_000_000), Buffer.alloc(10)]), () => {});
    expect(d.state).toBe('payload');
    expect(d.buffered).toBe(14);
  });
});

describe('PacketDecoder memory', () => {
  /** Feed `chunks` through pushRaw, recording every (buf, start, end) handed over. */
  function raw(d: PacketDecoder, chunks: Buffer[]): Array<[Buffer, number, number]> {
    const out: Array<[Buffer, number, number]> = [];
    for (const c of chunks) d.pushRaw(c, (buf, start, end) => out.push([buf, start, end]));
    return out;
  }

  function pattern(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
    return b;
  }

  it('hands packets that arrive whole in one chunk over as views of that chunk', () => {
    const chunk = Buffer.concat([packet(Buffer.from('one')), packet(Buffer.alloc(0)), packet(Buffer.from('three'))]);
    const out = raw(new PacketDecoder(), [chunk]);
    expect(out.map(([buf]) => buf === chunk)).toEqual([true, true, true]);
    expect(out.map(([buf, s, e]) => buf.toString('latin1', s, e))).toEqual(['one', '', 'three']);
  });

  it('hands a payload over as a view of its chunk when only its length prefix was split', () => {
    const s = packet(Buffer.from('payload'));
    const second = s.subarray(2);
    const out = raw(new PacketDecoder(), [s.subarray(0, 2), second]);
    expect(out).toHaveLength(1);
    expect(out[0][0]).toBe(second);
    expect(second.toString('latin1', out[0][1], out[0][2])).toBe('payload');
  });

  it('assembles a payload spread over 64 KiB chunks in one buffer allocated once at its length', () => {
    const payload = pattern(1024 * 1024);
    const s = Buffer.concat([packet(payload), packet(Buffer.from('next'))]);
    const chunks: Buffer[] = [];
    for (let off = 0; off < s.length; off += 65536) chunks.push(Buffer.from(s.subarray(off, off + 65536)));
    const alloc = vi.spyOn(Buffer, 'allocUnsafe');
    const concat = vi.spyOn(Buffer, 'concat');
    const d = new PacketDecoder();
    let out: Array<[Buffer, number, number]>;
    try {
      out = raw(d, chunks);
      expect(alloc.mock.calls.map(([n]) => n)).toEqual([payload.length]);
      expect(concat).not.toHaveBeenCalled();
    } finally {
      alloc.mockRestore();
      concat.mockRestore();
    }
    expect(out).toHaveLength(2);
    const [buf, start, end] = out[0];
    expect([buf.length, start, end]).toEqual([payload.length, 0, payload.length]);
    expect(buf.equals(payload)).toBe(true);
    expect(out[1][0].toString('latin1', out[1][1], out[1][2])).toBe('next');
    expect(d.state).toBe('header');
  });

  it('assembles a payload fed one byte at a time', () => {
    const payload = pattern(1000);
    const d = new PacketDecoder();
    const out: Buffer[] = [];
    for (const byte of packet(payload)) d.push(Buffer.from([byte]), (p) => out.push(Buffer.from(p)));
    expect(out).toEqual([payload]);
  });

  it('gives a payload above EAGER_ALLOC_LIMIT its buffer only once a quarter of it has arrived', () => {
    const len = 4 * EAGER_ALLOC_LIMIT + 8;
    const payload = pattern(len);
    const s = packet(payload);
    const alloc = vi.spyOn(Buffer, 'allocUnsafe');
    const d = new PacketDecoder();
    const out: Buffer[] = [];
    const feed = (from: number, to: number): void => d.push(s.subarray(from, to), (p) => out.push(p));
    try {
      feed(0, 4 + 1000);
      expect(d.buffered).toBe(4 + 1000);
      expect(alloc.mock.calls.filter(([n]) => n === len)).toHaveLength(0);
      feed(4 + 1000, 4 + len / 4 - 1); // one byte short of a quarter
      expect(alloc.mock.calls.filter(([n]) => n === len)).toHaveLength(0);
      feed(4 + len / 4 - 1, 4 + len / 4 + 10);
      expect(alloc.mock.calls.filter(([n]) => n === len)).toHaveLength(1);
      feed(4 + len / 4 + 10, s.length);
      expect(alloc.mock.calls.filter(([n]) => n === len)).toHaveLength(1);
    } finally {
      alloc.mockRestore();
    }
    expect(out).toHaveLength(1);
    expect(out[0].equals(payload)).toBe(true);
  });

  describe('readTarget (reads straight into the payload buffer)', () => {
    /** Write `bytes` into the offered view, as a transport's read would, and return the view of what was read. */
    function readInto(view: Buffer, bytes: Buffer): Buffer {
      bytes.copy(view);
      return view.subarray(0, bytes.length);
    }

    it('offers nothing while a length prefix is read or no payload buffer exists yet', () => {
      const d = new PacketDecoder();
      expect(d.readTarget()).toBeNull();
      d.push(Buffer.from([0, 0]), () => {});
      expect(d.readTarget()).toBeNull();
      const big = new PacketDecoder();
      big.push(encodePacketHeader(4 * EAGER_ALLOC_LIMIT), () => {}); // kept as parts until a quarter arrived
      expect(big.readTarget()).toBeNull();
    });

    it('offers the unfilled rest of the payload, and takes bytes read there without copying them', () => {
      const payload = pattern(256 * 1024);
      const s = Buffer.concat([packet(payload), packet(Buffer.from('next'))]);
      const d = new PacketDecoder();
      const out: Array<[Buffer, number, number]> = [];
      const onPacket = (buf: Buffer, start: number, end: number): void => void out.push([buf, start, end]);
      d.pushRaw(s.subarray(0, 4 + 1000), onPacket);
      const view = d.readTarget()!;
      expect(view.length).toBe(payload.length - 1000);
      expect(d.readTarget()).toBeNull(); // one offer at a time
      const read = readInto(view, s.subarray(4 + 1000, 4 + 100_000));
      const copy = vi.spyOn(Buffer.prototype, 'copy');
      try {
        d.pushRaw(read, onPacket);
        expect(copy).not.toHaveBeenCalled();
      } finally {
        copy.mockRestore();
      }
      const rest = d.readTarget()!;
      expect(rest.length).toBe(payload.length - 100_000);
      expect(rest.buffer).toBe(view.buffer);
      expect(rest.byteOffset).toBe(view.byteOffset + 99_000);
      d.pushRaw(readInto(rest, s.subarray(4 + 100_000, 4 + payload.length)), onPacket);
      expect(out).toHaveLength(1);
      expect(out[0][0].buffer).toBe(view.buffer);
      expect(out[0][0].subarray(out[0][1], out[0][2]).equals(payload)).toBe(true);
      d.pushRaw(s.subarray(4 + payload.length), onPacket);
      expect(out[1][0].toString('latin1', out[1][1], out[1][2])).toBe('next');
    });

    it('offers nothing once fewer than DIRECT_READ_MIN bytes are missing', () => {
      const payload = pattern(DIRECT_READ_MIN + 100);
      const d = new PacketDecoder();
      d.push(packet(payload).subarray(0, 4 + 99), () => {});
      expect(d.readTarget()).not.toBeNull();
      d.push(packet(payload).subarray(4 + 99, 4 + 101), () => {});
      expect(d.readTarget()).toBeNull();
    });

    it('still decodes correctly when an offer is not used and other chunks come instead', () => {
      const payload = pattern(200_000);
      const s = packet(payload);
      const d = new PacketDecoder();
      const out: Buffer[] = [];
      d.push(s.subarray(0, 50_000), (p) => out.push(p));
      const unused = d.readTarget()!;
      unused.fill(0xee); // scribbled on by a read that delivered elsewhere: must not matter
      d.push(Buffer.from(s.subarray(50_000, 120_000)), (p) => out.push(p));
      d.push(Buffer.from(s.subarray(120_000)), (p) => out.push(p));
      expect(out).toHaveLength(1);
      expect(out[0].equals(payload)).toBe(true);
    });
  });

  it('refuses an oversized length prefix without allocating for it, also when the prefix is split', () => {
    const alloc = vi.spyOn(Buffer, 'allocUnsafe');
    try {
      const d = new PacketDecoder(1000);
      d.push(Buffer.from([0, 0]), () => {});
      expect(() => d.push(Buffer.from([0x10, 0, 1, 2, 3]), () => {})).toThrow(FrameTooLargeError);
      const whole = new PacketDecoder(1000);
      expect(() => whole.push(Buffer.from([0, 0, 0x10, 0, 1, 2, 3]), () => {})).toThrow(FrameTooLargeError);
      expect(alloc).not.toHaveBeenCalled();
    } finally {
      alloc.mockRestore();
    }
  });
});
