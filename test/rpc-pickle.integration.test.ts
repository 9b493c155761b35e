/**
 * RPC in pickles over real Messaging on 127.0.0.1, without Python: the codec picked per peer
 * (a plain snakeMQ 1.6 peer is ours with `extensions: false`), forced per client, proxy and
 * server, kwargs, exceptions, the reply cache, and hostile pickles (typed errors, nothing runs,
 * the next call works).
 */
import { existsSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { REQUEST_PREFIX, REPLY_PREFIX, RpcClient, RpcServer, rpcSignal } from '../src/rpc.js';
import { RemoteError, UnknownMethodError, UnknownObjectError } from '../src/rpc-errors.js';
import { PickleCodec, PickledException, PickleTuple } from '../src/rpc-pickle.js';
import { body as vector } from './helpers/pickle-vectors.js';
import { type Peer, closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { prng } from './helpers/prng.js';
import { until, waitFor } from './helpers/wait.js';

afterEach(closeAllPeers);

const pickle = new PickleCodec();

class Calc {
  ran = 0;
  notes: unknown[] = [];
  add(a: number, b: number): number {
    this.ran++;
    return a + b;
  }
  echo(...args: unknown[]): unknown[] {
    return args;
  }
  power(x: number, opts: { exp?: number }): number {
    return x ** (opts.exp ?? 2);
  }
  fail(): never {
    const e = new Error('wrong key');
    e.name = 'KeyError';
    throw e;
  }
  note(s: string): void {
    this.notes.push(s);
  }
}
rpcSignal(Calc.prototype.note);

/** A server peer "srv" (extension peer) and a client peer; `plain`: the client is a plain 1.6 peer. */
async function rig(opts: { plainClient?: boolean; server?: ConstructorParameters<typeof RpcServer>[1]; client?: ConstructorParameters<typeof RpcClient>[1] } = {}) {
  const srv = makePeer('srv', { keepaliveInterval: 0 });
  const server = new RpcServer(new ReceiveHook(srv.messaging), opts.server);
  const calc = new Calc();
  server.registerObject(calc, 'calc', { kwargs: ['power'] });
  const errors: Error[] = [];
  server.on('error', (e) => errors.push(e));
  const port = await listen(srv);
  const cli = makePeer('cli', { keepaliveInterval: 0, extensions: !opts.plainClient });
  const client = new RpcClient(new ReceiveHook(cli.messaging), { timeout: 10_000, ...opts.client });
  const clientErrors: Error[] = [];
  client.on('error', (e) => clientErrors.push(e));
  const up = waitFor(srv.messaging, 'connect');
  connect(cli, port);
  await up;
  return { srv, cli, server, client, calc, errors, clientErrors };
}

/** Bodies `peer` receives, by prefix. */
function tap(peer: Peer): Buffer[] {
  const got: Buffer[] = [];
  peer.messaging.on('message', (_c, _i, m) => got.push(Buffer.from(m.body)));
  return got;
}

const isPickle = (b: Buffer): boolean => b[6] === 0x80 && b[7] === 2;

describe('RPC codec picked per peer', () => {
  it('Messaging tells a plain snakeMQ 1.6 peer from a snakemq peer', async () => {
    const { srv, cli } = await rig({ plainClient: true });
    expect(srv.messaging.peerSpeaksExtensions('cli')).toBe(false);
    expect(cli.messaging.peerSpeaksExtensions('srv')).toBe(false); // our extensions are off there
    expect(srv.messaging.peerSpeaksExtensions('nobody')).toBeUndefined();
    const other = makePeer('ext', { keepaliveInterval: 0 });
    const up = waitFor(srv.messaging, 'connect', (_c, i) => i === 'ext');
    connect(other, (await srv.link.addListener({ host: '127.0.0.1', port: 0 })).port);
    await up;
    expect(srv.messaging.peerSpeaksExtensions('ext')).toBe(true);
  });

  it('with a plain peer requests and replies are pickles; calls, kwargs, exceptions, signals work', async () => {
    const { srv, cli, client, calc, errors } = await rig({ plainClient: true });
    const atServer = tap(srv);
    const atClient = tap(cli);
    const proxy = client.getProxy<Calc>('srv', 'calc');
    expect(await proxy.add(2, 3)).toBe(5);
    expect(await proxy.echo(2n ** 70n, 'ž', Buffer.from([1]), null, [1, [2]], { a: true })).toEqual([2n ** 70n, 'ž', Buffer.from([1]), null, [1, [2]], { a: true }]);
    // the keyword arguments arrive as a trailing object
    const power = proxy.power.withOptions({ kwargs: { exp: 3 } }) as unknown as (x: number) => Promise<number>;
    expect(await power(2)).toBe(8);
    expect(await client.call('srv', 'calc', 'power', [3], { kwargs: {} })).toBe(9);
    const kwRefused = await client.call('srv', 'calc', 'add', [1], { kwargs: { b: 2 } }).catch((e: unknown) => e);
    expect(kwRefused).toMatchObject({ remoteName: 'TypeError' });
    expect((kwRefused as RemoteError).remoteMessage).toMatch(/unexpected keyword arguments \(b\)/);
    const failed = await proxy.fail().catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(RemoteError);
    expect(failed).toMatchObject({ remoteName: 'KeyError', remoteModule: 'builtins', remoteArgs: ['wrong key'], remoteMessage: 'wrong key' });
    expect((failed as RemoteError).remoteStack).toMatch(/^KeyError: wrong key\n\s+at /);
    await expect(client.getProxy<{ x(): void }>('srv', 'nope').x()).rejects.toBeInstanceOf(UnknownObjectError);
    await expect(client.getProxy<{ x(): void }>('srv', 'calc').x()).rejects.toMatchObject({ code: 'ERR_RPC_UNKNOWN_METHOD', objectName: 'calc', methodName: 'x' });
    await proxy.note.asSignal(5_000)('hi');
    await until(() => calc.notes.length === 1);
    expect(calc.notes).toEqual(['hi']);
    expect(atServer.length).toBe(9);
    expect(atServer.every(isPickle)).toBe(true);
    expect(atClient.length).toBe(8);
    expect(atClient.every(isPickle)).toBe(true);
    // the signal is laid out as snakeMQ's: no req_id; the message carries its TTL
    const sig = pickle.decode(atServer[8].subarray(6)) as Record<string, unknown>;
    expect(sig).toEqual({ command: 'signal', object: 'calc', method: 'note', args: ['hi'], kwargs: {} });
    expect(errors).toEqual([]);
  });

  it('between snakemq peers bodies stay MessagePack; encoding forces pickle per client, per proxy, and server accepts only its own', async () => {
    const { srv, cli, client } = await rig();
    const atServer = tap(srv);
    expect(await client.getProxy<Calc>('srv', 'calc').add(1, 1)).toBe(2);
    expect(atServer[0][6]).toBe(0x85); // a MessagePack map of 5
    expect(await client.getProxy<Calc>('srv', 'calc', { encoding: 'pickle' }).add(1, 2)).toBe(3);
    expect(isPickle(atServer[1])).toBe(true);
    const forced = new RpcClient(new ReceiveHook(cli.messaging), { encoding: 'pickle' });
    expect(await forced.call('srv', 'calc', 'add', [2, 2])).toBe(4);
    expect(await forced.getProxy<Calc>('srv', 'calc', { encoding: 'msgpack' }).add(2, 3)).toBe(5);
    expect(isPickle(atServer[2])).toBe(true);
    expect(atServer[3][6]).toBe(0x85);
    // error replies (not laid out as a success) in either encoding, whatever the client's own
    await expect(forced.getProxy<Calc>('srv', 'calc', { encoding: 'msgpack' }).fail()).rejects.toMatchObject({ remoteName: 'KeyError' });
    await expect(forced.getProxy<Calc>('srv', 'calc').fail()).rejects.toMatchObject({ remoteName: 'KeyError', remoteArgs: ['wrong key'] });
    atServer.splice(4);
    // keyword arguments between snakemq peers: a sixth key, only when given
    expect(await client.call('srv', 'calc', 'power', [2], { kwargs: { exp: 3 } })).toBe(8);
    expect(atServer[4][6]).toBe(0x86);
    await expect(client.call('srv', 'calc', 'add', [1], { kwargs: { b: 2 } })).rejects.toMatchObject({ remoteName: 'TypeError' });
    await expect(client.call('srv', 'calc', 'add', [1, 2], { kwargs: [] as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    forced.close();
    expect(() => client.getProxy('srv', 'calc', { encoding: 'json' as never })).toThrow(/encoding must be/);
  });

  it("a server forced to 'msgpack' refuses pickles with a typed error; one forced to 'pickle' refuses MessagePack", async () => {
    const a = await rig({ server: { encoding: 'msgpack' } });
    const p = a.client.getProxy<Calc>('srv', 'calc', { encoding: 'pickle' });
    p.add.setTimeout(300);
    await expect(p.add(1, 1)).rejects.toMatchObject({ code: 'ERR_RPC_PARTIAL_CALL' });
    expect(a.errors.map((e) => (e as { code?: string }).code)).toEqual(['ERR_RPC_DECODE']);
    expect(await a.client.getProxy<Calc>('srv', 'calc').add(1, 1)).toBe(2);
    await closeAllPeers();
    const b = await rig({ server: { encoding: 'pickle' } });
    const m = b.client.getProxy<Calc>('srv', 'calc');
    m.add.setTimeout(300);
    await expect(m.add(1, 1)).rejects.toMatchObject({ code: 'ERR_RPC_PARTIAL_CALL' });
    expect(b.errors.map((e) => (e as { code?: string }).code)).toEqual(['ERR_RPC_DECODE']);
    expect(await b.client.getProxy<Calc>('srv', 'calc', { encoding: 'pickle' }).add(1, 1)).toBe(2);
  });

  it('a call made while a plain peer is away is encoded again as a pickle when it connects', async () => {
    const srv = makePeer('srv', { keepaliveInterval: 0, extensions: false });
    const server = new RpcServer(new ReceiveHook(srv.messaging), { encoding: 'pickle' });
    server.registerObject(new Calc(), 'calc');
    const cli = makePeer('cli', { keepaliveInterval: 0 });
    const client = new RpcClient(new ReceiveHook(cli.messaging), { timeout: 10_000 });
    const pending = client.getProxy<Calc>('srv', 'calc').add(20, 22);
    await new Promise((r) => setTimeout(r, 50));
    connect(cli, await listen(srv));
    expect(await pending).toBe(42);
  });
});

describe('pickled requests from a Python-style client', () => {
  /** Send raw pickled bodies as a plain peer; collect the pickled replies. */
  async function plainRig() {
    const r = await rig({ plainClient: true });
    const replies: Array<Record<string, any>> = [];
    r.cli.messaging.on('message', (_c, _i, m) => {
      if (m.body.subarray(0, 6).equals(REPLY_PREFIX)) replies.push(pickle.decodeWithExceptions(m.body, 6).value as Record<string, any>);
    });
    const send = (b: Buffer): Promise<void> => r.cli.messaging.sendMessage('srv', new Message(b));
    const req = (v: unknown): Buffer => Buffer.concat([REQUEST_PREFIX, pickle.encode(v)]);
    return { ...r, replies, send, req };
  }

  it("snakeMQ's own recorded requests are served; a repeated req_id is answered from the cache without running again", async () => {
    const { send, replies, calc, req } = await plainRig();
    await send(vector('rpc-py-call-add'));
    await send(vector('rpc-py-call-add'));
    await until(() => replies.length === 2);
    const id2 = Buffer.alloc(16);
    id2[15] = 2;
    expect(replies).toEqual([
      { ok: true, return: 5, req_id: id2 },
      { ok: true, return: 5, req_id: id2 },
    ]);
    expect(calc.ran).toBe(1);
    // the recorded signal calls notify(), which calc lacks: reported, no reply
    await send(vector('rpc-py-signal'));
    await send(req({ command: 'call', object: 'calc', method: 'add', args: new PickleTuple([1, 2]), kwargs: {}, req_id: Buffer.alloc(16, 7) }));
    await until(() => replies.length === 3);
    expect(replies[2]).toEqual({ ok: true, return: 3, req_id: Buffer.alloc(16, 7) });
  });

  it('a request that does not decode but names its req_id is answered with a TypeError (a Python caller would wait for ever)', async () => {
    const { send, replies, errors } = await plainRig();
    const s = (t: string): string => `X${String.fromCharCode(t.length)}\x00\x00\x00${t}`;
    const withSet = Buffer.from(
      `rpcreq\x80\x02}(${s('command')}${s('call')}${s('object')}${s('calc')}${s('method')}${s('add')}${s('args')}\x8f\x85${s('kwargs')}}${s('req_id')}C\x10${'\x05'.repeat(16)}u.`,
      'latin1',
    );
    await send(withSet);
    await until(() => replies.length === 1);
    expect(replies[0].req_id).toEqual(Buffer.alloc(16, 5));
    expect(replies[0].exception).toMatchObject({ module: 'builtins', name: 'TypeError' });
    expect(replies[0].exception.args[0]).toMatch(/the request could not be read: invalid pickle at byte \d+: opcode EMPTY_SET is refused/);
    expect(errors.map((e) => (e as { code?: string }).code)).toEqual(['ERR_RPC_DECODE']);
  });

  it('hostile pickles: each a typed error, nothing runs, no exception escapes, and the next call works', async () => {
    const { send, replies, calc, errors, req, client } = await plainRig();
    const p = (s: string): Buffer => Buffer.concat([REQUEST_PREFIX, Buffer.from(s, 'latin1')]);
    const hostile: Buffer[] = [
      p("cos\nsystem\n(S'touch /tmp/snakemq-pwned'\ntR."), // os.system via GLOBAL + REDUCE
      p('\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02id\x94\x85\x94R\x94.'),
      p('\x80\x02c__main__\nCalc\n)\x81}b.'), // BUILD on a class
      p('\x80\x02cbuiltins\nValueError\n)R}b.'),
      p('\x80\x04X\x00\x00\x00\x80'), // a 2^31 length
      Buffer.concat([p('\x80\x04'), Buffer.alloc(1_000_000, 0x5d), Buffer.alloc(999_999, 0x61), Buffer.from('.')]), // 10^6 nested lists
      // a dict whose req_id is a GLOBAL: no reply possible, nothing runs
      req({ command: 'call', object: 'calc', method: 'add', args: new PickleTuple([1, 1]), kwargs: {}, req_id: new PickledException('os', 'urandom', [16]) }),
    ];
    const call = vector('rpc-py-call-add');
    for (let i = 6 + 2; i < call.length; i++) hostile.push(call.subarray(0, i)); // truncated at every byte
    const rnd = prng(1515);
    for (let i = 0; i < 300; i++) {
      const b = Buffer.from(call);
      for (let j = 0; j < 3; j++) b[6 + Math.floor(rnd() * (b.length - 6))] = Math.floor(rnd() * 256);
      hostile.push(b);
    }
    for (const b of hostile) await send(b);
    // well-formed pickles that are not requests: answered with a typed error when they carry a req_id
    await send(req({ command: 'call', object: 'calc', method: 'add', args: 'nope', req_id: Buffer.alloc(16, 9) }));
    await send(req([1, 2, 3]));
    await send(req({ command: 'call', object: 'calc', method: 'add', args: new PickleTuple([5, 6]), kwargs: {}, req_id: Buffer.alloc(16, 1) }));
    await until(() => replies.some((r) => r.req_id?.[0] === 1), 20_000, 'the call after the hostile ones');
    expect(replies.find((r) => r.req_id[0] === 1)).toEqual({ ok: true, return: 11, req_id: Buffer.alloc(16, 1) });
    const bad = replies.find((r) => r.req_id[0] === 9)!;
    expect(bad.ok).toBe(false);
    expect(bad.exception).toEqual(new PickledException('builtins', 'RuntimeError', ['RpcBadRequestError: malformed request (command, object, method, args or kwargs)']));
    expect(errors.length).toBeGreaterThanOrEqual(8 + call.length - 8);
    for (const e of errors) expect(['ERR_RPC_DECODE', 'ERR_RPC_BAD_REQUEST']).toContain((e as { code?: string }).code);
    expect(errors.filter((e) => /os\.system is refused/.test(e.message))).toHaveLength(2);
    expect(errors.some((e) => /BUILD is refused|NEWOBJ is refused/.test(e.message))).toBe(true);
    expect(errors.some((e) => /length 2147483648 beyond/.test(e.message))).toBe(true);
    expect(errors.some((e) => /nested deeper than 512/.test(e.message))).toBe(true);
    expect(calc.ran).toBeLessThanOrEqual(1 + 300); // mutated bodies may still be valid calls
    expect(await client.getProxy<Calc>('srv', 'calc').add(1, 2)).toBe(3);
    expect(existsSync('/tmp/snakemq-pwned')).toBe(false);
  });

  it('hostile pickled replies to our client: typed errors, never a value holding a GLOBAL, and the next call works', async () => {
    const { srv, client, clientErrors } = await rig({ plainClient: true });
    const rep = (v: unknown): Message => new Message(Buffer.concat([REPLY_PREFIX, pickle.encode(v)]));
    const id = Buffer.alloc(16, 3);
    await srv.messaging.sendMessage('cli', rep({ ok: true, return: new PickledException('os', 'system', ['id']), req_id: id }));
    await srv.messaging.sendMessage('cli', new Message(Buffer.concat([REPLY_PREFIX, Buffer.from('\x80\x02cos\nsystem\n)Rb.', 'latin1')])));
    await srv.messaging.sendMessage('cli', new Message(Buffer.concat([REPLY_PREFIX, Buffer.from('\x80\x02]', 'latin1')])));
    await until(() => clientErrors.length === 3);
    expect(clientErrors.map((e) => (e as { code?: string }).code)).toEqual(['ERR_RPC_BAD_REQUEST', 'ERR_RPC_DECODE', 'ERR_RPC_DECODE']);
    expect(await client.getProxy<Calc>('srv', 'calc').add(2, 2)).toBe(4);
  });

  it('a reply that does not decode fails the call it names at once, with the typed error', async () => {
    const { srv, client } = await rig({ plainClient: true });
    srv.messaging.removeAllListeners('message'); // answer by hand, as a Python server returning a set would
    const hook = new ReceiveHook(srv.messaging);
    hook.register(REQUEST_PREFIX, (_c, ident, m) => {
      const { req_id } = pickle.decode(m.body.subarray(6)) as { req_id: Buffer };
      const reply = Buffer.concat([
        REPLY_PREFIX,
        Buffer.from('\x80\x04}(\x8c\x02ok\x88\x8c\x06return\x8f(K\x01\x90\x8c\x06req_id\x94C\x10', 'latin1'),
        req_id,
        Buffer.from('u.', 'latin1'),
      ]);
      void srv.messaging.sendMessage(ident, new Message(reply));
    });
    const started = Date.now();
    await expect(client.getProxy<Calc>('srv', 'calc').add(1, 1)).rejects.toMatchObject({ code: 'ERR_RPC_DECODE', message: /EMPTY_SET is refused/ });
    expect(Date.now() - started).toBeLessThan(5_000); // not the 10 s timeout
  });
});

describe('exceptions to and from Python', () => {
  it('a Python exception reply rejects with RemoteError; snakeMQ NoInstanceError / NoMethodError with our typed errors', async () => {
    const { srv, client } = await rig({ plainClient: true });
    // the server side answers by hand, as a Python server would
    srv.messaging.removeAllListeners('message');
    const answers = [
      (id: Buffer) => ({ req_id: id, ok: false, exception: new PickledException('myservice', 'CustomError', ['custom failure', 2n ** 70n]), exception_format: 'Traceback ...' }),
      (id: Buffer) => ({ req_id: id, ok: false, exception: new PickledException('snakemq.rpc', 'NoInstanceError', ['calc']), exception_format: '' }),
      (id: Buffer) => ({ req_id: id, ok: false, exception: new PickledException('snakemq.rpc', 'NoMethodError', ['add']), exception_format: '' }),
      (id: Buffer) => ({ req_id: id, ok: false, exception: 'not an exception', exception_format: '' }),
    ];
    let n = 0;
    const hook = new ReceiveHook(srv.messaging);
    hook.register(REQUEST_PREFIX, (_c, ident, m) => {
      const r = pickle.decode(m.body.subarray(6)) as { req_id: Buffer };
      void srv.messaging.sendMessage(ident, new Message(Buffer.concat([REPLY_PREFIX, pickle.encode(answers[n++](r.req_id))])));
    });
    const proxy = client.getProxy<Calc>('srv', 'calc');
    const custom = await proxy.add(1, 1).catch((e: unknown) => e);
    expect(custom).toMatchObject({ remoteName: 'CustomError', remoteModule: 'myservice', remoteArgs: ['custom failure', 2n ** 70n], remoteStack: 'Traceback ...' });
    expect((custom as RemoteError).remoteMessage).toBe("('custom failure', 1180591620717411303424)");
    await expect(proxy.add(1, 1)).rejects.toBeInstanceOf(UnknownObjectError);
    const noMethod = await proxy.add(1, 1).catch((e: unknown) => e);
    expect(noMethod).toBeInstanceOf(UnknownMethodError);
    expect(noMethod).toMatchObject({ objectName: 'calc', methodName: 'add' });
    await expect(proxy.add(1, 1)).rejects.toMatchObject({ code: 'ERR_RPC_REMOTE', remoteName: 'Exception' });
  });
});
