import * as net from 'node:net';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { Link, READ_CHUNK_SIZE } from '../src/link.js';
import { encodePacketHeader } from '../src/packet-decoder.js';
import { COPY_LIMIT, Packeter } from '../src/packeter.js';
import { connectPair, memoryPair, tick } from './helpers/memory-transport.js';
import { until, waitFor } from './helpers/wait.js';

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

function makeLink(): Link {
  const link = new Link();
  closers.push(() => link.close());
  return link;
}

/** A well-behaved Link + Packeter connected to `port`, and its connection id. */
async function goodClient(port: number): Promise<{ pg: Packeter; goodId: string }> {
  const good = makeLink();
  const pg = new Packeter(good);
  const [goodId] = await Promise.all([
    waitFor<[string]>(pg, 'connect').then(([c]) => c),
    good.addConnector({ host: '127.0.0.1', port }),
  ]);
  return { pg, goodId };
}

/** A plain socket connected to `port` (to send it bytes by hand), and when it closes. */
async function rawClient(port: number): Promise<{ bad: net.Socket; badClosed: Promise<unknown> }> {
  const bad = net.connect(port, '127.0.0.1');
  closers.push(() => void bad.destroy());
  const badClosed = new Promise((r) => bad.once('close', r));
  await new Promise((r) => bad.once('connect', r));
  return { bad, badClosed };
}

/** Two Links with a Packeter each, b connected to a; `aId` is the connection on a's side. */
async function connectedPackets(): Promise<{ a: Link; b: Link; pa: Packeter; pb: Packeter; aId: string }> {
  const a = makeLink();
  const b = makeLink();
  const pa = new Packeter(a);
  const pb = new Packeter(b);
  const { port } = await a.addListener({ port: 0 });
  const [aId] = await Promise.all([
    waitFor<[string]>(pa, 'connect').then(([c]) => c),
    b.addConnector({ host: '127.0.0.1', port }),
  ]);
  return { a, b, pa, pb, aId };
}

