/**
 * Many connections on one Link and one Packeter: they share one read buffer and one slab of
 * outgoing small packets, so interleaved traffic on them must still arrive intact and in order.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Link, READ_CHUNK_SIZE } from '../src/link.js';
import { COPY_LIMIT, Packeter } from '../src/packeter.js';
import { prng } from './helpers/prng.js';
import { until } from './helpers/wait.js';

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

/** Packet `seq` of connection `tag`: its length and bytes follow from both. */
function packet(tag: number, seq: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = (tag * 31 + seq * 7 + i) & 0xff;
  if (len >= 8) {
    b.writeUInt32BE(tag, 0);
    b.writeUInt32BE(seq, 4);
  }
  return b;
}

describe('many connections on one Link and Packeter', () => {
  it('interleaved packets of every size arrive intact and in order on every connection, both ways', async () => {
    const CONNS = 24;
    const PER_CONN = 60;
    const hubLink = new Link();
    const peersLink = new Link(); // all connectors on one Link: its read buffer is shared too
    closers.push(() => hubLink.close(), () => peersLink.close());
    const hub = new Packeter(hubLink);
    const peers = new Packeter(peersLink);
    const { port } = await hubLink.addListener({ port: 0 });
    const hubConns: string[] = [];
    const peerConns: string[] = [];
    hub.on('connect', (id) => hubConns.push(id));
    peers.on('connect', (id) => peerConns.push(id));
    for (let i = 0; i < CONNS; i++) peersLink.addConnector({ host: '127.0.0.1', port });
    await until(() => hubConns.length === CONNS && peerConns.length === CONNS);

    // Sizes from 0 to past the read buffer, small (copied into the shared slab) and large.
    const rnd = prng(17);
    const sizes = [0, 1, 7, 100, 4095, 4096, COPY_LIMIT - 1, COPY_LIMIT, READ_CHUNK_SIZE - 4, READ_CHUNK_SIZE + 1, 200_000];
    const lenOf = (): number => (rnd() < 0.3 ? sizes[Math.floor(rnd() * sizes.length)] : Math.floor(rnd() * 300));
    // The peer side's connections and the hub's, paired by port.
    const hubByPort = new Map(hubConns.map((id) => [hub.connectionInfo(id)!.remotePort, id]));
    const pairs = peerConns.map((pid) => [pid, hubByPort.get(peers.connectionInfo(pid)!.localPort)!] as const);
    // plans[i]: the packet lengths peer→hub and hub→peer on pair i
    const plans = pairs.map(() => [Array.from({ length: PER_CONN }, lenOf), Array.from({ length: PER_CONN }, lenOf)]);
    type Rx = { tag: number; lens: number[]; next: number; bad: number };
    const atHub = new Map<string, Rx>(pairs.map(([, hid], i) => [hid, { tag: 1000 + i, lens: plans[i][0], next: 0, bad: 0 }]));
    const atPeers = new Map<string, Rx>(pairs.map(([pid], i) => [pid, { tag: 2000 + i, lens: plans[i][1], next: 0, bad: 0 }]));
    const check = (rx: Map<string, Rx>) => (id: string, payload: Buffer) => {
      const r = rx.get(id)!;
      const seq = r.next++;
      if (seq >= PER_CONN || !packet(r.tag, seq, r.lens[seq]).equals(payload)) r.bad++;
    };
    hub.on('packet', check(atHub));
    peers.on('packet', check(atPeers));
    // Round robin over the connections, a few packets each turn, from both sides at once.
    for (let seq = 0; seq < PER_CONN; seq++) {
      pairs.forEach(([pid, hid], i) => {
        peers.sendPacket(pid, packet(1000 + i, seq, plans[i][0][seq]));
        hub.sendPacket(hid, packet(2000 + i, seq, plans[i][1][seq]));
      });
      if (seq % 5 === 4) await new Promise((r) => setImmediate(r));
    }
    const done = (rx: Map<string, Rx>): boolean => [...rx.values()].every((r) => r.next === PER_CONN);
    await until(() => done(atHub) && done(atPeers), 20_000);
    for (const rx of [atHub, atPeers]) for (const r of rx.values()) expect(r.bad).toBe(0);
  });

  it('packets sent to many connections in one turn are flushed by one setImmediate, one write per connection', async () => {
    const CONNS = 40;
    const hubLink = new Link();
    const peersLink = new Link();
    closers.push(() => hubLink.close(), () => peersLink.close());
    const hub = new Packeter(hubLink);
    const peers = new Packeter(peersLink);
    const { port } = await hubLink.addListener({ port: 0 });
    const hubConns: string[] = [];
    let peerConns = 0;
    hub.on('connect', (id) => hubConns.push(id));
    peers.on('connect', () => peerConns++);
    for (let i = 0; i < CONNS; i++) peersLink.addConnector({ host: '127.0.0.1', port });
    await until(() => hubConns.length === CONNS && peerConns === CONNS);
    const got = new Map<string, Buffer[]>();
    peers.on('packet', (id, payload) => {
      const l = got.get(id) ?? [];
      l.push(Buffer.from(payload));
      got.set(id, l);
    });
    // the hub's writes, per connection
    const writes = new Map<string, number>();
    const send = hubLink.send.bind(hubLink);
    hubLink.send = (connId, data, cb) => {
      writes.set(connId, (writes.get(connId) ?? 0) + 1);
      return send(connId, data, cb);
    };
    const immediates = vi.spyOn(globalThis, 'setImmediate');
    try {
      // three packets to every connection in one turn
      for (let k = 0; k < 3; k++) hubConns.forEach((id, i) => hub.sendPacket(id, packet(i, k, 50 + k)));
      expect(immediates).toHaveBeenCalledTimes(1);
    } finally {
      immediates.mockRestore();
    }
    await until(() => got.size === CONNS && [...got.values()].every((l) => l.length === 3), 10_000);
    for (const id of hubConns) expect(writes.get(id)).toBe(1);
    // what each peer connection got: the three packets of one hub connection, in order
    const tags = new Set<number>();
    for (const l of got.values()) {
      const tag = l[0].readUInt32BE(0);
      tags.add(tag);
      expect(l.map((b) => b.readUInt32BE(4))).toEqual([0, 1, 2]);
      l.forEach((b, k) => expect(b.equals(packet(tag, k, 50 + k))).toBe(true));
    }
    expect(tags.size).toBe(CONNS);
    // later output is flushed by a new setImmediate, as before
    const before = got.get([...got.keys()][0])!.length;
    hub.sendPacket(hubConns[0], packet(0, 3, 10));
    await until(() => [...got.values()].some((l) => l.length === before + 1));
  });
});
