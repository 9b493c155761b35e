/**
 * The model test harness: the real Messaging and Packeter of two nodes, "alice" (listener) and
 * "bob" (connector), over a {@link SimNet} on virtual time, with seeded sends, cuts, delays and
 * restarts; then the network heals and the run goes on until everything is delivered (or a
 * virtual deadline passes). {@link checkRun} checks the delivery log against the invariants of
 * the scenario; every problem it reports names the scenario and the seed.
 */
import { Buffer } from 'node:buffer';
import { silentLogger } from '../../src/logger.js';
import { FLAG_PERSISTENT, Message } from '../../src/message.js';
import { Messaging } from '../../src/messaging.js';
import { Packeter } from '../../src/packeter.js';
import type { QueuesStorage } from '../../src/storage.js';
import { MemoryQueuesStorage } from '../../storage/memory.js';
import { DurableStore } from './durable-storage.js';
import { prng } from './prng.js';
import { type SimEndpoint, SimClock, SimNet } from './sim-net.js';

export type Scenario = 'a' | 'b' | 'c' | 'd';

interface ScenarioConfig {
  storage: boolean;
  persistent: boolean;
  /** Which nodes are restarted. */
  restarts: 'none' | 'both' | 'sender';
  graceful: boolean;
  /** Both nodes send to each other, or one sender only. */
  bothDirections: boolean;
  /** A repeat across a receiver crash is allowed (bounded by maxInFlight per crash). */
  repeatsAfterCrash: boolean;
  /** A (re)started node joins the network only once its Messaging's `ready` resolved. */
  joinWhenReady?: boolean;
}

const SCENARIO_A: ScenarioConfig & { title: string } = {
  title: 'storage, persistent messages both ways, cuts, delays, crash and graceful restarts of either side',
  storage: true,
  persistent: true,
  restarts: 'both',
  graceful: true,
  bothDirections: true,
  repeatsAfterCrash: true,
};

export const SCENARIOS: Record<Scenario, ScenarioConfig & { title: string }> = {
  a: SCENARIO_A,
  b: {
    title: 'no storage, transient messages both ways, cuts and delays, no restarts',
    storage: false,
    persistent: false,
    restarts: 'none',
    graceful: false,
    bothDirections: true,
    repeatsAfterCrash: false,
  },
  c: {
    title: 'no storage, transient messages one way, cuts, delays and crash restarts of the sender',
    storage: false,
    persistent: false,
    restarts: 'sender',
    graceful: false,
    bothDirections: false,
    repeatsAfterCrash: false,
  },
  d: {
    ...SCENARIO_A,
    title: 'as a, but a (re)started node joins the network only once messaging.ready resolved',
    joinWhenReady: true,
  },
};

type Name = 'alice' | 'bob';
const PEER: Record<Name, Name> = { alice: 'bob', bob: 'alice' };

/** How a process life ended. */
export type LifeEnd = 'alive' | 'crash' | 'graceful';

export interface SentRecord {
  index: number;
  /** Sender incarnation that called sendMessage. */
  inc: number;
  uuid: string;
  /** sendMessage resolved while that incarnation was alive. */
  resolved: boolean;
  /** sendMessage rejected. */
  rejected: boolean;
  /** A live incarnation of the sender saw `message-delivered` for it. */
  acked: boolean;
  /** Virtual time of the first such `message-delivered`. */
  ackedAt?: number;
}

export interface Delivery {
  receiver: Name;
  /** Receiver incarnation whose `message` listener got it. */
  rinc: number;
  sender: string;
  index: number;
  t: number;
  /** Delivered before the receiver's `ready` resolved (its storage not loaded yet). */
  early?: boolean;
}

