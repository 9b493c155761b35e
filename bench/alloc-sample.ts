/**
 * Bytes allocated per message (transient) or per call (pipelined RPC), by allocation site:
 * V8's sampling heap profiler, counting objects that were collected again too (which is what
 * the garbage collector pays for). Both peers run in this one process over loopback, so the
 * figures are both sides together. Allocation is far steadier than time on a noisy machine:
 * use it to see what a change does to garbage.
 *
 *   tsx bench/alloc-sample.ts transient|rpc [--n 50000] [--top 30] [--stack]
 *
 * `--stack` keys each site by its function and two callers. Sites show as `function
 * file:line:column` of the code as tsx compiled it (line 0, the column within the file).
 */
import { once } from 'node:events';
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { Link, Message, Messaging, Packeter } from '../src/index.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { RpcClient, RpcServer } from '../src/rpc.js';
import { pipelined } from './lib/pipeline.js';

const { values: opts, positionals } = parseArgs({
  options: {
    n: { type: 'string', default: '50000' },
    top: { type: 'string', default: '30' },
    stack: { type: 'boolean', default: false },
  },
  allowPositionals: true,
});
const scenario = positionals[0];
if (scenario !== 'transient' && scenario !== 'rpc') {
  console.error('usage: tsx bench/alloc-sample.ts transient|rpc [--n 50000] [--top 30] [--stack]');
  process.exit(2);
}
const N = Number(opts.n);

interface SampleNode {
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  selfSize: number;
  children: SampleNode[];
}

const links: Link[] = [];
const closers: (() => unknown)[] = [];

/** Two Messaging peers connected over loopback ('client' connects to 'server'). */
async function peers(): Promise<{ server: Messaging; client: Messaging }> {
  const sl = new Link();
  const cl = new Link();
  links.push(sl, cl);
  const server = new Messaging('server', '', new Packeter(sl));
  const client = new Messaging('client', '', new Packeter(cl), { queuePolicy: 'block' });
  closers.push(() => client.close(), () => server.close());
  const { port } = await sl.addListener({ host: '127.0.0.1', port: 0 });
  const connected = once(client, 'connect');
  cl.addConnector({ host: '127.0.0.1', port });
  await connected;
  return { server, client };
}

let run: (n: number) => Promise<void>;
if (scenario === 'transient') {
  // as the benchmark's sender: batches of 1000 sendMessage calls of one shared body
  const { server, client } = await peers();
  const body = Buffer.alloc(100, 0x61);
  let got = 0;
  let target = 0;
  let done: () => void = () => {};
  server.on('message', () => {
    if (++got === target) done();
  });
  run = async (n) => {
    got = 0;
    target = n;
    const all = new Promise<void>((r) => (done = r));
    let pending: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      pending.push(client.sendMessage('server', new Message(body)));
      if (pending.length >= 1000) {
        await Promise.all(pending);
        pending = [];
        await new Promise(setImmediate);
      }
    }
    await Promise.all(pending);
    await all;
  };
} else {
  // as the benchmark's pipelined RPC: echo(i) with 1000 calls outstanding
  const { server, client } = await peers();
  const rpcServer = new RpcServer(new ReceiveHook(server));
  rpcServer.registerObject({ echo: (x: unknown) => x }, 'bench');
  const rpcClient = new RpcClient(new ReceiveHook(client));
  closers.unshift(() => rpcClient.close(), () => rpcServer.close());
  const proxy = rpcClient.getProxy<{ echo(x: number): Promise<number> }>('server', 'bench');
  run = (n) => pipelined((i) => proxy.echo(i), n, 1000);
}

await run(N); // warm-up: optimized code, grown buffers and windows
const session = new Session();
session.connect();
await session.post('HeapProfiler.enable');
await session.post('HeapProfiler.startSampling', {
  samplingInterval: 256,
  includeObjectsCollectedByMajorGC: true,
  includeObjectsCollectedByMinorGC: true,
});
await run(N);
const { profile } = (await session.post('HeapProfiler.stopSampling')) as { profile: { head: SampleNode } };
session.disconnect();

const bySite = new Map<string, number>();
let total = 0;
const walk = (node: SampleNode, callers: string[]): void => {
  const f = node.callFrame;
  const site = `${f.functionName || '(anonymous)'} ${path(f.url)}:${f.lineNumber}:${f.columnNumber}`;
  if (node.selfSize > 0) {
    const key = opts.stack ? [site, ...callers.slice(0, 2)].join(' < ') : site;
    bySite.set(key, (bySite.get(key) ?? 0) + node.selfSize);
    total += node.selfSize;
  }
  for (const child of node.children) walk(child, [site, ...callers]);
};
walk(profile.head, []);

const unit = scenario === 'transient' ? 'message' : 'call';
console.log(`${scenario}: ${(total / N).toFixed(0)} bytes allocated per ${unit} (sampled, both peers)`);
for (const [site, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, Number(opts.top))) {
  console.log(`${(bytes / N).toFixed(0).padStart(7)}  ${site}`);
}

for (const close of closers) await close();
for (const link of links) await link.close();

function path(url: string): string {
  return url.replace(/^file:\/\//, '').split('/').slice(-2).join('/');
}
