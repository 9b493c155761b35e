/**
 * An in-memory Transport pair for unit tests: what one end sends arrives at the other end on a
 * later turn of the event loop, in order. No sockets.
 */
import { Emitter } from '../../src/emitter.js';
import type { ConnId, ConnectionInfo, Transport, TransportEvents } from '../../src/link.js';

export class MemoryTransport extends Emitter<TransportEvents> implements Transport {
  peer!: MemoryTransport;
  readonly open = new Set<ConnId>();
  /** Everything written per connection, in order (for assertions). */
  readonly written = new Map<ConnId, Buffer[]>();

  connectTo(connId: ConnId, side: ConnectionInfo['side'] = 'connector'): void {
    this.open.add(connId);
    const info: ConnectionInfo = {
      connId,
      side,
      ownerId: 'mem',
      remoteAddress: 'memory',
      remotePort: 0,
      localAddress: 'memory',
      localPort: 0,
      tls: false,
    };
    this.emit('connect', connId, info);
  }

  send(connId: ConnId, data: Buffer | Buffer[], cb?: (err?: Error | null) => void): boolean {
    const bufs = Array.isArray(data) ? data : [data];
    if (!this.open.has(connId)) {
      queueMicrotask(() => cb?.(new Error('closed')));
      return false;
    }
    const list = this.written.get(connId) ?? [];
    list.push(...bufs);
    this.written.set(connId, list);
    setImmediate(() => {
      for (const b of bufs) this.peer.deliver(connId, Buffer.from(b));
      cb?.(null);
    });
    return true;
  }

  deliver(connId: ConnId, data: Buffer): void {
    if (this.open.has(connId)) this.emit('recv', connId, data);
  }

  closeConnection(connId: ConnId, reason?: Error): void {
    for (const side of [this, this.peer]) {
      if (side.open.delete(connId)) side.emit('disconnect', connId, side === this ? reason : undefined);
    }
  }

  bufferedAmount(): number {
    return 0;
  }
}

/** Two connected in-memory transports. */
export function memoryPair(): [MemoryTransport, MemoryTransport] {
  const a = new MemoryTransport();
  const b = new MemoryTransport();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/** Open connection `connId` on both ends. */
export function connectPair(a: MemoryTransport, b: MemoryTransport, connId: ConnId): void {
  a.connectTo(connId);
  b.connectTo(connId);
}

/** Let queued immediates and microtasks run. */
export function tick(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
