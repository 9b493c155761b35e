/**
 * snakemq benchmark suite: `npm run bench [-- --quick] [-- --json]`.
 *
 * Every scenario runs between two separate Node processes on 127.0.0.1 (receiver and sender,
 * spawned with `node --import tsx`); the receiver measures the rate from its first to its last
 * arrival. Each figure is the median of `runs` (≥ 3) timed runs after one untimed warm-up run,
 * with min and max. Scenarios run one after another.
 *
 * Options:
 *   --quick          a reduced version of every scenario (about 2–3 minutes in total)
 *   --json           print one JSON object with every figure and the `ratios` (nothing else on stdout)
 *   --only a,b       run only the scenarios whose key starts with one of these (e.g. ceiling,zeromq)
 *   --runs N         timed runs per figure (default 3, minimum 3)
 *   --profile DIR    also write V8 CPU profiles (--cpu-prof) of the children to DIR
 *
 * The figures (`--json`): see README.md next to this file.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Child, ROOT, type Event, killAll } from './lib/parent.js';
import { type Figure, figure, median } from './lib/stats.js';

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    only: { type: 'string' },
    runs: { type: 'string' },
    profile: { type: 'string' },
  },
  allowPositionals: false,
});
const QUICK = opts.quick!;
const JSON_OUT = opts.json!;
const RUNS = Math.max(3, Number(opts.runs ?? 3) || 3);
const ONLY = opts.only ? opts.only.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
const PROFILE_DIR = opts.profile ? path.resolve(opts.profile) : undefined;

const MiB = 1024 * 1024;
/** Sizes: [full, quick]. */
const N = {
  framed: QUICK ? 1_000_000 : 4_000_000,
  bulk: QUICK ? 4096 : 32_768, // 64 KiB writes: 256 MiB / 2 GiB
  zmqSmall: QUICK ? 50_000 : 300_000,
  zmqLarge: QUICK ? 100 : 1000,
  zmqReqRep: QUICK ? 2000 : 20_000,
  packSmall: QUICK ? 500_000 : 2_000_000,
  packLarge: QUICK ? 200 : 2000,
  transient: QUICK ? 100_000 : 1_000_000,
  persistent: QUICK ? 20_000 : 200_000,
  rpcSeq: QUICK ? 2000 : 20_000,
  rpcPipe: QUICK ? 20_000 : 200_000,
  pingpong: QUICK ? 2000 : 20_000,
  grpcUnary: QUICK ? 2000 : 20_000,
  grpcPipe: QUICK ? 20_000 : 100_000,
  memory: QUICK ? 200_000 : 1_000_000,
  /** memory.dedup: remembered peers. */
  dedupPeers: QUICK ? 200_000 : 1_000_000,
  /** scale.hub: peers per run (the figures without `_1k` are of the last, largest one). */
  hubPeers: process.env.BENCH_HUB_PEERS ? [Number(process.env.BENCH_HUB_PEERS)] : QUICK ? [1000] : [1000, 5000],
  /** scale.hub: processes the peers are spread over. */
  hubChildren: 4,
  /** scale.hub: idle time measured, ms. */
  hubIdleMs: Number(process.env.BENCH_HUB_IDLE_MS) || (QUICK ? 10_000 : 30_000),
  /** scale.hub: messages per fan-out and per fan-in (rounds of one message per peer). */
  hubMessages: QUICK ? 100_000 : 200_000,
};

// ------------------------------------------------------------------------------ progress

const tty = process.stderr.isTTY === true;
let stepNo = 0;
let stepTotal = 0;
let stepLabel = '';
function progress(detail: string): void {
  if (JSON_OUT && !tty) return;
  const line = `[${stepNo}/${stepTotal}] ${stepLabel}${detail ? ` — ${detail}` : ''}`;
  if (tty) process.stderr.write(`\r\x1b[K${line}`);
  else process.stderr.write(`${line}\n`);
}
function progressDone(): void {
  if (tty) process.stderr.write('\r\x1b[K');
}

// ------------------------------------------------------------------------------ figures

const figures: Record<string, Figure> = {};
/**
 * CPU time of each side during the timed runs ÷ the run's duration (median over the runs):
 * near 1 = that process was the bottleneck; well below 1 on both sides = waiting (latency,
 * windows, fsync) or starved by other load on the machine.
 */
