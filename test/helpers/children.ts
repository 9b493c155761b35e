/**
 * Child processes for tests: run a TypeScript fixture under tsx, read its stdout line by line,
 * await lines, kill it. Call `killAllChildren()` in afterEach.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** A running fixture. */
export interface Child {
  proc: ChildProcess;
  /** Every complete stdout line so far. */
  lines: string[];
  /** stderr so far (for failure messages). */
  stderr: string;
  /** Resolves with the exit code (or the signal name) once the process is gone. */
  exited: Promise<number | string>;
  /** Set once exited. */
  exitCode: number | string | undefined;
  /** Call `fn` for every line from now on (and not for earlier ones). */
  onLine(fn: (line: string) => void): void;
  /** Resolve with the first line (earlier or later) matching `pred`; reject on exit or timeout. */
  waitLine(pred: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  /** SIGKILL, and resolve once it is gone. */
  kill(): Promise<void>;
}

const running = new Set<Child>();

/**
 * Spawn `test/fixtures/<name>` with `node [nodeArgs] --import tsx <file> [args]`.
 * The child's stdout must be line-oriented. With `fdLimit`, it is started through
 * `bash -c 'ulimit -n <fdLimit> && exec node …'`, so it can open at most that many files.
 */
export function spawnFixture(name: string, args: string[] = [], nodeArgs: string[] = [], options: { fdLimit?: number } = {}): Child {
  const file = fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
  const argv = [...nodeArgs, '--import', 'tsx', file, ...args];
  const proc =
    options.fdLimit === undefined
      ? spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('bash', ['-c', `ulimit -n ${Math.floor(options.fdLimit)} && exec "$0" "$@"`, process.execPath, ...argv], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
  const listeners: Array<(line: string) => void> = [];
  let partial = '';
  const child: Child = {
    proc,
    lines: [],
    stderr: '',
    exitCode: undefined,
    exited: new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        child.exitCode = code ?? signal ?? 'unknown';
        running.delete(child);
        resolve(child.exitCode);
      });
    }),
    onLine(fn) {
      listeners.push(fn);
    },
    waitLine(pred, timeoutMs = 20_000) {
      const found = child.lines.find(pred);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        let settled = false;
        const timer = setTimeout(() => {
          settled = true;
          reject(new Error(`timed out after ${timeoutMs} ms waiting for a line from ${name}; stderr: ${child.stderr}`));
        }, timeoutMs);
        listeners.push((line) => {
          if (settled || !pred(line)) return;
          settled = true;
          clearTimeout(timer);
          resolve(line);
        });
        void child.exited.then((code) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          reject(new Error(`${name} exited (${code}) before the awaited line; stderr: ${child.stderr}`));
        });
      });
    },
    async kill() {
      if (child.exitCode === undefined) proc.kill('SIGKILL');
      await child.exited;
    },
  };
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (d: string) => {
    partial += d;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      child.lines.push(line);
      for (const fn of listeners) fn(line);
    }
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    if (child.stderr.length < 20_000) child.stderr += d;
  });
  running.add(child);
  return child;
}

/** SIGKILL every fixture still running (call in afterEach). */
export async function killAllChildren(): Promise<void> {
  await Promise.all([...running].map((c) => c.kill()));
}
