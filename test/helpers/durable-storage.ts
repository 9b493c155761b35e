/**
 * A storage that survives a simulated crash and models durability, for model tests.
 *
 * {@link DurableStore} wraps any object with promise-returning methods (a QueuesStorage such as
 * MemoryQueuesStorage) without knowing its method names: {@link DurableStore.open} hands out a
 * Proxy whose every method call is queued, in call order, and applied to the wrapped object
 * only at a later "commit" event on the virtual clock (group commit: a commit applies a random
 * number of the oldest queued calls). A call's promise resolves with the wrapped object's answer
 * once it was applied: an operation is durable when its promise resolved.
 *
 * {@link DurableStore.crash}: the process died. A random prefix of the calls whose promises had
 * not resolved yet is applied (they were on their way to disk), the rest are discarded, and the
 * handle goes dead: it never settles anything again (a dead process sees nothing). So every
 * resolved operation survives, an unresolved one may or may not, and call order is kept.
 *
 * {@link DurableStore.closeHandle}: a graceful shutdown (the owner's storage.close()): every
 * queued call is applied, later calls reject.
 */
import { Buffer } from 'node:buffer';
import type { Clock, TimerHandle } from '../../src/clock.js';

interface Op {
  method: string | symbol;
  args: unknown[];
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** Deep copy of call arguments: the caller may reuse its buffers once the call returned. */
function clone(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (v instanceof Uint8Array) return new Uint8Array(v);
  if (Array.isArray(v)) return v.map(clone);
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [clone(k), clone(x)]));
  if (v !== null && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = clone(x);
    return o;
  }
  return v;
}

class Handle {
  state: 'open' | 'dead' | 'closed' = 'open';
  readonly queue: Op[] = [];
  timer: TimerHandle | undefined;
}

export class DurableStore<T extends object> {
  private handle: Handle | undefined;
  /** Calls applied / discarded by crashes (statistics). */
  stats = { applied: 0, lostInCrash: 0, keptInCrash: 0 };
  /** Counts calls made (for settling). */
  activity = 0;

  constructor(
    /** The wrapped storage: what is applied to it is what survives. */
    readonly inner: T,
    private readonly clock: Clock,
    private readonly rand: () => number,
    /** For traces. */
    readonly name = '',
  ) {}

  /** A new handle for a new process (the previous one must be dead or closed). */
  open(): T {
    if (this.handle?.state === 'open') throw new Error('durable-storage: a handle is open');
    const h = new Handle();
    this.handle = h;
    const inner = this.inner as Record<string | symbol, unknown>;
    return new Proxy(Object.create(null) as T, {
      get: (_t, prop) => {
        const v = inner[prop];
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => this.call(h, prop, args);
      },
      has: (_t, prop) => prop in inner,
    });
  }

  private call(h: Handle, method: string | symbol, args: unknown[]): Promise<unknown> {
    this.activity++;
    if (process.env.MODEL_TRACE_STORE) console.log(`t=${this.clock.now()} store ${this.name} ${String(method)} handle=${h.state} ${JSON.stringify(args.map((a) => (Array.isArray(a) ? a.length : a)))}`);
    if (h.state === 'dead') return new Promise(() => {});
    if (h.state === 'closed') return Promise.reject(new Error(`durable-storage: ${String(method)} after close`));
    return new Promise((resolve, reject) => {
      h.queue.push({ method, args: clone(args) as unknown[], resolve, reject });
      this.schedule(h);
    });
  }

  private schedule(h: Handle): void {
    if (h.timer !== undefined || h.queue.length === 0 || h.state !== 'open') return;
    const r = this.rand();
    // most commits are quick; some take a while (fsync on a busy disk)
    const ms = r < 0.5 ? r * 2 : r < 0.9 ? 1 + this.rand() * 10 : 10 + this.rand() * 100;
    h.timer = this.clock.setTimeout(() => {
      h.timer = undefined;
      if (h.state !== 'open') return;
      const n = this.rand() < 0.7 ? h.queue.length : 1 + Math.floor(this.rand() * h.queue.length);
      this.apply(h.queue.splice(0, n), true);
      this.schedule(h);
    }, ms);
  }

  /** Apply ops to the wrapped object in order; `settle`: resolve/reject their promises after. */
  private apply(ops: Op[], settle: boolean): void {
    const inner = this.inner as Record<string | symbol, (...a: unknown[]) => unknown>;
    for (const op of ops) {
      this.stats.applied++;
      let p: Promise<unknown>;
      try {
        p = Promise.resolve(inner[op.method](...op.args));
      } catch (err) {
        p = Promise.reject(err);
      }
      if (process.env.MODEL_TRACE_STORE) {
        const what = String(op.method);
        p.then(
          (v) => console.log(`t=${this.clock.now()} store ${this.name} ${what} resolved${v instanceof Map ? ` ${JSON.stringify([...v].map(([k, x]) => [k, (x as unknown[]).length]))}` : ''}${settle ? '' : ' (crash)'}`),
          (e) => console.log(`t=${this.clock.now()} store ${this.name} ${what} REJECTED ${String(e)}`),
        );
      }
      if (settle) p.then(op.resolve, op.reject);
      else p.catch(() => {});
    }
  }

  /** The process died: a random prefix of the unresolved calls is applied, the rest is lost. */
  crash(): void {
    const h = this.handle;
    if (!h || h.state !== 'open') return;
    h.state = 'dead';
    if (h.timer !== undefined) this.clock.clearTimeout(h.timer);
    const q = h.queue.splice(0);
    const keep = this.rand() < 0.5 ? 0 : Math.floor(this.rand() * (q.length + 1));
    this.stats.keptInCrash += keep;
    this.stats.lostInCrash += q.length - keep;
    this.apply(q.slice(0, keep), false);
  }

  /** Graceful shutdown: everything queued is applied (and resolved); later calls reject. */
  closeHandle(): void {
    const h = this.handle;
    if (!h || h.state !== 'open') return;
    h.state = 'closed';
    if (h.timer !== undefined) this.clock.clearTimeout(h.timer);
    this.apply(h.queue.splice(0), true);
  }
}
