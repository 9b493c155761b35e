/**
 * Child side of the benchmark harness. A scenario child reads its parameters from argv[2]
 * (JSON), reports events as JSON lines on stdout (`{"ev": ...}`) and takes commands as JSON
 * lines on stdin (`{"cmd": ...}`). Anything else it prints is passed through to stderr by the
 * parent.
 */
import { createInterface } from 'node:readline';

export type Params = Record<string, unknown> & { role?: string };

/** This child's parameters. */
export const params: Params = JSON.parse(process.argv[2] ?? '{}');

/** Report an event to the parent. */
export function report(ev: string, data: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ ev, ...data }) + '\n');
}

export interface Command {
  cmd: string;
  [k: string]: unknown;
}

/** Commands from the parent, in order; ends when stdin closes. */
export async function* commands(): AsyncGenerator<Command> {
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    yield JSON.parse(line) as Command;
  }
}

/** High-resolution now in milliseconds. */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Run a full GC if `--expose-gc` is on (twice, so weak/finalized things go too). */
export function fullGc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) {
    g();
    g();
  }
}

/** Die loudly on anything unexpected, so the parent sees a failure instead of a hang. */
export function installCrashHandlers(): void {
  const die = (err: unknown): void => {
    report('error', { message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exit(1);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
}

/**
 * Standard command loop: `run` commands call `onRun(cmd)`, `exit` (or stdin closing) calls
 * `onExit()` and ends the process.
 */
export async function serve(onRun: (cmd: Command) => Promise<void> | void, onExit?: () => Promise<void> | void): Promise<void> {
  for await (const cmd of commands()) {
    if (cmd.cmd === 'run') await onRun(cmd);
    else if (cmd.cmd === 'exit') break;
  }
  if (onExit) await onExit();
  process.exit(0);
}

/** Throughput receiver bookkeeping: first/last arrival of a run of `expected` units. */
export class RunCounter {
  expected = 0;
  count = 0;
  bytes = 0;
  first = 0;
  private resolve: (() => void) | undefined;

  arm(expected: number): Promise<void> {
    this.expected = expected;
    this.count = 0;
    this.bytes = 0;
    this.first = 0;
    return new Promise<void>((r) => (this.resolve = r));
  }

  /** Record `units` arrivals carrying `bytes`; returns true when the run is complete. */
  add(units: number, bytes: number): void {
    if (!this.resolve) return;
    if (this.count === 0) this.first = nowMs();
    this.count += units;
    this.bytes += bytes;
    if (this.count >= this.expected) {
      const r = this.resolve;
      this.resolve = undefined;
      this.last = nowMs();
      r();
    }
  }

  last = 0;

  /** The result of the finished run. */
  result(): { count: number; bytes: number; ms: number; rate: number; byteRate: number } {
    const ms = Math.max(this.last - this.first, 1e-3);
    return {
      count: this.count,
      bytes: this.bytes,
      ms,
      rate: (this.count / ms) * 1000,
      byteRate: (this.bytes / ms) * 1000,
    };
  }
}
