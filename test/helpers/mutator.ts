/**
 * A small seeded mutation fuzzer for the wire protocol: a corpus of valid streams (the recorded
 * snakeMQ 1.6 vectors and our own frames) and mutations that keep inputs close to valid so they
 * get deep into the decoder (length prefixes set to edge values, type bytes swapped, ranges
 * cut, duplicated and spliced between inputs).
 */
import {
  encodeAck,
  encodeHello,
  encodeIdentification,
  encodeIncompatibleProtocol,
  encodeMessage,
  encodePing,
  encodePong,
  encodeProtocolVersion,
} from '../../src/protocol.js';
import { wireVectors } from './fixtures.js';
import { prng, randInt } from './fault-proxy.js';

/** One packet: uint32 BE length then the frame. */
export function packet(frame: Buffer): Buffer {
  const h = Buffer.allocUnsafe(4);
  h.writeUInt32BE(frame.length, 0);
  return Buffer.concat([h, frame]);
}

interface RecordedVector {
  frames?: string[];
  sent?: string;
}

/** Every byte string recorded in the snakeMQ 1.6 vectors (whole packets, as on the wire). */
export function vectorStreams(): Buffer[] {
  const out: Buffer[] = [];
  for (const v of wireVectors<RecordedVector>()) {
    if (v.sent) out.push(Buffer.from(v.sent, 'hex'));
    if (v.frames?.length) out.push(Buffer.from(v.frames.join(''), 'hex'));
  }
  return out;
}

const INTERESTING_U32 = [0, 1, 4, 5, 16, 24, 25, 26, 255, 256, 0x7fff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const INTERESTING_U8 = [0, 1, 2, 3, 4, 5, 6, 0x0f, 0x10, 0x11, 0x12, 0x7f, 0x80, 0xfe, 0xff];

/** Seeded generator of valid sessions and mutated inputs. */
export class Mutator {
  readonly rand: () => number;
  readonly corpus: Buffer[];

  constructor(seed: number, extraCorpus: Buffer[] = []) {
    this.rand = prng(seed);
    this.corpus = [...vectorStreams(), ...extraCorpus];
    for (let i = 0; i < 20; i++) this.corpus.push(this.session());
  }

  int(min: number, max: number): number {
    return randInt(this.rand, min, max);
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.rand() * xs.length)];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(this.rand() * 256);
    return b;
  }

  /** A random valid frame (without its length prefix). */
  frame(ident = 'fz'): Buffer {
    switch (this.int(0, 9)) {
      case 0:
        return encodeProtocolVersion(this.rand() < 0.9 ? 1 : this.int(0, 3));
      case 1:
        return encodeHello({ extVersion: this.int(0, 2), maxPacketSize: this.pick(INTERESTING_U32), features: this.int(0, 7) });
      case 2:
        return encodeIdentification(ident);
      case 3:
        return encodeAck(Array.from({ length: this.int(0, 4) }, () => this.bytes(16)));
      case 4:
        return encodePing();
      case 5:
        return encodePong();
      case 6:
        return encodeIncompatibleProtocol();
      default:
        return encodeMessage({
          uuid: this.bytes(16),
          ttlMs: this.rand() < 0.5 ? null : this.int(0, 5000) * 1000,
          flags: this.int(0, 3),
          body: this.bytes(this.int(0, 64)),
        });
    }
  }

  /** A valid session as a peer would send it: version, maybe hello, ident, then frames. */
  session(ident?: string): Buffer {
    const id = ident ?? `fz${this.int(0, 15)}`;
    const parts = [packet(encodeProtocolVersion(1))];
    if (this.rand() < 0.7) parts.push(packet(encodeHello({ extVersion: 1, maxPacketSize: 1 << 20, features: 3 })));
    parts.push(packet(encodeIdentification(id)));
    const n = this.int(0, 8);
    for (let i = 0; i < n; i++) parts.push(packet(this.frame(id)));
    return Buffer.concat(parts);
  }

  /** Apply 1..maxOps random mutations to a copy of `input`. */
  mutate(input: Buffer, maxOps = 4): Buffer {
    let b = Buffer.from(input);
    const ops = this.int(1, maxOps);
    for (let k = 0; k < ops; k++) {
      const pos = b.length ? this.int(0, b.length - 1) : 0;
      switch (this.int(0, 11)) {
        case 0: // flip a bit
          if (b.length) b[pos] ^= 1 << this.int(0, 7);
          break;
        case 1: // random byte
          if (b.length) b[pos] = this.int(0, 255);
          break;
        case 2: // interesting byte (frame types among them)
          if (b.length) b[pos] = this.pick(INTERESTING_U8);
          break;
        case 3: // interesting uint32 (length prefixes, TTLs, flags)
          if (b.length >= 4) b.writeUInt32BE(this.pick(INTERESTING_U32), this.int(0, b.length - 4));
          break;
        case 4: // insert random bytes
          b = Buffer.concat([b.subarray(0, pos), this.bytes(this.int(1, 32)), b.subarray(pos)]);
          break;
        case 5: {
          // delete a range
          const end = Math.min(b.length, pos + this.int(1, 32));
          b = Buffer.concat([b.subarray(0, pos), b.subarray(end)]);
          break;
        }
        case 6: {
          // duplicate a range
          const end = Math.min(b.length, pos + this.int(1, 64));
          b = Buffer.concat([b.subarray(0, end), b.subarray(pos, end), b.subarray(end)]);
          break;
        }
        case 7: {
          // splice in a piece of another corpus entry
          const other = this.pick(this.corpus);
          const s = other.length ? this.int(0, other.length - 1) : 0;
          const piece = other.subarray(s, s + this.int(1, 64));
          b = Buffer.concat([b.subarray(0, pos), piece, b.subarray(pos)]);
          break;
        }
        case 8: // truncate
          b = b.subarray(0, pos);
          break;
        case 9: // append a valid packet
          b = Buffer.concat([b, packet(this.frame())]);
          break;
        case 10: // append a packet of random bytes
          b = Buffer.concat([b, packet(this.bytes(this.int(0, 40)))]);
          break;
        default: // adjust the first length prefix by a little
          if (b.length >= 4) b.writeUInt32BE((b.readUInt32BE(0) + this.int(-3, 3)) >>> 0, 0);
      }
    }
    return b;
  }

  /** A fuzz input: mostly a mutated corpus entry or session, sometimes plain random bytes. */
  input(): Buffer {
    const r = this.rand();
    if (r < 0.05) return this.bytes(this.int(0, 200));
    if (r < 0.15) return this.session();
    if (r < 0.5) return this.mutate(this.pick(this.corpus));
    return this.mutate(this.session());
  }

  /** Split `b` into 1..maxChunks chunks at random points. */
  chunks(b: Buffer, maxChunks = 6): Buffer[] {
    const n = Math.min(Math.max(1, b.length), this.int(1, maxChunks));
    if (n <= 1) return [b];
    const points = new Set<number>();
    while (points.size < n - 1) points.add(this.int(1, b.length - 1));
    const sorted = [0, ...[...points].sort((x, y) => x - y), b.length];
    const out: Buffer[] = [];
    for (let i = 0; i + 1 < sorted.length; i++) out.push(b.subarray(sorted[i], sorted[i + 1]));
    return out;
  }
}
