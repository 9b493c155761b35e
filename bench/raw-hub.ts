/**
 * Raw `net` floors for scale.hub (no snakemq code): what plain Node sockets cost on this machine
 * for the hub's two patterns. Not part of run.ts; run by hand, alternating with the scenario.
 *
 *   tsx bench/raw-hub.ts idle [peers=5000] [seconds=30]
 *     a server process with `peers` plain TCP connections from 4 client processes; each client
 *     connection writes a 5-byte frame every 10 s (the connections made over 3 s, as in a
 *     reconnect storm), the server writes a 5-byte frame back per read: the hub's keepalive
 *     traffic. Prints the server's CPU time ÷ wall time over `seconds`.
 *   tsx bench/raw-hub.ts fanout [peers=5000] [rounds=40] [ack|noack]
 *     one sender process with `peers` connections to 4 receiver processes writes one 104-byte
 *     frame (4-byte prefix + 100 B) per connection per round, yielding a turn (`setImmediate`)
 *     every 1000 writes, as scale.hub's fan-out does; with `ack` each receiver writes a 21-byte
 *     frame back per frame received (as a snakemq peer acknowledges). Prints frames/s from the
 *     first write until every receiver has all (after a warm-up of a quarter of the rounds).
 */
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';

const K = 4;
const [role, ...args] = process.argv.slice(2);
const self = process.argv[1];
const child = (a: string[]) => fork(self, a, { execArgv: ['--import', 'tsx'] });
const message = <T>(k: ReturnType<typeof fork>): Promise<T> => new Promise((r) => k.once('message', r as (m: unknown) => void));
const clockMs = (): number => performance.timeOrigin + performance.now();

function cpuMs(pid: number): { all: number; system: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const tick = 10; // ms per clock tick (USER_HZ 100)
  return { all: (Number(f[11]) + Number(f[12])) * tick, system: Number(f[12]) * tick };
}

if (role === 'idle-server') {
  const srv = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('data', () => s.write(Buffer.from([0, 0, 0, 1, 5])));
  });
  srv.listen(0, '127.0.0.1', () => process.send!({ port: (srv.address() as net.AddressInfo).port }));
} else if (role === 'idle-client') {
  const [port, n] = args.map(Number);
  for (let i = 0; i < n; i++) {
    setTimeout(() => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.setNoDelay(true);
        const ping = (): void => {
          s.write(Buffer.from([0, 0, 0, 1, 4]));
          setTimeout(ping, 10_000);
        };
        setTimeout(ping, 10_000);
      });
      s.on('data', () => {});
    }, (i * 3000) / n);
  }
} else if (role === 'fan-receiver') {
  const ack = args[0] === 'ack';
  let got = 0;
  let want = 0;
  net
    .createServer((s) => {
      s.setNoDelay(true);
      let partial = 0;
      s.on('data', (d) => {
        const bytes = partial + d.length;
        const frames = Math.floor(bytes / 104);
        partial = bytes % 104;
        got += frames;
        if (ack && frames > 0) s.write(Buffer.alloc(21 * frames));
        if (want > 0 && got >= want) {
          want = 0;
          process.send!({ done: clockMs() });
        }
      });
    })
    .listen(0, '127.0.0.1', function (this: net.Server) {
      process.send!({ port: (this.address() as net.AddressInfo).port });
    });
  process.on('message', (m: { want?: number }) => {
    got = 0;
    want = m.want ?? 0;
  });
} else if (role === 'idle') {
  const n = Number(args[0] ?? 5000);
  const seconds = Number(args[1] ?? 30);
  const server = child(['idle-server']);
  const { port } = await message<{ port: number }>(server);
  const kids = Array.from({ length: K }, () => child(['idle-client', String(port), String(Math.ceil(n / K))]));
  await new Promise((r) => setTimeout(r, 5000)); // connected, first pings 10 s after
  const c0 = cpuMs(server.pid!);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const c1 = cpuMs(server.pid!);
  const wall = performance.now() - t0;
  console.log(JSON.stringify({ pattern: 'idle', peers: n, seconds, cpu: (c1.all - c0.all) / wall, system: (c1.system - c0.system) / wall }));
  for (const k of [...kids, server]) k.kill();
  process.exit(0);
} else if (role === 'fanout') {
  const n = Number(args[0] ?? 5000);
  const rounds = Number(args[1] ?? 40);
  const mode = args[2] === 'ack' ? 'ack' : 'noack';
  const kids = Array.from({ length: K }, () => child(['fan-receiver', mode]));
  const ports = (await Promise.all(kids.map((k) => message<{ port: number }>(k)))).map((m) => m.port);
  const socks = await Promise.all(
    Array.from({ length: n }, (_, i) => new Promise<net.Socket>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: ports[i % K] }, () => resolve(s));
      s.setNoDelay(true);
      s.on('data', () => {});
    })),
  );
  const frame = Buffer.alloc(104, 0x61);
  frame.writeUInt32BE(100, 0);
  const yieldOnce = (): Promise<void> => new Promise((r) => setImmediate(r));
  for (const r of [Math.max(1, Math.ceil(rounds / 4)), rounds]) {
    kids.forEach((k, i) => k.send({ want: r * Math.ceil((n - i) / K) }));
    const done = Promise.all(kids.map((k) => message<{ done: number }>(k)));
    const t0 = clockMs();
    const cpu0 = process.cpuUsage();
    for (let round = 0; round < r; round++) {
      for (let i = 0; i < n; i++) {
        socks[i].write(frame);
        if (i % 1000 === 999) await yieldOnce();
      }
      await yieldOnce();
    }
    const t1 = Math.max(...(await done).map((m) => m.done));
    const cpu = process.cpuUsage(cpu0);
    if (r === rounds) {
      console.log(JSON.stringify({ pattern: 'fanout', peers: n, rounds: r, mode, frames_per_s: Math.round((n * r * 1000) / (t1 - t0)), sender_cpu: (cpu.user + cpu.system) / 1000 / (t1 - t0) }));
    }
  }
  for (const k of kids) k.kill();
  process.exit(0);
} else {
  console.error('usage: tsx bench/raw-hub.ts idle [peers] [seconds] | fanout [peers] [rounds] [ack|noack]');
  process.exit(2);
}
