/**
 * Baseline: gRPC (`@grpc/grpc-js`, the `Echo` method of bench/proto/echo.proto loaded with
 * `@grpc/proto-loader`), insecure channel on 127.0.0.1, what a Node user picks for RPC today.
 * The server (receiver role) returns each request's message; the client (sender role) calls
 * `Echo({ i })`:
 *  - mode "unary": one call at a time; the client reports round-trip latencies.
 *  - mode "pipelined": `window` calls outstanding at all times; the client reports calls/s.
 * params: { role, mode, window?, port? }; run command: { n } calls.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';
import { pipelined } from '../lib/pipeline.js';
import { latencyStats } from '../lib/stats.js';

installCrashHandlers();

interface EchoMessage {
  i: number;
}
type EchoClient = grpc.Client & {
  Echo(req: EchoMessage, cb: (err: grpc.ServiceError | null, res?: EchoMessage) => void): grpc.ClientUnaryCall;
};

const def = protoLoader.loadSync(fileURLToPath(new URL('../proto/echo.proto', import.meta.url)), { keepCase: true, defaults: true });
const pkg = grpc.loadPackageDefinition(def) as unknown as {
  bench: { Bench: grpc.ServiceClientConstructor };
};
const Bench = pkg.bench.Bench;

if (params.role === 'receiver') {
  const server = new grpc.Server();
  server.addService(Bench.service, {
    Echo: (call: grpc.ServerUnaryCall<EchoMessage, EchoMessage>, cb: grpc.sendUnaryData<EchoMessage>) => cb(null, call.request),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  report('ready', { port });
  void serve(
    () => {
      report('armed');
      report('result', {});
    },
    () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  );
} else {
  const client = new Bench(`127.0.0.1:${params.port}`, grpc.credentials.createInsecure()) as unknown as EchoClient;
  const echo = (i: number): Promise<number> =>
    new Promise((resolve, reject) => client.Echo({ i }, (err, res) => (err ? reject(err) : resolve(res!.i))));
  if ((await echo(42)) !== 42) throw new Error('Echo returned something else');
  report('ready');
  const window = (params.window as number) ?? 1000;
  void serve(
    async (cmd) => {
      const n = cmd.n as number;
      if (params.mode === 'unary') {
        const lat = new Float64Array(n);
        const t0 = nowMs();
        for (let i = 0; i < n; i++) {
          const s = nowMs();
          const r = await echo(i);
          lat[i] = nowMs() - s;
          if (r !== i) throw new Error(`Echo(${i}) returned ${r}`);
        }
        const ms = nowMs() - t0;
        report('done', { ms, rate: (n / ms) * 1000, ...latencyStats(lat) });
      } else {
        const t0 = nowMs();
        await pipelined(echo, n, window);
        const ms = nowMs() - t0;
        report('done', { ms, rate: (n / ms) * 1000 });
      }
    },
    () => client.close(),
  );
}
