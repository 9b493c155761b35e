/**
 * snakemq RPC: RpcClient (sender role, ident "client") calls `bench.echo(i)` on an RpcServer
 * (receiver role, ident "server"), transient messages, default MessagePack codec (or, with
 * `encoding: 'pickle'`, pickles as with a Python snakeMQ peer; the server answers in kind).
 *  - mode "sequential": one call at a time; the client reports round-trip latencies.
 *  - mode "pipelined": `window` calls outstanding at all times; the client reports calls/s.
 * params: { role, mode, window?, encoding?, port? }; run command: { n } calls.
 */
import { once } from 'node:events';
import { Link, Messaging, Packeter } from '../../src/index.js';
import { ReceiveHook } from '../../src/receive-hook.js';
import { RpcClient, RpcServer } from '../../src/rpc.js';
import { installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';
import { pipelined } from '../lib/pipeline.js';
import { latencyStats } from '../lib/stats.js';

installCrashHandlers();
const link = new Link();
const packeter = new Packeter(link);

if (params.role === 'receiver') {
  const messaging = new Messaging('server', '', packeter);
  const hook = new ReceiveHook(messaging);
  const server = new RpcServer(hook);
  server.registerObject({ echo: (x: unknown) => x }, 'bench');
  const { port } = await link.addListener({ port: 0 });
  report('ready', { port });
  void serve(
    () => {
      report('armed');
      report('result', {});
    },
    async () => {
      await server.close();
      await messaging.close();
      await link.close();
    },
  );
} else {
  const messaging = new Messaging('client', '', packeter);
  const hook = new ReceiveHook(messaging);
  const client = new RpcClient(hook, params.encoding === 'pickle' ? { encoding: 'pickle' } : {});
  const proxy = client.getProxy<{ echo(x: number): Promise<number> }>('server', 'bench');
  const connected = once(messaging, 'connect');
  link.addConnector({ host: '127.0.0.1', port: params.port as number });
  await connected;
  if ((await proxy.echo(42)) !== 42) throw new Error('echo returned something else');
  report('ready');
  const window = (params.window as number) ?? 1000;
  void serve(
    async (cmd) => {
      const n = cmd.n as number;
      if (params.mode === 'sequential') {
        const lat = new Float64Array(n);
        const t0 = nowMs();
        for (let i = 0; i < n; i++) {
          const s = nowMs();
          const r = await proxy.echo(i);
          lat[i] = nowMs() - s;
          if (r !== i) throw new Error(`echo(${i}) returned ${r}`);
        }
        const ms = nowMs() - t0;
        report('done', { ms, rate: (n / ms) * 1000, ...latencyStats(lat) });
      } else {
        const t0 = nowMs();
        await pipelined((i) => proxy.echo(i), n, window);
        const ms = nowMs() - t0;
        report('done', { ms, rate: (n / ms) * 1000 });
      }
    },
    async () => {
      client.close();
      await messaging.close();
      await link.close();
    },
  );
}
