/**
 * The RPC server's reply cache and the envelope fast paths, driven with hand-made bodies over a
 * minimal synchronous messaging stand-in: request ids chosen by the test (a reference model
 * says which ones the cache must know), and envelopes laid out as our encoder writes them,
 * laid out otherwise, or broken.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import type { MessagingEvents } from '../src/messaging.js';
import { MESSAGE_HEADER_SIZE } from '../src/protocol.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { REPLY_PREFIX, REQUEST_PREFIX, RpcClient, RpcServer } from '../src/rpc.js';
import { MsgpackCodec } from '../src/rpc-codec.js';
import { RpcDecodeError } from '../src/rpc-errors.js';
import { prng } from './helpers/prng.js';

const codec = new MsgpackCodec();

/** Hands sent messages to `sent` at once; received ones are emitted by the test. */
class StubMessaging extends EventEmitter<MessagingEvents> {
  readonly sent: { to: string; message: Message }[] = [];
  constructor(readonly identifier: string) {
    super();
  }
  sendMessage(ident: string, message: Message): Promise<void> {
    this.sent.push({ to: ident, message });
    return Promise.resolve();
  }
  isConnected(): boolean {
    return true;
  }
  /**
   * Emits a message as Messaging hands over received ones: its body a stretch of a larger
   * buffer (whose view is made only if read), followed here by a copy of the body's start and
   * a few random bytes, so that a decoder reading past the body's end meets likely bytes.
   */
  receive(ident: string, body: Buffer): void {
    const before = randomBytes(5);
    const slab = Buffer.concat([before, randomBytes(16), Buffer.alloc(8), body, body.subarray(0, 40), randomBytes(7)]);
    const at = before.length;
    this.emit('message', 'c1', ident, Message.fromWire(slab, at, at + MESSAGE_HEADER_SIZE + body.length, null, 0));
  }
  /** Emits the first `cut` bytes of `full` as a message whose buffer goes on with the rest of `full`. */
  receiveCut(ident: string, full: Buffer, cut: number): void {
    const slab = Buffer.concat([randomBytes(16), Buffer.alloc(8), full]);
    this.emit('message', 'c1', ident, Message.fromWire(slab, 0, MESSAGE_HEADER_SIZE + cut, null, 0));
  }
}

function request(id: Buffer, args: unknown[], object = 'calc', method = 'add', command = 'call'): Buffer {
  return Buffer.concat([REQUEST_PREFIX, codec.encode({ command, object, method, args, req_id: id })]);
}

function server(options = {}) {
  const m = new StubMessaging('server');
  const srv = new RpcServer(new ReceiveHook(m), options);
  const errors: Error[] = [];
  srv.on('error', (err) => errors.push(err));
  const runs = new Map<string, number>();
  srv.registerObject(
    {
      add: (a: number, b: number) => a + b,
      tag: (id: string) => {
        runs.set(id, (runs.get(id) ?? 0) + 1);
        return id;
      },
      when: (d: Date) => d,
    },
    'calc',
  );
  const replies = () => m.sent.map((s) => codec.decode(s.message.body.subarray(REPLY_PREFIX.length)) as Record<string, unknown>);
  return { m, srv, errors, runs, replies };
}

