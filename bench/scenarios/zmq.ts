/**
 * Peer: zeromq (npm `zeromq`, libzmq) on tcp://127.0.0.1.
 *  - mode "pushpull": PUSH (sender) → PULL (receiver), messages of `size` bytes, one
 *    `await send()` per message (zeromq.js allows one send in progress per socket).
 *  - mode "reqrep": REQ (sender) ↔ REP (receiver), sequential `size`-byte round trips; the
 *    requester reports latencies.
 * params: { role, mode, size, port? }; run command: { n }.
 */
import * as zmq from 'zeromq';
import { RunCounter, installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';
import { latencyStats } from '../lib/stats.js';

installCrashHandlers();
const mode = params.mode as 'pushpull' | 'reqrep';
const size = params.size as number;

function portOf(endpoint: string | null): number {
  return Number(/:(\d+)$/.exec(endpoint ?? '')?.[1]);
}

if (params.role === 'receiver') {
  if (mode === 'pushpull') {
    const pull = new zmq.Pull({ receiveHighWaterMark: 10_000 });
    await pull.bind('tcp://127.0.0.1:*');
    const counter = new RunCounter();
    void (async () => {
      for await (const [msg] of pull) counter.add(1, msg.length);
    })();
    report('ready', { port: portOf(pull.lastEndpoint) });
    void serve(async (cmd) => {
      const done = counter.arm(cmd.n as number);
      report('armed');
      await done;
      report('result', counter.result());
    }, () => pull.close());
  } else {
    const rep = new zmq.Reply();
    await rep.bind('tcp://127.0.0.1:*');
    void (async () => {
      for await (const [msg] of rep) await rep.send(msg);
    })();
    report('ready', { port: portOf(rep.lastEndpoint) });
    void serve(() => {
      report('armed');
      report('result', {});
    }, () => rep.close());
  }
} else {
  const endpoint = `tcp://127.0.0.1:${params.port}`;
  if (mode === 'pushpull') {
    const push = new zmq.Push({ sendHighWaterMark: 10_000 });
    push.connect(endpoint);
    const body = Buffer.alloc(size, 0x61);
    // make sure the connection is up before the first timed run
    await push.send(Buffer.alloc(0));
    report('ready');
    void serve(async (cmd) => {
      const n = cmd.n as number;
      const t0 = nowMs();
      for (let i = 0; i < n; i++) await push.send(body);
      report('done', { ms: nowMs() - t0 });
    }, () => push.close());
  } else {
    const req = new zmq.Request();
    req.connect(endpoint);
    const body = Buffer.alloc(size, 0x61);
    await req.send(body);
    await req.receive();
    report('ready');
    void serve(async (cmd) => {
      const n = cmd.n as number;
      const lat = new Float64Array(n);
      const t0 = nowMs();
      for (let i = 0; i < n; i++) {
        const s = nowMs();
        await req.send(body);
        await req.receive();
        lat[i] = nowMs() - s;
      }
      const ms = nowMs() - t0;
      report('done', { ms, rate: (n / ms) * 1000, ...latencyStats(lat) });
    }, () => req.close());
  }
}
