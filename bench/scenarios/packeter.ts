/**
 * snakemq Packeter over Link: `size`-byte packets, sender honours `writable()`/`drain`.
 * params: { role, size, port? }; run command: { n } packets.
 */
import { once } from 'node:events';
import { Link, Packeter } from '../../src/index.js';
import { RunCounter, installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';

installCrashHandlers();
const size = params.size as number;
const link = new Link();
const packeter = new Packeter(link);

if (params.role === 'receiver') {
  const counter = new RunCounter();
  packeter.on('packet', (_c, payload) => counter.add(1, payload.length));
  const { port } = await link.addListener({ port: 0 });
  report('ready', { port });
  void serve(async (cmd) => {
    const done = counter.arm(cmd.n as number);
    report('armed');
    await done;
    report('result', counter.result());
  }, () => link.close());
} else {
  const connected = once(packeter, 'connect');
  link.addConnector({ host: '127.0.0.1', port: params.port as number });
  const [connId] = (await connected) as [string];
  const body = Buffer.alloc(size, 0x61);
  report('ready');
  void serve(async (cmd) => {
    const n = cmd.n as number;
    const t0 = nowMs();
    let sent = 0;
    while (sent < n) {
      while (sent < n && packeter.writable(connId)) {
        packeter.sendPacket(connId, body);
        sent++;
      }
      if (sent < n) await once(packeter, 'drain');
    }
    report('done', { ms: nowMs() - t0 });
  }, () => link.close());
}
