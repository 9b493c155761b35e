/**
 * Parent side of the benchmark harness: spawns scenario children (`node --import tsx file`),
 * talks to them over JSON lines, and makes sure none outlives the run.
 */
import { type ChildProcess, type SpawnOptionsWithStdioTuple, type StdioPipe, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { readFileSync } from 'node:fs';

/** USER_HZ of /proc/<pid>/stat times: 100 on every Linux we run on. */
const CLOCK_TICKS = 100;

export const BENCH_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const ROOT = path.dirname(BENCH_DIR);

const live = new Set<Child>();

/** Kill every child still running (on exit, Ctrl-C, failure). */
export function killAll(): void {
  for (const c of live) c.kill();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });
}

export interface Event {
  ev: string;
  [k: string]: unknown;
}

export interface ChildOptions {
  /** Extra node flags (e.g. `--cpu-prof`). */
  nodeArgs?: string[];
  /** Give up waiting for any one event after this long (ms). */
  timeoutMs?: number;
  /** Label for error messages. */
  label?: string;
  /**
   * Start the child through `bash -c 'ulimit -n <hard limit> && exec node …'`, so its soft
   * limit on open files is raised to the hard one (a hub with thousands of connections).
   */
  raiseFdLimit?: boolean;
}

/** One scenario child process. */
export class Child {
  readonly proc: ChildProcess;
  readonly label: string;
  private readonly queue: Event[] = [];
  private waiter: ((e: Event | Error) => void) | undefined;
  private exited: Error | undefined;
  private stderrTail = '';
  readonly exitP: Promise<number | null>;
  private readonly timeoutMs: number;

  constructor(file: string, params: Record<string, unknown>, opts: ChildOptions = {}) {
    this.label = opts.label ?? `${path.basename(file)}:${params.role ?? ''}`;
    this.timeoutMs = opts.timeoutMs ?? 180_000;
    const args = [...(opts.nodeArgs ?? []), '--expose-gc', '--import', 'tsx', path.resolve(BENCH_DIR, file), JSON.stringify(params)];
    const spawnOpts: SpawnOptionsWithStdioTuple<StdioPipe, StdioPipe, StdioPipe> = {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, SNAKEMQ_DEBUG: '' },
    };
    this.proc = opts.raiseFdLimit
      ? spawn('bash', ['-c', 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', process.execPath, ...args], spawnOpts)
      : spawn(process.execPath, args, spawnOpts);
    live.add(this);
    const rl = createInterface({ input: this.proc.stdout!, crlfDelay: Infinity });
    rl.on('line', (line) => {
      let e: Event | undefined;
      if (line.startsWith('{"ev"')) {
        try {
          e = JSON.parse(line) as Event;
        } catch {
          e = undefined;
        }
      }
      if (!e) {
        process.stderr.write(`[${this.label}] ${line}\n`);
        return;
      }
      if (e.ev === 'error') {
        this.fail(new Error(`${this.label} failed: ${String(e.message)}`));
        return;
      }
      this.push(e);
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-4000);
      if (process.env.BENCH_VERBOSE) process.stderr.write(`[${this.label}] ${d}`);
    });
    this.exitP = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        live.delete(this);
        if (code !== 0 && !this.exited) {
          this.fail(new Error(`${this.label} exited with ${code ?? signal}${this.stderrTail ? `:\n${this.stderrTail}` : ''}`));
        } else if (!this.exited) this.fail(new Error(`${this.label} exited`));
        resolve(code);
      });
    });
    this.proc.stdin!.on('error', () => {});
  }

  private push(e: Event): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(e);
    } else this.queue.push(e);
  }

  private fail(err: Error): void {
    if (this.exited) return;
    this.exited = err;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(err);
    }
  }

  /** Wait for the next event, which must be `ev`. */
  async expect(ev: string, timeoutMs = this.timeoutMs): Promise<Event> {
    const e = await this.next(timeoutMs);
    if (e.ev !== ev) throw new Error(`${this.label}: expected event ${ev}, got ${JSON.stringify(e)}`);
    return e;
  }

  /** The next event. */
  next(timeoutMs = this.timeoutMs): Promise<Event> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    if (this.exited) return Promise.reject(this.exited);
    return new Promise<Event>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`${this.label}: no event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (e) => {
        clearTimeout(t);
        if (e instanceof Error) reject(e);
        else resolve(e);
      };
    });
  }

  /** Send a command. */
  send(cmd: string, data: Record<string, unknown> = {}): void {
    if (this.proc.stdin!.writable) this.proc.stdin!.write(JSON.stringify({ cmd, ...data }) + '\n');
  }

  /** Ask the child to exit; kill it if it does not within `graceMs`. */
  async close(graceMs = 5000): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.exited ??= new Error(`${this.label} closed`);
    this.send('exit');
    this.proc.stdin!.end();
    const t = setTimeout(() => this.kill(), graceMs);
    await this.exitP;
    clearTimeout(t);
  }

  /** CPU time (user + system) the process has used so far, in ms; NaN where /proc is missing. */
  cpuMs(): number {
    const t = this.cpuTimes();
    return t.user + t.system;
  }

  /** User and system (kernel) CPU time the process has used so far, in ms; NaN where /proc is missing. */
  cpuTimes(): { user: number; system: number } {
    try {
      const stat = readFileSync(`/proc/${this.proc.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields 14 and 15 (utime, stime) counted from 1; f[0] is field 3
      return { user: (Number(f[11]) * 1000) / CLOCK_TICKS, system: (Number(f[12]) * 1000) / CLOCK_TICKS };
    } catch {
      return { user: NaN, system: NaN };
    }
  }

  kill(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }
}
