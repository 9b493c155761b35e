/**
 * The receiver's dedup state: per sender identity, the sender's incarnation and the highest
 * sequence number delivered from it (and, with storage, the highest one committed there).
 * A message at or below that number is a repeat. A few dozen bytes per remembered peer: no
 * object per peer, only a Map entry (identity → slot) and a slot in typed arrays.
 *
 * Peers are kept in the order they were last seen (a Map keeps insertion order, and a peer is
 * moved to the end when it identifies and when it leaves), so the ones gone longest can be
 * forgotten first when a bound is set.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { readI32, writeI32 } from './bytes.js';
import { INCARNATION_SIZE } from './protocol.js';
import type { DeliveredMark } from './storage.js';

const MIN_SLOTS = 16;

export class DeliveredMarks {
  private readonly slots = new Map<string, number>();
  /** Per slot: the incarnation as two int32 (little-endian words of its 8 bytes). */
  private inc0 = new Int32Array(MIN_SLOTS);
  private inc1 = new Int32Array(MIN_SLOTS);
  /** Per slot: highest seq delivered, and committed to storage. */
  private delivered = new Float64Array(MIN_SLOTS);
  private committed = new Float64Array(MIN_SLOTS);
  private readonly free: number[] = [];
  private used = 0;

  /** Peers remembered. */
  get size(): number {
    return this.slots.size;
  }

  /** The slot of a peer, or -1. */
  slotOf(peer: string): number {
    return this.slots.get(peer) ?? -1;
  }

  /**
   * The slot of `peer` with incarnation `inc[off..off + 8)`, made if needed, and moved to the
   * newest end of the order. A peer known under another incarnation starts over from 0: its
   * previous incarnation is gone (a sender without storage restarted, or lost its storage).
   */
  identified(peer: string, inc: Uint8Array, off = 0): number {
    let slot = this.slots.get(peer);
    const a = readI32(inc, off);
    const b = readI32(inc, off + 4);
    if (slot === undefined) {
      slot = this.alloc();
      this.inc0[slot] = a;
      this.inc1[slot] = b;
      this.delivered[slot] = 0;
      this.committed[slot] = 0;
    } else {
      this.slots.delete(peer);
      if (this.inc0[slot] !== a || this.inc1[slot] !== b) {
        this.inc0[slot] = a;
        this.inc1[slot] = b;
        this.delivered[slot] = 0;
        this.committed[slot] = 0;
      }
    }
    this.slots.set(peer, slot);
    return slot;
  }

  /** Move a peer to the newest end of the order (it is leaving now). */
  touch(peer: string): void {
    const slot = this.slots.get(peer);
    if (slot === undefined) return;
    this.slots.delete(peer);
    this.slots.set(peer, slot);
  }

  /** Highest seq delivered from the slot's incarnation. */
  deliveredOf(slot: number): number {
    return this.delivered[slot];
  }

  setDelivered(slot: number, seq: number): void {
    this.delivered[slot] = seq;
  }

  /** Highest seq recorded in storage. */
  committedOf(slot: number): number {
    return this.committed[slot];
  }

  /** `seq` of incarnation `inc` is in storage now (ignored if the slot moved on to another incarnation). */
  setCommitted(slot: number, inc: Uint8Array, seq: number): void {
    if (this.inc0[slot] === readI32(inc, 0) && this.inc1[slot] === readI32(inc, 4) && seq > this.committed[slot]) this.committed[slot] = seq;
  }

  /** The slot's incarnation as a new 8-byte Buffer. */
  incarnationOf(slot: number): Buffer {
    const b = Buffer.allocUnsafe(INCARNATION_SIZE);
    writeI32(b, 0, this.inc0[slot]);
    writeI32(b, 4, this.inc1[slot]);
    return b;
  }

  /** Load a mark from storage (delivered = committed = its seq). */
  load(mark: DeliveredMark): void {
    if (mark.incarnation.length !== INCARNATION_SIZE) return;
    const slot = this.identified(mark.peer, mark.incarnation);
    this.delivered[slot] = this.committed[slot] = mark.seq;
  }

  /** The mark of a slot as storage keeps it (the delivered seq). */
  mark(peer: string, slot: number): DeliveredMark {
    return { peer, incarnation: this.incarnationOf(slot), seq: this.delivered[slot] };
  }

  /**
   * Forget the peers seen longest ago, skipping those `keep` says to keep, until at most
   * `limit` of the others are left. Returns the peers forgotten.
   */
  trim(limit: number, keep: (peer: string) => boolean, kept: number): string[] {
    const gone: string[] = [];
    let excess = this.slots.size - kept - limit;
    if (excess <= 0) return gone;
    for (const [peer, slot] of this.slots) {
      if (excess <= 0) break;
      if (keep(peer)) continue;
      this.slots.delete(peer);
      this.free.push(slot);
      gone.push(peer);
      excess--;
    }
    return gone;
  }

  private alloc(): number {
    const f = this.free.pop();
    if (f !== undefined) return f;
    if (this.used === this.delivered.length) {
      const cap = this.used * 2;
      const grow = <T extends Int32Array | Float64Array>(a: T, b: T): T => {
        b.set(a);
        return b;
      };
      this.inc0 = grow(this.inc0, new Int32Array(cap));
      this.inc1 = grow(this.inc1, new Int32Array(cap));
      this.delivered = grow(this.delivered, new Float64Array(cap));
      this.committed = grow(this.committed, new Float64Array(cap));
    }
    return this.used++;
  }
}
