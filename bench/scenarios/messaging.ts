/**
 * snakemq Messaging over Packeter over Link: bob (sender) → alice (receiver).
 *  - transient: `size`-byte messages, no storage.
 *  - persistent (`persistent: true`): FLAG_PERSISTENT messages, SqliteQueuesStorage on both
 *    sides (acknowledged delivery; the receiver records seen uuids before acknowledging).
 * The sender calls sendMessage() `window` times, awaits those promises, yields to the event
 * loop once (setImmediate) and goes on; it uses the 'block' queue policy, so the queue stays
 * bounded (queueLimit) and a blocked sendMessage is the backpressure. Every message is a new
 * Message (with its own uuid) of one shared, never changed body Buffer, as the zeromq and raw
 * scenarios send one body again and again (a Message's body is not to be changed, and queued
 * messages are copied or kept by reference, so sharing it is allowed).
 * The receiver reports its rate; the sender also reports when every message was delivered
 * (acknowledged): when its queue for alice is empty, polled every millisecond. Like a producer
 * that sends and forgets, it listens to no per-message event (`message-delivered` makes a uuid
 * Buffer per message, which would be counted against the sender here).
 * params: { role, size, persistent?, dir?, storageOptions?, messaging? (sender options), window?,
 *   port? }; run command: { n } messages.
 */
import { once } from 'node:events';
import * as path from 'node:path';
import { FLAG_PERSISTENT, Link, Message, Messaging, Packeter } from '../../src/index.js';
import type { QueuesStorage } from '../../src/storage.js';
import { RunCounter, installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';

installCrashHandlers();
const size = params.size as number;
const persistent = !!params.persistent;

async function openStorage(name: string): Promise<QueuesStorage | undefined> {
  if (!persistent) return undefined;
  const { SqliteQueuesStorage } = await import('../../storage/sqlite.js');
  return new SqliteQueuesStorage(path.join(params.dir as string, `${name}.sqlite`), params.storageOptions ?? {});
}

const link = new Link();
const packeter = new Packeter(link);

if (params.role === 'receiver') {
  const storage = await openStorage('alice');
  const alice = new Messaging('alice', '', packeter, { storage });
  await alice.ready;
  const counter = new RunCounter();
  alice.on('message', (_c, _ident, m) => counter.add(1, m.body.length));
  const { port } = await link.addListener({ port: 0 });
  report('ready', { port });
  void serve(
    async (cmd) => {
      const done = counter.arm(cmd.n as number);
      report('armed');
      await done;
      report('result', counter.result());
    },
    async () => {
      await alice.close();
      await link.close();
      await storage?.close();
    },
  );
} else {
  const storage = await openStorage('bob');
  const bob = new Messaging('bob', '', packeter, {
    storage,
    queuePolicy: 'block',
    ...(params.messaging as Record<string, unknown> | undefined),
  });
  await bob.ready;
  const connected = once(bob, 'connect');
  link.addConnector({ host: '127.0.0.1', port: params.port as number });
  await connected;
  const window = (params.window as number) ?? 1000;
  const flags = persistent ? FLAG_PERSISTENT : 0;
  const body = Buffer.alloc(size, 0x61);
  report('ready');
  void serve(
    async (cmd) => {
      const n = cmd.n as number;
      const t0 = nowMs();
      let pending: Promise<void>[] = [];
      for (let i = 0; i < n; i++) {
        pending.push(bob.sendMessage('alice', new Message(body, { flags })));
        if (pending.length >= window) {
          await Promise.all(pending);
          pending = [];
          // let I/O run, so writing overlaps with queuing (as in an application that yields)
          await new Promise(setImmediate);
        }
      }
      await Promise.all(pending);
      const queuedMs = nowMs() - t0;
      // every message delivered (acknowledged) once the queue is empty; asked every millisecond
      while (bob.queueSize('alice') > 0) await new Promise((r) => setTimeout(r, 1));
      const ms = nowMs() - t0;
      report('done', { ms, queuedMs, deliveredRate: (n / ms) * 1000 });
    },
    async () => {
      await bob.close();
      await link.close();
      await storage?.close();
    },
  );
}
