/**
 * RPC over real Messaging, Packeter and Link on 127.0.0.1 (port 0).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import type { Messaging } from '../src/messaging.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { REQUEST_PREFIX, RpcClient, RpcServer, rpcSignal } from '../src/rpc.js';
import { MsgpackCodec } from '../src/rpc-codec.js';
import { PickleCodec, PickledException } from '../src/rpc-pickle.js';
import { wireVectors } from './helpers/fixtures.js';
import { type Peer, closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';
import { until, waitFor } from './helpers/wait.js';

afterEach(closeAllPeers);

const codec = new MsgpackCodec();

class Service {
  notes: string[] = [];
  sums = 0;
  sum(...xs: number[]): number {
    this.sums++;
    return xs.reduce((a, b) => a + b, 0);
  }
  bigSum(a: bigint, b: bigint): bigint {
    return a + b;
  }
  echo<T>(v: T): T {
    return v;
  }
  length(s: string): number {
    return s.length;
  }
  async later<T>(v: T, ms: number): Promise<T> {
    await new Promise((r) => setTimeout(r, ms));
    return v;
  }
  never(): Promise<never> {
    return new Promise(() => {});
  }
  explode(what: string): never {
    throw new RangeError(`exploded: ${what}`);
  }
  note(s: string): void {
    this.notes.push(s);
  }
}
rpcSignal(Service.prototype.note);

interface Rig {
  server: Peer;
  client: Peer;
  rpcServer: RpcServer;
  rpcClient: RpcClient;
  service: Service;
  errors: Error[];
}

/** A client peer that listens, and a server peer; `start()` connects the server to it. */
async function rig(serverPacketMax?: number) {
  const client = makePeer('client', { keepaliveInterval: 0 });
  const port = await listen(client);
  const rpcClient = new RpcClient(new ReceiveHook(client.messaging));
  let r: Rig | undefined;
  return {
    client,
    rpcClient,
    async start(): Promise<Rig> {
      const server = makePeer('server', { keepaliveInterval: 0 }, serverPacketMax ? { maxPacketSize: serverPacketMax } : {});
      const rpcServer = new RpcServer(new ReceiveHook(server.messaging));
      const service = new Service();
      rpcServer.registerObject(service, 'svc');
      const errors: Error[] = [];
      rpcServer.on('error', (e) => errors.push(e));
      const up = waitFor(client.messaging, 'connect');
      connect(server, port);
      await up;
      r = { server, client, rpcServer, rpcClient, service, errors };
      return r;
    },
  };
}

