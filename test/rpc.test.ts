/**
 * RPC over the in-memory FakeMessaging: semantics, deterministic and fast. The same paths
 * over real Messaging and sockets are in rpc.integration.test.ts.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { REQUEST_PREFIX, RpcClient, RpcServer, rpcSignal } from '../src/rpc.js';
import { MsgpackCodec } from '../src/rpc-codec.js';
import { MemoryQueuesStorage } from '../storage/memory.js';
import { FakeNetwork } from './helpers/fake-messaging.js';
import { until, waitFor } from './helpers/wait.js';

const codec = new MsgpackCodec();

function pair(serverOptions = {}, clientOptions = {}) {
  const net = new FakeNetwork();
  const sm = net.add('server');
  const cm = net.add('client');
  const sHook = new ReceiveHook(sm);
  const cHook = new ReceiveHook(cm);
  const server = new RpcServer(sHook, serverOptions);
  const client = new RpcClient(cHook, clientOptions);
  return { net, sm, cm, sHook, cHook, server, client };
}

class Calc {
  calls = 0;
  add(a: number, b: number): number {
    this.calls++;
    return a + b;
  }
  async slowEcho<T>(v: T, ms: number): Promise<T> {
    await new Promise((r) => setTimeout(r, ms));
    return v;
  }
  fail(msg: string): never {
    const e = new TypeError(msg) as TypeError & { code: string };
    e.code = 'E_CALC';
    throw e;
  }
  pinged: unknown[] = [];
  ping(v: unknown): void {
    this.pinged.push(v);
    throw new Error('signal errors stay on the server');
  }
}
// vitest's transformer has no standard decorators; `@rpcSignal` itself is checked under tsx below
rpcSignal(Calc.prototype.ping);

describe('RpcServer + RpcClient', () => {
  it('calls a method and resolves with its return value, typed through the proxy', async () => {
    const { net, server, client } = pair();
    const calc = new Calc();
    server.registerObject(calc, 'calc');
    net.connect('server', 'client');
    const proxy = client.getProxy<Calc>('server', 'calc');
    const r: number = await proxy.add(2, 3);
    expect(r).toBe(5);
    expect(await proxy.slowEcho({ d: new Date(5), b: Buffer.from('x'), n: 7n }, 1)).toStrictEqual({
      d: new Date(5),
      b: Buffer.from('x'),
      n: 7n,
    });
    expect(client.pendingCalls).toBe(0);
  });

  it('a call made before the peer is connected waits, then is answered', async () => {
    const { net, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    const p = client.getProxy<Calc>('server', 'calc').add(1, 1);
    await new Promise((r) => setTimeout(r, 20));
    expect(client.pendingCalls).toBe(1);
    net.connect('server', 'client');
    expect(await p).toBe(2);
  });

  it('many calls in flight at once are each answered with their own result', async () => {
    const { net, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    const calc = client.getProxy<Calc>('server', 'calc');
    const ps = Array.from({ length: 2000 }, (_, i) => calc.slowEcho(i, (i * 7) % 5));
    expect(await Promise.all(ps)).toEqual(Array.from({ length: 2000 }, (_, i) => i));
  });

  it('a remote exception rejects with RemoteError carrying name, message, code and the remote stack', async () => {
    const { net, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    const err = await client.getProxy<Calc>('server', 'calc').fail('bad input').catch((e: unknown) => e);
    expect(err).toMatchObject({
      name: 'RemoteError',
      code: 'ERR_RPC_REMOTE',
      remoteName: 'TypeError',
      remoteMessage: 'bad input',
      remoteCode: 'E_CALC',
    });
    expect((err as { remoteStack: string }).remoteStack).toMatch(/TypeError: bad input\n\s+at Calc\.fail/);
  });

  it('odd thrown values (a string, an object with a throwing getter) still give a RemoteError', async () => {
    const { net, server, client } = pair();
    server.registerObject(
      {
        str() {
          throw 'plain string';
        },
        getter() {
          throw Object.defineProperty({}, 'message', {
            get() {
              throw new Error('gotcha');
            },
          });
        },
        async rejects() {
          throw null;
        },
      },
      'odd',
    );
    net.connect('server', 'client');
    await expect(client.call('server', 'odd', 'str')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteMessage: 'plain string' });
    await expect(client.call('server', 'odd', 'getter')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteName: 'Error' });
    await expect(client.call('server', 'odd', 'rejects')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteMessage: 'null' });
  });

  it('unknown object and unknown method reject with their typed errors; Object.prototype is not callable', async () => {
    const { net, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    await expect(client.getProxy('server', 'nope').add(1, 2)).rejects.toMatchObject({
      code: 'ERR_RPC_UNKNOWN_OBJECT',
      objectName: 'nope',
    });
    await expect(client.getProxy('server', 'calc').mul(1, 2)).rejects.toMatchObject({
      code: 'ERR_RPC_UNKNOWN_METHOD',
      objectName: 'calc',
      methodName: 'mul',
    });
    for (const m of ['constructor', 'hasOwnProperty', '__proto__', '__defineGetter__', 'calls']) {
      await expect(client.call('server', 'calc', m, [])).rejects.toMatchObject({ code: 'ERR_RPC_UNKNOWN_METHOD' });
    }
    server.unregisterObject('calc');
    await expect(client.call('server', 'calc', 'add', [1, 2])).rejects.toMatchObject({ code: 'ERR_RPC_UNKNOWN_OBJECT' });
  });

  it('with transferExceptions off the caller learns only that it failed; the server reports the details', async () => {
    const { net, server, client } = pair({ transferExceptions: false });
    server.registerObject(new Calc(), 'calc');
    const reported = waitFor<[Error, string]>(server, 'error');
    net.connect('server', 'client');
    const err = await client.getProxy<Calc>('server', 'calc').fail('secret').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_RPC_REMOTE', remoteStack: '' });
    expect((err as Error).message).not.toContain('secret');
    const [e, ident] = await reported;
    expect(e.message).toBe('secret');
    expect(ident).toBe('client');
  });

  it('signals: fire-and-forget with a TTL, no reply, exceptions stay on the server; asSignal(null) undoes it', async () => {
    const { net, cm, server, client } = pair();
    const calc = new Calc();
    server.registerObject(calc, 'calc');
    const errors: Error[] = [];
    server.on('error', (e) => errors.push(e));
    net.connect('server', 'client');
    const proxy = client.getProxy<Calc>('server', 'calc');
    const add = proxy.add.asSignal(5000);
    expect(add).toBe(proxy.add);
    expect(proxy.add.signalTtl).toBe(5000);
    expect(await proxy.add(1, 2)).toBeUndefined();
    expect(cm.sent.at(-1)!.message.ttl).toBe(5000);
    await proxy.ping.asSignal()('hello');
    await until(() => calc.pinged.length === 1 && calc.calls === 1);
    expect(errors.map((e) => e.message)).toEqual(['signal errors stay on the server']);
    expect(client.pendingCalls).toBe(0);
    proxy.add.asSignal(null);
    expect(await proxy.add(1, 2)).toBe(3);
    // a signal method called as a regular call answers, but a failure carries no details
    const err = await proxy.ping.asSignal(null)(1).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_RPC_REMOTE', remoteStack: '' });
  });

  it('a signal with TTL 0 to an absent peer is dropped, never run', async () => {
    const { net, cm, server, client } = pair();
    const calc = new Calc();
    server.registerObject(calc, 'calc');
    const drop = waitFor(cm, 'message-drop');
    await client.getProxy<Calc>('server', 'calc').add.asSignal(0)(1, 1);
    await drop;
    net.connect('server', 'client');
    expect(await client.getProxy<Calc>('server', 'calc').add(2, 2)).toBe(4);
    expect(calc.calls).toBe(1);
  });

  it('rpcSignal works as a standard method decorator (run under tsx)', async () => {
    const file = fileURLToPath(new URL('./fixtures/rpc-decorator.ts', import.meta.url));
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', file], { timeout: 30_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
    });
    expect(out.trim()).toBe('signal: true, regular: false');
  });

  it('methods can be marked as signals at registration too', async () => {
    const { net, server, client } = pair();
    const obj = {
      n: 0,
      bump() {
        this.n++;
        throw new Error('no');
      },
    };
    server.registerObject(obj, 'o', { signals: ['bump'] });
    server.on('error', () => {});
    net.connect('server', 'client');
    await expect(client.call('server', 'o', 'bump')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteStack: '' });
    const wrapped = { f: rpcSignal(() => 1) };
    server.registerObject(wrapped, 'w');
    expect(await client.call('server', 'w', 'f')).toBe(1);
  });

  it('timeout before the request was sent rejects with NotConnectedError; after, with PartialCallError', async () => {
    const { net, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    const calc = client.getProxy<Calc>('server', 'calc');
    await expect(calc.add.withOptions({ timeout: 30 })(1, 2)).rejects.toMatchObject({
      name: 'NotConnectedError',
      code: 'ERR_RPC_NOT_CONNECTED',
      reason: 'timeout',
      ident: 'server',
    });
    net.connect('server', 'client');
    calc.slowEcho.setTimeout(30);
    expect(calc.slowEcho.timeout).toBe(30);
    await expect(calc.slowEcho(1, 1000)).rejects.toMatchObject({ code: 'ERR_RPC_PARTIAL_CALL', reason: 'timeout' });
    calc.slowEcho.setTimeout(null);
    expect(await calc.slowEcho(2, 1)).toBe(2);
    expect(client.pendingCalls).toBe(0);
  });

  it('the client-wide timeout applies when the method has none', async () => {
    const { server, client } = pair({}, { timeout: 20 });
    server.registerObject(new Calc(), 'calc');
    await expect(client.getProxy<Calc>('server', 'calc').add(1, 2)).rejects.toMatchObject({ code: 'ERR_RPC_NOT_CONNECTED' });
  });

  it('an AbortSignal gives up the same way, with the reason as cause', async () => {
    const { net, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    const calc = client.getProxy<Calc>('server', 'calc');
    const ac = new AbortController();
    const p = calc.add.withOptions({ signal: ac.signal })(1, 2);
    ac.abort(new Error('user gave up'));
    await expect(p).rejects.toMatchObject({ code: 'ERR_RPC_NOT_CONNECTED', reason: 'aborted', cause: { message: 'user gave up' } });
    await expect(calc.add.withOptions({ signal: AbortSignal.abort() })(1, 2)).rejects.toMatchObject({ code: 'ERR_RPC_NOT_CONNECTED' });
    // given up before it was sent: taken back from the queue, so it never runs later
    expect(net.peer('client')!.queued('server')).toBe(0);
    net.connect('server', 'client');
    const ac2 = new AbortController();
    const arrived = waitFor<[string, string, Message]>(net.peer('server')!, 'message', (_c, _i, m) => m.body.includes('slowEcho'));
    const p2 = calc.slowEcho.withOptions({ signal: ac2.signal })(1, 5000);
    await arrived;
    ac2.abort();
    await expect(p2).rejects.toMatchObject({ code: 'ERR_RPC_PARTIAL_CALL', reason: 'aborted' });
  });

  it('the exception handler takes remote errors (not timeouts) and its value resolves the call', async () => {
    const seen: Error[] = [];
    const { net, server, client } = pair({}, { exceptionHandler: (e: Error) => (seen.push(e), 'fallback') });
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    const calc = client.getProxy<Calc>('server', 'calc');
    expect(await calc.fail('x')).toBe('fallback');
    expect(seen[0]).toMatchObject({ code: 'ERR_RPC_REMOTE' });
    net.disconnect('server', 'client');
    await expect(calc.add.withOptions({ timeout: 10 })(1, 1)).rejects.toMatchObject({ code: 'ERR_RPC_NOT_CONNECTED' });
    client.exceptionHandler = null;
    net.connect('server', 'client');
    await expect(calc.fail('y')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE' });
  });

  it('an argument the codec cannot carry rejects at once with RpcEncodeError', async () => {
    const { client } = pair();
    await expect(client.getProxy('server', 'calc').add(new Map())).rejects.toMatchObject({ code: 'ERR_RPC_ENCODE', fault: 'local' });
    expect(client.pendingCalls).toBe(0);
  });

  it('a return value the codec cannot carry comes back as a RemoteError', async () => {
    const { net, server, client } = pair();
    server.registerObject({ m: () => new Map() }, 'o');
    net.connect('server', 'client');
    await expect(client.call('server', 'o', 'm')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteCode: 'ERR_RPC_ENCODE' });
  });

  it('a proxy is not a thenable, ignores symbols, and cannot be written', async () => {
    const { net, cm, client } = pair();
    net.connect('server', 'client');
    const proxy = client.getProxy('server', 'calc');
    expect(await proxy).toBe(proxy);
    expect((proxy as unknown as { then?: unknown }).then).toBeUndefined();
    expect((proxy as unknown as Record<symbol, unknown>)[Symbol.iterator]).toBeUndefined();
    expect(String(proxy)).toBe('[RpcProxy server/calc]');
    expect(JSON.stringify(proxy)).toBe('{}');
    expect(Reflect.set(proxy, 'x', 1)).toBe(false);
    expect(proxy.add).toBe(proxy.add);
    expect(cm.sent).toHaveLength(0);
  });

  it('both peers can be server and client at once', async () => {
    const net = new FakeNetwork();
    const a = net.add('a');
    const b = net.add('b');
    const ha = new ReceiveHook(a);
    const hb = new ReceiveHook(b);
    new RpcServer(ha).registerObject({ who: () => 'a' }, 'x');
    new RpcServer(hb).registerObject({ who: () => 'b' }, 'x');
    const ca = new RpcClient(ha);
    const cb = new RpcClient(hb);
    net.connect('a', 'b');
    expect(await Promise.all([ca.getProxy('b', 'x').who(), cb.getProxy('a', 'x').who()])).toEqual(['b', 'a']);
  });

  it('re-sends a delivered but unanswered request after a reconnect, and it runs once', async () => {
    const { net, sm, server, client } = pair();
    const calc = new Calc();
    server.registerObject(calc, 'calc');
    net.connect('server', 'client');
    sm.swallow = true; // the server "crashes" after the request was acknowledged
    const p = client.getProxy<Calc>('server', 'calc').add(20, 22);
    await waitFor(net.peer('client')!, 'message-delivered');
    net.disconnect('server', 'client');
    sm.swallow = false;
    net.connect('server', 'client');
    expect(await p).toBe(42);
    expect(calc.calls).toBe(1);
  });

  it('a duplicate request gets the cached reply and does not run again', async () => {
    const { net, sm, cm, server, client } = pair();
    const calc = new Calc();
    server.registerObject(calc, 'calc');
    net.connect('server', 'client');
    expect(await client.getProxy<Calc>('server', 'calc').add(1, 2)).toBe(3);
    const request = cm.sent.find((s) => s.message.body.subarray(0, 6).equals(REQUEST_PREFIX))!.message;
    const before = sm.sent.length;
    await cm.sendMessage('server', new Message(request.body));
    await until(() => sm.sent.length === before + 1);
    expect(sm.sent[before].message.body.equals(sm.sent[before - 1].message.body)).toBe(true);
    expect(calc.calls).toBe(1);
  });

  it('the reply cache is bounded: an evicted request id runs again', async () => {
    const { net, sm, cm, server, client } = pair({ replyCacheSize: 2 });
    const calc = new Calc();
    server.registerObject(calc, 'calc');
    net.connect('server', 'client');
    const proxy = client.getProxy<Calc>('server', 'calc');
    for (let i = 0; i < 3; i++) await proxy.add(i, i);
    const first = cm.sent[0].message;
    const before = sm.sent.length;
    await cm.sendMessage('server', new Message(first.body));
    await until(() => sm.sent.length === before + 1);
    expect(calc.calls).toBe(4);
  });

  it('with storage: a request started but never answered before a crash gets OutcomeUnknownError', async () => {
    const storage = new MemoryQueuesStorage();
    const { net, sm, sHook, server, client } = pair({ storage });
    let release!: () => void;
    const hang = new Promise<void>((r) => (release = r));
    let runs = 0;
    server.registerObject({ work: async () => (runs++, await hang, 'done') }, 'job');
    net.connect('server', 'client');
    const p = client.call('server', 'job', 'work');
    await until(() => runs === 1);
    // crash: the old server is gone without answering, a new one starts on the same storage
    await server.close();
    sHook.close();
    net.disconnect('server', 'client');
    const server2 = new RpcServer(new ReceiveHook(sm), { storage });
    server2.registerObject({ work: async () => (runs++, 'again') }, 'job');
    net.connect('server', 'client');
    await expect(p).rejects.toMatchObject({ code: 'ERR_RPC_OUTCOME_UNKNOWN' });
    expect(runs).toBe(1);
    release();
  });

  it('with storage: a request answered before a crash gets the stored reply from the new server', async () => {
    const storage = new MemoryQueuesStorage();
    const net = new FakeNetwork();
    const sm = net.add('server');
    const cm = net.add('client');
    const sHook = new ReceiveHook(sm);
    const server = new RpcServer(sHook, { storage });
    let runs = 0;
    server.registerObject({ work: () => ++runs }, 'job');
    const client = new RpcClient(new ReceiveHook(cm));
    net.connect('server', 'client');
    expect(await client.call('server', 'job', 'work')).toBe(1);
    const request = cm.sent[0].message;
    await server.close();
    sHook.close();
    const server2 = new RpcServer(new ReceiveHook(sm), { storage });
    server2.registerObject({ work: () => ++runs }, 'job');
    const replies: Buffer[] = [];
    cm.on('message', (_c, _i, m) => replies.push(m.body));
    await cm.sendMessage('server', new Message(request.body));
    await until(() => replies.length === 1);
    expect(codec.decode(replies[0].subarray(6))).toMatchObject({ ok: true, return: 1 });
    expect(runs).toBe(1);
  });

  it('with storage: the persisted ids stay bounded by replyCacheSize', async () => {
    const storage = new MemoryQueuesStorage();
    const { net, server, client } = pair({ storage, replyCacheSize: 5 });
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    for (let i = 0; i < 20; i++) await client.getProxy<Calc>('server', 'calc').add(i, 1);
    await server.close();
    const keys = [...(storage as unknown as { meta: Map<string, Buffer> }).meta.keys()];
    expect(keys.filter((k) => k.startsWith('rpc:id:')).length).toBe(5);
    expect(keys.filter((k) => k.startsWith('rpc:slot:')).length).toBe(5);
  });

  it("a call's first message draws its own uuid, and that uuid is the request id in the body", async () => {
    const { net, cm, server, client } = pair();
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    expect(await client.getProxy<Calc>('server', 'calc').add(1, 2)).toBe(3);
    const { message } = cm.sent[0];
    const req = codec.decode(message.body.subarray(REQUEST_PREFIX.length)) as { req_id: Buffer; args: unknown[] };
    expect(req.req_id.equals(message.uuid)).toBe(true);
    expect(req.args).toEqual([1, 2]);
    // (Messaging skips its duplicate-uuid check for such a message)
    expect(Message.takeFresh(message)).toBe(true);
  });

  it('a reply is matched on the whole request id, not on the part the client keys calls by', async () => {
    const { net, sm, cm, client } = pair();
    net.connect('server', 'client');
    sm.swallow = true; // no server answers: the replies below are made by hand
    const p = client.call('server', 'calc', 'add', [1, 2]);
    await until(() => cm.sent.length === 1);
    const reqId = (codec.decode(cm.sent[0].message.body.subarray(REQUEST_PREFIX.length)) as { req_id: Buffer }).req_id;
    const reply = (id: Buffer, value: unknown): Message =>
      new Message(Buffer.concat([Buffer.from('rpcrep'), codec.encode({ req_id: id, ok: true, return: value })]));
    const other = Buffer.from(reqId);
    other[15] ^= 0xff;
    await sm.sendMessage('client', reply(other, 'not mine'));
    await sm.sendMessage('client', reply(reqId, 'mine'));
    expect(await p).toBe('mine');
  });

  it('works with a codec of its own (not the MessagePack one), calls and errors alike', async () => {
    const inner = new MsgpackCodec();
    let used = 0;
    const counting = {
      encode: (v: unknown) => (used++, inner.encode(v)),
      decode: (b: Buffer) => (used++, inner.decode(b)),
    };
    const { net, server, client } = pair({ codec: counting }, { codec: counting });
    server.registerObject(new Calc(), 'calc');
    net.connect('server', 'client');
    const proxy = client.getProxy<Calc>('server', 'calc');
    expect(await Promise.all([proxy.add(1, 2), proxy.add(3, 4)])).toEqual([3, 7]);
    await expect(proxy.fail('x')).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteCode: 'E_CALC' });
    expect(used).toBe(12);
  });

  it('close() rejects waiting calls with ERR_CLOSED', async () => {
    const { client } = pair();
    const p = client.call('server', 'calc', 'add', [1, 2]);
    client.close();
    await expect(p).rejects.toMatchObject({ code: 'ERR_CLOSED' });
    await expect(client.call('server', 'calc', 'add')).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  it('a malformed reply is reported and dropped', async () => {
    const { net, sm, client } = pair();
    const errors: string[] = [];
    client.on('error', (e) => errors.push((e as { code?: string }).code ?? e.message));
    net.connect('server', 'client');
    await sm.sendMessage('client', new Message(Buffer.concat([Buffer.from('rpcrep'), Buffer.from([0xc1])])));
    await sm.sendMessage('client', new Message(Buffer.concat([Buffer.from('rpcrep'), codec.encode({ req_id: 1 })])));
    await until(() => errors.length === 2);
    expect(errors).toEqual(['ERR_RPC_DECODE', 'ERR_RPC_BAD_REQUEST']);
  });
});
