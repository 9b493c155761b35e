/**
 * One peer's outgoing queue: FIFO items with snakeMQ's TTL rule (the TTL runs down only while
 * the peer is not connected) and the cursors of acknowledged delivery; and the receiver's
 * dedup window. Pure: no I/O, time comes in as arguments.
 *
 * Layout of `items` from `head`: items awaiting acknowledgement or being written, then
 * items not yet sent (from `sendCursor`). Removed items are flagged and skipped.
 *
 * Memory: a queued item is one small object holding its uuid as four int32 (no Buffer, no
 * string) plus the body the application handed over; no per-item map entry unless a queue
 * needs one (see {@link PeerQueue.index}).
 *
 * @module
 */
import type { Message } from './message.js';

/** Item states (the low bits of {@link QItem.bits}). */
export const QUEUED = 0;
export const WRITING = 1;
export const AWAITING_ACK = 2;
const STATE = 3;
/** Kept in storage (persistent flag and a storage present). */
const STORED = 4;
const REMOVED = 8;

/** A queued message. The uuid is kept as four little-endian int32 of its bytes. */
export class QItem {
  u0: number;
  u1: number;
  u2: number;
  u3: number;
  body: Buffer;
  flags: number;
  /**
   * Remaining TTL in ms: while the queue is connected, the remaining time; while not, the
   * remaining time as of `PeerQueue.since` (so expiry = since + ttl). `null` = infinite.
   */
  ttl: number | null;
  /** State, stored and removed bits. */
  bits: number;

  /** @param uuid 16 bytes at `off` of `uuid` */
  constructor(uuid: Buffer, off: number, body: Buffer, flags: number, ttl: number | null, stored: boolean) {
    this.u0 = readI32(uuid, off);
    this.u1 = readI32(uuid, off + 4);
    this.u2 = readI32(uuid, off + 8);
    this.u3 = readI32(uuid, off + 12);
    this.body = body;
    this.flags = flags;
    this.ttl = ttl;
    this.bits = stored ? STORED : 0;
  }

  get state(): number {
    return this.bits & STATE;
  }

  set state(s: number) {
    this.bits = (this.bits & ~STATE) | s;
  }

  get stored(): boolean {
    return (this.bits & STORED) !== 0;
  }

  get removed(): boolean {
    return (this.bits & REMOVED) !== 0;
  }

  /** Whether the 16 bytes at `off` of `buf` are this item's uuid. */
  is(buf: Buffer, off: number): boolean {
    return (
      readI32(buf, off) === this.u0 &&
      readI32(buf, off + 4) === this.u1 &&
      readI32(buf, off + 8) === this.u2 &&
      readI32(buf, off + 12) === this.u3
    );
  }

  /** Write the uuid at `off` of `buf`. */
  writeUuid(buf: Buffer, off: number): void {
    writeI32(buf, off, this.u0);
    writeI32(buf, off + 4, this.u1);
    writeI32(buf, off + 8, this.u2);
    writeI32(buf, off + 12, this.u3);
  }

  /** The uuid as a new Buffer. */
  uuid(): Buffer {
    const b = Buffer.allocUnsafe(16);
    this.writeUuid(b, 0);
    return b;
  }

  /** The uuid as a latin1 string (a map key). */
  key(): string {
    this.writeUuid(keyScratch, 0);
    return keyScratch.toString('latin1', 0, 16);
  }
}

const keyScratch = Buffer.alloc(16);

/**
 * The little-endian int32 at `off` (which the caller knows to be in bounds). Plain indexing:
 * several times faster than `Buffer#readInt32LE` with its checks, on the paths run per message.
 */
export function readI32(b: Uint8Array, off: number): number {
  return b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24);
}

/** Write `v` as a little-endian int32 at `off` (in bounds); see {@link readI32}. */
export function writeI32(b: Uint8Array, off: number, v: number): void {
  b[off] = v;
  b[off + 1] = v >>> 8;
  b[off + 2] = v >>> 16;
  b[off + 3] = v >>> 24;
}

/** Key of a uuid in maps: its bytes as a latin1 string. */
export function uuidKey(uuid: Buffer, off = 0): string {
  return uuid.toString('latin1', off, off + 16);
}

/** A `sendMessage` held by the 'block' policy. Waiters of a queue are served strictly in order. */
export interface Waiter {
  message: Message;
  resolve: (commit: Promise<void> | undefined) => void;
  reject: (err: Error) => void;
}

export class PeerQueue {
  readonly ident: string;
  items: QItem[] = [];
  head = 0;
  /** Index of the first item not yet handed to a connection. */
  sendCursor = 0;
  /**
   * Live items by uuid key, kept only once a queue needed a lookup by uuid (a message whose
   * uuid may repeat a queued one, or `cancelMessage`), and dropped when the queue empties.
   */
  index: Map<string, QItem> | undefined;
  /** Live items and their body bytes. */
  size = 0;
  bytes = 0;
  /** Items written or being written and not yet removed, and their body bytes. */
  inflight = 0;
  inflightBytes = 0;
  /** Live items with a finite TTL. */
  finite = 0;
  /** When the TTL started running down (the peer left); `null` while connected. */
  since: number | null;
  /** Senders blocked by the 'block' policy, in call order, from `lineHead`. */
  line: (Waiter | undefined)[] = [];
  lineHead = 0;
  /** A pump of this queue is scheduled. */
  pumpScheduled = false;