/** V8's gc() (tests run without --expose-gc). */
function collector(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

function collect(p: Packeter): Array<[string, string]> {
  const got: Array<[string, string]> = [];
  p.on('packet', (connId, payload) => got.push([connId, payload.toString()]));
  return got;
}

describe('Link and Packeter over loopback', () => {
  it('a listener on port 0 reports the port it got', async () => {
    const link = makeLink();
    const info = await link.addListener({ host: '127.0.0.1', port: 0 });
    expect(info.port).toBeGreaterThan(0);
    expect(info.host).toBe('127.0.0.1');
  });

  it('is symmetric: once connected, both sides send and receive alike', async () => {
    const a = makeLink();
    const b = makeLink();
    const pa = new Packeter(a);
    const pb = new Packeter(b);
    const { port } = await a.addListener({ port: 0 });
    const aConn = waitFor<[string]>(pa, 'connect');
    const bConn = waitFor<[string]>(pb, 'connect');
    b.addConnector({ host: '127.0.0.1', port });
    const [aId] = await aConn;
    const [bId] = await bConn;
    const gotA = collect(pa);
    const gotB = collect(pb);
    const sentIds: number[] = [];
    pa.on('packet-sent', (_c, id) => sentIds.push(id));
    const id1 = pa.sendPacket(aId, Buffer.from('from listener'));
    pb.sendPacket(bId, Buffer.from('from connector'));
    await until(() => gotA.length === 1 && gotB.length === 1);
    expect(gotB).toEqual([[bId, 'from listener']]);
    expect(gotA).toEqual([[aId, 'from connector']]);
    await until(() => sentIds.includes(id1));
    expect(a.connectionInfo(aId)?.side).toBe('listener');
    expect(b.connectionInfo(bId)?.side).toBe('connector');
  });

  it('accepts several connectors on one listener and tells them apart', async () => {
    const server = makeLink();
    const ps = new Packeter(server);
    const got = collect(ps);
    const { port } = await server.addListener({ port: 0 });
    for (let i = 0; i < 3; i++) {
      const c = makeLink();
      const pc = new Packeter(c);
      pc.on('connect', (connId) => pc.sendPacket(connId, Buffer.from(`client ${i}`)));
      c.addConnector({ host: '127.0.0.1', port });
    }
    await until(() => got.length === 3);
    expect(got.map(([, s]) => s).sort()).toEqual(['client 0', 'client 1', 'client 2']);
    expect(new Set(got.map(([c]) => c)).size).toBe(3);
  });

  it('reconnects after the listener restarts on the same port', async () => {
    const server = makeLink();
    const ps = new Packeter(server);
    const got = collect(ps);
    const first = await server.addListener({ port: 0 });
    const client = makeLink();
    const pc = new Packeter(client);
    let connects = 0;
    pc.on('connect', (connId) => {
      connects++;
      pc.sendPacket(connId, Buffer.from(`hello ${connects}`));
    });
    client.addConnector({ host: '127.0.0.1', port: first.port, reconnectInterval: 20, reconnectMaxInterval: 100 });
    await until(() => got.length === 1);
    const gone = waitFor(pc, 'disconnect');
    await server.removeListener(first.id);
    await gone;
    await server.addListener({ port: first.port });
    await until(() => got.length === 2);
    expect(got.map(([, s]) => s)).toEqual(['hello 1', 'hello 2']);
  });

  it('keeps retrying a refused connector until a listener appears', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const client = makeLink();
    const failures: Error[] = [];
    client.on('error', (e) => failures.push(e));
    client.addConnector({ host: '127.0.0.1', port, reconnectInterval: 20, reconnectMaxInterval: 40 });
    await until(() => failures.length >= 2);
    expect((failures[0] as Error & { code: string }).code).toBe('ERR_CONNECT');
    const server = makeLink();
    const connected = waitFor(client, 'connect');
    await server.addListener({ port });
    await connected;
  });

  it('removeConnector stops reconnecting', async () => {
    const server = makeLink();
    const { port } = await server.addListener({ port: 0 });
    let accepted = 0;
    server.on('connect', () => accepted++);
    const client = makeLink();
    const id = client.addConnector({ host: '127.0.0.1', port, reconnectInterval: 10 });
    await until(() => accepted === 1);
    const gone = waitFor(server, 'disconnect');
    client.removeConnector(id);
    await gone;
    // a reconnect would take ~10 ms; a second connection must not appear within 30 intervals
    await new Promise((r) => setTimeout(r, 300));
    expect(accepted).toBe(1);
  });

  it('closes a connection that announces an oversized packet, and only that one', async () => {
    const server = makeLink();
    const ps = new Packeter(server, { maxPacketSize: 1024 });
    const errors: Array<[Error & { code?: string }, string | undefined]> = [];
    ps.on('error', (e, c) => errors.push([e, c]));
    const got = collect(ps);
    const { port } = await server.addListener({ port: 0 });

    const { pg, goodId } = await goodClient(port);
    const { bad, badClosed } = await rawClient(port);
    bad.write(Buffer.from('fffffff0', 'hex'));
    await badClosed;
    expect(errors).toHaveLength(1);
    expect(errors[0][0].code).toBe('ERR_FRAME_TOO_LARGE');

    pg.sendPacket(goodId, Buffer.from('still here'));
    await until(() => got.length === 1);
    expect(got[0][1]).toBe('still here');
  });

  it('garbage bytes close only the connection that sent them', async () => {
    const server = makeLink();
    const ps = new Packeter(server);
    const got = collect(ps);
    const { port } = await server.addListener({ port: 0 });
    const { pg, goodId } = await goodClient(port);
    const { bad, badClosed } = await rawClient(port);
    bad.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await badClosed;
    pg.sendPacket(goodId, Buffer.from('fine'));
    await until(() => got.length === 1);
    expect(got[0][1]).toBe('fine');
  });

  it('coalesces many small packets into few writes and reports each as sent', async () => {
    const { a, pa, pb, aId } = await connectedPackets();
    let received = 0;
    let order = true;
    pb.on('packet', (_c, p) => {
      if (p.readUInt32BE(0) !== received) order = false;
      received++;
    });
    const sent = new Set<number>();
    pa.on('packet-sent', (_c, id) => sent.add(id));
    let writes = 0;
    const origSend = a.send.bind(a);
    a.send = (c, d, cb) => {
      writes++;
      return origSend(c, d, cb);
    };
    const ids: number[] = [];
    for (let i = 0; i < 10_000; i++) {
      const p = Buffer.alloc(100);
      p.writeUInt32BE(i, 0);
      ids.push(pa.sendPacket(aId, p));
    }
    await until(() => received === 10_000 && sent.size === 10_000);
    expect(order).toBe(true);
    expect(writes).toBeLessThan(10);
    expect(ids.every((id) => sent.has(id))).toBe(true);
  });

  it('packet-sent reports every id of its connection once, in order, with two connections interleaved', async () => {
    const [ta, tb] = memoryPair();
    const pa = new Packeter(ta);
    new Packeter(tb);
    connectPair(ta, tb, 'c1');
    connectPair(ta, tb, 'c2');
    const reported: Record<string, number[]> = { c1: [], c2: [] };
    const last: Record<string, number[]> = { c1: [], c2: [] };
    pa.on('packet-sent', (c, id) => reported[c].push(id));
    pa.on('packets-sent', (c, id) => last[c].push(id));
    const framed = (n: number): Buffer => Buffer.concat(Array.from({ length: n }, () => Buffer.from([0, 0, 0, 1, 0x61])));
    const want: Record<string, number[]> = { c1: [], c2: [] };
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 20; i++) {
        const c = i % 3 === 0 ? 'c2' : 'c1';
        if (i % 5 === 4) {
          const first = pa.sendFramedPackets(c, framed(4), 4);
          want[c].push(first, first + 1, first + 2, first + 3);
        } else want[c].push(pa.sendPacket(c, Buffer.from('x')));
      }
      for (let k = 0; k < 3; k++) await tick();
    }
    expect(reported).toEqual(want);
    // one packets-sent per flush of a connection, naming the last id written by it
    for (const c of ['c1', 'c2']) {
      expect(last[c].length).toBe(3);
      expect(last[c].every((id) => want[c].includes(id))).toBe(true);
      expect(last[c][2]).toBe(want[c][want[c].length - 1]);
    }
  });

  it('sendFramedPackets: runs of framed packets in order among others, large runs written as they lie', async () => {
    const { a, pa, pb, aId } = await connectedPackets();
    const got: string[] = [];
    pb.on('packet', (_c, p) => got.push(p.toString()));
    const sent = new Set<number>();
    pa.on('packet-sent', (_c, id) => sent.add(id));
    const written: Buffer[] = [];
    const origSend = a.send.bind(a);
    a.send = (c, d, cb) => {
      written.push(...(Array.isArray(d) ? d : [d]));
      return origSend(c, d, cb);
    };
    const framed = (texts: string[]): Buffer =>
      Buffer.concat(texts.map((t) => Buffer.concat([encodePacketHeader(Buffer.byteLength(t)), Buffer.from(t)])));
    const bigTexts = Array.from({ length: 300 }, (_, i) => `big run ${i} `.padEnd(100, '.'));
    const smallRun = framed(['small 0', 'small 1']);
    const bigRun = framed(bigTexts);
    expect(bigRun.length).toBeGreaterThanOrEqual(COPY_LIMIT);
    const ids = [pa.sendPacket(aId, Buffer.from('first'))];
    const small = pa.sendFramedPackets(aId, smallRun, 2);
    smallRun.fill(0x21); // copied already: what arrives is unchanged
    const big = pa.sendFramedPackets(aId, bigRun, bigTexts.length);
    ids.push(small, small + 1, ...bigTexts.map((_, i) => big + i), pa.sendPacket(aId, Buffer.from('last')));
    expect(new Set(ids).size).toBe(ids.length);
    await until(() => got.length === 4 + bigTexts.length && sent.size === ids.length);
    expect(got).toEqual(['first', 'small 0', 'small 1', ...bigTexts, 'last']);
    expect(ids.every((id) => sent.has(id))).toBe(true);
    expect(written).toContain(bigRun); // by reference, not copied
  });

  it('delivers 1 MiB packets intact, each in memory of its own that later packets leave alone', async () => {
    const { a, pa, pb, aId } = await connectedPackets();
    const got: Buffer[] = [];
    pb.on('packet', (_c, p) => got.push(p)); // kept without copying
    const sent: Buffer[] = [];
    for (let i = 0; i < 6; i++) {
      const p = Buffer.alloc(1024 * 1024 + i * 1000, 0x30 + i);
      p.writeUInt32BE(i, 0);
      sent.push(p);
      pa.sendPacket(aId, p);
    }
    pa.sendPacket(aId, Buffer.from('small after large'));
    await until(() => got.length === 7);
    for (let i = 0; i < 6; i++) expect(got[i].equals(sent[i])).toBe(true);
    expect(got[6].toString()).toBe('small after large');
  });

  it('reads long payloads straight into their buffers, both ways, and delivers them intact', async () => {
    const a = makeLink();
    const b = makeLink();
    // Count the read targets the Packeters' decoders offer (and the Links read into).
    let offered = 0;
    for (const link of [a, b]) {
      const set = link.setReadTarget.bind(link);
      link.setReadTarget = (id, provider) =>
        set(
          id,
          provider &&
            (() => {
              const t = provider();
              if (t) offered++;
              return t;
            }),
        );
    }
    const pa = new Packeter(a);
    const pb = new Packeter(b);
    const { port } = await a.addListener({ port: 0 });
    const [[aId], [bId]] = await Promise.all([
      waitFor<[string]>(pa, 'connect'),
      waitFor<[string]>(pb, 'connect'),
      b.addConnector({ host: '127.0.0.1', port }),
    ]);
    const sizes = [1024 * 1024, 3 * 1024 * 1024 + 17, 40_000, 100, 2 * 1024 * 1024];
    const make = (i: number, n: number): Buffer => {
      const p = Buffer.allocUnsafe(n);
      for (let k = 0; k < n; k += 4096) p[k] = (k / 4096 + i) & 0xff;
      p.fill(i, Math.max(0, n - 10));
      return p;
    };
    const gotA: Buffer[] = [];
    const gotB: Buffer[] = [];
    pa.on('packet', (_c, p) => gotA.push(p));
    pb.on('packet', (_c, p) => gotB.push(p));
    const sent = sizes.map((n, i) => make(i, n));
    for (const p of sent) {
      pa.sendPacket(aId, p);
      pb.sendPacket(bId, p);
    }
    await until(() => gotA.length === sizes.length && gotB.length === sizes.length);
    for (let i = 0; i < sizes.length; i++) {
      expect(gotA[i].equals(sent[i])).toBe(true);
      expect(gotB[i].equals(sent[i])).toBe(true);
    }
    expect(offered).toBeGreaterThan(0);
  });

  it('setReadTarget: bytes are read into the offered buffer on accepted and connected sockets', async () => {
    const a = makeLink();
    const b = makeLink();
    const { port } = await a.addListener({ port: 0 });
    const [[aId], [bId]] = await Promise.all([
      waitFor<[string]>(a, 'connect'),
      waitFor<[string]>(b, 'connect'),
      b.addConnector({ host: '127.0.0.1', port }),
    ]);
    for (const [from, fromId, to, toId] of [
      [a, aId, b, bId],
      [b, bId, a, aId],
    ] as const) {
      const target = Buffer.alloc(200_000);
      let at = 0;
      to.setReadTarget(toId, () => (at < target.length ? target.subarray(at) : null));
      const chunks: Buffer[] = [];
      const onRecv = (id: string, data: Buffer): void => {
        if (id !== toId) return;
        chunks.push(data);
        if (data.buffer === target.buffer) {
          expect(data.byteOffset).toBe(target.byteOffset + at);
          at += data.length;
        }
      };
      to.on('recv', onRecv);
      const bytes = Buffer.allocUnsafe(300_000);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff;
      from.send(fromId, bytes);
      await until(() => chunks.reduce((n, c) => n + c.length, 0) === bytes.length);
      to.off('recv', onRecv);
      to.setReadTarget(toId, null);
      expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
      expect(at).toBe(target.length); // every byte the target could take was read into it
      expect(target.equals(bytes.subarray(0, target.length))).toBe(true);
    }
  });

  it('a short read is handed over in memory of exactly its size', async () => {
    const a = makeLink();
    const { port } = await a.addListener({ port: 0 });
    const [[aId]] = await Promise.all([waitFor<[string]>(a, 'connect'), rawClient(port).then(({ bad }) => bad.write('hello'))]);
    const [id, data] = await waitFor<[string, Buffer]>(a, 'recv');
    expect(id).toBe(aId);
    expect(data.toString()).toBe('hello');
    expect(data.buffer.byteLength).toBe(5);
  });

  it('idle plain TCP connections hold small read buffers (4 KiB, not 64 KiB, each)', async () => {
    const a = makeLink();
    const { port } = await a.addListener({ port: 0 });
    const n = 100;
    let got = 0;
    a.on('recv', () => got++);
    const gc = collector();
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const clients = await Promise.all(Array.from({ length: n }, () => rawClient(port)));
    for (const { bad } of clients) bad.write(Buffer.alloc(100, 1));
    await until(() => got >= n);
    gc();
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(grown).toBeLessThan((n * READ_CHUNK_SIZE) / 4);
  });

  it('honours backpressure: writable() turns false and drain follows', async () => {
    const a = makeLink();
    const b = makeLink();
    const pa = new Packeter(a, { highWaterMark: 64 * 1024 });
    const pb = new Packeter(b);
    const { port } = await a.addListener({ port: 0 });
    const [aId] = await Promise.all([
      waitFor<[string]>(pa, 'connect').then(([c]) => c),
      b.addConnector({ host: '127.0.0.1', port }),
    ]);
    let bytes = 0;
    pb.on('packet', (_c, p) => (bytes += p.length));
    const chunk = Buffer.alloc(32 * 1024);
    let n = 0;
    while (pa.writable(aId)) {
      pa.sendPacket(aId, chunk);
      n++;
    }
    expect(n).toBeGreaterThan(0);
    expect(pa.bufferedAmount(aId)).toBeGreaterThanOrEqual(64 * 1024);
    await waitFor(pa, 'drain');
    expect(pa.writable(aId)).toBe(true);
    await until(() => bytes === n * chunk.length);
  });
});
