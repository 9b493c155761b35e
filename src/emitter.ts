/**
 * A small typed event emitter without `addListener`/`removeListener`, for classes whose own API
 * uses those names (Link's listeners are sockets, not callbacks).
 *
 * @module
 */
import { EventEmitter } from 'node:events';

type EventMap = Record<string, unknown[]>;
type Handler<A extends unknown[]> = (...args: A) => void;

/** Typed `on`/`once`/`off`/`emit` backed by a Node EventEmitter. */
export class Emitter<T extends EventMap> {
  private readonly ee = new EventEmitter();

  /** Add a handler for an event. */
  on<K extends keyof T & string>(event: K, handler: Handler<T[K]>): this {
    this.ee.on(event, handler as (...a: unknown[]) => void);
    return this;
  }

  /** Add a handler that runs once. */
  once<K extends keyof T & string>(event: K, handler: Handler<T[K]>): this {
    this.ee.once(event, handler as (...a: unknown[]) => void);
    return this;
  }

  /** Remove a handler. */
  off<K extends keyof T & string>(event: K, handler: Handler<T[K]>): this {
    this.ee.off(event, handler as (...a: unknown[]) => void);
    return this;
  }

  /** Number of handlers of an event. */
  listenerCount<K extends keyof T & string>(event: K): number {
    return this.ee.listenerCount(event);
  }

  /** Call the handlers of an event. Returns whether there were any. */
  protected emit<K extends keyof T & string>(event: K, ...args: T[K]): boolean {
    return this.ee.emit(event, ...args);
  }
}