  constructor(ident: string, now: number) {
    this.ident = ident;
    this.since = now;
  }

  get connected(): boolean {
    return this.since === null;
  }

  /** Remaining TTL of an item at `now`, ms (`null` = infinite). */
  remaining(item: QItem, now: number): number | null {
    if (item.ttl === null) return null;
    return this.since === null ? item.ttl : item.ttl - (now - this.since);
  }

  /** Append an item whose TTL counts from `now`. */
  push(item: QItem, now: number): void {
    if (item.ttl !== null) {
      if (this.since !== null) item.ttl += now - this.since;
      this.finite++;
    }
    this.items.push(item);
    if (this.index !== undefined) this.index.set(item.key(), item);
    this.size++;
    this.bytes += item.body.length;
  }

  /** Remove an item (delivered, dropped or expired). */
  remove(item: QItem): void {
    const bits = item.bits;
    if ((bits & REMOVED) !== 0) return;
    item.bits = bits | REMOVED;
    if (this.index !== undefined) this.index.delete(item.key());
    this.size--;
    this.bytes -= item.body.length;
    if (item.ttl !== null) this.finite--;
    if ((bits & STATE) !== QUEUED) {
      this.inflight--;
      this.inflightBytes -= item.body.length;
    }
    this.trim();
  }

  /** The live item with the uuid at `off` of `buf`, or `undefined`. */
  find(buf: Buffer, off: number): QItem | undefined {
    if (this.index === undefined) {
      if (this.size === 0) return undefined;
      const index = new Map<string, QItem>();
      for (let i = this.head; i < this.items.length; i++) {
        const it = this.items[i];
        if (!it.removed) index.set(it.key(), it);
      }
      this.index = index;
    }
    return this.index.get(uuidKey(buf, off));
  }

  /** Next item to send, marked WRITING with `packetId` by the caller via {@link markWriting}. */
  peekUnsent(): QItem | undefined {
    const items = this.items;
    let i = this.sendCursor;
    while (i < items.length && (items[i].bits & REMOVED) !== 0) i++;
    this.sendCursor = i;
    return items[i];
  }

  markWriting(item: QItem): void {
    item.bits = (item.bits & ~STATE) | WRITING;
    this.inflight++;
    this.inflightBytes += item.body.length;
    this.sendCursor++;
  }

  /** The oldest item not in flight (for the drop-oldest policy). */
  oldestUnsent(): QItem | undefined {
    return this.peekUnsent();
  }

  /** The peer connected: freeze remaining TTLs. Returns the items that expired meanwhile. */
  connect(now: number): QItem[] {
    const expired = this.since === null ? [] : this.expire(now);
    if (this.since !== null && this.finite > 0) {
      const elapsed = now - this.since;
      for (let i = this.head; i < this.items.length; i++) {
        const it = this.items[i];
        if (!it.removed && it.ttl !== null) it.ttl -= elapsed;
      }
    }
    this.since = null;
    return expired;
  }

  /**
   * The peer left: everything in flight goes back to the unsent part (to be resent), and the
   * TTLs start running down from `now`.
   */
  disconnect(now: number): void {
    for (let i = this.head; i < this.sendCursor && i < this.items.length; i++) {
      const it = this.items[i];
      if (!it.removed && it.state !== QUEUED) {
        it.state = QUEUED;
        this.inflight--;
        this.inflightBytes -= it.body.length;
      }
    }
    this.sendCursor = this.head;
    if (this.since === null) this.since = now;
  }

  /** Remove and return the items whose TTL ran out at `now` (only while disconnected). */
  expire(now: number): QItem[] {
    if (this.since === null || this.finite === 0) return [];
    const elapsed = now - this.since;
    const out: QItem[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const it = this.items[i];
      if (!it.removed && it.ttl !== null && it.ttl - elapsed <= 0 && it.state === QUEUED) out.push(it);
    }
    for (const it of out) this.remove(it);
    return out;
  }

  /** When the next item expires (absolute clock ms), or `null`. */
  nextExpiry(): number | null {
    if (this.since === null || this.finite === 0) return null;
    let min = Infinity;
    for (let i = this.head; i < this.items.length; i++) {
      const it = this.items[i];
      if (!it.removed && it.ttl !== null && it.ttl < min) min = it.ttl;
    }
    return min === Infinity ? null : this.since + min;
  }

  /** Live items in order (for TTL write-back and inspection). */
  *live(): IterableIterator<QItem> {
    for (let i = this.head; i < this.items.length; i++) if (!this.items[i].removed) yield this.items[i];
  }

