/**
 * One peer's outgoing queue: FIFO items with snakeMQ's TTL rule (the TTL runs down only while
 * the peer is not connected) and the cursors of acknowledged delivery. Pure: no I/O, time
 * comes in as arguments.
 *
 * Layout of `items` from `head`: items awaiting acknowledgement or being written, then
 * items not yet sent (from `sendCursor`). Removed items are flagged and skipped.
 *
 * @module
 */

/** Item states. */
export const QUEUED = 0;
export const WRITING = 1;
export const AWAITING_ACK = 2;

/** A queued message. */
export interface QItem {
  uuid: Buffer;
  /** `uuid` as a latin1 string, for maps. */
  key: string;
  body: Buffer;
  flags: number;
  /**
   * Remaining TTL in ms: while the queue is connected, the remaining time; while not, the
   * remaining time as of `PeerQueue.since` (so expiry = since + ttl). `null` = infinite.
   */
  ttl: number | null;
  /** Kept in storage (persistent flag and a storage present). */
  stored: boolean;
  state: number;
  /** Packet id while WRITING. */
  packetId: number;
  removed: boolean;
}

/** Key of an item in maps: the uuid's bytes as a latin1 string. */
export function uuidKey(uuid: Buffer): string {
  return uuid.toString('latin1');
}

export class PeerQueue {
  readonly ident: string;
  items: QItem[] = [];
  head = 0;
  /** Index of the first item not yet handed to a connection. */
  sendCursor = 0;
  readonly byKey = new Map<string, QItem>();
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
    if (item.ttl !== null && this.since !== null) item.ttl += now - this.since;
    this.items.push(item);
    this.byKey.set(item.key, item);
    this.size++;
    this.bytes += item.body.length;
    if (item.ttl !== null) this.finite++;
  }

  /** Remove an item (delivered, dropped or expired). */
  remove(item: QItem): void {
    if (item.removed) return;
    item.removed = true;
    this.byKey.delete(item.key);
    this.size--;
    this.bytes -= item.body.length;
    if (item.ttl !== null) this.finite--;
    if (item.state !== QUEUED) {
      this.inflight--;
      this.inflightBytes -= item.body.length;
    }
    this.trim();
  }

  /** Next item to send, marked WRITING with `packetId` by the caller via {@link markWriting}. */
  peekUnsent(): QItem | undefined {
    const items = this.items;
    while (this.sendCursor < items.length && items[this.sendCursor].removed) this.sendCursor++;
    return items[this.sendCursor];
  }

  markWriting(item: QItem, packetId: number): void {
    item.state = WRITING;
    item.packetId = packetId;
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
    while (this.head < items.length && items[this.head].removed) this.head++;
    if (this.sendCursor < this.head) this.sendCursor = this.head;
    if (this.head === items.length) {
      this.items = [];
      this.head = 0;
      this.sendCursor = 0;
    } else if (this.head > 1024 && this.head * 2 > items.length) {
      this.items = items.slice(this.head);
      this.sendCursor -= this.head;
      this.head = 0;
    }
  }
}
