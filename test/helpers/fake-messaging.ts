/**
 * An in-memory stand-in for Messaging (the surface ReceiveHook and the RPC layer use), for
 * fast, deterministic unit tests. Peers live on a FakeNetwork; `connect(a, b)` and
 * `disconnect(a, b)` drive the connect/disconnect events. A message to a connected peer arrives
 * on a later turn of the event loop (`message-sent`, then `message` at the receiver, then
 * `message-delivered`); to an unconnected peer it waits in a FIFO queue (TTL 0 is dropped at
 * once, a finite TTL drops it after that many ms of waiting), as real Messaging does.
 */
import { EventEmitter } from 'node:events';
import { Message } from '../../src/message.js';
import type { MessagingEvents } from '../../src/messaging.js';

interface Queued {
  to: string;
  message: Message;
  timer?: NodeJS.Timeout;
}

export class FakeMessaging extends EventEmitter<MessagingEvents> {
  /** When set, incoming messages are acknowledged to the sender but never emitted (a peer that "crashed" after acking). */
  swallow = false;
  /** Every message this peer sent, in order. */
  readonly sent: Array<{ to: string; message: Message }> = [];
  private readonly queues = new Map<string, Queued[]>();
  closed = false;

  constructor(
    readonly identifier: string,
    private readonly network: FakeNetwork,
  ) {
    super();
  }

  async sendMessage(ident: string, message: Message): Promise<void> {
    if (this.closed) throw new Error('closed');
    this.sent.push({ to: ident, message });
    if (this.network.connected(this.identifier, ident)) {
      this.transmit(ident, message);
      return;
    }
    if (message.ttl === 0) {
      this.emit('message-drop', ident, message.uuid, 'ttl');
      return;
    }
    const q: Queued = { to: ident, message };
    if (message.ttl !== null) {
      q.timer = setTimeout(() => {
        const list = this.queues.get(ident) ?? [];
        const i = list.indexOf(q);
        if (i >= 0) list.splice(i, 1);
        this.emit('message-drop', ident, message.uuid, 'ttl');
      }, message.ttl);
    }
    const list = this.queues.get(ident) ?? [];
    list.push(q);
    this.queues.set(ident, list);
  }

  /** Remove a message still waiting in the queue; false once it is on its way. */
  cancelMessage(ident: string, uuid: Buffer): boolean {
    const list = this.queues.get(ident);
    const i = list?.findIndex((q) => q.message.uuid.equals(uuid)) ?? -1;
    if (i < 0) return false;
    const [q] = list!.splice(i, 1);
    if (q.timer) clearTimeout(q.timer);
    return true;
  }

  isConnected(ident: string): boolean {
    return this.network.connected(this.identifier, ident);
  }

  /** Messages waiting for `ident`. */
  queued(ident: string): number {
    return this.queues.get(ident)?.length ?? 0;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const list of this.queues.values()) for (const q of list) if (q.timer) clearTimeout(q.timer);
    this.queues.clear();
  }

  /** @internal */
  flush(ident: string): void {
    const list = this.queues.get(ident);
    if (!list) return;
    this.queues.delete(ident);
    for (const q of list) {
      if (q.timer) clearTimeout(q.timer);
      this.transmit(ident, q.message);
    }
  }

  private transmit(ident: string, message: Message): void {
    const connId = this.network.connId(this.identifier, ident);
    setImmediate(() => {
      if (!this.network.connected(this.identifier, ident)) {
        // lost on the way: requeue, like unacknowledged messages in real Messaging
        const list = this.queues.get(ident) ?? [];
        list.unshift({ to: ident, message });
        this.queues.set(ident, list);
        return;
      }
      this.emit('message-sent', connId, ident, message.uuid);
      const peer = this.network.peer(ident);
      if (peer && !peer.swallow && !peer.closed) {
        peer.emit('message', connId, this.identifier, Message.fromTrusted(Buffer.from(message.body), message.uuid, message.ttl, message.flags));
      }
      this.emit('message-delivered', ident, message.uuid);
    });
  }
}

export class FakeNetwork {
  private readonly peers = new Map<string, FakeMessaging>();
  private readonly links = new Map<string, string>();
  private nextConn = 1;

  add(ident: string): FakeMessaging {
    const m = new FakeMessaging(ident, this);
    this.peers.set(ident, m);
    return m;
  }

  peer(ident: string): FakeMessaging | undefined {
    return this.peers.get(ident);
  }

  private key(a: string, b: string): string {
    return a < b ? `${a}\0${b}` : `${b}\0${a}`;
  }

  connected(a: string, b: string): boolean {
    return this.links.has(this.key(a, b));
  }

  connId(a: string, b: string): string {
    return this.links.get(this.key(a, b)) ?? 'none';
  }

  connect(a: string, b: string): void {
    const k = this.key(a, b);
    if (this.links.has(k)) return;
    const connId = `fake-${this.nextConn++}`;
    this.links.set(k, connId);
    const pa = this.peers.get(a)!;
    const pb = this.peers.get(b)!;
    pa.emit('connect', connId, b);
    pb.emit('connect', connId, a);
    pa.flush(b);
    pb.flush(a);
  }

  disconnect(a: string, b: string): void {
    const k = this.key(a, b);
    const connId = this.links.get(k);
    if (!connId) return;
    this.links.delete(k);
    this.peers.get(a)!.emit('disconnect', connId, b);
    this.peers.get(b)!.emit('disconnect', connId, a);
  }
}
