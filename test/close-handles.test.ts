import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

/** Run a fixture under tsx; resolve with its exit code, stdout and the ms from its "closed" line to exit. */
export function runFixture(name: string): Promise<{ code: number | null; out: string; afterClose: number }> {
  const file = fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  let out = '';
  let closedAt = 0;
  child.stdout!.on('data', (d) => {
    out += d;
    if (!closedAt && out.includes('closed')) closedAt = performance.now();
  });
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, out, afterClose: closedAt ? performance.now() - closedAt : Infinity });
    });
  });
}

/** The JSON lines a fixture printed. */
function jsonLines(out: string): Record<string, any>[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
}

describe('close()', () => {
  it('leaves no open handles: the process exits by itself within 2 s', async () => {
    const r = await runFixture('link-close-child.ts');
    expect(r.out).toContain('closed after 1000 packets');
    expect(r.code).toBe(0);
    expect(r.afterClose).toBeLessThan(2000);
  });

  it('a listener that throws ends its plain TCP connection, and delivered packets stay intact', async () => {
    const r = await runFixture('link-throw-child.ts');
    expect(r.code).toBe(0);
    const cases = jsonLines(r.out);
    expect(cases).toHaveLength(2);
    cases.forEach((c, i) => {
      expect(c.reason).toBe('listener bug');
      expect(c.intact).toBe(true);
      expect(c.uncaught).toBe(i + 1); // the error still goes on to the process
    });
  });

  it("a listener that throws on one connection never lets another connection's reads overwrite what a third delivered", async () => {
    const r = await runFixture('link-throw-shared-child.ts');
    expect(r.code).toBe(0);
    const [c] = jsonLines(r.out);
    expect(c).toEqual({ uncaught: 1, received: 1 << 20, intactBefore: true, intactAfter: true, idleReceived: 3000 });
  });

  it('a message listener that throws while messages wait in slices loses nothing and blocks nobody', async () => {
    const r = await runFixture('messaging-throw-child.ts');
    expect(r.code).toBe(0);
    const cases = jsonLines(r.out);
    expect(cases.map((c) => [c.variant, c.thrownIn])).toEqual([
      ['slice', 'runSlice'],
      ['disconnect', 'drainBacklog'],
    ]);
    for (const c of cases) {
      expect(c.uncaught).toBe(1); // the error still goes on to the process
      expect([c.delivered, c.distinct, c.bobQueue, c.connected]).toEqual([3000, 3000, 0, true]);
    }
    expect(cases[1].disconnects).toBe(1);
  });
});