describe('RpcServer reply cache', () => {
  it.each([1, 3, 6, 7, 37])('knows exactly the last replyCacheSize (%i) answered ids (random ids, two peers)', (size) => {
    const { m, runs } = server({ replyCacheSize: size });
    const rnd = prng(size);
    // reference model: per peer, the answered ids in order; the cache keeps the newest `size` of all
    const all: { peer: string; hex: string }[] = [];
    const known = () => new Set(all.slice(-size).map((e) => `${e.peer}/${e.hex}`));
    const seen: { peer: string; id: Buffer }[] = [];
    for (let step = 0; step < 4000; step++) {
      const peer = rnd() < 0.5 ? 'alice' : 'bob';
      let id: Buffer;
      let from = peer;
      if (seen.length > 0 && rnd() < 0.4) {
        const pick = seen[Math.floor(rnd() * Math.min(seen.length, size * 3)) + Math.max(0, seen.length - size * 3)];
        id = pick.id;
        from = pick.peer;
      } else {
        id = Buffer.alloc(16);
        for (let i = 0; i < 16; i++) id[i] = Math.floor(rnd() * 256);
        seen.push({ peer, id });
      }
      const hex = id.toString('hex');
      const key = `${from}/${hex}`;
      const expectRun = !known().has(key);
      const before = runs.get(key) ?? 0;
      const sentBefore = m.sent.length;
      m.receive(from, request(id, [key], 'calc', 'tag'));
      expect(runs.get(key) ?? 0).toBe(before + (expectRun ? 1 : 0));
      // answered either way: by running, or from the cache with the same reply
      expect(m.sent.length).toBe(sentBefore + 1);
      const reply = codec.decode(m.sent[sentBefore].message.body.subarray(REPLY_PREFIX.length)) as { req_id: Buffer; return: string };
      expect(reply.req_id.equals(id)).toBe(true);
      expect(reply.return).toBe(key);
      if (expectRun) all.push({ peer: from, hex });
    }
  });

  it('keeps the newest replies within replyCacheBytes (replies of many sizes; the ring grows while it wraps)', () => {
    const limit = 3000;
    const { m, runs } = server({ replyCacheSize: 1000, replyCacheBytes: limit });
    const rnd = prng(99);
    // reference model: answered ids with their reply's length, oldest first; the oldest go while
    // the total is over; `gone`: the ids it evicted last
    const model: { id: Buffer; key: string; length: number }[] = [];
    let gone: Buffer[] = [];
    let total = 0;
    const totalRuns = () => [...runs.values()].reduce((a, b) => a + b, 0);
    let fromCache = 0;
    let rerun = 0;
    for (let step = 0; step < 4000; step++) {
      // duplicates of cached ids and of ids evicted lately, to find the cache's edge
      let id: Buffer;
      const r = rnd();
      if (r < 0.3 && model.length > 0) id = model[Math.floor(rnd() * model.length)].id;
      else if (r < 0.6 && gone.length > 0) id = gone[Math.floor(rnd() * gone.length)];
      else {
        id = Buffer.alloc(16);
        for (let i = 0; i < 16; i++) id[i] = Math.floor(rnd() * 256);
      }
      const key = id.toString('hex');
      // long and short replies in turns of 300, so that the number of cached replies swings
      // up and down, and the ring grows while its oldest entry is not in its first slot
      const size = Math.floor(step / 300) % 2 === 1 ? Math.floor(rnd() * 40) : 100 + Math.floor(rnd() * 900);
      const expectRun = !model.some((e) => e.key === key);
      const tag = key + 'x'.repeat(size);
      const ranBefore = totalRuns();
      m.receive('alice', request(id, [tag], 'calc', 'tag'));
      expect(totalRuns() - ranBefore, `step ${step}`).toBe(expectRun ? 1 : 0);
      const reply = m.sent[m.sent.length - 1].message.body;
      const decoded = codec.decode(reply.subarray(REPLY_PREFIX.length)) as { req_id: Buffer; return: string };
      expect(decoded.req_id.equals(id)).toBe(true);
      if (expectRun) {
        expect(decoded.return).toBe(tag);
        if (gone.includes(id)) rerun++;
        gone = gone.filter((g) => g !== id);
        model.push({ id, key, length: reply.length });
        total += reply.length;
        while (total > limit) {
          const e = model.shift()!;
          total -= e.length;
          gone.push(e.id);
        }
        gone = gone.slice(-12);
      } else {
        fromCache++;
        expect(decoded.return.startsWith(key)).toBe(true);
      }
    }
    expect(fromCache).toBeGreaterThan(500);
    expect(rerun).toBeGreaterThan(500);
  });

  it('a request still running stays known while answered ones are evicted around it, and joins the ring when done', async () => {
    const m = new StubMessaging('server');
    const srv = new RpcServer(new ReceiveHook(m), { replyCacheSize: 2 });
    let slowRuns = 0;
    let fastRuns = 0;
    let finish!: (v: number) => void;
    srv.registerObject({ slow: () => (slowRuns++, new Promise<number>((r) => (finish = r))), fast: (i: number) => (fastRuns++, i) }, 'calc');
    const slowId = Buffer.alloc(16, 0xaa);
    const id = (i: number) => Buffer.alloc(16, i);
    m.receive('alice', request(slowId, [], 'calc', 'slow'));
    for (let i = 1; i <= 10; i++) m.receive(i % 2 ? 'alice' : 'bob', request(id(i), [i], 'calc', 'fast'));
    m.receive('alice', request(slowId, [], 'calc', 'slow'));
    expect(slowRuns).toBe(1);
    finish(7);
    await new Promise((r) => setImmediate(r));
    const slowReplies = () => m.sent.filter((x) => x.message.body.includes(slowId)).length;
    expect(slowReplies()).toBe(1);
    // the newest answered: from the cache
    m.receive('alice', request(slowId, [], 'calc', 'slow'));
    expect(slowRuns).toBe(1);
    expect(slowReplies()).toBe(2);
    // evicted by two newer answers: run again
    m.receive('bob', request(id(11), [11], 'calc', 'fast'));
    m.receive('bob', request(id(12), [12], 'calc', 'fast'));
    m.receive('alice', request(slowId, [], 'calc', 'slow'));
    expect(slowRuns).toBe(2);
    expect(fastRuns).toBe(12);
  });

  it('with replyCacheBytes 0 every answer is forgotten at once, and the per-peer tables go with them', () => {
    const { m, srv, runs } = server({ replyCacheBytes: 0 });
    const id = Buffer.alloc(16, 1);
    for (const peer of ['alice', 'bob', 'alice']) m.receive(peer, request(id, [peer], 'calc', 'tag'));
    expect(runs.get('alice')).toBe(2);
    expect(runs.get('bob')).toBe(1);
    expect(m.sent).toHaveLength(3);
    expect((srv as unknown as { cache: Map<string, unknown> }).cache.size).toBe(0);
  });

  it('a duplicate of a request still running is not run again, and is answered once it is done', async () => {
    const m = new StubMessaging('server');
    const srv = new RpcServer(new ReceiveHook(m));
    let runs = 0;
    let finish!: (v: number) => void;
    srv.registerObject({ slow: () => (runs++, new Promise<number>((r) => (finish = r))) }, 'calc');
    const id = Buffer.alloc(16, 3);
    m.receive('alice', request(id, [], 'calc', 'slow'));
    m.receive('alice', request(id, [], 'calc', 'slow'));
    expect(runs).toBe(1);
    expect(m.sent.length).toBe(0);
    finish(5);
    await new Promise((r) => setImmediate(r));
    expect(m.sent.length).toBe(1);
    m.receive('alice', request(id, [], 'calc', 'slow'));
    expect(m.sent.length).toBe(2);
    expect(m.sent[1].message.body.equals(m.sent[0].message.body)).toBe(true);
    expect(runs).toBe(1);
  });
});

