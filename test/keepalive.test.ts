/**
 * Keepalive on one timer: the Deadlines heap, and Messaging's keepalive over it on a manual
 * clock (ping after the interval with nothing received, close after the wait, traffic moves the
 * next ping), with many connections sharing one pending timer; and TTL expiry of the queues of
 * many offline peers, on one timer too.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { Deadlines, MAX_TIMER_MS } from '../src/deadlines.js';
import type { ConnId } from '../src/link.js';
import { Messaging } from '../src/messaging.js';
import { Packeter } from '../src/packeter.js';
import { encodeIdentification, encodePing, encodeProtocolVersion } from '../src/protocol.js';
import { MemoryTransport, tick } from './helpers/memory-transport.js';
import { prng } from './helpers/prng.js';

describe('Deadlines', () => {
  it('calls each entry once when due, earliest first, from one pending timer', () => {
    const clock = new ManualClock();
    const fired: Array<[string, number]> = [];
    const d = new Deadlines<string>(clock, (v, now) => fired.push([v, now]));
    const a = d.entry('a');
    const b = d.entry('b');
    const c = d.entry('c');
    d.set(a, 300);
    d.set(b, 100);
    d.set(c, 200);
    expect(clock.pending).toBe(1);
    clock.advance(99);
    expect(fired).toEqual([]);
    clock.advance(1);
    expect(fired).toEqual([['b', 100]]);
    clock.advance(200);
    expect(fired).toEqual([['b', 100], ['c', 200], ['a', 300]]);
    expect(d.size).toBe(0);
    expect(clock.pending).toBe(0); // nothing scheduled: no timer keeps the process alive
  });

  it('waits for a deadline past 2^31 - 1 ms in steps a Node timer takes as they are, and fires it on time', () => {
    // (Node runs a longer timer after 1 ms: asked for as it is, the one timer would spin)
    const clock = new ManualClock();
    const asked: number[] = [];
    const setTimeout = clock.setTimeout.bind(clock);
    clock.setTimeout = (fn, ms) => {
      asked.push(ms);
      return setTimeout(fn, ms);
    };
    const fired: number[] = [];
    const d = new Deadlines<string>(clock, (_v, now) => fired.push(now));
    const month = 30 * 24 * 3600 * 1000; // more than 2^31 - 1 ms
    d.set(d.entry('a'), month);
    expect(asked).toEqual([MAX_TIMER_MS]);
    clock.advance(MAX_TIMER_MS);
    expect(fired).toEqual([]);
    expect(asked).toEqual([MAX_TIMER_MS, month - MAX_TIMER_MS]);
    clock.advance(month - MAX_TIMER_MS);
    expect(fired).toEqual([month]);
  });

  it('moves entries earlier and later, deletes them, and an entry set again from onDue fires again', () => {
    const clock = new ManualClock();
    const fired: string[] = [];
    const d: Deadlines<string> = new Deadlines<string>(clock, (v, now) => {
      fired.push(`${v}@${now}`);
      if (v === 'again' && now < 300) d.set(again, now + 100);
    });
    const late = d.entry('late');
    const gone = d.entry('gone');
    const again = d.entry('again');
    d.set(late, 50);
    d.set(late, 500); // later
    d.set(gone, 60);
    d.delete(gone);
    d.delete(gone); // twice is harmless
    d.set(again, 100);
    clock.advance(1000);
    expect(fired).toEqual(['again@100', 'again@200', 'again@300', 'late@500']);
    const early = d.entry('early');
    d.set(early, 2000);
    d.set(early, 1200); // earlier than the pending timer: armed again
    clock.advance(200);
    expect(fired.at(-1)).toBe('early@1200');
    d.set(d.entry('x'), 5000);
    d.clear();
    expect(clock.pending).toBe(0);
    clock.advance(10_000);
    expect(fired.at(-1)).toBe('early@1200');
  });

  it('with a resolution, entries due within one stretch are called from one timer callback, never early', () => {
    const clock = new ManualClock();
    let timers = 0;
    const setTimeout = clock.setTimeout.bind(clock);
    clock.setTimeout = (fn, ms) => {
      timers++;
      return setTimeout(() => {
        callbacks++;
        fn();
      }, ms);
    };
    let callbacks = 0;
    const fired: Array<[string, number]> = [];
    const d = new Deadlines<string>(clock, (v, now) => fired.push([v, now]), { resolution: 100 });
    for (const [v, at] of [['a', 110], ['b', 150], ['c', 199.5], ['d', 200], ['e', 201], ['f', 300]] as const) d.set(d.entry(v), at);
    expect(timers).toBe(1); // one timer, armed for 200
    clock.advance(199);
    expect(fired).toEqual([]); // (a was due at 110: late, not early)
    clock.advance(1);
    expect(fired).toEqual([['a', 200], ['b', 200], ['c', 200], ['d', 200]]);
    expect(callbacks).toBe(1);
    clock.advance(100);
    expect(fired.slice(4)).toEqual([['e', 300], ['f', 300]]);
    expect(callbacks).toBe(2);
    expect(clock.pending).toBe(0);
    // without one: every distinct due time has a callback of its own
    const exact = new Deadlines<string>(clock, (v, now) => fired.push([v, now]));
    callbacks = 0;
    for (let i = 1; i <= 5; i++) exact.set(exact.entry(`x${i}`), clock.now() + i * 10);
    clock.advance(50);
    expect(callbacks).toBe(5);
  });

  it('keeps heap order through random sets and deletes', () => {
    const clock = new ManualClock();
    const fired: number[] = [];
    const d = new Deadlines<number>(clock, (_v, now) => fired.push(now));
    const rnd = prng(5);
    const entries = Array.from({ length: 300 }, (_, i) => d.entry(i));
    const due = new Map<number, number>();
    for (let k = 0; k < 2000; k++) {
      const e = entries[Math.floor(rnd() * entries.length)];
      if (rnd() < 0.2) {
        d.delete(e);
        due.delete(e.value);
      } else {
        const at = 1 + Math.floor(rnd() * 10_000);
        d.set(e, at);
        due.set(e.value, at);
      }
    }
    clock.advance(20_000);
    expect(fired).toEqual([...due.values()].sort((x, y) => x - y));
  });
});

/** Length prefix and payload. */
function framed(payload: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(payload.length);
  return Buffer.concat([h, payload]);
}

