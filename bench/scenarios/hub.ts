/**
 * Scale: one hub, many peers. Two roles:
 *  - role "hub": one Link with one listener on port 0, one Packeter, one Messaging ("hub"),
 *    default options (keepalive on). Reports its RSS and heap after a full GC before anything
 *    connects (`ready`), and on command: when `n` peers are identified, its memory after a
 *    full GC, a fan-out (a 100-byte message to every peer, repeated), and a fan-in count.
 *  - role "peers": `count` connector peers in this process, each a real Messaging with its own
 *    Link, Packeter and identity (`${prefix}${i}`), default options, made on `create` and
 *    connected all at once on `go` (a reconnect storm from a cold start).
 * Commands and events are JSON lines (see ../lib/child.ts); the orchestrator (run.ts) measures
 * the times that span processes with `nowMs()` values, which come from one monotonic clock
 * (CLOCK_MONOTONIC) shared by every process of the machine.
 * params: hub { role }; peers { role, port, count, prefix }.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { Link, Message, Messaging, Packeter } from '../../src/index.js';
import { type Command, RunCounter, commands, fullGc, installCrashHandlers, nowMs, params, report } from '../lib/child.js';

installCrashHandlers();
const WINDOW = 1000;

function memory(): { rss: number; heap: number } {
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed + m.external + m.arrayBuffers };
}

async function settledMemory(): Promise<{ rss: number; heap: number }> {
  fullGc();
  await new Promise((r) => setTimeout(r, 100));
  fullGc();
  return memory();
}

const yieldOnce = (): Promise<void> => new Promise((r) => setImmediate(r));

/** `profile` commands (BENCH_HUB_PROFILE in run.ts): a CPU profile of one stretch, written to `file`. */
let session: Session | undefined;
async function profileCommand(cmd: Command): Promise<void> {
  if (cmd.action === 'start') {
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 1000 });
    await session.post('Profiler.start');
  } else if (session) {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(cmd.file as string, JSON.stringify(profile));
    session.disconnect();
    session = undefined;
  }
  report('profiled');
}

/** `rounds` times one `send` per item, at most WINDOW awaited at once, yielding a turn between windows. */
async function sendRounds<T>(rounds: number, items: readonly T[], send: (item: T) => Promise<void>): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    let pending: Promise<void>[] = [];
    for (const item of items) {
      pending.push(send(item));
      if (pending.length >= WINDOW) {
        await Promise.all(pending);
        pending = [];
        await yieldOnce();
      }
    }
    await Promise.all(pending);
    await yieldOnce();
  }
}

if (params.role === 'hub') {
  const link = new Link();
  link.on('error', () => {});
  const hub = new Messaging('hub', '', new Packeter(link));
  hub.on('error', () => {});
  const counter = new RunCounter();
  hub.on('message', (_c, _i, m) => counter.add(1, m.body.length));
  let identified = 0;
  let waitFor = Infinity;
  let onAll: (() => void) | undefined;
  hub.on('connect', () => {
    if (++identified >= waitFor && onAll) {
      const f = onAll;
      onAll = undefined;
      f();
    }
  });
  hub.on('disconnect', () => identified--);
  const { port } = await link.addListener({ port: 0 });
  // warm the receive and send paths a little, so their code is not counted per connection
  report('ready', { port, ...(await settledMemory()) });
  for await (const cmd of commands()) {
    if (cmd.cmd === 'exit') break;
    await hubCommand(cmd);
  }
  await hub.close();
  await link.close();
  process.exit(0);

  async function hubCommand(cmd: Command): Promise<void> {
    switch (cmd.cmd) {
      case 'profile':
        return profileCommand(cmd);
      case 'await-peers': {
        waitFor = cmd.n as number;
        if (identified < waitFor) await new Promise<void>((r) => (onAll = r));
        report('identified', { t: nowMs(), n: identified });
        return;
      }
      case 'memory': {
        await new Promise((r) => setTimeout(r, 500));
        report('memory', { ...(await settledMemory()), n: identified });
        return;
      }
      case 'fanout': {
        const rounds = cmd.rounds as number;
        const body = Buffer.alloc(cmd.size as number, 0x61);
        const peers = hub.connectedPeers();
        const t0 = nowMs();
        await sendRounds(rounds, peers, (ident) => hub.sendMessage(ident, new Message(body)));
        report('sent', { t0, t1: nowMs(), peers: peers.length });
        return;
      }
      case 'fanin-arm': {
        const done = counter.arm(cmd.n as number);
        report('armed');
        await done;
        report('result', counter.result());
        return;
      }
    }
  }
} else {
  const count = params.count as number;
  const prefix = params.prefix as string;
  let peers: { link: Link; messaging: Messaging }[] = [];
  let connected = 0;
  let onAllConnected: (() => void) | undefined;
  let expected = 0;
  let received = 0;
  let first = 0;
  let onAllReceived: (() => void) | undefined;
  const onMessage = (): void => {
    if (received++ === 0) first = nowMs();
    if (received === expected && onAllReceived) {
      const f = onAllReceived;
      onAllReceived = undefined;
      f();
    }
  };
  for await (const cmd of commands()) {
    if (cmd.cmd === 'exit') break;
    switch (cmd.cmd) {
      case 'profile':
        await profileCommand(cmd);
        break;
      case 'create': {
        for (let i = 0; i < count; i++) {
          const link = new Link();
          link.on('error', () => {});
          const messaging = new Messaging(`${prefix}${i}`, '', new Packeter(link));
          messaging.on('error', () => {});
          messaging.on('connect', () => {
            if (++connected === count && onAllConnected) onAllConnected();
          });
          messaging.on('disconnect', () => connected--);
          messaging.on('message', onMessage);
          peers.push({ link, messaging });
        }
        report('created');
        break;
      }
      case 'go': {
        const all = new Promise<void>((r) => (onAllConnected = r));
        for (const p of peers) p.link.addConnector({ host: '127.0.0.1', port: params.port as number });
        await all;
        report('connected', { t: nowMs() });
        break;
      }
      case 'fanout-arm': {
        expected = (cmd.each as number) * count;
        received = 0;
        const all = new Promise<void>((r) => (onAllReceived = r));
        report('armed');
        await all;
        report('received', { first, last: nowMs(), count: received });
        break;
      }
      case 'fanin': {
        const rounds = cmd.rounds as number;
        const body = Buffer.alloc(cmd.size as number, 0x62);
        await sendRounds(rounds, peers, (p) => p.messaging.sendMessage('hub', new Message(body)));
        report('sent');
        break;
      }
    }
  }
  await Promise.all(peers.map(async (p) => {
    await p.messaging.close();
    await p.link.close();
  }));
  peers = [];
  process.exit(0);
}