export interface RunLog {
  scenario: Scenario;
  seed: number;
  maxInFlight: number;
  sent: Record<Name, SentRecord[]>;
  deliveries: Delivery[];
  /** ends[name][inc]: how that life ended. */
  ends: Record<Name, LifeEnd[]>;
  /** Senders in this run. */
  senders: Name[];
  /** The run did not finish by its virtual deadline / ran out of events, with why. */
  unfinished: string | undefined;
  /** Errors of the harness itself (e.g. close() rejected). */
  harnessErrors: string[];
  stats: {
    virtualMs: number;
    events: number;
    connections: number;
    cuts: number;
    restarts: number;
    crashes: number;
    bytes: number;
    /** Times a send() returned false / drain was fired. */
    blocked: number;
    drains: number;
    /** Connection ends left half-open (closed by their keepalive). */
    halfOpen: number;
    finalQueues: Record<Name, number>;
  };
}

export interface RunOptions {
  /** Meta test: the receivers' log drops every 7th delivered message (a broken receiver). */
  breakLog?: boolean;
  /** Override the scenario's joinWhenReady (for diagnosis). */
  joinWhenReady?: boolean;
}

interface Life {
  inc: number;
  alive: boolean;
  /** `ready` resolved. */
  ready: boolean;
  messaging: Messaging;
  endpoint: SimEndpoint;
  kill(): void;
}

interface SimNode {
  name: Name;
  side: 'listener' | 'connector';
  state: 'up' | 'down' | 'closing';
  life: Life | undefined;
  store: DurableStore<MemoryQueuesStorage> | undefined;
  /** Sends that came due while the node was down, in order. */
  backlog: number[];
  /** Next message index to send. */
  next: number;
  /** Message plan: body sizes. */
  plan: number[];
  uuidByHex: Map<string, number>;
}

const immediate = (): Promise<void> => new Promise((r) => setImmediate(r));

