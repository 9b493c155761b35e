/**
 * Keepalive on a clock that fires timers exactly on time with fractional milliseconds (a
 * ManualClock advanced by fractions, the model test's MODEL_FRACTIONAL_MS=1): the keepalive
 * wait must end. Runs in a child process, since the failure is a synchronous endless loop.
 */
import { afterEach, expect, it } from 'vitest';
import { killAllChildren, spawnFixture } from './helpers/children.js';

afterEach(async () => {
  await killAllChildren();
});

it('a keepalive wait ends on a clock whose time is fractional and whose timers fire exactly on time', async () => {
  const child = spawnFixture('keepalive-exact-clock.ts');
  const line = await child.waitLine((l) => l.startsWith('done'), 15_000).catch((err: Error) => `timeout: ${err.message}`);
  expect(line, 'Messaging spun forever in its keepalive deadline (pingAt + keepaliveWait - pingAt < keepaliveWait in floating point)').toMatch(/^done/);
  expect(await child.exited).toBe(0);
}, 30_000);