describe('RPC over loopback', () => {
  it('calls a method and gets its return value', async () => {
    const { rpcClient, start } = await rig();
    const { service } = await start();
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    expect(await svc.sum(1, 2, 3)).toBe(6);
    const v = { d: new Date(86_400_000), b: Buffer.from([1, 2, 3]), n: -(2n ** 100n), s: 'ünï', a: [null, true, 1.25] };
    expect(await svc.echo(v)).toStrictEqual(v);
    expect(service.sums).toBe(1);
  });

  it('10,000 calls with random arguments each return their exact sum', async () => {
    const { rpcClient, start } = await rig();
    const { service } = await start();
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    const rnd = (): number => Math.floor(Math.random() * 2 ** 40) - 2 ** 39;
    const N = 10_000;
    const WINDOW = 200;
    let checked = 0;
    for (let i = 0; i < N; i += WINDOW) {
      const batch = Array.from({ length: Math.min(WINDOW, N - i) }, () => Array.from({ length: Math.floor(Math.random() * 8) }, rnd));
      const got = await Promise.all(batch.map((xs) => svc.sum(...xs)));
      got.forEach((g, k) => expect(g).toBe(batch[k].reduce((a, b) => a + b, 0)));
      checked += got.length;
    }
    expect(checked).toBe(N);
    expect(service.sums).toBe(N);
    const a = 2n ** 90n + 12345n;
    expect(await svc.bigSum(a, -1n)).toBe(a - 1n);
  });

  it('10,000 concurrent calls are all answered correctly', async () => {
    const { rpcClient, start } = await rig();
    await start();
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    const ps = Array.from({ length: 10_000 }, (_, i) => svc.later(`r${i}`, i % 3));
    const got = await Promise.all(ps);
    expect(got).toEqual(Array.from({ length: 10_000 }, (_, i) => `r${i}`));
    expect(rpcClient.pendingCalls).toBe(0);
  });

  it('a call made before the server is up waits, then is answered', async () => {
    const { client, rpcClient, start } = await rig();
    const p = rpcClient.getProxy<Service>('server', 'svc').sum(40, 2);
    await until(() => client.messaging.queueSize('server') === 1);
    const { service } = await start();
    expect(await p).toBe(42);
    expect(service.sums).toBe(1);
  });

  it('calls survive cut connections: each answered once, each run once', async () => {
    const { client, rpcClient, start } = await rig();
    const { service } = await start();
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    const N = 3000;
    const ps = Array.from({ length: N }, (_, i) => svc.sum(i, 1));
    for (let cut = 0; cut < 3; cut++) {
      const before = service.sums;
      await until(() => service.sums > before || service.sums === N);
      const connId = client.messaging.connectionOf('server');
      if (connId) client.link.closeConnection(connId);
      await waitFor(client.messaging, 'connect');
    }
    expect(await Promise.all(ps)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    expect(service.sums).toBe(N);
  });

  it('timeout: NotConnectedError when the server never came, PartialCallError when it never answered', async () => {
    const { rpcClient, start } = await rig();
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    const t0 = performance.now();
    await expect(svc.sum.withOptions({ timeout: 150 })(1)).rejects.toMatchObject({ code: 'ERR_RPC_NOT_CONNECTED', reason: 'timeout' });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    const { service } = await start();
    svc.never.setTimeout(150);
    await expect(svc.never()).rejects.toMatchObject({ code: 'ERR_RPC_PARTIAL_CALL', reason: 'timeout' });
    // the timed-out request expired in the queue: it never ran
    expect(await svc.sum(5)).toBe(5);
    expect(service.sums).toBe(1);
  });

  it('a signal whose TTL expires while the server is down never runs; one with a longer TTL runs', async () => {
    const { client, rpcClient, start } = await rig();
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    const dropped = waitFor<[string, Buffer, string]>(client.messaging, 'message-drop');
    await svc.note.asSignal(100)('short');
    await svc.note.asSignal(60_000)('long');
    const [ident, , reason] = await dropped;
    expect([ident, reason]).toEqual(['server', 'ttl']);
    const { service } = await start();
    await until(() => service.notes.length === 1);
    svc.note.asSignal(null);
    expect(await svc.sum(1)).toBe(1); // ordered after the signals
    expect(service.notes).toEqual(['long']);
  });

  it('a remote exception rejects with RemoteError and the remote stack', async () => {
    const { rpcClient, start } = await rig();
    await start();
    const err = await rpcClient.getProxy<Service>('server', 'svc').explode('kaboom').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_RPC_REMOTE', remoteName: 'RangeError', remoteMessage: 'exploded: kaboom' });
    expect((err as { remoteStack: string }).remoteStack).toMatch(/^RangeError: exploded: kaboom\n\s+at Service\.explode/);
  });

  it('unknown object and unknown method reject with typed errors', async () => {
    const { rpcClient, start } = await rig();
    await start();
    await expect(rpcClient.getProxy('server', 'nobody').sum(1)).rejects.toMatchObject({ code: 'ERR_RPC_UNKNOWN_OBJECT' });
    await expect(rpcClient.getProxy('server', 'svc').nothing()).rejects.toMatchObject({ code: 'ERR_RPC_UNKNOWN_METHOD' });
  });

  it('both peers serve and call each other at once', async () => {
    const { client, rpcClient, start } = await rig();
    const { server } = await start();
    const clientSide = new RpcServer(new ReceiveHook(client.messaging));
    clientSide.registerObject({ name: () => 'client' }, 'id');
    // the server peer's own hook gets a client too (a second hook on the same messaging)
    const back = new RpcClient(new ReceiveHook(server.messaging));
    const [a, b] = await Promise.all([back.getProxy('client', 'id').name(), rpcClient.getProxy<Service>('server', 'svc').echo('server')]);
    expect([a, b]).toEqual(['client', 'server']);
  });
});

describe('RPC server on hostile request bodies', () => {
  const vectors = wireVectors<{ name: string; request_body?: string; reply_body?: string }>();

  it('answers with a typed error or drops, never crashes, pollutes nothing, and still serves', async () => {
    const MAX = 80 * 1024 * 1024;
    const { client: mallory, rpcClient, start } = await rig(MAX);
    const { server, service, errors, rpcServer } = await start();
    // snakeMQ's pickled requests call calc.add(2, 3) and calc.fail(): a Python client's, served
    rpcServer.registerObject(
      {
        add: (a: number, b: number) => a + b,
        fail: () => {
          throw new TypeError('boom');
        },
      },
      'calc',
    );
    const pickle = new PickleCodec();
    const pickleReplies: Array<Record<string, any>> = [];
    const send = (m: Messaging, body: Buffer): Promise<void> => m.sendMessage('server', new Message(body));
    const req = (v: unknown): Buffer => Buffer.concat([REQUEST_PREFIX, codec.encode(v)]);
    const rawReq = (hex: string): Buffer => Buffer.concat([REQUEST_PREFIX, Buffer.from(hex, 'hex')]);
    const replies: unknown[] = [];
    // replies to the hand-made requests below (req_id = 16 × n, n in 1..5); not the pickles
    mallory.messaging.on('message', (_c, _i, m) => {
      try {
        const r = codec.decode(m.body.subarray(6)) as { req_id?: Buffer };
        if (Buffer.isBuffer(r?.req_id) && r.req_id.equals(Buffer.alloc(16, r.req_id[0]))) replies.push(r);
      } catch {
        // a pickle: ours are protocol 2 (the vectors' replies thrown at the client, protocol 4)
        if (m.body[7] === 2) pickleReplies.push(pickle.decodeWithExceptions(m.body, 6).value as Record<string, any>);
      }
    });

    // 1. snakeMQ's pickled requests (served, answered in pickles)
    const pickles = vectors.filter((v) => v.name.startsWith('rpc-') && v.request_body);
    expect(pickles.length).toBe(2);
    for (const v of pickles) await send(mallory.messaging, Buffer.from(v.request_body!, 'hex'));
    // and snakeMQ's pickled replies thrown at the client (read, and dropped: not its calls)
    const clientErrors: string[] = [];
    rpcClient.on('error', (e) => clientErrors.push((e as { code?: string }).code ?? e.message));
    for (const v of vectors.filter((x) => x.name.startsWith('rpc-') && x.reply_body)) {
      await server.messaging.sendMessage('client', new Message(Buffer.from(v.reply_body!, 'hex')));
    }
    // 2. malformed bytes
    for (const hex of ['', 'c1', '93', 'ffffffff', 'de', 'dfffffffff', 'c7ff72', 'd40000'.repeat(3)]) {
      await send(mallory.messaging, rawReq(hex));
    }
    // 3. nesting 100,000 deep
    await send(mallory.messaging, Buffer.concat([REQUEST_PREFIX, Buffer.alloc(100_000, 0x91), Buffer.from([0xc0])]));
    // 4. a 64 MiB string instead of a request
    const big = 'p'.repeat(64 * 1024 * 1024);
    await send(mallory.messaging, req(big));
    // 5. well-formed requests whose names and arguments carry __proto__ / constructor keys
    const reqId = (n: number): Buffer => Buffer.alloc(16, n);
    const protoArgs = JSON.parse('[{"__proto__": {"polluted": "yes"}, "constructor": {"prototype": {"polluted": "yes"}}}]');
    await send(mallory.messaging, req({ command: 'call', object: '__proto__', method: 'polluted', args: [], req_id: reqId(1) }));
    await send(mallory.messaging, req({ command: 'call', object: 'svc', method: '__proto__', args: [], req_id: reqId(2) }));
    await send(mallory.messaging, req({ command: 'call', object: 'svc', method: 'constructor', args: [], req_id: reqId(3) }));
    await send(mallory.messaging, req({ command: 'call', object: 'svc', method: 'echo', args: protoArgs, req_id: reqId(4) }));
    await send(
      mallory.messaging,
      req(JSON.parse('{"__proto__": {"polluted": "yes"}, "command": "call", "object": "svc", "method": "sum", "args": [1]}')),
    );
    await send(mallory.messaging, req({ command: 'call', object: 'svc', method: 'sum', args: 'not an array', req_id: reqId(5) }));
    // 6. a legitimate call with a 64 MiB argument still works
    const svc = rpcClient.getProxy<Service>('server', 'svc');
    expect(await svc.length(big)).toBe(big.length);

    await until(() => replies.length === 5, 20_000, 'five typed error replies');
    const byId = new Map(replies.map((r) => [(r as { req_id: Buffer }).req_id[0], r as Record<string, any>]));
    expect(byId.get(1)).toMatchObject({ ok: false, error: { code: 'ERR_RPC_UNKNOWN_OBJECT', rpc: true } });
    expect(byId.get(2)).toMatchObject({ ok: false, error: { code: 'ERR_RPC_UNKNOWN_METHOD', rpc: true } });
    expect(byId.get(3)).toMatchObject({ ok: false, error: { code: 'ERR_RPC_UNKNOWN_METHOD', rpc: true } });
    expect(byId.get(4)!.ok).toBe(true);
    const echoed = byId.get(4)!.return;
    expect(Object.getPrototypeOf(echoed)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(echoed, '__proto__')!.value).toEqual({ polluted: 'yes' });
    expect(byId.get(5)).toMatchObject({ ok: false, error: { code: 'ERR_RPC_BAD_REQUEST' } });

    // the pickled requests were answered in pickles, as a Python server would
    await until(() => pickleReplies.length === 2, 20_000, 'two pickled replies');
    const pickledById = new Map(pickleReplies.map((r) => [r.req_id.toString('hex'), r]));
    expect(pickledById.get('000102030405060708090a0b0c0d0e0f')).toEqual({ ok: true, return: 5, req_id: Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex') });
    const failed = pickledById.get('0102030405060708090a0b0c0d0e0f10')!;
    expect(failed.ok).toBe(false);
    expect(failed.exception).toEqual(new PickledException('builtins', 'TypeError', ['boom']));
    expect(failed.exception_format).toMatch(/TypeError: boom/);

    // every dropped body was reported as a typed error: 8 malformed, the deep one (decode
    // errors); the 64 MiB string and the request without req_id (bad requests)
    await until(() => errors.length >= 11, 20_000, 'reported errors');
    const codes = errors.map((e) => (e as { code?: string }).code);
    expect(codes.filter((c) => c === 'ERR_RPC_DECODE')).toHaveLength(9);
    expect(codes.filter((c) => c === 'ERR_RPC_BAD_REQUEST')).toHaveLength(2);
    expect(errors).toHaveLength(11);
    expect(clientErrors).toEqual([]);

    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
    expect((Object.prototype as { polluted?: unknown }).polluted).toBeUndefined();
    expect(service.sums).toBe(0);
    expect(await svc.sum(2, 2)).toBe(4);
  });
});