/** One seeded run of a scenario. */
export async function runModel(scenario: Scenario, seed: number, options: RunOptions = {}): Promise<RunLog> {
  const cfg = { ...SCENARIOS[scenario] };
  if (options.joinWhenReady !== undefined) cfg.joinWhenReady = options.joinWhenReady;
  // one PRNG per concern, so that e.g. the network's draws do not shift the send plan
  const master = prng((seed * 0x9e3779b1) ^ scenario.charCodeAt(0));
  const sub = (): (() => number) => prng(Math.floor(master() * 2 ** 32));
  const planRand = sub();
  const netRand = sub();
  const storeRand = sub();
  const uuidRand = sub();
  const randInt = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

  // MODEL_FRACTIONAL_MS=1: time in fractions of a ms, timers exactly on time (see the note in
  // test/model.test.ts: the current Messaging's keepalive can spin forever then)
  const clock = new SimClock(!process.env.MODEL_FRACTIONAL_MS);
  const net = new SimNet(clock, { rand: netRand, maxLatency: randInt(planRand, 1, 40) });
  const maxInFlight = [16, 32, 64][randInt(planRand, 0, 2)];
  const chaosMs = randInt(planRand, 200, 6000);
  const highWater = planRand() < 0.5 ? 1024 * 1024 : Math.floor(256 * Math.pow(256, planRand()));
  const senders: Name[] = cfg.bothDirections ? ['alice', 'bob'] : [planRand() < 0.5 ? 'alice' : 'bob'];

  const log: RunLog = {
    scenario,
    seed,
    maxInFlight,
    sent: { alice: [], bob: [] },
    deliveries: [],
    ends: { alice: [], bob: [] },
    senders,
    unfinished: undefined,
    harnessErrors: [],
    stats: { virtualMs: 0, events: 0, connections: 0, cuts: 0, restarts: 0, crashes: 0, bytes: 0, blocked: 0, drains: 0, halfOpen: 0, finalQueues: { alice: 0, bob: 0 } },
  };

  const nodes: Record<Name, SimNode> = {} as Record<Name, SimNode>;
  for (const name of ['alice', 'bob'] as Name[]) {
    const count = senders.includes(name) ? randInt(planRand, 20, cfg.bothDirections ? 150 : 300) : 0;
    nodes[name] = {
      name,
      side: name === 'alice' ? 'listener' : 'connector',
      state: 'down',
      life: undefined,
      store: cfg.storage ? new DurableStore(new MemoryQueuesStorage(), clock, storeRand, name) : undefined,
      backlog: [],
      next: 0,
      plan: Array.from({ length: count }, () => randInt(planRand, 10, 200)),
      uuidByHex: new Map(),
    };
  }

  let delivered = 0;
  let logCount = 0;

  const build = (node: SimNode): void => {
    const inc = log.ends[node.name].length;
    log.ends[node.name].push('alive');
    const endpoint = net.attach(node.side, !cfg.joinWhenReady);
    const scope = clock.scope();
    // (a small high-water mark makes Messaging wait for the packeter's drain now and then)
    const packeter = new Packeter(endpoint, { logger: silentLogger, highWaterMark: highWater });
    const messaging = new Messaging(node.name, '', packeter, {
      storage: node.store?.open() as QueuesStorage | undefined,
      clock: scope,
      logger: silentLogger,
      maxInFlight,
      keepaliveInterval: 2000,
      keepaliveWait: 1000,
    });
    const life: Life = { inc, alive: true, ready: false, messaging, endpoint, kill: scope.kill };
    messaging.on('message', (_connId, ident, m) => {
      if (!life.alive) return; // a dead process delivers nothing (its leftover turns still run here)
      delivered++;
      if (process.env.MODEL_TRACE) console.log(`t=${clock.now()} ${node.name}#${inc} got ${m.body.toString('latin1', 0, 12)} on ${_connId}`);
      const [sender, idx] = m.body.toString('latin1').split('|');
      if (options.breakLog && ++logCount % 7 === 0) return;
      log.deliveries.push({ receiver: node.name, rinc: inc, sender: ident === sender ? sender : `${ident}?${sender}`, index: Number(idx), t: clock.now(), ...(life.ready ? {} : { early: true }) });
    });
    messaging.on('message-delivered', (_ident, uuid) => {
      if (!life.alive) return;
      const i = node.uuidByHex.get(uuid.toString('hex'));
      const r = i === undefined ? undefined : log.sent[node.name][i];
      if (r && !r.acked) {
        r.acked = true;
        r.ackedAt = clock.now();
      }
    });
    messaging.on('error', () => {});
    messaging.ready.then(
      () => {
        life.ready = true;
        if (cfg.joinWhenReady && life.alive) net.plug(endpoint);
      },
      (err) => log.harnessErrors.push(`${node.name}#${inc} ready rejected: ${String(err)}`),
    );
    node.life = life;
    node.state = 'up';
    flushBacklog(node);
  };

  const sendOne = (node: SimNode, index: number): void => {
    const life = node.life!;
    const size = node.plan[index];
    const head = `${node.name}|${index}|`;
    const body = Buffer.alloc(Math.max(size, head.length), 0x2e);
    body.write(head, 'latin1');
    const uuid = Buffer.alloc(16);
    for (let k = 0; k < 16; k++) uuid[k] = Math.floor(uuidRand() * 256);
    const hex = uuid.toString('hex');
    node.uuidByHex.set(hex, index);
    const rec: SentRecord = { index, inc: life.inc, uuid: hex, resolved: false, rejected: false, acked: false };
    log.sent[node.name][index] = rec;
    const m = new Message(body, { uuid, flags: cfg.persistent ? FLAG_PERSISTENT : 0 });
    life.messaging.sendMessage(PEER[node.name], m).then(
      () => {
        if (life.alive) rec.resolved = true;
      },
      (err) => {
        if (life.alive) {
          rec.rejected = true;
          // (close() rejects the sends still waiting for storage to load; nothing else may)
          if (node.state !== 'closing') log.harnessErrors.push(`${node.name}#${life.inc} sendMessage(${index}) rejected: ${String(err)}`);
        }
      },
    );
  };

  const flushBacklog = (node: SimNode): void => {
    while (node.state === 'up' && node.backlog.length > 0) sendOne(node, node.backlog.shift()!);
  };

  const crash = (node: SimNode): void => {
    const life = node.life;
    if (node.state !== 'up' || !life) return;
    log.stats.crashes++;
    if (process.env.MODEL_TRACE) console.log(`t=${clock.now()} ${node.name}#${life.inc} crash`);
    life.alive = false;
    life.kill();
    net.crash(life.endpoint);
    node.store?.crash();
    log.ends[node.name][life.inc] = 'crash';
    node.state = 'down';
    node.life = undefined;
  };

  const graceful = async (node: SimNode): Promise<void> => {
    const life = node.life;
    if (node.state !== 'up' || !life) return;
    node.state = 'closing';
    if (process.env.MODEL_TRACE) console.log(`t=${clock.now()} ${node.name}#${life.inc} graceful close starts`);
    try {
      await life.messaging.close();
    } catch (err) {
      log.harnessErrors.push(`${node.name}#${life.inc} close() rejected: ${String(err)}`);
    }
    if (process.env.MODEL_TRACE) console.log(`t=${clock.now()} ${node.name}#${life.inc} close() resolved`);
    await immediate(); // (what close() handed to the packeter is written)
    node.store?.closeHandle();
    await immediate(); // (the sends whose storage writes that completed resolve now, before the exit)
    life.alive = false;
    life.kill();
    net.shutdown(life.endpoint);
    log.ends[node.name][life.inc] = 'graceful';
    node.state = 'down';
    node.life = undefined;
  };

  // ------------------------------------------------ the plan, on virtual time

  for (const name of senders) {
    const node = nodes[name];
    let t = 0;
    let i = 0;
    const n = node.plan.length;
    while (i < n) {
      t += planRand() < 0.3 ? 0 : planRand() * ((chaosMs * 0.9) / Math.max(1, n / 4));
      const burst = Math.min(n - i, planRand() < 0.2 ? randInt(planRand, 5, 40) : randInt(planRand, 1, 4));
      const from = i;
      i += burst;
      clock.setTimeout(
        () => {
          for (let k = from; k < from + burst; k++) node.backlog.push(k);
          node.next = from + burst;
          flushBacklog(node);
        },
        Math.min(t, chaosMs),
      );
    }
  }

  const restartable: Name[] = cfg.restarts === 'both' ? ['alice', 'bob'] : cfg.restarts === 'sender' ? senders : [];
  for (const name of restartable) {
    const node = nodes[name];
    const k = randInt(planRand, 0, 4);
    for (let r = 0; r < k; r++) {
      const at = planRand() * chaosMs;
      const kind = cfg.graceful && planRand() < 0.4 ? 'graceful' : 'crash';
      const down = planRand() < 0.3 ? 0 : planRand() * 400;
      clock.setTimeout(() => {
        if (node.state !== 'up') return;
        log.stats.restarts++;
        const rebuild = (): void => {
          clock.setTimeout(() => {
            if (node.state === 'down') build(node);
          }, down);
        };
        if (kind === 'crash') {
          crash(node);
          rebuild();
        } else {
          void graceful(node).then(rebuild);
        }
      }, at);
    }
  }

  let healed = false;
  clock.setTimeout(() => {
    healed = true;
    net.heal();
  }, chaosMs);

  build(nodes.alice);
  build(nodes.bob);

  // ------------------------------------------------ driving

  const activity = (): number =>
    net.activity + delivered + (nodes.alice.store?.activity ?? 0) + (nodes.bob.store?.activity ?? 0);
  const settle = async (): Promise<void> => {
    let quiet = 0;
    for (let i = 0; i < 200 && quiet < 2; i++) {
      const a = activity();
      await immediate();
      quiet = activity() === a ? quiet + 1 : 0;
    }
  };

  const expected = (name: Name, r: SentRecord): boolean => {
    if (cfg.restarts === 'sender') return r.acked || log.ends[name][r.inc] === 'alive';
    if (cfg.storage) return r.resolved;
    return true;
  };

  const deliveredSet: Record<Name, Set<number>> = { alice: new Set(), bob: new Set() };
  let scanned = 0;
  const finished = (): boolean => {
    for (; scanned < log.deliveries.length; scanned++) {
      const d = log.deliveries[scanned];
      deliveredSet[PEER[d.receiver]].add(d.index);
    }
    for (const name of ['alice', 'bob'] as Name[]) {
      const node = nodes[name];
      if (node.state !== 'up') return false;
      if (node.backlog.length > 0 || node.next < node.plan.length) return false;
      if (node.life!.messaging.queueSize(PEER[name]) > 0) return false;
      for (const r of log.sent[name]) {
        if (r.inc === node.life!.inc && !r.resolved && !r.rejected) return false;
        if (!deliveredSet[name].has(r.index) && expected(name, r) && !options.breakLog) return false;
      }
    }
    return true;
  };

  const deadline = chaosMs + 120_000;
  const maxEvents = 400_000;
  let events = 0;
  let doneAt: number | undefined;
  for (;;) {
    await settle();
    if (healed && doneAt === undefined && finished()) {
      // keep going a while: late repeats would show now
      doneAt = clock.now();
      clock.setTimeout(() => {}, 3000);
    }
    if (doneAt !== undefined && clock.now() >= doneAt + 3000) break;
    const next = clock.nextAt();
    if (next === Infinity) {
      if (doneAt !== undefined) break;
      log.unfinished = `stalled at ${clock.now()} ms virtual: no event pending and not everything delivered`;
      break;
    }
    if (next > deadline) {
      if (doneAt !== undefined) break;
      log.unfinished = `not finished ${deadline - chaosMs} ms (virtual) after the network healed`;
      break;
    }
    if (events > maxEvents) {
      log.unfinished = `not finished after ${events} events (${clock.now()} ms virtual)`;
      break;
    }
    events += clock.runNext();
    if (process.env.MODEL_TRACE) console.log(`t=${clock.now().toFixed(2)} events=${events} a=${nodes.alice.state} b=${nodes.bob.state}`);
  }

  for (const name of ['alice', 'bob'] as Name[]) {
    log.stats.finalQueues[name] = nodes[name].life?.messaging.queueSize(PEER[name]) ?? -1;
  }
  log.stats.virtualMs = Math.round(clock.now());
  log.stats.events = events;
  log.stats.connections = net.stats.connections;
  log.stats.cuts = net.stats.cuts;
  log.stats.bytes = net.stats.bytes;
  log.stats.blocked = net.stats.blocked;
  log.stats.drains = net.stats.drains;
  log.stats.halfOpen = net.stats.halfOpen;
  if (log.unfinished) {
    const parts: string[] = [];
    for (const name of senders) {
      const node = nodes[name];
      const missing = log.sent[name].filter((r) => r && expected(name, r) && !deliveredSet[name].has(r.index)).length;
      parts.push(
        `${name}→${PEER[name]}: ${log.sent[name].length} sent, ${missing} expected undelivered, queue ${log.stats.finalQueues[name]}, state ${node.state}`,
      );
    }
    log.unfinished += ` (${parts.join('; ')})`;
  }
  // leave nothing running: close what is alive (timers are virtual, so nothing would fire anyway)
  for (const name of ['alice', 'bob'] as Name[]) {
    const life = nodes[name].life;
    if (life) {
      life.alive = false;
      life.kill();
    }
  }
  return log;
}