const cpuUtilization: Record<string, { sender: number; receiver: number }> = {};
const errors: Record<string, string> = {};

function fmtNum(x: number, digits = 0): string {
  return Number.isFinite(x) ? x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : 'n/a';
}

// ------------------------------------------------------------------------------ pairs

interface PairResult {
  recv: Event[];
  send: Event[];
}

let profileSeq = 0;
function nodeArgsFor(label: string): string[] {
  if (!PROFILE_DIR) return [];
  // one folder per child: the tsx loader thread writes a profile of its own next to the main one
  return ['--cpu-prof', '--cpu-prof-dir', path.join(PROFILE_DIR, `${label}.${++profileSeq}`)];
}

/**
 * Start a receiver and a sender of `file`, then do one warm-up run and `RUNS` timed runs of
 * `n` units each. Returns the timed runs' `result` (receiver) and `done` (sender) events.
 */
async function pair(file: string, params: Record<string, unknown>, n: number, label: string, warmupN = Math.max(1, Math.ceil(n / 4))): Promise<PairResult> {
  const tag = label.replace(/\W+/g, '_');
  const recv = new Child(file, { ...params, role: 'receiver' }, { label: `${label} receiver`, nodeArgs: nodeArgsFor(`${tag}.receiver`) });
  let send: Child | undefined;
  try {
    const { port } = await recv.expect('ready');
    send = new Child(file, { ...params, role: 'sender', port }, { label: `${label} sender`, nodeArgs: nodeArgsFor(`${tag}.sender`) });
    await send.expect('ready');
    const out: PairResult = { recv: [], send: [] };
    const utilS: number[] = [];
    const utilR: number[] = [];
    for (let i = 0; i <= RUNS; i++) {
      const runN = i === 0 ? warmupN : n;
      progress(i === 0 ? 'warm-up' : `run ${i}/${RUNS}`);
      recv.send('run', { n: runN });
      await recv.expect('armed');
      const c0s = send.cpuMs();
      const c0r = recv.cpuMs();
      const t0 = performance.now();
      send.send('run', { n: runN });
      const [r, s] = await Promise.all([recv.expect('result'), send.expect('done')]);
      const wall = performance.now() - t0;
      if (i > 0) {
        out.recv.push(r);
        out.send.push(s);
        utilS.push((send.cpuMs() - c0s) / wall);
        utilR.push((recv.cpuMs() - c0r) / wall);
      }
    }
    const round = (x: number): number => Math.round(x * 100) / 100;
    cpuUtilization[label] = { sender: round(median(utilS)), receiver: round(median(utilR)) };
    return out;
  } finally {
    await Promise.all([send?.close(), recv.close()]);
  }
}

const nums = (evs: Event[], k: string): number[] => evs.map((e) => Number(e[k]));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface HubRun {
  rssPerConn: number;
  heapPerConn: number;
  idleCpu: number;
  idleSystemCpu: number;
  connectAllMs: number;
  fanout: number;
  fanin: number;
  /** CPU time ÷ wall time of the timed fan-out and fan-in: the hub's, and its peers' processes' together. */
  fanoutCpu: { hub: number; peers: number };
  faninCpu: { hub: number; peers: number };
}

/**
 * One run of scale.hub with `n` peers: a fresh hub process (its open-files limit raised to the
 * hard limit) and `N.hubChildren` fresh processes of n / hubChildren peers each.
 */
