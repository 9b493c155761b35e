/**
 * Memory: a sender (bob) queues `n` transient messages of `size` bytes for alice, who is
 * offline (never seen, not connected; bob has a connector retrying against a closed port).
 * Every message gets its own body buffer, as an application's would.
 *
 * Reported (bytes):
 *  - baseline_rss: RSS after setup and a full GC, before queuing;
 *  - queued_rss: RSS with all `n` messages queued, after a full GC;
 *  - peak_rss: the process's maximum RSS (getrusage), GC garbage included;
 *  - overhead_per_msg = (queued_rss − baseline_rss) / n − size: bytes held per queued message
 *    beyond its body;
 *  - heap_overhead_per_msg: the same from V8 heapUsed + external instead of RSS.
 * params: { n, size, port }.
 */
import * as net from 'node:net';
import { Link, Message, Messaging, Packeter } from '../../src/index.js';
import { fullGc, installCrashHandlers, nowMs, params, report } from '../lib/child.js';

installCrashHandlers();
const n = params.n as number;
const size = params.size as number;

// a port with nobody listening: bind, read it, close
const deadPort = await new Promise<number>((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address() as net.AddressInfo;
    s.close(() => resolve(port));
  });
});
const link = new Link();
link.on('error', () => {});
const bob = new Messaging('bob', '', new Packeter(link), { queueLimit: n + 1, queueLimitBytes: 2 ** 40 });
link.addConnector({ host: '127.0.0.1', port: deadPort, reconnectInterval: 200, reconnectMaxInterval: 1000 });
await bob.ready;
// warm the send path so its code and first allocations are in the baseline
const warm = new Messaging('carol', '', new Packeter(new Link()), { queueLimit: 1000 });
for (let i = 0; i < 500; i++) await warm.sendMessage('dave', new Message(Buffer.alloc(size)));
await warm.close();

fullGc();
await new Promise((r) => setTimeout(r, 50));
fullGc();
const m0 = process.memoryUsage();
const t0 = nowMs();
const window = 1000;
let pending: Promise<void>[] = [];
for (let i = 0; i < n; i++) {
  const body = Buffer.allocUnsafe(size);
  body.writeUInt32BE(i, 0);
  pending.push(bob.sendMessage('alice', new Message(body)));
  if (pending.length >= window) {
    await Promise.all(pending);
    pending = [];
  }
}
await Promise.all(pending);
const queueMs = nowMs() - t0;
if (bob.queueSize('alice') !== n) throw new Error(`queued ${bob.queueSize('alice')} of ${n}`);
fullGc();
await new Promise((r) => setTimeout(r, 50));
fullGc();
const m1 = process.memoryUsage();
const peak = process.resourceUsage().maxRSS * 1024;
report('result', {
  n,
  size,
  baseline_rss: m0.rss,
  queued_rss: m1.rss,
  peak_rss: peak,
  overhead_per_msg: (m1.rss - m0.rss) / n - size,
  peak_overhead_per_msg: (peak - m0.rss) / n - size,
  heap_overhead_per_msg: (m1.heapUsed + m1.external - m0.heapUsed - m0.external) / n - size,
  queue_ms: queueMs,
});
await bob.close();
await link.close();
process.exit(0);
