/**
 * A link that dies every few KB: a TCP proxy that cuts each connection after a seeded random
 * budget of bytes, both directions drawing on one budget (what a NAT timeout, an overloaded
 * middlebox or a mobile link does to a stream). Persistent messages, SQLite on both sides.
 * Before slow start and the short reconnect wait, 2,000 messages never finished: every new
 * connection spent its budget rewriting the whole unacknowledged window, which the receiver
 * already had, and the acknowledgements rarely came back before the cut.
 */
import * as net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FLAG_PERSISTENT, Message } from '../src/messaging.js';
import { prng, randInt } from './helpers/fault-proxy.js';
import { closeAllPeers, listen, makePeer } from './helpers/peers.js';
import { cleanupTemp, sqlite, tempDir } from './helpers/temp.js';
import { until } from './helpers/wait.js';

/** Forwards client ⇄ target; each connection is cut once `budget` bytes (both ways together) went through. */
class BudgetProxy {
  readonly server: net.Server;
  connections = 0;
  private readonly sockets = new Set<net.Socket>();

  constructor(target: number, seed: number, range: [number, number]) {
    const rand = prng(seed);
    this.server = net.createServer((client) => {
      this.connections++;
      let budget = randInt(rand, range[0], range[1]);
      const upstream = net.connect({ host: '127.0.0.1', port: target });
      const both = [client, upstream];
      for (const s of both) {
        this.sockets.add(s);
        s.setNoDelay(true);
        s.on('error', () => {});
        s.on('close', () => {
          this.sockets.delete(s);
          for (const o of both) o.destroy();
        });
      }
      const pipe = (from: net.Socket, to: net.Socket): void => {
        from.on('data', (chunk: Buffer) => {
          if (budget <= 0) return;
          if (chunk.length < budget) {
            budget -= chunk.length;
            to.write(chunk);
            return;
          }
          to.write(chunk.subarray(0, budget), () => {
            for (const s of both) s.destroy();
          });
          budget = 0;
        });
      };
      pipe(client, upstream);
      pipe(upstream, client);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

const proxies: BudgetProxy[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.close();
  await closeAllPeers();
  await cleanupTemp();
});

for (const [name, range, seed] of [
  ['1-16 KB', [1024, 16 * 1024], 11],
  ['64-256 KB', [64 * 1024, 256 * 1024], 12],
] as const) {
  describe(`a link cut after every ${name}`, () => {
    it('carries 2,000 persistent messages to the end, each once and in order', async () => {
      const dir = tempDir();
      const alice = makePeer('alice', { storage: sqlite(join(dir, 'alice.db')) });
      const bob = makePeer('bob', { storage: sqlite(join(dir, 'bob.db')) });
      const got: number[] = [];
      alice.messaging.on('message', (_c, ident, m) => {
        if (ident === 'bob') got.push(Number.parseInt(m.body.toString(), 10));
      });
      const N = 2000;
      await Promise.all(
        Array.from({ length: N }, (_, i) => bob.messaging.sendMessage('alice', new Message(String(i).padEnd(100, '.'), { flags: FLAG_PERSISTENT }))),
      );
      const proxy = new BudgetProxy(await listen(alice), seed, [...range]);
      proxies.push(proxy);
      const t0 = Date.now();
      bob.link.addConnector({ host: '127.0.0.1', port: await proxy.listen(), reconnectInterval: 200, reconnectMaxInterval: 2000 });
      await until(() => bob.messaging.queueSize('alice') === 0, 60_000);
      const ms = Date.now() - t0;
      expect(got).toEqual(Array.from({ length: N }, (_, i) => i));
      // (for the record: how long it took, over how many connections)
      console.log(`flaky link ${name}: ${N} persistent messages in ${ms} ms over ${proxy.connections} connections`);
      if (range[1] <= 16 * 1024) expect(proxy.connections).toBeGreaterThan(5);
    }, 90_000);
  });
}
