/**
 * RPC across a real server restart: the server runs in a child process (tsx) on a SQLite
 * storage file, is killed with SIGKILL, and is started again on the same file.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ReceiveHook } from '../src/receive-hook.js';
import { RpcClient } from '../src/rpc.js';
import { closeAllPeers, listen, makePeer } from './helpers/peers.js';

const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await closeAllPeers();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const FIXTURE = fileURLToPath(new URL('./fixtures/rpc-server-child.ts', import.meta.url));

interface Child {
  proc: ChildProcess;
  /** Resolves when a line containing `text` appeared on its stdout. */
  line(text: string): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startServer(env: Record<string, string>): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', FIXTURE], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(proc);
  let out = '';
  const waiters: Array<{ text: string; resolve: () => void }> = [];
  proc.stdout!.on('data', (d) => {
    out += d;
    for (const w of waiters.splice(0)) {
      if (out.includes(w.text)) w.resolve();
      else waiters.push(w);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    proc,
    exited,
    line: (text) =>
      new Promise<void>((resolve, reject) => {
        if (out.includes(text)) return resolve();
        waiters.push({ text, resolve });
        void exited.then(() => (out.includes(text) ? resolve() : reject(new Error(`server exited before printing "${text}"`))));
      }),
  };
}

async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'snakemq-rpc-restart-'));
  dirs.push(dir);
  const runs = join(dir, 'runs.txt');
  writeFileSync(runs, '');
  const client = makePeer('client', { keepaliveInterval: 0 });
  const port = await listen(client);
  const rpc = new RpcClient(new ReceiveHook(client.messaging));
  const env = { RPC_PORT: String(port), RPC_DB: join(dir, 'server.sqlite'), RPC_RUNS: runs };
  const lines = (): string[] => readFileSync(runs, 'utf8').split('\n').filter(Boolean);
  return { client, rpc, env, lines };
}

describe('RPC across a server restart (child process, SQLite storage)', () => {
  it('a call whose reply was stored but not sent before a crash is answered once, after the restart, and ran once', async () => {
    const { rpc, env, lines } = await setup();
    const counter = rpc.getProxy<{ inc(): number; hang(): never }>('server', 'counter');
    let settled = false;
    const call = counter.inc().finally(() => (settled = true));
    const first = startServer({ ...env, RPC_CRASH: 'after-reply' });
    await first.line('crashing after the reply was stored');
    expect(await first.exited).toMatchObject({ signal: 'SIGKILL' });
    expect(lines()).toEqual(['inc']);
    expect(settled).toBe(false);

    const second = startServer(env);
    expect(await call).toBe(1);
    expect(lines()).toEqual(['inc']); // not run again
    expect(await counter.inc()).toBe(2);
    second.proc.kill('SIGTERM');
    expect((await second.exited).code).toBe(0);
  });

  it('a call that was running when the server crashed is answered with OutcomeUnknownError after the restart', async () => {
    const { rpc, env, lines } = await setup();
    const counter = rpc.getProxy<{ inc(): number; hang(): never }>('server', 'counter');
    const call = counter.hang().catch((e: unknown) => e);
    const first = startServer(env);
    await first.line('running hang');
    first.proc.kill('SIGKILL');
    await first.exited;

    startServer(env);
    expect(await call).toMatchObject({ name: 'OutcomeUnknownError', code: 'ERR_RPC_OUTCOME_UNKNOWN' });
    expect(lines()).toEqual(['hang']);
    expect(await counter.inc()).toBe(2);
  });
});
