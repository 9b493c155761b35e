import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const kids: Array<ReturnType<typeof spawn>> = [];
afterEach(() => {
  for (const k of kids.splice(0)) k.kill('SIGKILL');
});

describe('npm run demo', () => {
  it('exits 0 by itself and ends with a JSON summary of what happened', async () => {
    const child = spawn('npm', ['run', '-s', 'demo'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    kids.push(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code, err).toBe(0);
    const last = out.trim().split('\n').at(-1)!;
    expect(JSON.parse(last)).toEqual({
      delivered_after_return: 5,
      in_order: true,
      dropped_by_ttl: 1,
      rpc_result: 5,
      remote_error: 'RangeError',
    });
    expect(err).toContain('bob restarted: 5 messages for alice loaded from bob.db');
  });
});
