/**
 * ReceiveHook: routes received messages to handlers by the start of their body, as snakeMQ's
 * `ReceiveHook` does (the RPC layer registers `rpcreq` and `rpcrep` on one).
 *
 * A pattern is a Buffer prefix, or a RegExp tested from index 0 on `body.toString('latin1')`
 * (the test is anchored there whatever the RegExp's flags: it is run sticky at index 0). Every
 * matching handler runs, in registration order. The hook only listens: Messaging's `message`
 * event still fires for every message, matched or not.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { EventEmitter } from 'node:events';
import { InvalidArgumentError } from './errors.js';
import type { ConnId } from './link.js';
import { type Logger, defaultLogger } from './logger.js';
import { Message } from './message.js';
import type { DeliveryObserver, Messaging, MessagingEvents } from './messaging.js';

/**
 * The part of {@link Messaging} that the hook and the RPC layer use. `cancelMessage`, when
 * the messaging layer has it, removes a queued message that has not started to be written
 * (returning whether it did); the RPC client uses it so that a call given up as "not
 * connected" can never run later.
 */
export interface HookMessaging {
  /** Our identity. */
  readonly identifier: string;
  /** Queue a message for a peer (see {@link Messaging.sendMessage}). */
  sendMessage(ident: string, message: Message): Promise<void>;
  /** Whether the peer is connected. */
  isConnected(ident: string): boolean;
  /** Add an event listener. */
  on<K extends keyof MessagingEvents>(event: K, listener: (...args: MessagingEvents[K]) => void): unknown;
  /** Remove an event listener. */
  off<K extends keyof MessagingEvents>(event: K, listener: (...args: MessagingEvents[K]) => void): unknown;
  /**
   * Whether the connected peer speaks our extensions (`false`: a plain snakeMQ 1.6 peer;
   * `undefined`: not connected), see {@link Messaging.peerSpeaksExtensions} (optional; without
   * it the RPC layer treats every peer as a snakemq peer).
   */
  peerSpeaksExtensions?(ident: string): boolean | undefined;
  /** Remove a queued message not yet being written; whether it did (optional). */
  cancelMessage?(ident: string, uuid: Buffer): boolean;
  /**
   * @internal Optional: `sendMessage` that returns `undefined` when the message was queued at
   * once and throws instead of rejecting (see {@link Messaging.queueMessage}).
   */
  queueMessage?(ident: string, message: Message): Promise<void> | undefined;
  /**
   * @internal Optional: `message-sent` / `message-delivered` without a Buffer per message (see
   * {@link Messaging.observeDelivery}); returns the function that stops it.
   */
  observeDelivery?(observer: DeliveryObserver): () => void;
}

/** A message handler. May return a promise; a rejection is reported like a throw. */
export type ReceiveHandler = (connId: ConnId, ident: string, message: Message) => unknown;

/** A pattern: a byte prefix of the body, or a RegExp matched at index 0 of the latin1 body. */
export type ReceivePattern = Uint8Array | RegExp;

/** Events of a {@link ReceiveHook}. */
export interface ReceiveHookEvents {
  /** A handler threw (or its promise rejected) on a message from `ident`. */
  error: [err: Error, ident: string];
}

/** Options of a {@link ReceiveHook}. */
export interface ReceiveHookOptions {
  /** Where handler failures go when nobody listens to `error` (default: the SNAKEMQ_DEBUG logger). */
  logger?: Logger;
}

interface Entry {
  pattern: ReceivePattern;
  prefix: Buffer | undefined;
  re: RegExp | undefined;
  callback: ReceiveHandler;
}

function samePattern(a: ReceivePattern, b: ReceivePattern): boolean {
  if (a instanceof RegExp || b instanceof RegExp) {
    return a instanceof RegExp && b instanceof RegExp && a.source === b.source && a.flags === b.flags;
  }
  return Buffer.compare(a, b) === 0;
}

/**
 * Routes received messages to handlers by body prefix or RegExp.
 *
 * @example
 * const hook = new ReceiveHook(messaging);
 * hook.register(Buffer.from('chat:'), (connId, ident, message) => console.log(ident, message.body));
 * hook.register(/^cmd [a-z]+/, (connId, ident, message) => run(message.body));
 */
