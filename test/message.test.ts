import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { FLAG_PERSISTENT, Message, newUuid } from '../src/message.js';

describe('Message', () => {
  it('generates distinct version-4 uuids', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const u = newUuid();
      expect(u.length).toBe(16);
      expect(u[6] >> 4).toBe(4);
      expect(u[8] >> 6).toBe(2);
      seen.add(u.toString('hex'));
    }
    expect(seen.size).toBe(10_000);
  });

  it('takes strings as UTF-8 and keeps given fields', () => {
    const uuid = Buffer.alloc(16, 7);
    const m = new Message('żółw', { uuid, ttl: 1500, flags: FLAG_PERSISTENT });
    expect(m.body.toString('utf8')).toBe('żółw');
    expect(m.uuid.equals(uuid)).toBe(true);
    expect(m.ttl).toBe(1500);
    expect(m.persistent).toBe(true);
    expect(m.uuidHex).toBe('07'.repeat(16));
    expect(new Message(new Uint8Array([1, 2])).ttl).toBeNull();
  });

  it('rejects bad fields with ERR_INVALID_ARGUMENT', () => {
    for (const bad of [
      () => new Message(42 as unknown as string),
      () => new Message('x', { ttl: Number.NaN }),
      () => new Message('x', { ttl: Infinity }),
      () => new Message('x', { flags: -1 }),
      () => new Message('x', { flags: 2 ** 32 }),
      () => new Message('x', { uuid: new Uint8Array(17) }),
    ]) {
      expect(bad).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
  });

  it('shows body, uuid, ttl and flags to JSON and inspect, and nothing of the slabs its uuid lives in', () => {
    const m = new Message('hi', { ttl: 1000, flags: 3 });
    const json = JSON.parse(JSON.stringify(m)) as { body: { data: number[] }; uuid: { data: number[] }; ttl: number; flags: number };
    expect(Object.keys(json).sort()).toEqual(['body', 'flags', 'ttl', 'uuid']);
    expect(Buffer.from(json.uuid.data).equals(m.uuid)).toBe(true);
    expect(Buffer.from(json.body.data).toString()).toBe('hi');
    expect(JSON.stringify(m).length).toBeLessThan(200);
    const shown = inspect(m);
    expect(shown).toContain(m.uuidHex);
    expect(shown.length).toBeLessThan(300);
    // a uuid read twice is the same Buffer, and equal to the hex form
    expect(m.uuid).toBe(m.uuid);
    expect(m.uuid.toString('hex')).toBe(m.uuidHex);
  });
});
