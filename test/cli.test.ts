// The `snakemq` command-line tool, driven as real child processes through bin/snakemq.js.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { EXTENSION_VERSION, FEATURE_ACKS, encodeHello, encodeIdentification, encodeProtocolVersion } from '../src/protocol.js';
import { makeTestCerts } from './helpers/certs.js';
import { packet } from './helpers/mutator.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { waitFor } from './helpers/wait.js';

const BIN = fileURLToPath(new URL('../bin/snakemq.js', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const HEX32 = /^[0-9a-f]{32}$/;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running CLI process: stdout read line by line, stderr collected. */
class Cli {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  stderr = '';
  readonly exited: Promise<Exit>;
  private waiters: Array<() => void> = [];
  private read = 0;
  private closed = false;

  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    const base = { ...process.env };
    delete base.SNAKEMQ_DEBUG;
    this.child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: { ...base, SNAKEMQ_CLI_SOURCE: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(this.child);
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    const stdoutDone = new Promise<void>((resolve) => {
      createInterface({ input: this.child.stdout! })
        .on('line', (l) => {
          this.lines.push(l);
          this.wake();
        })
        .on('close', () => {
          this.closed = true;
          this.wake();
          resolve();
        });
    });
    this.exited = new Promise<Exit>((resolve) => {
      this.child.once('exit', (code, signal) => {
        children.delete(this.child);
        void stdoutDone.then(() => resolve({ code, signal }));
      });
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The next stdout line, parsed as JSON (every stdout line must be JSON). */
  async next(timeoutMs = 15_000): Promise<any> {
    const end = Date.now() + timeoutMs;
    while (this.read >= this.lines.length) {
      if (this.closed) throw new Error(`stdout closed; stderr:\n${this.stderr}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`no stdout line within ${timeoutMs} ms; stderr:\n${this.stderr}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return JSON.parse(this.lines[this.read++]);
  }

  /** Wait for the exit (bounded: the child is killed after `timeoutMs`, failing the test). */
  async exit(timeoutMs = 20_000): Promise<Exit> {
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      const e = await this.exited;
      if (e.signal === 'SIGKILL') throw new Error(`did not exit within ${timeoutMs} ms; stderr:\n${this.stderr}`);
      return e;
    } finally {
      clearTimeout(t);
    }
  }

  /** Every stdout line as JSON. */
  json(): any[] {
    return this.lines.map((l) => JSON.parse(l));
  }
}

const children = new Set<ChildProcess>();
const tmpDirs: string[] = [];

afterEach(async () => {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
  await closeAllPeers();
  for (const d of tmpDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'snakemq-cli-'));
  tmpDirs.push(d);
  return d;
}

/** Run the CLI to completion. */
async function run(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 20_000): Promise<Exit & { out: any[]; stdout: string; stderr: string }> {
  const c = new Cli(args, env);
  const e = await c.exit(timeoutMs);
  return {
    ...e,
    /** stdout as JSON lines (throws if any line is not JSON) */
    get out(): any[] {
      return c.json();
    },
    stdout: c.lines.join('\n'),
    stderr: c.stderr,
  };
}

/** Start `listen` and resolve once it printed its port. */
async function startListen(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ cli: Cli; port: number }> {
  const cli = new Cli(['listen', '--port', '0', ...args], env);
  const first = await cli.next();
  expect(first).toEqual({ event: 'listening', port: expect.any(Number) });
  return { cli, port: first.port };
}

/** A loopback port nobody listens on (bound, then released). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

beforeAll(async () => {
  // The first run from source compiles the bundle; do it once here so no test pays for it.
  const r = await run(['--version'], {}, 60_000);
  expect(r.code).toBe(0);
}, 90_000);

describe('snakemq CLI: help and arguments', () => {
  it('prints help for every command on stdout and exits 0', async () => {
    for (const cmd of ['listen', 'send', 'queues', 'bench']) {
      const r = await run([cmd, '--help']);
      expect(r.code, cmd).toBe(0);
      expect(r.stdout, cmd).toContain(`Usage: snakemq ${cmd}`);
    }
    const top = await run(['--help']);
    expect(top.code).toBe(0);
    for (const cmd of ['listen', 'send', 'queues', 'bench']) expect(top.stdout).toContain(cmd);
    const send = await run(['send', '-h']);
    expect(send.stdout).toContain('{"event":"delivered","to":PEER,"uuid":"<32 hex>"}');
  });

  it('runs through the launcher without forcing the source (in a checkout: the bundle)', async () => {
    const c = new Cli(['--version'], { SNAKEMQ_CLI_SOURCE: '' });
    expect(await c.exit()).toEqual({ code: 0, signal: null });
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(c.lines).toEqual([pkg.version]);
  });

  it("runs through tsx's loader too (SNAKEMQ_CLI_SOURCE=tsx), lazily loading the SQLite backend", async () => {
    const db = join(tempDir(), 'q.db');
    const port = await freePort();
    const stored = await run(['send', '--ident', 'a', '--connect', `127.0.0.1:${port}`, '--to', 'b', '--persistent', '--storage', `sqlite:${db}`, '--timeout', '200', 'xy']);
    expect(stored.code).toBe(1);
    const q = await run(['queues', '--storage', `sqlite:${db}`], { SNAKEMQ_CLI_SOURCE: 'tsx' });
    expect(q.stderr).toBe('');
    expect(q.out).toEqual([{ queue: 'b', count: 1, bytes: 2, minTtl: null, maxTtl: null }]);
  });

  const bad: Array<[string, string[], RegExp]> = [
    ['no command', [], /a command is needed: listen, send, queues, bench/],
    ['unknown command', ['frobnicate'], /unknown command "frobnicate"/],
    ['unknown option', ['listen', '--ident', 'a', '--port', '0', '--bogus'], /Unknown option '--bogus'/],
    ['listen without --ident', ['listen', '--port', '0'], /--ident is required/],
    ['listen without --port', ['listen', '--ident', 'a'], /--port is required/],
    ['listen with a bad port', ['listen', '--ident', 'a', '--port', '70000'], /--port must be an integer 0\.\.65535/],
    ['listen with a bad --count', ['listen', '--ident', 'a', '--port', '0', '--count', 'x'], /--count must be an integer/],
    ['identity too long', ['listen', '--ident', 'x'.repeat(51), '--port', '0'], /--ident must be 1\.\.50 characters/],
    ['a key without a certificate', ['listen', '--ident', 'a', '--port', '0', '--tls-key', 'k.pem'], /--tls-key and --tls-cert go together/],
    ['an unreadable TLS file', ['listen', '--ident', 'a', '--port', '0', '--tls-key', '/nonexistent/k', '--tls-cert', '/nonexistent/c'], /cannot read \/nonexistent\/k: ENOENT/],
    ['send without --to', ['send', '--ident', 'a', '--connect', '127.0.0.1:1', 'hi'], /--to is required/],
    ['send without --connect', ['send', '--ident', 'a', '--to', 'b', 'hi'], /--connect HOST:PORT is required/],
    ['send to oneself', ['send', '--ident', 'a', '--to', 'a', '--connect', '127.0.0.1:1', 'hi'], /cannot send to oneself/],
    ['a bad --connect', ['send', '--ident', 'a', '--to', 'b', '--connect', 'localhost', 'hi'], /--connect expects HOST:PORT/],
    ['a bad --ttl', ['send', '--ident', 'a', '--to', 'b', '--connect', '127.0.0.1:1', '--ttl', '1.5', 'hi'], /--ttl must be an integer/],
    ['nothing to send', ['send', '--ident', 'a', '--to', 'b', '--connect', '127.0.0.1:1'], /nothing to send/],
    ['--persistent without --storage', ['send', '--ident', 'a', '--to', 'b', '--connect', '127.0.0.1:1', '--persistent', 'hi'], /--persistent needs --storage/],
    ['an unknown storage kind', ['send', '--ident', 'a', '--to', 'b', '--connect', '127.0.0.1:1', '--storage', 'mongodb://x', 'hi'], /--storage expects sqlite:PATH/],
    ['queues without --storage', ['queues'], /--storage sqlite:PATH is required/],
  ];
  it.each(bad)('exits 2 with a usage hint on stderr: %s', async (_name, args, message) => {
    const r = await run(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/Run 'snakemq( \w+)? --help' for usage\./);
    if (args.length > 0 && args[0] !== 'frobnicate') expect(r.stderr).toContain(`snakemq ${args[0]} --help`);
    expect(r.stdout).toBe('');
  });
});

describe('snakemq CLI: listen and send', () => {
  it('delivers between two processes; stdout is JSON lines only, debug log on stderr', async () => {
    const { cli: listener, port } = await startListen(['--ident', 'bob', '--count', '4'], { SNAKEMQ_DEBUG: '1' });
    const sent = await run(['send', '--timeout', '10000', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--count', '3', 'hello']);
    expect(sent.stderr).toBe('');
    expect(sent.code).toBe(0);
    expect(sent.out).toHaveLength(3);
    for (const d of sent.out) expect(d).toEqual({ event: 'delivered', to: 'bob', uuid: expect.stringMatching(HEX32) });

    const withTtl = await run(['send', '--timeout', '10000', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--ttl', '60000', 'héllo wörld']);
    expect(withTtl.code).toBe(0);

    expect(await listener.exit()).toEqual({ code: 0, signal: null });
    const got = listener.json();
    expect(got[0]).toEqual({ event: 'listening', port });
    expect(got.slice(1)).toEqual([
      ...['hello-1', 'hello-2', 'hello-3'].map((body, i) => ({
        from: 'alice',
        uuid: sent.out[i].uuid,
        ttl: null,
        flags: 0,
        body,
        encoding: 'utf8',
      })),
      { from: 'alice', uuid: withTtl.out[0].uuid, ttl: 60_000, flags: 0, body: 'héllo wörld', encoding: 'utf8' },
    ]);
    expect(listener.stderr).toMatch(/snakemq \S+ debug /);
  });

  it('prints bodies that are not UTF-8 as base64, and keeps a leading BOM in UTF-8 ones', async () => {
    const { cli, port } = await startListen(['--ident', 'bob', '--count', '3']);
    const peer = makePeer('lib');
    connect(peer, port);
    await waitFor(peer.messaging, 'connect');
    await peer.messaging.sendMessage('bob', new Message(Buffer.from([0xff, 0xfe, 0x00, 0x41])));
    await peer.messaging.sendMessage('bob', new Message('\uFEFFbom', { flags: 0x10 }));
    await peer.messaging.sendMessage('bob', new Message(Buffer.alloc(0)));
    expect(await cli.exit()).toEqual({ code: 0, signal: null });
    const [, a, b, c] = cli.json();
    expect(a).toMatchObject({ from: 'lib', body: '//4AQQ==', encoding: 'base64' });
    expect(b).toMatchObject({ body: '\uFEFFbom', encoding: 'utf8', flags: 0x10 });
    expect(c).toMatchObject({ body: '', encoding: 'utf8' });
  });

  it('listen --count acknowledges exactly the messages it printed; the rest go to the next run', async () => {
    const peer = makePeer('lib');
    const port = await listen(peer);
    const delivered: string[] = [];
    peer.messaging.on('message-delivered', (_ident, uuid) => delivered.push(uuid.toString('hex')));
    const uuids: string[] = [];
    for (let i = 1; i <= 5; i++) {
      const m = new Message(`m${i}`);
      uuids.push(m.uuidHex);
      await peer.messaging.sendMessage('bob', m);
    }
    const gone = waitFor(peer.messaging, 'disconnect');
    const first = await startListen(['--ident', 'bob', '--connect', `127.0.0.1:${port}`, '--count', '2']);
    expect(await first.cli.exit()).toEqual({ code: 0, signal: null });
    await gone;
    const printed1 = first.cli.json().slice(1);
    expect(printed1.map((m) => m.body)).toEqual(['m1', 'm2']);
    expect(delivered).toEqual(printed1.map((m) => m.uuid));

    const second = await startListen(['--ident', 'bob', '--connect', `127.0.0.1:${port}`, '--count', '3']);
    expect(await second.cli.exit()).toEqual({ code: 0, signal: null });
    expect(second.cli.json().slice(1).map((m) => m.body)).toEqual(['m3', 'm4', 'm5']);
    expect(delivered).toEqual(uuids);
  });

  it('send completes against a plain snakeMQ 1.6 peer (delivered = fully written)', async () => {
    const peer = makePeer('legacy', { extensions: false });
    const port = await listen(peer);
    const got: string[] = [];
    peer.messaging.on('message', (_c, _ident, m) => got.push(m.body.toString()));
    const r = await run(['send', '--timeout', '10000', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'legacy', 'one', 'two']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.out.map((d) => d.event)).toEqual(['delivered', 'delivered']);
    if (got.length < 2) await waitFor(peer.messaging, 'message', () => got.length >= 2);
    expect(got).toEqual(['one', 'two']);
  });

  it('speaks TLS with client certificates; a client without one is refused', async () => {
    const certs = await makeTestCerts();
    const f = (n: string): string => join(certs.dir, n);
    const { cli, port } = await startListen([
      '--ident', 'bob', '--count', '1',
      '--tls-key', f('server.key'), '--tls-cert', f('server.crt'), '--tls-ca', f('ca.crt'),
    ]);
    const refused = await run(['send', '--ident', 'eve', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--tls-ca', f('ca.crt'), '--timeout', '1000', 'no']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/timed out after 1000 ms/);
    const ok = await run([
      'send', '--timeout', '10000', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob',
      '--tls-key', f('client.key'), '--tls-cert', f('client.crt'), '--tls-ca', f('ca.crt'), 'secret',
    ]);
    expect(ok.code).toBe(0);
    expect(await cli.exit()).toEqual({ code: 0, signal: null });
    expect(cli.json().slice(1)).toEqual([expect.objectContaining({ from: 'alice', body: 'secret' })]);
  });

  it('listen stops cleanly on SIGTERM (exit 0), and exits 1 when --count was not reached', async () => {
    const a = await startListen(['--ident', 'bob']);
    a.cli.child.kill('SIGTERM');
    expect(await a.cli.exit()).toEqual({ code: 0, signal: null });
    const b = await startListen(['--ident', 'bob', '--count', '5']);
    b.cli.child.kill('SIGINT');
    expect(await b.cli.exit()).toEqual({ code: 1, signal: null });
    expect(b.cli.stderr).toContain('stopped after 0 of 5 messages');
  });
});

describe('snakemq CLI: failures', () => {
  it('send to a port nobody listens on: exit 1 after --timeout, naming the address', async () => {
    const port = await freePort();
    const t0 = Date.now();
    const r = await run(['send', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--timeout', '400', 'hi']);
    expect(r.code).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(
      new RegExp(`timed out after 400 ms: 1 of 1 message not delivered to "bob" \\(0 delivered\\): cannot connect to 127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
    );
    expect(r.stderr).toContain('discarded (not --persistent)');
  });

  it('send times out naming how often the peer connected, when it connected and left without acknowledging', async () => {
    // "bob" speaks our extensions (so a message counts only once acknowledged), never
    // acknowledges, hangs up at once; after two connections nobody listens any more
    const hello = Buffer.concat([encodeProtocolVersion(), encodeHello({ extVersion: EXTENSION_VERSION, maxPacketSize: 1 << 20, features: FEATURE_ACKS, incarnation: Buffer.alloc(8, 1) }), encodeIdentification('bob')].map(packet));
    let accepted = 0;
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.end(hello);
      if (++accepted === 2) server.close();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const r = await run(['send', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--timeout', '2000', 'a', 'b']);
    server.close();
    expect(r.code).toBe(1);
    expect(accepted).toBe(2);
    expect(r.stderr).toMatch(
      new RegExp(
        `timed out after 2000 ms: 2 of 2 messages not delivered to "bob" \\(0 delivered\\): "bob" connected 2 times and is not connected now \\(last attempt: cannot connect to 127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`,
      ),
    );
    expect(r.stderr).not.toContain('did not connect');
  });

  it('send times out when the peer there has another identity', async () => {
    const { cli, port } = await startListen(['--ident', 'carol']);
    const r = await run(['send', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--timeout', '500', 'hi']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/connected to "carol" at 127\.0\.0\.1:\d+, but the messages are for "bob"/);
    expect(r.stderr).toMatch(/timed out after 500 ms: .*connected only to "carol", not to "bob"/);
    cli.child.kill('SIGTERM');
    expect(await cli.exit()).toEqual({ code: 0, signal: null });
    expect(cli.lines).toHaveLength(1); // nothing received
  });

  it('listen on a port in use: exit 1 with a clear message', async () => {
    const { cli, port } = await startListen(['--ident', 'bob']);
    const r = await run(['listen', '--ident', 'bob2', '--port', String(port)]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`cannot listen on 127.0.0.1:${port}: EADDRINUSE`);
    cli.child.kill('SIGTERM');
    await cli.exit();
  });

  it('a TTL-0 persistent message to a peer that is not connected is dropped at once: exit 1', async () => {
    const db = join(tempDir(), 'q.db');
    const port = await freePort();
    const r = await run(['send', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--persistent', '--storage', `sqlite:${db}`, '--ttl', '0', '--timeout', '15000', 'x']);
    expect(r.code).toBe(1);
    expect(r.out).toEqual([{ event: 'dropped', to: 'bob', uuid: expect.stringMatching(HEX32), reason: 'ttl' }]);
    expect(r.stderr).toContain('1 of 1 messages dropped (ttl)');
    expect((await run(['queues', '--storage', `sqlite:${db}`])).stdout).toBe('');
  });

  it('queues on a missing storage file: exit 1', async () => {
    const r = await run(['queues', '--storage', `sqlite:${join(tempDir(), 'none.db')}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no storage at sqlite:.*none\.db/);
  });
});

describe('snakemq CLI: persistent send and queues', () => {
  it('keeps undelivered messages in SQLite, lists them, and a later run delivers them first', async () => {
    const db = join(tempDir(), 'alice.db');
    const storage = `sqlite:${db}`;
    const down = await freePort();

    // 1. the peer is down: exit 1, the messages stay stored
    const first = await run(['send', '--ident', 'alice', '--connect', `127.0.0.1:${down}`, '--to', 'bob', '--persistent', '--storage', storage, '--ttl', '600000', '--timeout', '500', 'm1', 'm2']);
    expect(first.code).toBe(1);
    expect(first.stdout).toBe('');
    expect(first.stderr).toMatch(/timed out after 500 ms: 2 of 2 messages not delivered to "bob"/);
    expect(first.stderr).toContain(`they stay in ${storage} for the next run`);

    // a second queue, to another peer, with an infinite TTL
    const other = await run(['send', '--ident', 'alice', '--connect', `127.0.0.1:${down}`, '--to', 'carol', '--persistent', '--storage', storage, '--timeout', '200', 'abc']);
    expect(other.code).toBe(1);

    // 2. queues lists them (sorted by name; TTL = remaining ms, null = infinite)
    const q = await run(['queues', '--storage', storage]);
    expect(q.code).toBe(0);
    expect(q.out).toEqual([
      { queue: 'bob', count: 2, bytes: 4, minTtl: expect.any(Number), maxTtl: expect.any(Number) },
      { queue: 'carol', count: 1, bytes: 3, minTtl: null, maxTtl: null },
    ]);
    const [bob] = q.out;
    expect(bob.minTtl).toBeLessThanOrEqual(bob.maxTtl);
    expect(bob.maxTtl).toBeLessThan(600_000);
    expect(bob.minTtl).toBeGreaterThan(550_000);
    expect(Number.isInteger(bob.minTtl)).toBe(true);

    // 3. the peer comes up; a run with the same storage sends the stored ones (and a new one) and waits for all
    const { cli, port } = await startListen(['--ident', 'bob', '--count', '3', '--storage', `sqlite:${join(tempDir(), 'bob.db')}`]);
    const second = await run(['send', '--timeout', '10000', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--persistent', '--storage', storage, 'm3']);
    expect(second.stderr).toBe('');
    expect(second.code).toBe(0);
    expect(second.out).toHaveLength(3);
    expect(await cli.exit()).toEqual({ code: 0, signal: null });
    const got = cli.json().slice(1);
    expect(got.map((m) => m.body)).toEqual(['m1', 'm2', 'm3']);
    expect(got.map((m) => m.flags)).toEqual([1, 1, 1]);
    expect(got[0].ttl).toBeGreaterThan(0);
    expect(new Set(second.out.map((d) => d.uuid))).toEqual(new Set(got.map((m) => m.uuid)));

    // 4. only carol's queue is left
    const after = await run(['queues', '--storage', storage]);
    expect(after.out).toEqual([{ queue: 'carol', count: 1, bytes: 3, minTtl: null, maxTtl: null }]);

    // 5. nothing stored for bob any more: a run without MESSAGE has nothing to do
    const empty = await run(['send', '--timeout', '10000', '--ident', 'alice', '--connect', `127.0.0.1:${port}`, '--to', 'bob', '--storage', storage]);
    expect(empty.code).toBe(0);
    expect(empty.stderr).toContain('nothing stored for "bob"');
  });
});