describe('Messaging keepalive on one timer', () => {
  const open: Messaging[] = [];
  afterEach(async () => {
    for (const m of open.splice(0)) await m.close();
  });

  /** A Messaging on a memory transport with `n` plain snakeMQ peers identified. */
  function hub(n: number, clock: ManualClock) {
    const tr = new MemoryTransport();
    tr.peer = new MemoryTransport();
    const m = new Messaging('hub', '', new Packeter(tr), { clock, keepaliveInterval: 10_000, keepaliveWait: 5000 });
    open.push(m);
    const errors: string[] = [];
    m.on('error', (e) => errors.push((e as Error & { code: string }).code));
    const conns: ConnId[] = [];
    for (let i = 0; i < n; i++) {
      const conn = `c${i}` as ConnId;
      conns.push(conn);
      tr.connectTo(conn);
      tr.deliver(conn, Buffer.concat([framed(encodeProtocolVersion()), framed(encodeIdentification(`p${i}`))]));
    }
    const pings = (conn: ConnId): number => {
      const ping = framed(encodePing()).toString('hex');
      return (tr.written.get(conn) ?? []).filter((b) => b.toString('hex').includes(ping)).length;
    };
    return { tr, m, conns, errors, pings };
  }

  it('pings after the interval with nothing received and closes after the wait', async () => {
    const clock = new ManualClock();
    const { m, conns, errors, pings } = hub(1, clock);
    expect(m.isConnected('p0')).toBe(true);
    clock.advance(9999);
    await tick();
    expect(pings(conns[0])).toBe(0);
    clock.advance(1);
    await tick();
    expect(pings(conns[0])).toBe(1);
    clock.advance(4999);
    expect(m.isConnected('p0')).toBe(true);
    clock.advance(1);
    expect(m.isConnected('p0')).toBe(false);
    expect(errors).toEqual(['ERR_KEEPALIVE_TIMEOUT']);
  });

  it('anything received puts the next ping off, and a reply to a ping keeps the connection', async () => {
    const clock = new ManualClock();
    const { tr, m, conns, pings } = hub(1, clock);
    clock.advance(6000);
    tr.deliver(conns[0], framed(encodePing())); // traffic at 6000: next ping at 16000
    clock.advance(9999);
    await tick();
    expect(pings(conns[0])).toBe(0);
    clock.advance(1);
    await tick();
    expect(pings(conns[0])).toBe(1);
    clock.advance(3000);
    tr.deliver(conns[0], framed(encodePing())); // an answer within the wait, at 19000
    clock.advance(2001);
    expect(m.isConnected('p0')).toBe(true); // past the wait
    clock.advance(7999); // 29000: ten seconds after the answer, the next ping
    await tick();
    expect(pings(conns[0])).toBe(2);
    expect(m.isConnected('p0')).toBe(true);
  });

  it('a thousand connections share one pending timer, each pinged and closed on its own time', async () => {
    const clock = new ManualClock();
    const { tr, m, conns, errors, pings } = hub(1000, clock);
    expect(m.connectedPeers()).toHaveLength(1000);
    expect(clock.pending).toBe(1);
    // the even ones talk at 8000, the odd ones stay silent
    clock.advance(8000);
    conns.forEach((c, i) => i % 2 === 0 && tr.deliver(c, framed(encodePing())));
    clock.advance(2000);
    await tick();
    expect(conns.filter((c) => pings(c) === 1)).toHaveLength(500); // the odd ones, at 10000
    expect(clock.pending).toBe(1);
    clock.advance(5000); // 15000: the odd ones time out
    expect(m.connectedPeers()).toHaveLength(500);
    expect(errors).toHaveLength(500);
    conns.forEach((c, i) => i % 2 === 0 && tr.deliver(c, framed(encodePing()))); // at 15000
    clock.advance(14_999); // looked at 18000, pinged at 25000, not answered
    await tick();
    expect(m.connectedPeers()).toHaveLength(500);
    expect(conns.filter((c, i) => i % 2 === 0 && pings(c) === 1)).toHaveLength(500);
    clock.advance(1); // 30000
    expect(m.connectedPeers()).toHaveLength(0);
    expect(errors).toHaveLength(1000);
    expect(clock.pending).toBe(0); // no connection left: no timer
  });
});

