/**
 * Model test (issue #14): the real Messaging and Packeter of two nodes over a simulated network
 * (test/helpers/sim-net.ts) that cuts connections at random byte offsets, delays and chunks
 * bytes, and restarts either side (crash or graceful, with durable storage modelled by
 * test/helpers/durable-storage.ts), on virtual time: thousands of seeded runs, each checked for
 * no loss, order, and exactly-once (see checkRun in test/helpers/model.ts for the exact rules).
 *
 * Scenarios:
 *   a  storage, persistent messages both ways, cuts, delays, crash and graceful restarts of either side
 *   b  no storage, transient messages both ways, cuts and delays, no restarts
 *   c  no storage, transient messages one way, cuts, delays and crash restarts of the sender
 *   d  as a, but a (re)started node joins the network only once messaging.ready resolved
 *
 * Environment:
 *   MODEL_SEED=<n>        run only seed n (of every scenario, or of MODEL_SCENARIO)
 *   MODEL_SCENARIO=<a..d> run only that scenario (comma-separated list allowed)
 *   MODEL_RUNS=<n>        seeds per scenario (default: a 1200, b/c/d 600 each: 3,000 runs)
 *   MODEL_SEED_FROM=<n>   first seed (default 1), for soak runs over other seeds
 *   MODEL_TRACE=1, MODEL_TRACE_STORE=1  print a replayed run's events (use with MODEL_SEED)
 *   MODEL_FRACTIONAL_MS=1 virtual time in fractions of a ms with timers firing exactly on time;
 *                         on the current code this hangs (keepalive, see
 *                         test/keepalive-exact-clock.test.ts), so it is not the default: by
 *                         default time is whole ms and timers are never early, as Node's are
 *
 * On the current code (per-uuid acks) scenario a fails for about 2% of seeds: a restarted
 * receiver hands resent messages to the application before its storage has loaded the dedup
 * window, so messages delivered before a graceful restart are delivered again (each such
 * repeat is marked "before its ready resolved"). Scenario d, which only lets a node onto the
 * network once ready resolved, passes.
 */
import { describe, expect, it } from 'vitest';
import { type RunLog, SCENARIOS, type Scenario, checkRun, runModel } from './helpers/model.js';

const DEFAULT_RUNS: Record<Scenario, number> = { a: 1200, b: 600, c: 600, d: 600 };

const onlySeed = process.env.MODEL_SEED !== undefined && process.env.MODEL_SEED !== '' ? Number(process.env.MODEL_SEED) : undefined;
const onlyScenarios = process.env.MODEL_SCENARIO ? process.env.MODEL_SCENARIO.split(',').map((s) => s.trim()) : undefined;
const runsOverride = process.env.MODEL_RUNS ? Number(process.env.MODEL_RUNS) : undefined;
const seedFrom = process.env.MODEL_SEED_FROM ? Number(process.env.MODEL_SEED_FROM) : 1;

function seedsOf(s: Scenario): number[] {
  if (onlySeed !== undefined) return [onlySeed];
  const n = runsOverride ?? DEFAULT_RUNS[s];
  return Array.from({ length: n }, (_, i) => seedFrom + i);
}

describe('model: two Messaging nodes over a simulated network that cuts, delays and restarts', () => {
  for (const s of Object.keys(SCENARIOS) as Scenario[]) {
    if (onlyScenarios && !onlyScenarios.includes(s)) continue;
    const seeds = seedsOf(s);
    it(
      `scenario ${s} (${SCENARIOS[s].title}): ${seeds.length} seeded runs`,
      async () => {
        const failures: string[] = [];
        const t0 = performance.now();
        const tot = { connections: 0, cuts: 0, restarts: 0, crashes: 0, delivered: 0, sent: 0, blocked: 0, halfOpen: 0, repeats: 0 };
        for (const seed of seeds) {
          const log = await runModel(s, seed);
          tot.connections += log.stats.connections;
          tot.cuts += log.stats.cuts;
          tot.restarts += log.stats.restarts;
          tot.crashes += log.stats.crashes;
          tot.blocked += log.stats.blocked;
          tot.halfOpen += log.stats.halfOpen;
          tot.delivered += log.deliveries.length;
          tot.repeats += log.deliveries.length - new Set(log.deliveries.map((d) => `${d.receiver}|${d.index}`)).size;
          tot.sent += log.sent.alice.length + log.sent.bob.length;
          const err = checkRun(log);
          if (err) failures.push(err);
        }
        const ms = Math.round(performance.now() - t0);
        console.info(
          `model scenario ${s}: ${seeds.length} runs in ${ms} ms, ${failures.length} failed;` +
            ` ${tot.sent} messages sent, ${tot.delivered} deliveries (${tot.repeats} repeats), ${tot.connections} connections, ${tot.cuts} cuts,` +
            ` ${tot.restarts} restarts (${tot.crashes} crashes), ${tot.blocked} times a write was refused (backpressure), ${tot.halfOpen} half-open ends`,
        );
        if (failures.length > 0) {
          throw new Error(
            `scenario ${s}: ${failures.length} of ${seeds.length} seeds failed:\n` +
              failures.slice(0, 12).join('\n') +
              (failures.length > 12 ? `\n… and ${failures.length - 12} more` : ''),
          );
        }
        // the runs did exercise the network
        if (onlySeed === undefined) {
          expect(tot.cuts).toBeGreaterThan(seeds.length);
          expect(tot.blocked).toBeGreaterThan(0);
          if (SCENARIOS[s].restarts !== 'none') expect(tot.restarts).toBeGreaterThan(seeds.length);
        }
      },
      600_000,
    );
  }
});