async function hubRun(n: number, run: string): Promise<HubRun> {
  const k = N.hubChildren;
  const hubArgs = [...(process.env.BENCH_HUB_NODE_ARGS?.split(' ').filter(Boolean) ?? []), ...nodeArgsFor(`hub_${n}.hub`)];
  const hub = new Child('scenarios/hub.ts', { role: 'hub' }, { label: `hub ${n}`, raiseFdLimit: true, nodeArgs: hubArgs });
  const kids: Child[] = [];
  // BENCH_HUB_PROFILE=DIR: CPU profiles of the hub and of the first peers' process over the idle
  // time, the timed fan-out and the timed fan-in only (each costs a little CPU itself)
  const profileDir = process.env.BENCH_HUB_PROFILE;
  const profiling = async (action: 'start' | 'stop', stretch: string): Promise<void> => {
    if (!profileDir) return;
    mkdirSync(profileDir, { recursive: true });
    const targets = [hub, kids[0]];
    targets.forEach((c, i) => c.send('profile', { action, file: path.join(profileDir, `${n}.${run.replace(/\W+/g, '_')}.${stretch}.${i === 0 ? 'hub' : 'peers'}.cpuprofile`) }));
    await Promise.all(targets.map((c) => c.expect('profiled')));
  };
  try {
    const ready = await hub.expect('ready');
    const port = ready.port as number;
    const per = Math.ceil(n / k);
    for (let i = 0; i < k; i++) {
      const count = Math.min(per, n - i * per);
      kids.push(new Child('scenarios/hub.ts', { role: 'peers', port, count, prefix: `p${i}-` }, { label: `hub ${n} peers ${i}`, raiseFdLimit: true, nodeArgs: i === 0 ? nodeArgsFor(`hub_${n}.peers`) : [] }));
    }
    progress(`${run}: ${fmtNum(n)} peers, creating`);
    for (const c of kids) c.send('create');
    await Promise.all(kids.map((c) => c.expect('created')));
    progress(`${run}: ${fmtNum(n)} peers, connecting`);
    hub.send('await-peers', { n });
    const t0 = performance.now();
    for (const c of kids) c.send('go');
    await Promise.all([hub.expect('identified', 120_000), ...kids.map((c) => c.expect('connected', 120_000))]);
    const connectAllMs = performance.now() - t0;
    hub.send('memory');
    const mem = await hub.expect('memory');
    const rssPerConn = ((mem.rss as number) - (ready.rss as number)) / n;
    const heapPerConn = ((mem.heap as number) - (ready.heap as number)) / n;
    progress(`${run}: ${fmtNum(n)} peers, idle ${N.hubIdleMs / 1000} s`);
    await profiling('start', 'idle');
    const c0 = hub.cpuTimes();
    const i0 = performance.now();
    if (process.env.BENCH_HUB_TRACE) {
      let prev = hub.cpuTimes();
      for (let k = 0; k < N.hubIdleMs / 1000; k++) {
        await sleep(1000);
        const cur = hub.cpuTimes();
        process.stderr.write(`idle ${k}s user ${cur.user - prev.user} system ${cur.system - prev.system}\n`);
        prev = cur;
      }
    } else await sleep(N.hubIdleMs);
    const c1 = hub.cpuTimes();
    const idleMs = performance.now() - i0;
    const idleCpu = (c1.user + c1.system - c0.user - c0.system) / idleMs;
    const idleSystemCpu = (c1.system - c0.system) / idleMs;
    await profiling('stop', 'idle');
    const noCpu = { hub: NaN, peers: NaN };
    if (process.env.BENCH_HUB_SKIP_FAN) {
      return { rssPerConn, heapPerConn, idleCpu, idleSystemCpu, connectAllMs, fanout: NaN, fanin: NaN, fanoutCpu: noCpu, faninCpu: noCpu };
    }
    // CPU of the hub and of all peer processes over `f`, ÷ its wall time
    const cpuOf = async <T,>(f: () => Promise<T>): Promise<[T, { hub: number; peers: number }]> => {
      const peersMs = (): number => kids.reduce((a, c) => a + c.cpuMs(), 0);
      const h0 = hub.cpuMs();
      const p0 = peersMs();
      const t = performance.now();
      const r = await f();
      const wall = performance.now() - t;
      return [r, { hub: (hub.cpuMs() - h0) / wall, peers: (peersMs() - p0) / wall }];
    };
    const rounds = Math.max(1, Math.round(N.hubMessages / n));
    const fanoutOnce = async (r: number): Promise<number> => {
      for (const c of kids) c.send('fanout-arm', { each: r });
      await Promise.all(kids.map((c) => c.expect('armed')));
      hub.send('fanout', { rounds: r, size: 100 });
      const [sent, ...got] = await Promise.all([hub.expect('sent'), ...kids.map((c) => c.expect('received'))]);
      const last = Math.max(...got.map((g) => g.last as number));
      return (n * r * 1000) / (last - (sent.t0 as number));
    };
    const faninOnce = async (r: number): Promise<number> => {
      hub.send('fanin-arm', { n: n * r });
      await hub.expect('armed');
      for (const c of kids) c.send('fanin', { rounds: r, size: 100 });
      const [res] = await Promise.all([hub.expect('result'), ...kids.map((c) => c.expect('sent'))]);
      return res.rate as number;
    };
    progress(`${run}: ${fmtNum(n)} peers, fan-out`);
    await fanoutOnce(Math.max(1, Math.ceil(rounds / 4)));
    await profiling('start', 'fanout');
    const [fanout, fanoutCpu] = await cpuOf(() => fanoutOnce(rounds));
    await profiling('stop', 'fanout');
    progress(`${run}: ${fmtNum(n)} peers, fan-in`);
    await faninOnce(Math.max(1, Math.ceil(rounds / 4)));
    await profiling('start', 'fanin');
    const [fanin, faninCpu] = await cpuOf(() => faninOnce(rounds));
    await profiling('stop', 'fanin');
    return { rssPerConn, heapPerConn, idleCpu, idleSystemCpu, connectAllMs, fanout, fanin, fanoutCpu, faninCpu };
  } finally {
    await Promise.all([...kids.map((c) => c.close(20_000)), hub.close(20_000)]);
  }
}