describe('Messaging keepalive deadlines spread over time', () => {
  it('connections identified a millisecond apart are pinged from a few timer callbacks, each within 250 ms of its time', async () => {
    const clock = new ManualClock();
    const tr = new MemoryTransport();
    tr.peer = new MemoryTransport();
    const m = new Messaging('hub', '', new Packeter(tr), { clock, keepaliveInterval: 10_000, keepaliveWait: 5000 });
    const errors: string[] = [];
    m.on('error', (e) => errors.push((e as Error & { code: string }).code));
    let callbacks = 0;
    const setTimeout = clock.setTimeout.bind(clock);
    clock.setTimeout = (fn, ms) =>
      setTimeout(() => {
        callbacks++;
        fn();
      }, ms);
    const ping = framed(encodePing()).toString('hex');
    const pingedAt = new Map<ConnId, number>();
    const conns: ConnId[] = [];
    try {
      // 1000 peers, one every millisecond (a reconnect storm): their deadlines spread over 1 s
      for (let i = 0; i < 1000; i++) {
        const conn = `c${i}` as ConnId;
        conns.push(conn);
        tr.connectTo(conn);
        tr.deliver(conn, Buffer.concat([framed(encodeProtocolVersion()), framed(encodeIdentification(`p${i}`))]));
        clock.advance(1);
      }
      callbacks = 0;
      // step through time, noting when each connection's first ping was written
      for (let t = clock.now(); t < 11_500; t += 1) {
        clock.advance(1);
        if (callbacks > 0) await tick();
        for (const c of conns) {
          if (!pingedAt.has(c) && (tr.written.get(c) ?? []).some((b) => b.toString('hex').includes(ping))) pingedAt.set(c, clock.now());
        }
      }
      expect(pingedAt.size).toBe(1000);
      conns.forEach((c, i) => {
        const due = i + 10_000; // identified at i ms
        expect(pingedAt.get(c)!).toBeGreaterThanOrEqual(due);
        expect(pingedAt.get(c)!).toBeLessThanOrEqual(due + 250);
      });
      expect(callbacks).toBeLessThanOrEqual(6); // not one per connection
      expect(errors).toEqual([]);
    } finally {
      await m.close();
    }
  });
});

