import { afterEach, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { closeAllPeers, connect, inbox, listen, makePeer } from './helpers/peers.js';
import { until, waitFor } from './helpers/wait.js';

afterEach(closeAllPeers);

describe('Messaging between two peers', () => {
  it('identifies both sides and delivers both ways', async () => {
    const alice = makePeer('alice');
    const bob = makePeer('bob');
    const port = await listen(alice);
    const aConnected = waitFor<[string, string]>(alice.messaging, 'connect');
    const bConnected = waitFor<[string, string]>(bob.messaging, 'connect');
    connect(bob, port);
    expect((await aConnected)[1]).toBe('bob');
    expect((await bConnected)[1]).toBe('alice');
    const gotA = inbox(alice);
    const gotB = inbox(bob);
    await alice.messaging.sendMessage('bob', new Message('hi bob'));
    await bob.messaging.sendMessage('alice', new Message('hi alice'));
    await until(() => gotA.length === 1 && gotB.length === 1);
    expect(gotA).toEqual([['bob', 'hi alice']]);
    expect(gotB).toEqual([['alice', 'hi bob']]);
  });

  it('queues messages for a peer never seen and delivers them when it connects', async () => {
    const bob = makePeer('bob');
    for (let i = 0; i < 100; i++) await bob.messaging.sendMessage('alice', new Message(`m${i}`));
    expect(bob.messaging.queueSize('alice')).toBe(100);
    const alice = makePeer('alice');
    const got = inbox(alice);
    const port = await listen(alice);
    connect(bob, port);
    await until(() => got.length === 100);
    expect(got.map(([, b]) => b)).toEqual(Array.from({ length: 100 }, (_, i) => `m${i}`));
    await until(() => bob.messaging.queueSize('alice') === 0);
  });

  it('keeps FIFO order per sender across reconnects, each message once', async () => {
    const alice = makePeer('alice');
    const bob = makePeer('bob');
    const got = inbox(alice);
    const port = await listen(alice);
    connect(bob, port, 10);
    await waitFor(bob.messaging, 'connect');
    const N = 5000;
    const sends: Promise<void>[] = [];
    for (let i = 0; i < N; i++) sends.push(bob.messaging.sendMessage('alice', new Message(String(i))));
    await Promise.all(sends);
    // cut the connection three times while messages flow
    for (let cut = 0; cut < 3; cut++) {
      const before = got.length;
      await until(() => got.length > before || got.length === N);
      const connId = bob.messaging.connectionOf('alice');
      if (connId) bob.link.closeConnection(connId);
      await waitFor(bob.messaging, 'connect');
    }
    await until(() => got.length >= N && bob.messaging.queueSize('alice') === 0, 20_000);
    expect(got.map(([, b]) => Number(b))).toEqual(Array.from({ length: N }, (_, i) => i));
  });

  it('delivers bodies of every size intact and in order, large ones kept by reference, across a reconnect', async () => {
    const alice = makePeer('alice');
    const bob = makePeer('bob');
    const got: Buffer[] = [];
    alice.messaging.on('message', (_c, _i, m) => got.push(Buffer.from(m.body)));
    // around the queue's copy limit (16 KiB) and the Packeter's, empty, and 1 MiB
    const sizes = [0, 1, 100, 16 * 1024 - 26, 16 * 1024 - 25, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 1 << 20, 100];
    const bodies = sizes.map((n, i) => {
      const b = Buffer.alloc(n);
      for (let k = 0; k < n; k++) b[k] = (k * 31 + i) & 0xff;
      return b;
    });
    // queued while alice is away, then half of them again after a reconnect
    for (const b of bodies) await bob.messaging.sendMessage('alice', new Message(b));
    const port = await listen(alice);
    connect(bob, port, 10);
    await until(() => got.length === bodies.length, 10_000);
    const connId = bob.messaging.connectionOf('alice')!;
    for (const b of bodies.slice(0, 5)) await bob.messaging.sendMessage('alice', new Message(b));
    bob.link.closeConnection(connId);
    await until(() => got.length === bodies.length + 5 && bob.messaging.queueSize('alice') === 0, 10_000);
    const want = [...bodies, ...bodies.slice(0, 5)];
    expect(got.map((b) => b.length)).toEqual(want.map((b) => b.length));
    for (let i = 0; i < want.length; i++) expect(got[i].equals(want[i])).toBe(true);
  });

  it('sends queued runs intact around cancelled, by-reference and too-large messages', async () => {
    const bob = makePeer('bob');
    const alice = makePeer('alice', {}, { maxPacketSize: 40_000 });
    const got: Buffer[] = [];
    alice.messaging.on('message', (_c, _i, m) => got.push(Buffer.from(m.body)));
    const dropped: string[] = [];
    bob.messaging.on('message-drop', (_i, _u, reason) => dropped.push(reason));
    const sizes: number[] = [];
    for (let i = 0; i < 600; i++) sizes.push(i % 97 === 5 ? 20_000 : i % 151 === 7 ? 50_000 : 10 + ((i * 37) % 300));
    const messages = sizes.map((n, i) => {
      const b = Buffer.alloc(n);
      for (let k = 0; k < n; k++) b[k] = (k * 13 + i) & 0xff;
      return new Message(b);
    });
    for (const m of messages) await bob.messaging.sendMessage('alice', m);
    const cancelled = new Set([0, 3, 4, 200, 201, 202, 598].map((i) => messages[i]));
    for (const m of cancelled) expect(bob.messaging.cancelMessage('alice', m.uuid)).toBe(true);
    const want = messages.filter((m) => !cancelled.has(m) && m.body.length < 40_000 - 25);
    connect(bob, await listen(alice));
    await until(() => got.length === want.length && bob.messaging.queueSize('alice') === 0, 10_000);
    expect(got.map((b) => b.length)).toEqual(want.map((m) => m.body.length));
    for (let i = 0; i < want.length; i++) expect(got[i].equals(want[i].body)).toBe(true);
    expect(dropped).toEqual(sizes.filter((n) => n === 50_000).map(() => 'too-large'));
  });

  it('cancelMessage takes back a queued message, never one already delivered', async () => {
    const bob = makePeer('bob');
    const keep = new Message('keep');
    const cancel = new Message('cancel');
    await bob.messaging.sendMessage('alice', keep);
    await bob.messaging.sendMessage('alice', cancel);
    expect(bob.messaging.cancelMessage('alice', cancel.uuid)).toBe(true);
    expect(bob.messaging.cancelMessage('alice', cancel.uuid)).toBe(false);
    expect(bob.messaging.cancelMessage('nobody', keep.uuid)).toBe(false);
    const alice = makePeer('alice');
    const got = inbox(alice);
    connect(bob, await listen(alice));
    await until(() => got.length === 1 && bob.messaging.queueSize('alice') === 0);
    expect(got).toEqual([['bob', 'keep']]);
    expect(bob.messaging.cancelMessage('alice', keep.uuid)).toBe(false);
  });

  it('refuses to send to itself and validates messages', async () => {
    const bob = makePeer('bob');
    await expect(bob.messaging.sendMessage('bob', new Message('x'))).rejects.toMatchObject({ code: 'ERR_SEND_TO_SELF' });
    await expect(bob.messaging.sendMessage('alice', 'x' as unknown as Message)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
    expect(() => new Message('x', { ttl: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new Message('x', { uuid: Buffer.alloc(3) })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => makePeer('x'.repeat(51))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('memory', () => {
  it('forgets the empty queues of peers that came and went, so new identities cannot grow it', async () => {
    const alice = makePeer('alice');
    const port = await listen(alice);
    const net = await import('node:net');
    let disconnects = 0;
    alice.messaging.on('disconnect', () => disconnects++);
    for (let i = 0; i < 100; i++) {
      const ident = Buffer.from(`visitor-${i}`);
      const frame = Buffer.alloc(5 + ident.length);
      frame.writeUInt32BE(1 + ident.length);
      frame[4] = 2;
      ident.copy(frame, 5);
      const sock = net.connect(port, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      sock.write(Buffer.concat([Buffer.from('000000050000000001', 'hex'), frame]));
      await until(() => alice.messaging.isConnected(`visitor-${i}`));
      sock.destroy();
      await until(() => disconnects === i + 1);
    }
    const queues = (alice.messaging as unknown as { queues: Map<string, unknown> }).queues;
    expect(queues.size).toBe(0);
    // a peer that still has messages waiting keeps its queue
    await alice.messaging.sendMessage('visitor-0', new Message('later'));
    expect(queues.size).toBe(1);
  });
});

describe('TTL', () => {
  it('drops a TTL-0 message to an absent peer at once, never queued', async () => {
    const bob = makePeer('bob');
    const drops: Array<[string, string]> = [];
    bob.messaging.on('message-drop', (ident, _u, reason) => drops.push([ident, reason]));
    await bob.messaging.sendMessage('alice', new Message('now or never', { ttl: 0 }));
    expect(drops).toEqual([['alice', 'ttl']]);
    expect(bob.messaging.queueSize('alice')).toBe(0);
  });

  it('finds an expired message by timer while the peer stays away', async () => {
    const bob = makePeer('bob');
    const m = new Message('short-lived', { ttl: 150 });
    const longer = new Message('long-lived', { ttl: 60_000 });
    const start = performance.now();
    await bob.messaging.sendMessage('alice', m);
    await bob.messaging.sendMessage('alice', longer);
    const [ident, uuid, reason] = await waitFor<[string, Buffer, string]>(bob.messaging, 'message-drop');
    expect(performance.now() - start).toBeGreaterThanOrEqual(140);
    expect([ident, reason]).toEqual(['alice', 'ttl']);
    expect(uuid.equals(m.uuid)).toBe(true);
    expect(bob.messaging.queueSize('alice')).toBe(1);
  });

  it('sends a waiting message with its remaining TTL', async () => {
    const bob = makePeer('bob');
    await bob.messaging.sendMessage('alice', new Message('x', { ttl: 600_000 }));
    const alice = makePeer('alice');
    const port = await listen(alice);
    const got = waitFor<[string, string, Message]>(alice.messaging, 'message');
    connect(bob, port);
    const [, , msg] = await got;
    expect(msg.ttl).toBeLessThanOrEqual(600_000);
    expect(msg.ttl).toBeGreaterThanOrEqual(590_000);
  });
});

describe('queue limits', () => {
  it("'reject' rejects with ERR_QUEUE_FULL at the limit", async () => {
    const bob = makePeer('bob', { queueLimit: 3 });
    for (let i = 0; i < 3; i++) await bob.messaging.sendMessage('alice', new Message(`m${i}`));
    await expect(bob.messaging.sendMessage('alice', new Message('m3'))).rejects.toMatchObject({ code: 'ERR_QUEUE_FULL' });
    expect(bob.messaging.queueSize('alice')).toBe(3);
  });

  it("'drop-oldest' drops and reports the oldest", async () => {
    const bob = makePeer('bob', { queueLimit: 3, queuePolicy: 'drop-oldest' });
    const dropped: string[] = [];
    const msgs = Array.from({ length: 5 }, (_, i) => new Message(`m${i}`));
    bob.messaging.on('message-drop', (_i, uuid, reason) => {
      expect(reason).toBe('queue-full');
      dropped.push(msgs.find((m) => m.uuid.equals(uuid))!.body.toString());
    });
    for (const m of msgs) await bob.messaging.sendMessage('alice', m);
    expect(dropped).toEqual(['m0', 'm1']);
    const alice = makePeer('alice');
    const got = inbox(alice);
    connect(bob, await listen(alice));
    await until(() => got.length === 3);
    expect(got.map(([, b]) => b)).toEqual(['m2', 'm3', 'm4']);
  });

  it("'block' holds the sender until the peer takes messages", async () => {
    const bob = makePeer('bob', { queueLimit: 2, queuePolicy: 'block' });
    await bob.messaging.sendMessage('alice', new Message('a'));
    await bob.messaging.sendMessage('alice', new Message('b'));
    let third = false;
    const p = bob.messaging.sendMessage('alice', new Message('c')).then(() => (third = true));
    await new Promise((r) => setImmediate(r));
    expect(third).toBe(false);
    const alice = makePeer('alice');
    const got = inbox(alice);
    connect(bob, await listen(alice));
    await p;
    await until(() => got.length === 3);
    expect(got.map(([, b]) => b)).toEqual(['a', 'b', 'c']);
  });
});

describe('keepalive', () => {
  it('pings a silent peer and closes the connection when nothing comes back', async () => {
    const alice = makePeer('alice', { keepaliveInterval: 100, keepaliveWait: 100 });
    const port = await listen(alice);
    const net = await import('node:net');
    const sock = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    sock.on('data', (d) => chunks.push(d));
    await new Promise((r) => sock.once('connect', r));
    // identify as a plain snakeMQ 1.6 peer, then stay silent
    sock.write(Buffer.from('000000050000000001' + '00000006027369' + '6c6e74', 'hex'));
    const errors: Array<Error & { code?: string }> = [];
    alice.messaging.on('error', (e) => errors.push(e));
    const [, ident] = await waitFor<[string, string]>(alice.messaging, 'disconnect');
    expect(ident).toBe('silnt');
    expect(errors.map((e) => e.code)).toContain('ERR_KEEPALIVE_TIMEOUT');
    const all = Buffer.concat(chunks).toString('hex');
    expect(all).toContain('0000000104'); // the ping
    sock.destroy();
  });

  it('keeps a connection that answers pings', async () => {
    const alice = makePeer('alice', { keepaliveInterval: 50, keepaliveWait: 50 });
    const bob = makePeer('bob', { keepaliveInterval: 50, keepaliveWait: 50 });
    let disconnects = 0;
    alice.messaging.on('disconnect', () => disconnects++);
    connect(bob, await listen(alice));
    await waitFor(alice.messaging, 'connect');
    // ten keepalive periods with no traffic but pings and pongs
    await new Promise((r) => setTimeout(r, 1000));
    expect(disconnects).toBe(0);
    expect(alice.messaging.isConnected('bob')).toBe(true);
  });
});

describe('the snakeMQ tutorial mesh: bob, alice, jack', () => {
  it('ends with exactly one identified connection per pair and delivers both ways', async () => {
    const bob = makePeer('bob');
    const alice = makePeer('alice');
    const jack = makePeer('jack');
    const portBob = await listen(bob); // bob: listener "4000"
    const portJack = await listen(jack); // jack: listener "4001"
    connect(bob, portJack); // bob connects to 4001
    connect(alice, portBob); // alice connects to 4000 and 4001
    connect(alice, portJack);
    connect(jack, portBob); // jack connects to 4000: bob and jack connect both ways
    const peers = [bob, alice, jack];
    await until(() => peers.every((p) => p.messaging.connectedPeers().length === 2), 15_000, 'a full mesh');
    // bob and jack agree on the one connection they keep: same ports seen from both ends
    const bj = bob.packeter.connectionInfo(bob.messaging.connectionOf('jack')!)!;
    const jb = jack.packeter.connectionInfo(jack.messaging.connectionOf('bob')!)!;
    expect([bj.localPort, bj.remotePort]).toEqual([jb.remotePort, jb.localPort]);
    const boxes = new Map(peers.map((p) => [p.ident, inbox(p)]));
    for (const from of peers) {
      for (const to of peers) {
        if (from !== to) await from.messaging.sendMessage(to.ident, new Message(`${from.ident}->${to.ident}`));
      }
    }
    await until(() => [...boxes.values()].every((b) => b.length === 2));
    for (const p of peers) {
      expect(boxes.get(p.ident)!.map(([, b]) => b).sort()).toEqual(
        peers.filter((o) => o !== p).map((o) => `${o.ident}->${p.ident}`).sort(),
      );
    }
    // and it stays that way: no connection is being torn down and rebuilt
    expect(peers.every((p) => p.messaging.connectedPeers().length === 2)).toBe(true);
  });
});
