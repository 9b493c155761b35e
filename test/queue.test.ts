/**
 * PeerQueue on its own: packets (length prefix and frame) kept back to back in chunks, items named by seqs that survive the arrays
 * being compacted, large bodies kept by reference, TTL bookkeeping and chunk release.
 */
import { describe, expect, it } from 'vitest';
import { FRAME_SEQ_MESSAGE, readSeq } from '../src/protocol.js';
import { AWAITING_ACK, COPY_BODY_LIMIT, FRAME_HEAD_SIZE, PeerQueue, QUEUED, WRITING } from '../src/queue.js';

/** Wire sequence numbers given to pushed items, increasing. */
let wire = 1;

function uuidOf(i: number): Buffer {
  const u = Buffer.alloc(16);
  u.writeUInt32BE(i, 0);
  u.writeUInt32BE(i ^ 0x5a5a5a5a, 12);
  return u;
}

function bodyOf(i: number, n = 100): Buffer {
  const b = Buffer.alloc(n, i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
}

/** A connected queue holding `n` messages (TTL infinite). */
function filled(n: number, size = 100): { q: PeerQueue; seqs: number[] } {
  const q = new PeerQueue('peer', 0);
  q.connect(0);
  const seqs: number[] = [];
  for (let i = 0; i < n; i++) {
    const u = uuidOf(i);
    seqs.push(q.push(u, 0, bodyOf(i, size), 7, null, false, 0, wire++));
  }
  return { q, seqs };
}

/** The frame of a slot as it would go on the wire. */
function frame(q: PeerQueue, slot: number): Buffer {
  const head = q.chunk(slot).subarray(q.frameOffset(slot), q.frameOffset(slot) + FRAME_HEAD_SIZE);
  const body = q.largeBody(slot) ?? q.chunk(slot).subarray(q.frameOffset(slot) + FRAME_HEAD_SIZE, q.frameOffset(slot) + FRAME_HEAD_SIZE + q.bodyLength(slot));
  return Buffer.concat([head, body]);
}

describe('PeerQueue', () => {
  it('keeps each message as its wire frame: type, wire seq, uuid, flags and body', () => {
    const { q, seqs } = filled(3000);
    expect(q.size).toBe(3000);
    expect(q.bytes).toBe(300_000);
    for (const i of [0, 1, 1500, 2999]) {
      const s = q.slotOf(seqs[i]);
      const f = frame(q, s);
      expect(f[0]).toBe(FRAME_SEQ_MESSAGE);
      expect(readSeq(f, 1)).toBe(q.wireSeq(s));
      expect(f.subarray(9, 25).equals(uuidOf(i))).toBe(true);
      expect(f.readUInt32BE(29)).toBe(7);
      expect(f.subarray(FRAME_HEAD_SIZE).equals(bodyOf(i))).toBe(true);
      expect(q.uuid(q.slotOf(seqs[i])).equals(uuidOf(i))).toBe(true);
    }
  });

  it('keeps packets back to back, each after its length prefix, so runs of them can be written as they lie', () => {
    const q = new PeerQueue('peer', 0);
    q.connect(0);
    const sizes = [0, 100, 3000, COPY_BODY_LIMIT, 7, COPY_BODY_LIMIT - 1, 5, 40_000, 12];
    const slots = sizes.map((n, i) => q.slotOf(q.push(uuidOf(i), 0, bodyOf(i, Math.max(n, 4)), 0, null, false, 0, wire++)));
    let contiguous = 0;
    for (let i = 0; i < slots.length; i++) {
      const s = slots[i];
      const chunk = q.chunk(s);
      const off = q.frameOffset(s);
      const n = Math.max(sizes[i], 4);
      expect(chunk.readUInt32BE(off - 4)).toBe(FRAME_HEAD_SIZE + n); // the packet's length prefix
      expect(q.packetEnd(s)).toBe(off + FRAME_HEAD_SIZE + (n >= COPY_BODY_LIMIT ? 0 : n));
      if (i + 1 < slots.length && q.chunk(slots[i + 1]) === chunk) {
        expect(q.frameOffset(slots[i + 1]) - 4).toBe(q.packetEnd(s));
        contiguous++;
      }
    }
    expect(contiguous).toBeGreaterThan(3);
  });

  it('does not keep the body handed over (copied), except large ones (kept by reference)', () => {
    const q = new PeerQueue('peer', 0);
    q.connect(0);
    const small = bodyOf(1);
    const large = bodyOf(2, COPY_BODY_LIMIT);
    const s1 = q.push(uuidOf(1), 0, small, 0, null, false, 0, wire++);
    const s2 = q.push(uuidOf(2), 0, large, 0, null, false, 0, wire++);
    small.fill(0);
    expect(q.largeBody(q.slotOf(s1))).toBeUndefined();
    expect(frame(q, q.slotOf(s1)).subarray(FRAME_HEAD_SIZE).equals(bodyOf(1))).toBe(true);
    expect(q.largeBody(q.slotOf(s2))).toBe(large);
    expect(q.bytes).toBe(100 + COPY_BODY_LIMIT);
    q.remove(q.slotOf(s2));
    expect(q.bytes).toBe(100);
  });

  it('seqs stay valid while the arrays are compacted and grown; removed items are skipped', () => {
    const { q, seqs } = filled(5000);
    // send and remove the first 4000 out of order, then push more (which compacts)
    for (let i = 0; i < 4000; i++) {
      const s = q.peekUnsent();
      expect(s).toBe(q.slotOf(seqs[i]));
      q.markWriting(s);
    }
    expect(q.inflight).toBe(4000);
    for (let i = 3999; i >= 0; i--) q.remove(q.slotOf(seqs[i]));
    expect(q.inflight).toBe(0);
    expect(q.head).toBe(q.slotOf(seqs[4000]));
    for (let i = 5000; i < 9000; i++) seqs.push(q.push(uuidOf(i), 0, bodyOf(i), 0, null, false, 0, wire++));
    expect(q.size).toBe(5000);
    for (let i = 4000; i < 9000; i++) {
      const s = q.slotOf(seqs[i]);
      expect(s).toBeGreaterThanOrEqual(0);
      expect(q.uuid(s).equals(uuidOf(i))).toBe(true);
    }
    for (let i = 0; i < 4000; i++) expect(q.slotOf(seqs[i])).toBe(-1);
    // the next unsent one is still the 4000th
    expect(q.peekUnsent()).toBe(q.slotOf(seqs[4000]));
  });

  it('an emptied queue never hands out a seq again', () => {
    const { q, seqs } = filled(10);
    for (const seq of seqs) q.remove(q.slotOf(seq));
    expect(q.size).toBe(0);
    const next = q.push(uuidOf(99), 0, bodyOf(99), 0, null, false, 0, wire++);
    expect(seqs).not.toContain(next);
    for (const seq of seqs) expect(q.slotOf(seq)).toBe(-1);
    expect(q.uuid(q.slotOf(next)).equals(uuidOf(99))).toBe(true);
  });

  it('finds items by uuid, keeps the index up to date, and drops it when empty', () => {
    const { q, seqs } = filled(100);
    expect(q.find(uuidOf(42), 0)).toBe(seqs[42]);
    expect(q.find(uuidOf(1000), 0)).toBe(-1);
    const more = q.push(uuidOf(500), 0, bodyOf(500), 0, null, false, 0, wire++);
    expect(q.find(uuidOf(500), 0)).toBe(more);
    q.remove(q.slotOf(seqs[42]));
    expect(q.find(uuidOf(42), 0)).toBe(-1);
    for (const seq of [...seqs, more]) q.remove(q.slotOf(seq));
    expect(q.index).toBeUndefined();
  });

  it('in flight goes back to unsent on disconnect; TTLs run down only while disconnected', () => {
    const q = new PeerQueue('peer', 0);
    q.connect(0);
    const a = q.push(uuidOf(1), 0, bodyOf(1), 0, 5000, false, 0, wire++);
    const b = q.push(uuidOf(2), 0, bodyOf(2), 0, 1000, false, 0, wire++);
    q.markWriting(q.peekUnsent());
    q.setState(q.slotOf(a), AWAITING_ACK);
    expect(q.inflight).toBe(1);
    q.disconnect(10_000);
    expect(q.inflight).toBe(0);
    expect(q.state(q.slotOf(a))).toBe(QUEUED);
    expect(q.peekUnsent()).toBe(q.slotOf(a));
    expect(q.nextExpiry()).toBe(11_000);
    const expired = q.expire(11_000);
    expect(expired.map((e) => e.uuid.readUInt32BE(0))).toEqual([2]);
    expect(q.isRemoved(q.slotOf(b))).toBe(true);
    expect(q.size).toBe(1);
    expect(q.remaining(q.slotOf(a), 12_000)).toBe(3000);
    q.connect(12_000);
    expect(q.ttl(q.slotOf(a))).toBe(3000);
    q.markWriting(q.peekUnsent());
    expect(q.state(q.slotOf(a))).toBe(WRITING);
  });

  it('releases the chunks of delivered messages while others wait', () => {
    const { q, seqs } = filled(20_000);
    const held = (q as unknown as { chunks: Buffer[] }).chunks;
    const before = held.reduce((n, c) => n + c.length, 0);
    expect(before).toBeGreaterThanOrEqual(20_000 * (100 + FRAME_HEAD_SIZE));
    for (let i = 0; i < 19_000; i++) q.remove(q.slotOf(seqs[i]));
    const chunks = (q as unknown as { chunks: Buffer[] }).chunks;
    const after = chunks.reduce((n, c) => n + c.length, 0);
    expect(after).toBeLessThan(before / 5);
    for (let i = 19_000; i < 20_000; i++) expect(q.uuid(q.slotOf(seqs[i])).equals(uuidOf(i))).toBe(true);
  });
});

describe('PeerQueue memory when emptied', () => {
  it('an emptied queue keeps no large arrays or chunks; chunk sizes stay bounded', () => {
    const { q, seqs } = filled(8000);
    const inner = q as unknown as { chunks: Buffer[]; cap: number };
    expect(Math.max(...inner.chunks.map((c) => c.length))).toBeLessThanOrEqual(64 * 1024);
    for (const seq of seqs) q.remove(q.slotOf(seq));
    expect(inner.cap).toBeLessThanOrEqual(256);
    expect(inner.chunks.reduce((n, c) => n + c.length, 0)).toBeLessThanOrEqual(4096);
    // many chunks held at once: sizes stay between 4 and 64 KiB
    const big = filled(40_000).q as unknown as { chunks: Buffer[] };
    expect(big.chunks.length).toBeGreaterThan(20);
    for (const c of big.chunks) {
      expect(c.length).toBeGreaterThanOrEqual(4096);
      expect(c.length).toBeLessThanOrEqual(64 * 1024);
    }
  });
});

describe('PeerQueue wire sequence numbers', () => {
  it('keeps each item\'s wire seq (increasing, with gaps) through compaction', () => {
    const q = new PeerQueue('peer', 0);
    q.connect(0);
    const seqs: number[] = [];
    for (let i = 0; i < 3000; i++) seqs.push(q.push(uuidOf(i), 0, bodyOf(i), 0, null, false, 0, 2 ** 40 + 3 * i));
    for (let i = 0; i < 2500; i++) q.remove(q.slotOf(seqs[i]));
    for (let i = 3000; i < 3100; i++) seqs.push(q.push(uuidOf(i), 0, bodyOf(i), 0, null, false, 0, 2 ** 40 + 3 * i));
    for (const i of [2500, 2999, 3000, 3099]) {
      const s = q.slotOf(seqs[i]);
      expect(q.wireSeq(s)).toBe(2 ** 40 + 3 * i);
      expect(readSeq(q.chunk(s), q.frameOffset(s) + 1)).toBe(2 ** 40 + 3 * i);
    }
  });
});