describe('model harness', () => {
  it('replays a seed exactly', async () => {
    const pick = (l: RunLog): unknown => ({ d: l.deliveries, s: l.sent, e: l.ends, st: l.stats });
    const one = await runModel('a', 77);
    const two = await runModel('a', 77);
    expect(pick(two)).toEqual(pick(one));
    expect(one.stats.cuts + one.stats.restarts).toBeGreaterThan(0);
  });

  it('can fail: a receiver whose log drops every 7th delivered message is reported, with its seed', async () => {
    for (const s of ['b', 'a'] as Scenario[]) {
      const log = await runModel(s, 4242, { breakLog: true });
      const err = checkRun(log);
      expect(err).toBeDefined();
      expect(err).toContain(`seed 4242`);
      expect(err).toContain(`scenario ${s}`);
      expect(err).toContain('lost');
      expect(err).toContain(`MODEL_SEED=4242`);
    }
  });

  /** A log of `n` messages alice → bob, all resolved, delivered as `deliveries` says ([index, bob incarnation]). */
  function synthetic(scenario: Scenario, n: number, deliveries: [number, number][], bobEnds: RunLog['ends']['bob']): RunLog {
    return {
      scenario,
      seed: 99,
      maxInFlight: 2,
      sent: {
        alice: Array.from({ length: n }, (_, i) => ({ index: i, inc: 0, uuid: String(i), resolved: true, rejected: false, acked: true })),
        bob: [],
      },
      deliveries: deliveries.map(([index, rinc], t) => ({ receiver: 'bob', rinc, sender: 'alice', index, t })),
      ends: { alice: ['alive'], bob: bobEnds },
      senders: ['alice'],
      unfinished: undefined,
      harnessErrors: [],
      stats: { virtualMs: 0, events: 0, connections: 0, cuts: 0, restarts: 0, crashes: 0, bytes: 0, blocked: 0, drains: 0, halfOpen: 0, finalQueues: { alice: 0, bob: 0 } },
    };
  }

  it('checker: each rule can fire', () => {
    // fine: in order, once each
    expect(checkRun(synthetic('a', 3, [[0, 0], [1, 0], [2, 0]], ['alive']))).toBeUndefined();
    // fine: repeats after a receiver crash, at most maxInFlight (2) of them
    expect(checkRun(synthetic('a', 3, [[0, 0], [1, 0], [2, 0], [1, 1], [2, 1]], ['crash', 'alive']))).toBeUndefined();
    expect(checkRun(synthetic('a', 3, [[0, 0], [2, 0]], ['alive']))).toMatch(/seed 99.*lost.*: 1/);
    expect(checkRun(synthetic('a', 3, [[0, 0], [2, 0], [1, 0]], ['alive']))).toMatch(/out of order: 1 after 2/);
    expect(checkRun(synthetic('a', 3, [[0, 0], [1, 0], [1, 0], [2, 0]], ['alive']))).toMatch(/twice within one receiver process life/);
    expect(checkRun(synthetic('a', 3, [[0, 0], [1, 0], [1, 1], [2, 1]], ['graceful', 'alive']))).toMatch(/allows no repeat/);
    expect(checkRun(synthetic('a', 3, [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], ['crash', 'alive']))).toMatch(
      /3 messages delivered again after the crash of bob#0, more than maxInFlight 2/,
    );
    // without storage (b) no repeat is allowed even across a crash
    expect(checkRun(synthetic('b', 2, [[0, 0], [1, 0], [1, 1]], ['crash', 'alive']))).toMatch(/allows no repeat/);
    const early = synthetic('b', 2, [[0, 0], [1, 0]], ['alive']);
    early.sent.alice[1].ackedAt = -1;
    expect(checkRun(early)).toMatch(/message-delivered before the receiver had it: 1 \(acknowledged at -1 ms, delivered at 1 ms\)/);
    const unfinished = synthetic('b', 1, [[0, 0]], ['alive']);
    unfinished.unfinished = 'not finished';
    expect(checkRun(unfinished)).toMatch(/left undelivered: not finished/);
  });
});
