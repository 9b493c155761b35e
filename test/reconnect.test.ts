/**
 * A connector's reconnect policy: a lost connection is retried after a short wait; connections
 * that keep being lost soon after they were made back off up to `reconnectInterval`; only failed
 * attempts back off further, up to `reconnectMaxInterval`.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type Clock, systemClock } from '../src/clock.js';
import { Link, reconnectWait } from '../src/link.js';
import { until } from './helpers/wait.js';

const O = { reconnectInterval: 1000, reconnectMaxInterval: 30_000, reconnectAfterLossInterval: 100 };

describe('reconnectWait', () => {
  it('after failed attempts: reconnectInterval, doubled per failure, up to reconnectMaxInterval', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 60].map((n) => reconnectWait(O, n, 0))).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });

  it('after a lost connection: reconnectAfterLossInterval, doubled per short-lived connection in a row, up to reconnectInterval', () => {
    // a connection that stayed up (0 short losses) and a first short one both wait the short interval
    expect([0, 1, 2, 3, 4, 5, 60].map((n) => reconnectWait(O, undefined, n))).toEqual([100, 100, 200, 400, 800, 1000, 1000]);
  });

  it('never waits longer after a loss than after a failure', () => {
    const o = { ...O, reconnectAfterLossInterval: 5000 };
    expect(reconnectWait(o, undefined, 0)).toBe(1000);
  });
});

describe('a connector on a real socket', () => {
  const links: Link[] = [];
  const servers: net.Server[] = [];
  afterEach(async () => {
    for (const l of links.splice(0)) await l.close();
    for (const s of servers.splice(0)) s.close();
  });

  /** The system clock, recording the reconnect waits asked of it (the connect timeout is 5000). */
  function recording(): { clock: Clock; waits: number[] } {
    const waits: number[] = [];
    const clock: Clock = {
      now: () => systemClock.now(),
      setTimeout(fn, ms) {
        if (ms !== 5000) waits.push(ms);
        return systemClock.setTimeout(fn, ms);
      },
      clearTimeout: (h) => systemClock.clearTimeout(h),
    };
    return { clock, waits };
  }

  async function server(onSocket: (s: net.Socket, n: number) => void): Promise<{ port: number; server: net.Server; accepted: () => number }> {
    let n = 0;
    const srv = net.createServer((s) => {
      s.on('error', () => {});
      onSocket(s, ++n);
    });
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return { port: (srv.address() as net.AddressInfo).port, server: srv, accepted: () => n };
  }

  // (a connection hung up at once is up far less than reconnectInterval even on a loaded machine)
  const options = { reconnectInterval: 200, reconnectMaxInterval: 800, reconnectAfterLossInterval: 10, connectTimeout: 5000 };

  it('retries a lost connection after the short wait, then backs off over refused attempts', async () => {
    const { clock, waits } = recording();
    const srv = await server((s) => {
      s.destroy();
      srv.server.close(); // from now on, attempts are refused
    });
    const link = new Link({ clock, random: () => 0.5 });
    links.push(link);
    link.on('error', () => {});
    const id = link.addConnector({ host: '127.0.0.1', port: srv.port, ...options });
    await until(() => waits.length >= 5);
    link.removeConnector(id);
    expect(srv.accepted()).toBe(1);
    expect(waits.slice(0, 5)).toEqual([10, 200, 400, 800, 800]);
  });

  it('backs off up to reconnectInterval when every connection is hung up at once, and connects every time', async () => {
    const { clock, waits } = recording();
    const srv = await server((s) => s.destroy());
    const link = new Link({ clock, random: () => 0.5 });
    links.push(link);
    let connects = 0;
    link.on('connect', () => connects++);
    const id = link.addConnector({ host: '127.0.0.1', port: srv.port, ...options });
    await until(() => waits.length >= 7);
    link.removeConnector(id);
    expect(waits.slice(0, 7)).toEqual([10, 20, 40, 80, 160, 200, 200]);
    expect(connects).toBeGreaterThanOrEqual(7);
  });

  it('starts the count again after a connection that stayed up', async () => {
    const { clock, waits } = recording();
    // the first two are hung up at once, the third after 300 ms (> reconnectInterval), the fourth at once
    const srv = await server((s, n) => {
      if (n === 3) setTimeout(() => s.destroy(), 300);
      else s.destroy();
    });
    const link = new Link({ clock, random: () => 0.5 });
    links.push(link);
    const id = link.addConnector({ host: '127.0.0.1', port: srv.port, ...options });
    await until(() => waits.length >= 4);
    link.removeConnector(id);
    expect(waits.slice(0, 4)).toEqual([10, 20, 10, 10]);
  });
});