/** How to replay one seed. */
export function replayHint(scenario: Scenario, seed: number): string {
  return `MODEL_SCENARIO=${scenario} MODEL_SEED=${seed} npx vitest run test/model.test.ts`;
}

/**
 * Check a run's log against the invariants of its scenario. Returns `undefined` when they hold,
 * otherwise one message naming the scenario and seed and every problem found.
 */
export function checkRun(log: RunLog): string | undefined {
  const cfg = SCENARIOS[log.scenario];
  const problems: string[] = [];
  const expected = (name: Name, r: SentRecord): boolean => {
    if (cfg.restarts === 'sender') return r.acked || log.ends[name][r.inc] === 'alive';
    if (cfg.storage) return r.resolved;
    return true;
  };
  for (const sender of log.senders) {
    const receiver = PEER[sender];
    const dir = `${sender}→${receiver}`;
    const sent = log.sent[sender];
    // index -> receiver incarnation of its latest delivery
    const last = new Map<number, number>();
    /** index -> time of its first delivery */
    const firstAt = new Map<number, number>();
    let lastFirst = -1;
    const repeatsOfCrash = new Map<number, Set<number>>();
    const outOfOrder: string[] = [];
    const twiceInLife: string[] = [];
    const badRepeats: string[] = [];
    for (const d of log.deliveries) {
      if (d.receiver !== receiver) continue;
      if (d.sender !== sender) {
        problems.push(`${receiver} got a message from '${d.sender}' (not ${sender})`);
        continue;
      }
      if (!Number.isInteger(d.index) || sent[d.index] === undefined) {
        problems.push(`${dir}: delivered message ${d.index} was never sent`);
        continue;
      }
      const prev = last.get(d.index);
      last.set(d.index, d.rinc);
      if (prev === undefined) {
        firstAt.set(d.index, d.t);
        if (d.index < lastFirst) outOfOrder.push(`${d.index} after ${lastFirst}`);
        lastFirst = Math.max(lastFirst, d.index);
        continue;
      }
      if (prev === d.rinc) {
        twiceInLife.push(`${d.index} (${receiver}#${d.rinc})`);
        continue;
      }
      const end = log.ends[receiver][prev];
      if (end === 'crash' && cfg.repeatsAfterCrash) {
        let s = repeatsOfCrash.get(prev);
        if (!s) repeatsOfCrash.set(prev, (s = new Set()));
        s.add(d.index);
      } else {
        badRepeats.push(`${d.index} (first in ${receiver}#${prev}, ended: ${end}; again in #${d.rinc}${d.early ? ' before its ready resolved' : ''})`);
      }
    }
    const list = (xs: string[]): string => xs.slice(0, 8).join(', ') + (xs.length > 8 ? `, … (${xs.length} in all)` : '');
    if (outOfOrder.length) problems.push(`${dir}: out of order: ${list(outOfOrder)}`);
    if (twiceInLife.length) problems.push(`${dir}: delivered twice within one receiver process life: ${list(twiceInLife)}`);
    if (badRepeats.length) problems.push(`${dir}: delivered again after a restart that allows no repeat: ${list(badRepeats)}`);
    for (const [inc, s] of repeatsOfCrash) {
      if (s.size > log.maxInFlight) {
        problems.push(`${dir}: ${s.size} messages delivered again after the crash of ${receiver}#${inc}, more than maxInFlight ${log.maxInFlight}`);
      }
    }
    const ackedEarly: string[] = [];
    for (const r of sent) {
      if (!r || r.ackedAt === undefined) continue;
      const t = firstAt.get(r.index);
      if (t === undefined || t > r.ackedAt) ackedEarly.push(`${r.index} (acknowledged at ${r.ackedAt} ms, ${t === undefined ? 'never delivered' : `delivered at ${t} ms`})`);
    }
    if (ackedEarly.length) problems.push(`${dir}: message-delivered before the receiver had it: ${list(ackedEarly)}`);
    const missing: string[] = [];
    for (const r of sent) if (r && expected(sender, r) && !last.has(r.index)) missing.push(String(r.index));
    if (missing.length) problems.push(`${dir}: lost (expected, never delivered): ${list(missing)}`);
  }
  if (log.unfinished) problems.push(`left undelivered: ${log.unfinished}`);
  if (log.harnessErrors.length) problems.push(`harness: ${log.harnessErrors.slice(0, 3).join('; ')}`);
  if (problems.length === 0) return undefined;
  const s = log.stats;
  return (
    `model scenario ${log.scenario} seed ${log.seed}: ${problems.join(' | ')}` +
    ` [maxInFlight ${log.maxInFlight}, ${s.connections} connections, ${s.cuts} cuts, ${s.restarts} restarts (${s.crashes} crashes),` +
    ` lives alice ${log.ends.alice.join(',')} bob ${log.ends.bob.join(',')}, ${s.virtualMs} ms virtual]` +
    ` replay: ${replayHint(log.scenario, log.seed)}`
  );
}