export class ReceiveHook extends EventEmitter<ReceiveHookEvents> {
  /** The messaging layer the hook listens to. */
  readonly messaging: HookMessaging;
  private entries: Entry[] = [];
  private closed = false;
  private readonly log: Logger;

  /** Start listening to `messaging`'s `message` event. */
  constructor(messaging: HookMessaging, options: ReceiveHookOptions = {}) {
    super();
    this.messaging = messaging;
    this.log = options.logger ?? defaultLogger();
    messaging.on('message', this.onMessage);
  }

  /**
   * Call `callback(connId, ident, message)` for every received message whose body matches
   * `pattern`. Registering the same pattern and callback again does nothing.
   *
   * @throws InvalidArgumentError for a pattern that is not a Buffer/Uint8Array or RegExp, or a
   *   callback that is not a function
   */
  register(pattern: ReceivePattern, callback: ReceiveHandler): void {
    if (typeof callback !== 'function') throw new InvalidArgumentError('callback must be a function');
    let prefix: Buffer | undefined;
    let re: RegExp | undefined;
    if (pattern instanceof RegExp) {
      // sticky, never global: a match must start at index 0
      re = new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, '') + 'y');
    } else if (pattern instanceof Uint8Array) {
      prefix = Buffer.from(pattern); // a copy: later changes to the caller's bytes do not matter
    } else {
      throw new InvalidArgumentError('pattern must be a Buffer, Uint8Array or RegExp');
    }
    if (this.entries.some((e) => e.callback === callback && samePattern(e.pattern, pattern))) return;
    // copy-on-write: a dispatch in progress keeps iterating the array it started with
    this.entries = [...this.entries, { pattern: re ?? prefix!, prefix, re, callback }];
  }

  /**
   * Remove handlers: with no argument, all of them; with a pattern, every handler of an equal
   * pattern (same bytes, or same RegExp source and flags); with a callback, every
   * registration of that callback; with both, that one registration.
   *
   * @returns how many registrations were removed
   */
  unregister(patternOrCallback?: ReceivePattern | ReceiveHandler, callback?: ReceiveHandler): number {
    const before = this.entries.length;
    let keep: (e: Entry) => boolean;
    if (patternOrCallback === undefined) keep = () => false;
    else if (typeof patternOrCallback === 'function') keep = (e) => e.callback !== patternOrCallback;
    else {
      const p = patternOrCallback;
      keep = (e) => !(samePattern(e.pattern, p) && (callback === undefined || e.callback === callback));
    }
    this.entries = this.entries.filter(keep);
    return before - this.entries.length;
  }

  /** Remove every handler. */
  clear(): void {
    this.unregister();
  }

  /** Number of registrations. */
  get size(): number {
    return this.entries.length;
  }

  /** Stop listening to the messaging layer (handlers stay registered but are no longer called). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.messaging.off('message', this.onMessage);
  }

  private readonly onMessage = (connId: ConnId, ident: string, message: Message): void => {
    const entries = this.entries;
    if (entries.length === 0) return;
    // the body's bytes where they lie: a received message's body view is made only if read
    const src = Message.bodySource(message);
    const start = Message.bodyStart(message);
    const end = Message.bodyEnd(message);
    let text: string | undefined;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      let hit: boolean;
      if (e.prefix) {
        const p = e.prefix;
        const n = p.length;
        if (n > end - start) hit = false;
        else if (n <= 16) {
          // short prefixes (RPC's are 6 bytes): a loop beats Buffer#compare's argument checks
          let k = 0;
          while (k < n && src[start + k] === p[k]) k++;
          hit = k === n;
        } else hit = src.compare(p, 0, n, start, start + n) === 0;
      } else {
        text ??= src.toString('latin1', start, end);
        e.re!.lastIndex = 0;
        hit = e.re!.test(text);
      }
      if (!hit) continue;
      try {
        const r = e.callback(connId, ident, message);
        if (r && typeof (r as Promise<unknown>).then === 'function') {
          (r as Promise<unknown>).then(undefined, (err: unknown) => this.report(err, ident));
        }
      } catch (err) {
        this.report(err, ident);
      }
    }
  };

  private report(err: unknown, ident: string): void {
    const e = err instanceof Error ? err : new Error(String(err));
    if (this.listenerCount('error') > 0) this.emit('error', e, ident);
    else this.log.warn(`receive hook: handler failed on a message from ${ident}: ${e.stack ?? e.message}`);
  }
}