describe('RPC envelopes', () => {
  it('a request laid out as our encoder writes it is answered with the bytes the general encoder writes', () => {
    const { replies, m } = server();
    const id = Buffer.alloc(16, 9);
    m.receive('alice', request(id, [2, 3]));
    expect(replies()).toStrictEqual([{ req_id: id, ok: true, return: 5 }]);
    const expected = Buffer.concat([REPLY_PREFIX, codec.encode({ req_id: id, ok: true, return: 5 })]);
    expect(m.sent[0].message.body.equals(expected)).toBe(true);
  });

  it('requests laid out otherwise are read the same: keys reordered, an extra key, long names, a signal', () => {
    const { replies, m, errors } = server();
    const long = 'o'.repeat(40);
    const srvLong = new StubMessaging('s2');
    const s2 = new RpcServer(new ReceiveHook(srvLong));
    s2.registerObject({ [long]: (x: string) => x + '!' }, long);
    const id = (n: number) => Buffer.alloc(16, n);
    m.receive('alice', Buffer.concat([REQUEST_PREFIX, codec.encode({ req_id: id(1), args: [1, 1], method: 'add', object: 'calc', command: 'call' })]));
    m.receive('alice', Buffer.concat([REQUEST_PREFIX, codec.encode({ command: 'call', object: 'calc', method: 'add', args: [2, 2], req_id: id(2), extra: 1 })]));
    m.receive('alice', request(id(3), [3, 3], 'calc', 'add', 'signal'));
    srvLong.receive('alice', request(id(4), ['x'], long, long));
    expect(replies()).toStrictEqual([
      { req_id: id(1), ok: true, return: 2 },
      { req_id: id(2), ok: true, return: 4 },
    ]);
    const r = codec.decode(srvLong.sent[0].message.body.subarray(REPLY_PREFIX.length));
    expect(r).toStrictEqual({ req_id: id(4), ok: true, return: 'x!' });
    expect(errors).toEqual([]);
  });

  it('values with extensions (Dates, BigInts) travel both ways through the fast layouts', () => {
    const { replies, m } = server();
    const d = new Date(12345);
    m.receive('alice', request(Buffer.alloc(16, 5), [d], 'calc', 'when'));
    expect(replies()).toStrictEqual([{ req_id: Buffer.alloc(16, 5), ok: true, return: d }]);
  });

  it('a request in our layout with broken argument bytes is reported as a decode error, and the next one is served', () => {
    const { replies, m, errors } = server();
    const good = request(Buffer.alloc(16, 1), [1, 2]);
    // the args array claims 3 items but holds 2: the bytes after it are then read as its third
    const broken = Buffer.from(good);
    const argsAt = broken.indexOf(Buffer.from('\xa4args', 'latin1')) + 5;
    expect(broken[argsAt]).toBe(0x92);
    broken[argsAt] = 0x93;
    m.receive('alice', broken);
    // a body that is cut short
    m.receive('alice', good.subarray(0, good.length - 3));
    expect(errors.length).toBe(2);
    for (const e of errors) expect(e).toBeInstanceOf(RpcDecodeError);
    expect(m.sent.length).toBe(0);
    m.receive('alice', good);
    expect(replies()).toStrictEqual([{ req_id: Buffer.alloc(16, 1), ok: true, return: 3 }]);
  });

  it('a proxy writes request bodies byte for byte as the general encoder does (any names, any arguments)', () => {
    const m = new StubMessaging('client');
    const client = new RpcClient(new ReceiveHook(m));
    const names = ['calc', 'ünï-cødé ✓', 'x'.repeat(40), ''];
    const argLists: unknown[][] = [[], [1, 'two', [3, { four: 4 }]], [new Date(5), 6n ** 30n], [Buffer.from('bin'), null, undefined, -1.5]];
    let n = 0;
    for (const object of names) {
      for (const method of names) {
        const proxy = client.getProxy<Record<string, (...a: unknown[]) => Promise<unknown>>>('server', object);
        for (const args of argLists) {
          void proxy[method](...args).catch(() => {});
          const body = m.sent[n++].message.body;
          const id = body.subarray(body.length - 16);
          const expected = Buffer.concat([REQUEST_PREFIX, codec.encode({ command: 'call', object, method, args, req_id: id })]);
          expect(body.equals(expected)).toBe(true);
        }
      }
    }
    client.close();
  });

  it('a proxy refuses arguments nested too deeply exactly where the general encoder does', async () => {
    const small = new MsgpackCodec({ maxDepth: 4 });
    const m = new StubMessaging('client');
    const client = new RpcClient(new ReceiveHook(m), { codec: small });
    const proxy = client.getProxy<{ f(v: unknown): Promise<unknown> }>('server', 'calc');
    for (let depth = 0; depth < 6; depth++) {
      let v: unknown = 1;
      for (let i = 0; i < depth; i++) v = [v];
      let generalError: unknown;
      try {
        small.encode({ command: 'call', object: 'calc', method: 'f', args: [v], req_id: Buffer.alloc(16) });
      } catch (err) {
        generalError = err;
      }
      const before = m.sent.length;
      const call = proxy.f(v);
      if (generalError === undefined) {
        expect(m.sent.length).toBe(before + 1);
        void call.catch(() => {});
      } else {
        await expect(call).rejects.toMatchObject({ code: (generalError as { code: string }).code });
        expect(m.sent.length).toBe(before);
      }
    }
    client.close();
  });

  it('requests and replies in our layout are limited in nesting exactly as when the whole envelope is decoded or encoded', async () => {
    const MAX = 4;
    const small = new MsgpackCodec({ maxDepth: MAX });
    const big = new MsgpackCodec({ maxDepth: 100 });
    const nest = (d: number): unknown => {
      let v: unknown = 1;
      for (let i = 0; i < d; i++) v = [v];
      return v;
    };
    const generalDecodes = (body: Buffer, prefix: Buffer): boolean => {
      try {
        small.decode(body.subarray(prefix.length));
        return true;
      } catch {
        return false;
      }
    };
    for (let d = 0; d <= MAX + 1; d++) {
      // server: a request whose argument is nested d deep, laid out as our encoder writes it
      const m = new StubMessaging('server');
      const srv = new RpcServer(new ReceiveHook(m), { codec: small });
      srv.on('error', () => {});
      let ran = 0;
      srv.registerObject({ f: (v: unknown) => (ran++, v) }, 'o');
      const body = Buffer.concat([REQUEST_PREFIX, big.encode({ command: 'call', object: 'o', method: 'f', args: [nest(d)], req_id: Buffer.alloc(16, d) })]);
      m.receive('peer', body);
      expect(ran).toBe(generalDecodes(body, REQUEST_PREFIX) ? 1 : 0);
      // its reply, when it ran: encodable by the general encoder exactly when sent as a success
      if (ran === 1) {
        const reply = codec.decode(m.sent[0].message.body.subarray(REPLY_PREFIX.length)) as { ok: boolean };
        let generalEncodes = true;
        try {
          small.encode({ req_id: Buffer.alloc(16), ok: true, return: nest(d) });
        } catch {
          generalEncodes = false;
        }
        expect(reply.ok).toBe(generalEncodes);
      }
      // client: a success reply in our layout whose value is nested d deep
      const mc = new StubMessaging('client');
      const client = new RpcClient(new ReceiveHook(mc), { codec: small });
      client.on('error', () => {});
      const call = client.call('server', 'o', 'f', []);
      const id = (codec.decode(mc.sent[0].message.body.subarray(REQUEST_PREFIX.length)) as { req_id: Buffer }).req_id;
      const replyBody = Buffer.concat([REPLY_PREFIX, big.encode({ req_id: id, ok: true, return: nest(d) })]);
      mc.receive('server', replyBody);
      const settled = await Promise.race([call.then(() => true), new Promise((r) => setTimeout(() => r(false), 20))]);
      expect(settled).toBe(generalDecodes(replyBody, REPLY_PREFIX));
      client.close();
    }
  });

  it('the client reads replies laid out as our encoder writes them or otherwise, and reports broken ones', async () => {
    const m = new StubMessaging('client');
    const client = new RpcClient(new ReceiveHook(m));
    const errors: Error[] = [];
    client.on('error', (e) => errors.push(e));
    const calls = [client.call('server', 'calc', 'add', [1]), client.call('server', 'calc', 'add', [2]), client.call('server', 'calc', 'add', [3])];
    const ids = m.sent.map((s) => (codec.decode(s.message.body.subarray(REQUEST_PREFIX.length)) as { req_id: Buffer }).req_id);
    const reply = (v: Record<string, unknown>) => Buffer.concat([REPLY_PREFIX, codec.encode(v)]);
    // ours, with a broken value first (reported, the call still waits), then a good one
    const ours = reply({ req_id: ids[0], ok: true, return: [1, 2] });
    const broken = Buffer.from(ours);
    broken[broken.length - 3] = 0x93;
    m.receive('server', broken);
    m.receive('server', ours);
    // keys in another order
    m.receive('server', reply({ ok: true, return: 'two', req_id: ids[1] }));
    // ours with an extension value
    m.receive('server', reply({ req_id: ids[2], ok: true, return: new Date(7) }));
    expect(await Promise.all(calls)).toStrictEqual([[1, 2], 'two', new Date(7)]);
    expect(errors.length).toBe(1);
    expect(errors[0]).toBeInstanceOf(RpcDecodeError);
    client.close();
  });

  it('a body cut short is never read on into the bytes after it in its buffer (requests and replies, every cut)', async () => {
    // the buffer goes on with exactly the missing bytes: reading past the body's end would succeed
    const { m, errors } = server();
    const good = request(Buffer.alloc(16, 4), [20, 22]);
    for (let cut = 0; cut < good.length; cut++) m.receiveCut('alice', good, cut);
    expect(m.sent).toHaveLength(0);
    expect(errors.length).toBe(good.length - REQUEST_PREFIX.length);
    m.receiveCut('alice', good, good.length);
    expect((codec.decode(m.sent[0].message.body.subarray(REPLY_PREFIX.length)) as { return: number }).return).toBe(42);

    const cm = new StubMessaging('client');
    const client = new RpcClient(new ReceiveHook(cm));
    const clientErrors: Error[] = [];
    client.on('error', (e) => clientErrors.push(e));
    let settled = false;
    const call = client.call('server', 'calc', 'add', [1]).finally(() => (settled = true));
    const id = (codec.decode(cm.sent[0].message.body.subarray(REQUEST_PREFIX.length)) as { req_id: Buffer }).req_id;
    const reply = Buffer.concat([REPLY_PREFIX, codec.encode({ req_id: id, ok: true, return: 'whole' })]);
    for (let cut = 0; cut < reply.length; cut++) cm.receiveCut('server', reply, cut);
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false);
    expect(clientErrors.length).toBe(reply.length - REPLY_PREFIX.length);
    cm.receiveCut('server', reply, reply.length);
    expect(await call).toBe('whole');
    client.close();
  });
});
