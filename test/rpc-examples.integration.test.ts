/** The RPC examples run as documented: the connector calls the listener and exits by itself. */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function run(name: string, args: string[]): { proc: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const file = fileURLToPath(new URL(`../examples/${name}`, import.meta.url));
  const proc = spawn(process.execPath, ['--import', 'tsx', file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  return { proc, output: () => out, exited: new Promise((resolve) => proc.on('exit', (code) => resolve(code))) };
}

describe('examples/rpc-listener.ts + examples/rpc-connector.ts', () => {
  it('the connector gets a value, sums, sends a signal, sees a remote stack, and exits 0', async () => {
    const listener = run('rpc-listener.ts', ['0']);
    const port = await new Promise<string>((resolve, reject) => {
      listener.proc.stdout!.on('data', () => {
        const m = /on 127\.0\.0\.1:(\d+)/.exec(listener.output());
        if (m) resolve(m[1]);
      });
      void listener.exited.then(() => reject(new Error(`listener exited: ${listener.output()}`)));
    });
    const connector = run('rpc-connector.ts', [port]);
    expect(await connector.exited).toBe(0);
    const out = connector.output();
    expect(out).toContain('fo value');
    expect(out).toContain('sums: [ 3, 7, 11 ]');
    expect(out).toMatch(/remote traceback Error: this one fails on purpose\n\s+at \S*fail/);
    listener.proc.kill('SIGTERM');
    expect(await listener.exited).toBe(0);
    expect(listener.output()).toContain('mysignal');
  });
});
