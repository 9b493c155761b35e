/**
 * The Python examples run as documented against ours: examples/python-rpc-client.py calls
 * examples/rpc-listener.ts, and examples/rpc-connector.ts calls examples/python-rpc-server.py.
 * Needs `python3` and SNAKEMQ_PY (a folder that makes `import snakemq` work); skipped by name otherwise.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const SNAKEMQ_PY = process.env.SNAKEMQ_PY;
const env = { ...process.env, PYTHONPATH: [SNAKEMQ_PY, process.env.PYTHONPATH].filter(Boolean).join(':'), PYTHONIOENCODING: 'utf-8' };
const HAVE_PYTHON =
  SNAKEMQ_PY !== undefined && spawnSync('python3', ['-c', 'import snakemq.rpc'], { env, timeout: 10_000, stdio: 'ignore' }).status === 0;
const NEEDS = HAVE_PYTHON ? '' : ' [skipped: needs python3 with snakeMQ importable from SNAKEMQ_PY]';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function run(name: string, args: string[]): { proc: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const file = fileURLToPath(new URL(`../examples/${name}`, import.meta.url));
  const proc = name.endsWith('.py')
    ? spawn('python3', ['-W', 'ignore', file, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, ['--import', 'tsx', file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  return { proc, output: () => out, exited: new Promise((resolve) => proc.on('exit', (code) => resolve(code))) };
}

function portOf(listener: ReturnType<typeof run>): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const check = (): void => {
      const m = /on 127\.0\.0\.1:(\d+)/.exec(listener.output());
      if (m) resolve(m[1]);
    };
    listener.proc.stdout!.on('data', check);
    void listener.exited.then(() => reject(new Error(`listener exited: ${listener.output()}`)));
  });
}

describe('the Python examples', () => {
  it.skipIf(!HAVE_PYTHON)(`examples/python-rpc-client.py calls examples/rpc-listener.ts${NEEDS}`, async () => {
    const listener = run('rpc-listener.ts', ['0']);
    const client = run('python-rpc-client.py', [await portOf(listener)]);
    expect(await client.exited).toBe(0);
    const out = client.output();
    expect(out).toContain('fo value\nsum: 1180591620717411303425\nhi, soldier\nmysignal sent\n');
    expect(out).toContain("remote exception: RuntimeError ('Error: this one fails on purpose',)");
    expect(out).toMatch(/remote traceback Error: this one fails on purpose\n\s+at \S*fail/);
    listener.proc.kill('SIGTERM');
    expect(await listener.exited).toBe(0);
    expect(listener.output()).toContain('mysignal');
  }, 60_000);

  it.skipIf(!HAVE_PYTHON)(`examples/rpc-connector.ts calls examples/python-rpc-server.py${NEEDS}`, async () => {
    const server = run('python-rpc-server.py', ['0']);
    const connector = run('rpc-connector.ts', [await portOf(server)]);
    expect(await connector.exited).toBe(0);
    const out = connector.output();
    expect(out).toContain('fo value\nsums: [ 3, 7, 11 ]\nhi, soldier\nmysignal sent\n');
    expect(out).toContain("remote exception ValueError [ 'this one fails on purpose', 42 ]");
    expect(out).toMatch(/remote traceback Traceback \(most recent call last\):[\s\S]*raise ValueError\("this one fails on purpose", 42\)/);
    expect(server.output()).toContain('mysignal');
  }, 60_000);
});