describe('Messaging TTL expiry on one timer', () => {
  it('messages waiting for many offline peers are dropped at their own times, from one pending timer', async () => {
    const clock = new ManualClock();
    const tr = new MemoryTransport();
    tr.peer = new MemoryTransport();
    const m = new Messaging('hub', '', new Packeter(tr), { clock });
    await m.ready;
    const drops: Array<[string, number]> = [];
    m.on('message-drop', (ident, _uuid, reason) => {
      expect(reason).toBe('ttl');
      drops.push([ident, clock.now()]);
    });
    const { Message } = await import('../src/message.js');
    for (let i = 0; i < 200; i++) await m.sendMessage(`p${i}`, new Message('x', { ttl: 1000 + ((i * 37) % 200) * 10 }));
    expect(clock.pending).toBe(1);
    clock.advance(999);
    expect(drops).toEqual([]);
    clock.advance(2001);
    expect(drops).toHaveLength(200);
    for (const [ident, at] of drops) expect(at).toBe(1000 + ((Number(ident.slice(1)) * 37) % 200) * 10);
    expect(drops.map(([, at]) => at)).toEqual([...drops.map(([, at]) => at)].sort((a, b) => a - b));
    expect(clock.pending).toBe(0);
    await m.close();
  });
});

describe('keepalive on the listening side', () => {
  it('pings after the interval × LISTENER_KEEPALIVE_FACTOR, so a connector with the same interval pings first', async () => {
    const { LISTENER_KEEPALIVE_FACTOR } = await import('../src/messaging.js');
    const clock = new ManualClock();
    const tr = new MemoryTransport();
    tr.peer = new MemoryTransport();
    const m = new Messaging('hub', '', new Packeter(tr), { clock, keepaliveInterval: 10_000, keepaliveWait: 5000 });
    const conn = 'c1' as ConnId;
    tr.connectTo(conn, 'listener');
    tr.deliver(conn, Buffer.concat([framed(encodeProtocolVersion()), framed(encodeIdentification('dev'))]));
    const ping = framed(encodePing()).toString('hex');
    const pings = (): number => (tr.written.get(conn) ?? []).filter((b) => b.toString('hex').includes(ping)).length;
    const after = 10_000 * LISTENER_KEEPALIVE_FACTOR;
    clock.advance(after - 1);
    await tick();
    expect(pings()).toBe(0);
    // the connector's ping at 10000 each time: answered, and the hub never pings
    for (let t = 10_000; t <= 60_000; t += 10_000) {
      clock.advance(t - clock.now());
      tr.deliver(conn, framed(encodePing()));
      await tick();
    }
    clock.advance(after - 1);
    await tick();
    expect(pings()).toBe(0);
    expect(m.isConnected('dev')).toBe(true);
    clock.advance(1); // silent for the listener's interval: now it pings
    await tick();
    expect(pings()).toBe(1);
    await m.close();
  });
});