// ------------------------------------------------------------------------------ scenarios

interface Scenario {
  key: string;
  title: string;
  /** Needs a file of ours that may not exist yet (relative to the project root). */
  needs?: string[];
  run(): Promise<void>;
}

const scenarios: Scenario[] = [
  {
    key: 'ceiling.framed',
    title: `ceiling: raw net, 100 B length-prefixed frames, batched writes (${fmtNum(N.framed)})`,
    async run() {
      const r = await pair('scenarios/raw.ts', { mode: 'framed', size: 100, batch: 512 }, N.framed, 'ceiling framed');
      figures.ceiling_framed_100b_msgs_per_s = figure('msg/s', nums(r.recv, 'rate'));
    },
  },
  {
    key: 'ceiling.framed_views',
    title: `ceiling: the same, with a Buffer view of each frame handed to a function (${fmtNum(N.framed)})`,
    async run() {
      const r = await pair('scenarios/raw.ts', { mode: 'framed', size: 100, batch: 512, views: true }, N.framed, 'ceiling framed views');
      figures.ceiling_framed_views_100b_msgs_per_s = figure('msg/s', nums(r.recv, 'rate'));
    },
  },
  {
    key: 'ceiling.bulk',
    title: `ceiling: raw net, 64 KiB bulk writes (${fmtNum((N.bulk * 64) / 1024)} MiB)`,
    async run() {
      const r = await pair('scenarios/raw.ts', { mode: 'bulk', size: 64 * 1024 }, N.bulk, 'ceiling bulk');
      figures.ceiling_bulk_64k_bytes_per_s = figure('B/s', nums(r.recv, 'byteRate'));
    },
  },
  {
    key: 'ceiling.pingpong',
    title: `ceiling: raw net, one 100 B frame each way, sequential round trips (${fmtNum(N.pingpong)})`,
    async run() {
      const r = await pair('scenarios/raw.ts', { mode: 'pingpong', size: 100 }, N.pingpong, 'ceiling pingpong');
      figures.ceiling_pingpong_median_us = figure('µs', nums(r.send, 'median_us'));
      figures.ceiling_pingpong_p99_us = figure('µs', nums(r.send, 'p99_us'));
      figures.ceiling_pingpong_round_trips_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'zeromq.pushpull_small',
    title: `zeromq: PUSH/PULL 100 B (${fmtNum(N.zmqSmall)})`,
    async run() {
      const r = await pair('scenarios/zmq.ts', { mode: 'pushpull', size: 100 }, N.zmqSmall, 'zeromq push/pull 100 B');
      figures.zeromq_pushpull_100b_msgs_per_s = figure('msg/s', nums(r.recv, 'rate'));
    },
  },
  {
    key: 'zeromq.pushpull_large',
    title: `zeromq: PUSH/PULL 1 MiB (${fmtNum(N.zmqLarge)})`,
    async run() {
      const r = await pair('scenarios/zmq.ts', { mode: 'pushpull', size: MiB }, N.zmqLarge, 'zeromq push/pull 1 MiB');
      figures.zeromq_pushpull_1mib_bytes_per_s = figure('B/s', nums(r.recv, 'byteRate'));
    },
  },
  {
    key: 'zeromq.reqrep',
    title: `zeromq: REQ/REP 100 B round trips (${fmtNum(N.zmqReqRep)} sequential)`,
    async run() {
      const r = await pair('scenarios/zmq.ts', { mode: 'reqrep', size: 100 }, N.zmqReqRep, 'zeromq req/rep');
      figures.zeromq_reqrep_median_us = figure('µs', nums(r.send, 'median_us'));
      figures.zeromq_reqrep_p99_us = figure('µs', nums(r.send, 'p99_us'));
      figures.zeromq_reqrep_round_trips_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'packeter.small',
    title: `snakemq Packeter: 100 B packets (${fmtNum(N.packSmall)})`,
    async run() {
      const r = await pair('scenarios/packeter.ts', { size: 100 }, N.packSmall, 'packeter 100 B');
      figures.packeter_100b_msgs_per_s = figure('msg/s', nums(r.recv, 'rate'));
    },
  },
  {
    key: 'packeter.large',
    title: `snakemq Packeter: 1 MiB packets (${fmtNum(N.packLarge)})`,
    async run() {
      const r = await pair('scenarios/packeter.ts', { size: MiB }, N.packLarge, 'packeter 1 MiB');
      figures.packeter_1mib_bytes_per_s = figure('B/s', nums(r.recv, 'byteRate'));
    },
  },
  {
    key: 'messaging.transient',
    title: `snakemq Messaging: 100 B transient bob→alice (${fmtNum(N.transient)})`,
    async run() {
      const r = await pair('scenarios/messaging.ts', { size: 100 }, N.transient, 'messaging transient');
      figures.messaging_transient_100b_msgs_per_s = figure('msg/s', nums(r.recv, 'rate'));
      figures.messaging_transient_100b_delivered_per_s = figure('msg/s', nums(r.send, 'deliveredRate'));
    },
  },
  {
    key: 'messaging.persistent',
    title: `snakemq Messaging: 100 B persistent, SQLite both sides, acked (${fmtNum(N.persistent)})`,
    needs: ['storage/sqlite.ts'],
    async run() {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'snakemq-bench-'));
      try {
        const r = await pair('scenarios/messaging.ts', { size: 100, persistent: true, dir }, N.persistent, 'messaging persistent');
        figures.messaging_persistent_100b_msgs_per_s = figure('msg/s', nums(r.recv, 'rate'));
        figures.messaging_persistent_100b_delivered_per_s = figure('msg/s', nums(r.send, 'deliveredRate'));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  },
  {
    key: 'rpc.sequential',
    title: `snakemq RPC: sequential calls (${fmtNum(N.rpcSeq)})`,
    needs: ['src/rpc.ts'],
    async run() {
      const r = await pair('scenarios/rpc.ts', { mode: 'sequential' }, N.rpcSeq, 'rpc sequential');
      figures.rpc_sequential_median_us = figure('µs', nums(r.send, 'median_us'));
      figures.rpc_sequential_p99_us = figure('µs', nums(r.send, 'p99_us'));
      figures.rpc_sequential_calls_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'rpc.pickle_sequential',
    title: `snakemq RPC in pickles (as with Python snakeMQ peers): sequential calls (${fmtNum(N.rpcSeq)})`,
    needs: ['src/rpc.ts', 'src/rpc-pickle.ts'],
    async run() {
      const r = await pair('scenarios/rpc.ts', { mode: 'sequential', encoding: 'pickle' }, N.rpcSeq, 'rpc pickle sequential');
      figures.rpc_pickle_sequential_median_us = figure('µs', nums(r.send, 'median_us'));
      figures.rpc_pickle_sequential_p99_us = figure('µs', nums(r.send, 'p99_us'));
      figures.rpc_pickle_sequential_calls_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'rpc.pipelined',
    title: `snakemq RPC: pipelined calls (${fmtNum(N.rpcPipe)}, 1000 outstanding)`,
    needs: ['src/rpc.ts'],
    async run() {
      const r = await pair('scenarios/rpc.ts', { mode: 'pipelined', window: 1000 }, N.rpcPipe, 'rpc pipelined');
      figures.rpc_pipelined_calls_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'grpc.unary',
    title: `gRPC (@grpc/grpc-js): sequential unary Echo calls (${fmtNum(N.grpcUnary)})`,
    async run() {
      const r = await pair('scenarios/grpc.ts', { mode: 'unary' }, N.grpcUnary, 'grpc unary');
      figures.grpc_unary_median_us = figure('µs', nums(r.send, 'median_us'));
      figures.grpc_unary_p99_us = figure('µs', nums(r.send, 'p99_us'));
      figures.grpc_unary_calls_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'grpc.pipelined',
    title: `gRPC (@grpc/grpc-js): pipelined unary Echo calls (${fmtNum(N.grpcPipe)}, 1000 outstanding)`,
    async run() {
      const r = await pair('scenarios/grpc.ts', { mode: 'pipelined', window: 1000 }, N.grpcPipe, 'grpc pipelined');
      figures.grpc_pipelined_calls_per_s = figure('1/s', nums(r.send, 'rate'));
    },
  },
  {
    key: 'scale.hub',
    title: `scale: one hub, ${N.hubPeers.map((x) => fmtNum(x)).join(' and ')} peers in ${N.hubChildren} other processes`,
    async run() {
      for (const n of N.hubPeers) {
        const runs: HubRun[] = [];
        for (let i = 1; i <= RUNS; i++) runs.push(await hubRun(n, `run ${i}/${RUNS}`));
        const pre = n === N.hubPeers[N.hubPeers.length - 1] ? 'hub' : `hub_${n / 1000}k`;
        const col = (f: (r: HubRun) => number): number[] => runs.map(f);
        figures[`${pre}_rss_bytes_per_conn`] = figure('B', col((r) => r.rssPerConn));
        figures[`${pre}_heap_bytes_per_conn`] = figure('B', col((r) => r.heapPerConn));
        figures[`${pre}_idle_cpu_fraction`] = figure('', col((r) => r.idleCpu));
        figures[`${pre}_idle_system_cpu_fraction`] = figure('', col((r) => r.idleSystemCpu));
        figures[`${pre}_connect_all_ms`] = figure('ms', col((r) => r.connectAllMs));
        figures[`${pre}_fanout_msgs_per_s`] = figure('msg/s', col((r) => r.fanout));
        figures[`${pre}_fanin_msgs_per_s`] = figure('msg/s', col((r) => r.fanin));
        // (sender: the hub's CPU; receiver: the peers' processes' CPU, summed, up to 2 on two cores)
        const round = (x: number): number => Math.round(x * 100) / 100;
        cpuUtilization[`${pre}.fanout`] = { sender: round(median(col((r) => r.fanoutCpu.hub))), receiver: round(median(col((r) => r.fanoutCpu.peers))) };
        cpuUtilization[`${pre}.fanin`] = { sender: round(median(col((r) => r.faninCpu.peers))), receiver: round(median(col((r) => r.faninCpu.hub))) };
      }
    },
  },
  {
    key: 'memory.dedup',
    title: `memory: the receiver's dedup marks of ${fmtNum(N.dedupPeers)} peers`,
    async run() {
      const res: Event[] = [];
      for (let i = 1; i <= RUNS; i++) {
        progress(`run ${i}/${RUNS}`);
        const c = new Child('scenarios/dedup.ts', { n: N.dedupPeers }, { label: 'dedup', nodeArgs: nodeArgsFor('dedup') });
        try {
          res.push(await c.expect('result'));
        } finally {
          await c.close();
        }
      }
      figures.dedup_bytes_per_peer = figure('B', nums(res, 'bytes_per_peer'));
    },
  },
  {
    key: 'memory.queued',
    title: `memory: ${fmtNum(N.memory)} × 100 B queued for an offline peer`,
    async run() {
      const res: Event[] = [];
      for (let i = 1; i <= RUNS; i++) {
        progress(`run ${i}/${RUNS}`);
        const c = new Child('scenarios/memory.ts', { n: N.memory, size: 100 }, { label: 'memory', nodeArgs: nodeArgsFor(`memory`) });
        try {
          res.push(await c.expect('result'));
        } finally {
          await c.close();
        }
      }
      figures.memory_baseline_rss_bytes = figure('B', nums(res, 'baseline_rss'));
      figures.memory_queued_rss_bytes = figure('B', nums(res, 'queued_rss'));
      figures.memory_peak_rss_bytes = figure('B', nums(res, 'peak_rss'));
      figures.memory_queued_overhead_bytes_per_msg = figure('B/msg', nums(res, 'overhead_per_msg'));
      figures.memory_peak_overhead_bytes_per_msg = figure('B/msg', nums(res, 'peak_overhead_per_msg'));
      figures.memory_heap_overhead_bytes_per_msg = figure('B/msg', nums(res, 'heap_overhead_per_msg'));
    },
  },
];

// ------------------------------------------------------------------------------ main

const selected = scenarios.filter((s) => !ONLY || ONLY.some((o) => s.key.startsWith(o)));
stepTotal = selected.length;
const started = Date.now();
for (const s of selected) {
  stepNo++;
  stepLabel = s.title;
  const missing = (s.needs ?? []).filter((f) => !existsSync(path.join(ROOT, f)));
  if (missing.length) {
    errors[s.key] = `skipped: ${missing.join(', ')} not found`;
    progress('skipped');
    continue;
  }
  progress('starting');
  try {
    await s.run();
    if (!tty && !(JSON_OUT && !tty)) progress('done');
  } catch (err) {
    errors[s.key] = (err as Error).message;
    progress(`FAILED: ${(err as Error).message.split('\n')[0]}`);
    if (tty) process.stderr.write('\n');
  }
}
progressDone();
killAll();

const med = (k: string): number => figures[k]?.median ?? NaN;
const finite = (x: number): number | null => (Number.isFinite(x) ? x : null);
const ratios = {
  /** snakemq transient Messaging msg/s ÷ raw framed ceiling msg/s (target ≥ 0.5). */
  transient_vs_ceiling: finite(med('messaging_transient_100b_msgs_per_s') / med('ceiling_framed_100b_msgs_per_s')),
  /** snakemq transient Messaging msg/s ÷ zeromq PUSH/PULL 100 B msg/s (target ≥ 5). */
  transient_vs_zeromq: finite(med('messaging_transient_100b_msgs_per_s') / med('zeromq_pushpull_100b_msgs_per_s')),
  /** snakemq Packeter 1 MiB bytes/s ÷ raw 64 KiB bulk bytes/s (target ≥ 0.8). */
  large_vs_bulk_ceiling: finite(med('packeter_1mib_bytes_per_s') / med('ceiling_bulk_64k_bytes_per_s')),
  /** snakemq RPC sequential median latency ÷ zeromq REQ/REP median latency (target < 1). */
  rpc_median_vs_zeromq: finite(med('rpc_sequential_median_us') / med('zeromq_reqrep_median_us')),
  /** Persistent messages per second (receiver side; target ≥ 100,000). */
  persistent_msgs_per_s: finite(med('messaging_persistent_100b_msgs_per_s')),
  /** Pipelined RPC calls per second (target ≥ 150,000). */
  rpc_pipelined_calls_per_s: finite(med('rpc_pipelined_calls_per_s')),
  /** RSS bytes held per queued 100-byte message beyond its body (target < 300). */
  queued_overhead_bytes_per_msg: finite(med('memory_queued_overhead_bytes_per_msg')),
  /** snakemq transient msg/s ÷ the framed ceiling whose receiver makes a view per frame (target ≥ 0.33). */
  transient_vs_views_ceiling: finite(med('messaging_transient_100b_msgs_per_s') / med('ceiling_framed_views_100b_msgs_per_s')),
  /** RPC sequential median latency ÷ raw `net` ping-pong median latency (target ≤ 1.5). */
  rpc_median_vs_pingpong: finite(med('rpc_sequential_median_us') / med('ceiling_pingpong_median_us')),
  /** RPC sequential median latency ÷ gRPC unary median latency (target ≤ 0.5). */
  rpc_median_vs_grpc: finite(med('rpc_sequential_median_us') / med('grpc_unary_median_us')),
  /** Pipelined RPC calls/s ÷ pipelined gRPC calls/s (target ≥ 3). */
  rpc_pipelined_vs_grpc: finite(med('rpc_pipelined_calls_per_s') / med('grpc_pipelined_calls_per_s')),
  /** RSS bytes per idle connection at the hub, largest N (target ≤ 16 KiB). */
  hub_rss_bytes_per_conn: finite(med('hub_rss_bytes_per_conn')),
  /** The hub's CPU time ÷ wall time while idle, largest N (target ≤ 0.02). */
  hub_idle_cpu_fraction: finite(med('hub_idle_cpu_fraction')),
  /** All peers identified at the hub after a cold start of the connectors, ms, largest N (target ≤ 10,000). */
  hub_connect_all_ms: finite(med('hub_connect_all_ms')),
  /** Hub fan-out msg/s ÷ single-pair transient msg/s (target ≥ 0.5). */
  hub_fanout_vs_transient: finite(med('hub_fanout_msgs_per_s') / med('messaging_transient_100b_msgs_per_s')),
};

const result = {
  suite: 'snakemq-bench',
  version: 1,
  quick: QUICK,
  runs: RUNS,
  date: new Date().toISOString(),
  seconds: (Date.now() - started) / 1000,
  machine: { node: process.version, platform: `${os.platform()} ${os.release()}`, cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? '', loadavg: os.loadavg() },
  sizes: N,
  figures,
  ratios,
  cpu_utilization: cpuUtilization,
  errors,
};

if (JSON_OUT) {
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
} else {
  const unitFmt = (f: Figure): [string, (x: number) => string] => {
    if (f.unit === 'B/s') return ['MiB/s', (x) => fmtNum(x / MiB, 0)];
    if (f.unit === 'B' && f.median < MiB) return ['B', (x) => fmtNum(x, 0)];
    if (f.unit === 'B') return ['MiB', (x) => fmtNum(x / MiB, 1)];
    if (f.unit === '') return ['', (x) => fmtNum(x, 4)];
    if (f.unit === 'µs' || f.unit === 'B/msg') return [f.unit, (x) => fmtNum(x, 1)];
    return [f.unit, (x) => fmtNum(x, 0)];
  };
  const rows: string[][] = [['figure', 'median', 'min', 'max', 'unit']];
  for (const [k, f] of Object.entries(figures)) {
    const [u, fmt] = unitFmt(f);
    rows.push([k, fmt(f.median), fmt(f.min), fmt(f.max), u]);
  }
  const targets: Record<keyof typeof ratios, string> = {
    transient_vs_ceiling: '≥ 0.5',
    transient_vs_zeromq: '≥ 5',
    large_vs_bulk_ceiling: '≥ 0.8',
    rpc_median_vs_zeromq: '< 1',
    persistent_msgs_per_s: '≥ 100,000',
    rpc_pipelined_calls_per_s: '≥ 150,000',
    queued_overhead_bytes_per_msg: '< 300',
    transient_vs_views_ceiling: '≥ 0.33',
    rpc_median_vs_pingpong: '≤ 1.5',
    rpc_median_vs_grpc: '≤ 0.5',
    rpc_pipelined_vs_grpc: '≥ 3',
    hub_rss_bytes_per_conn: '≤ 16,384',
    hub_idle_cpu_fraction: '≤ 0.02',
    hub_connect_all_ms: '≤ 10,000',
    hub_fanout_vs_transient: '≥ 0.5',
  };
  const table = (rs: string[][]): string => {
    const w = rs[0].map((_, i) => Math.max(...rs.map((r) => r[i].length)));
    return rs.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ')).join('\n');
  };
  const out: string[] = [];
  out.push(`snakemq benchmarks${QUICK ? ' (quick)' : ''}: median of ${RUNS} runs, ${result.machine.cpus} CPUs, Node ${process.version}, ${result.seconds.toFixed(0)} s`);
  out.push('');
  out.push(table(rows));
  out.push('');
  const rrows: string[][] = [['ratio', 'value', 'target']];
  for (const [k, v] of Object.entries(ratios)) {
    rrows.push([k, v === null ? 'n/a' : Math.abs(v) >= 100 ? fmtNum(v, 0) : fmtNum(v, 3), targets[k as keyof typeof ratios]]);
  }
  out.push(table(rrows));
  for (const [k, e] of Object.entries(errors)) out.push(`\n${k}: ${e}`);
  process.stdout.write(out.join('\n') + '\n');
}
process.exitCode = Object.keys(errors).some((k) => !errors[k].startsWith('skipped')) ? 1 : 0;