  private trim(): void {
    const items = this.items;
    let head = this.head;
    while (head < items.length && (items[head].bits & REMOVED) !== 0) head++;
    this.head = head;
    if (this.sendCursor < head) this.sendCursor = head;
    if (head === items.length) {
      this.items = [];
      this.head = 0;
      this.sendCursor = 0;
      this.index = undefined;
    } else if (head > 1024 && head * 2 > items.length) {
      this.items = items.slice(head);
      this.sendCursor -= head;
      this.head = 0;
    }
  }
}

/**
 * The receiver's dedup window of one peer: the newest `limit` distinct uuids, oldest evicted
 * first (adding a uuid already present changes nothing). An open-addressing hash table over
 * a ring of uuids kept as int32 quadruples: no object, string or Buffer per uuid.
 */
export class SeenWindow {
  readonly limit: number;
  private cap: number;
  /** Ring of uuids, 4 int32 each, oldest at `first`. */
  private ring: Int32Array;
  private hashes: Int32Array;
  private first = 0;
  private count = 0;
  /** Hash table of ring positions + 1 (0 = empty), linear probing. */
  private table: Int32Array;
  private mask: number;

  constructor(limit: number) {
    this.limit = Math.max(1, Math.floor(limit));
    this.cap = Math.min(this.limit, 1024);
    this.ring = new Int32Array(this.cap * 4);
    this.hashes = new Int32Array(this.cap);
    const size = tableSize(this.cap);
    this.table = new Int32Array(size);
    this.mask = size - 1;
  }

  get size(): number {
    return this.count;
  }

  /** Whether the uuid (as four little-endian int32) is in the window. */
  has(a: number, b: number, c: number, d: number): boolean {
    return this.slotOf(a, b, c, d, hash(a, b, c, d)) >= 0;
  }

  /** Add a uuid (four little-endian int32); no-op when present. */
  add(a: number, b: number, c: number, d: number): void {
    const h = hash(a, b, c, d);
    if (this.slotOf(a, b, c, d, h) >= 0) return;
    let pos: number;
    if (this.count === this.limit) {
      pos = this.first;
      this.unlink(pos);
      this.first = pos + 1 === this.cap ? 0 : pos + 1;
    } else {
      if (this.count === this.cap) this.grow();
      pos = this.first + this.count;
      if (pos >= this.cap) pos -= this.cap;
      this.count++;
    }
    const r = this.ring;
    r[pos * 4] = a;
    r[pos * 4 + 1] = b;
    r[pos * 4 + 2] = c;
    r[pos * 4 + 3] = d;
    this.hashes[pos] = h;
    this.link(pos, h);
  }

  /** Table slot holding the uuid, or -1. */
  private slotOf(a: number, b: number, c: number, d: number, h: number): number {
    const t = this.table;
    const r = this.ring;
    const mask = this.mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const e = t[i];
      if (e === 0) return -1;
      const p = (e - 1) * 4;
      if (r[p] === a && r[p + 1] === b && r[p + 2] === c && r[p + 3] === d) return i;
    }
  }

  private link(pos: number, h: number): void {
    const t = this.table;
    const mask = this.mask;
    let i = h & mask;
    while (t[i] !== 0) i = (i + 1) & mask;
    t[i] = pos + 1;
  }

  /** Remove ring position `pos` from the table (backward-shift deletion). */
  private unlink(pos: number): void {
    const t = this.table;
    const mask = this.mask;
    let i = this.hashes[pos] & mask;
    while (t[i] !== pos + 1) i = (i + 1) & mask;
    for (let j = (i + 1) & mask; ; j = (j + 1) & mask) {
      const e = t[j];
      if (e === 0) break;
      const home = this.hashes[e - 1] & mask;
      // Leave the entry at j when its home lies cyclically in (i, j].
      if (i <= j ? i < home && home <= j : i < home || home <= j) continue;
      t[i] = e;
      i = j;
    }
    t[i] = 0;
  }

  private grow(): void {
    const cap = Math.min(this.limit, this.cap * 2);
    const ring = new Int32Array(cap * 4);
    const hashes = new Int32Array(cap);
    for (let k = 0; k < this.count; k++) {
      let p = this.first + k;
      if (p >= this.cap) p -= this.cap;
      ring.set(this.ring.subarray(p * 4, p * 4 + 4), k * 4);
      hashes[k] = this.hashes[p];
    }
    this.ring = ring;
    this.hashes = hashes;
    this.cap = cap;
    this.first = 0;
    const size = tableSize(cap);
    this.table = new Int32Array(size);
    this.mask = size - 1;
    for (let k = 0; k < this.count; k++) this.link(k, hashes[k]);
  }
}

/** A power of two at least four times `n` (load factor at most 1/4: short probe runs). */
function tableSize(n: number): number {
  let s = 16;
  while (s < n * 4) s *= 2;
  return s;
}

function hash(a: number, b: number, c: number, d: number): number {
  let h = Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca6b) ^ Math.imul(c, 0xc2b2ae35) ^ Math.imul(d, 0x27d4eb2f);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  return h;
}
