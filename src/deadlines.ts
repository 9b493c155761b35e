/**
 * Many deadlines on one timer: a binary min-heap of entries by due time, and one clock timer
 * armed for the earliest. A Messaging with thousands of connections keeps one timer for all
 * their keepalives instead of one each, and moving a deadline costs O(log n) and no timer.
 * With a {@link DeadlinesOptions.resolution}, deadlines close together share one timer
 * callback too (a hub's keepalive deadlines, spread over the interval, cost a few timer
 * callbacks per second instead of one per connection). Pure apart from the injected {@link Clock}.
 *
 * @module
 */

import type { Clock, TimerHandle } from './clock.js';

/** The longest wait a Node timer takes as it is, ms (2^31 - 1). */
export const MAX_TIMER_MS = 0x7fffffff;

/** One deadline of a {@link Deadlines}; `at` and `slot` belong to the heap, read them only. */
export interface Deadline<T> {
  /** When it is due (clock milliseconds); `Infinity` while not scheduled. */
  at: number;
  /** Its place in the heap; -1 while not scheduled. */
  slot: number;
  readonly value: T;
}

/**
 * The resolution Messaging gives its keepalive deadlines: this, or a sixteenth of the
 * keepalive interval or wait when that is less. A ping or a close at most that late does
 * not matter; a hub with 5000 connections, whose keepalive deadlines are spread over the
 * interval, then has its keepalive timer called 4 times a second instead of up to 500.
 */
export const KEEPALIVE_RESOLUTION_MS = 250;

/** Options of {@link Deadlines}. */
export interface DeadlinesOptions {
  /**
   * Milliseconds (default 0: every entry on time). The timer is armed for the earliest due
   * time rounded up to a multiple of this (on the clock's time line), so every entry due
   * within one such stretch is called from one timer callback, at most this late.
   */
  resolution?: number;
}

/**
 * Deadlines that call `onDue(value, now)` once each when due, earliest first (ties in no set
 * order), from one timer of the clock. An entry is scheduled again with {@link set}; while no
 * entry is scheduled no timer is pending, so nothing keeps the process alive.
 */
export class Deadlines<T> {
  private readonly clock: Clock;
  private readonly onDue: (value: T, now: number) => void;
  private readonly heap: Deadline<T>[] = [];
  private timer: TimerHandle | undefined;
  /** When the pending timer fires (`Infinity`: none pending). */
  private timerAt = Infinity;
  private firing = false;
  private readonly resolution: number;

  constructor(clock: Clock, onDue: (value: T, now: number) => void, options: DeadlinesOptions = {}) {
    this.clock = clock;
    this.onDue = onDue;
    const r = options.resolution ?? 0;
    this.resolution = Number.isFinite(r) && r > 0 ? r : 0;
  }

  /** Number of scheduled entries. */
  get size(): number {
    return this.heap.length;
  }

  /** A new, unscheduled entry for `value`. */
  entry(value: T): Deadline<T> {
    return { at: Infinity, slot: -1, value };
  }

  /** Schedule `e` to be due at `at` (clock milliseconds), or move it there if it is scheduled. */
  set(e: Deadline<T>, at: number): void {
    const heap = this.heap;
    if (e.slot < 0) {
      e.at = at;
      e.slot = heap.length;
      heap.push(e);
      this.up(e.slot);
    } else {
      const old = e.at;
      e.at = at;
      if (at < old) this.up(e.slot);
      else this.down(e.slot);
    }
    this.arm();
  }

  /** Unschedule `e` (nothing happens if it is not scheduled). */
  delete(e: Deadline<T>): void {
    const i = e.slot;
    if (i < 0) return;
    e.slot = -1;
    e.at = Infinity;
    const heap = this.heap;
    const last = heap.pop()!;
    if (last !== e) {
      heap[i] = last;
      last.slot = i;
      this.up(i);
      this.down(last.slot);
    }
    if (heap.length === 0) this.arm();
  }

  /** Unschedule every entry and cancel the timer. */
  clear(): void {
    for (const e of this.heap) {
      e.slot = -1;
      e.at = Infinity;
    }
    this.heap.length = 0;
    this.arm();
  }

  /** Have the timer pending for the earliest entry (none when there is none). */
  private arm(): void {
    if (this.firing) return;
    const top = this.heap[0];
    if (top === undefined) {
      if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Infinity;
      return;
    }
    // (the earliest entry's due time, rounded up to the resolution)
    const r = this.resolution;
    const at = r > 0 && top.at !== Infinity ? Math.ceil(top.at / r) * r : top.at;
    // A timer due no later than that is good enough: it finds nothing due or the entry, and
    // arms again for what is left.
    if (this.timer !== undefined && this.timerAt <= at) return;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    // (Node runs a timer of more than 2^31 - 1 ms after 1 ms: a far deadline is waited for in
    // steps of at most that, each finding nothing due and arming again)
    const now = this.clock.now();
    const wait = Math.min(MAX_TIMER_MS, Math.max(0, at - now));
    this.timerAt = now + wait;
    this.timer = this.clock.setTimeout(this.fire, wait);
  }

  private readonly fire = (): void => {
    this.timer = undefined;
    this.timerAt = Infinity;
    this.firing = true;
    try {
      const heap = this.heap;
      const now = this.clock.now();
      while (heap.length > 0 && heap[0].at <= now) {
        const e = heap[0];
        this.delete(e);
        this.onDue(e.value, now);
      }
    } finally {
      this.firing = false;
      this.arm();
    }
  };

  private up(i: number): void {
    const heap = this.heap;
    const e = heap[i];
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = heap[p];
      if (parent.at <= e.at) break;
      heap[i] = parent;
      parent.slot = i;
      i = p;
    }
    heap[i] = e;
    e.slot = i;
  }

  private down(i: number): void {
    const heap = this.heap;
    const n = heap.length;
    const e = heap[i];
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && heap[c + 1].at < heap[c].at) c++;
      const child = heap[c];
      if (child.at >= e.at) break;
      heap[i] = child;
      child.slot = i;
      i = c;
    }
    heap[i] = e;
    e.slot = i;
  }
}
