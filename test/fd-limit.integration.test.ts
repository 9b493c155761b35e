/**
 * Out of file descriptors: a hub started with `ulimit -n 64` reports ERR_TOO_MANY_OPEN_FILES
 * (typed, with the syscall) when accepting and when connecting, does not crash, and takes
 * connections again once descriptors are free.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeIdentification, encodeProtocolVersion } from '../src/protocol.js';
import { killAllChildren, spawnFixture } from './helpers/children.js';
import { until } from './helpers/wait.js';

const sockets: net.Socket[] = [];
const servers: net.Server[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) s.close();
  await killAllChildren();
});

function framed(payload: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(payload.length);
  return Buffer.concat([h, payload]);
}

describe('running out of file descriptors', () => {
  it('is a typed error on accept and on connect, the process survives and the listener takes connections again', async () => {
    // where the hub's connectors go once it ran out on accept (they run out too)
    const target = net.createServer((s) => sockets.push(s));
    servers.push(target);
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
    const targetPort = (target.address() as net.AddressInfo).port;

    const child = spawnFixture('fd-limit-child.ts', [String(targetPort)], [], { fdLimit: 64 });
    const port = (JSON.parse(await child.waitLine((l) => l.includes('"listening"'))) as { listening: number }).listening;
    const events = (): Array<Record<string, unknown>> =>
      child.lines.filter((l) => l.startsWith('{"error"')).map((l) => JSON.parse(l) as Record<string, unknown>);

    // Far more connections than the hub has descriptors left.
    const flood: net.Socket[] = [];
    for (let i = 0; i < 80; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => {});
      flood.push(s);
      sockets.push(s);
    }
    await until(() => events().some((e) => e.syscall === 'accept') && events().some((e) => e.syscall === 'connect'), 20_000);
    for (const e of events()) {
      expect(e).toMatchObject({ error: 'ERR_TOO_MANY_OPEN_FILES', name: 'TooManyOpenFilesError', errno: 'EMFILE', snakemq: true });
    }
    expect(child.exitCode).toBeUndefined();

    // Descriptors free again: a peer connects and identifies.
    for (const s of flood) s.destroy();
    await new Promise((r) => setTimeout(r, 300));
    const late = net.connect(port, '127.0.0.1');
    late.on('error', () => {});
    sockets.push(late);
    await new Promise((r) => late.once('connect', r));
    late.write(Buffer.concat([framed(encodeProtocolVersion()), framed(encodeIdentification('late'))]));
    await child.waitLine((l) => l === '{"connect":"late"}');
    expect(child.exitCode).toBeUndefined();
  });
});
