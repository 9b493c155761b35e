/**
 * RPC with a real Python snakeMQ 1.6 peer, both ways, on 127.0.0.1: a Python RpcClient calls
 * our RpcServer, and our RpcClient calls a Python RpcServer (test/helpers/py-rpc-peer.py).
 * Needs `python3` and a folder in SNAKEMQ_PY that makes `import snakemq` work; without them
 * these tests are reported as skipped, by name.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ReceiveHook } from '../src/receive-hook.js';
import { RpcClient, RpcServer, rpcSignal } from '../src/rpc.js';
import { RemoteError, UnknownMethodError, UnknownObjectError } from '../src/rpc-errors.js';
import { PickleCodec } from '../src/rpc-pickle.js';
import { EXPECTED, FILE, body } from './helpers/pickle-vectors.js';
import { closeAllPeers, connect, listen, makePeer } from './helpers/peers.js';

const SNAKEMQ_PY = process.env.SNAKEMQ_PY;
const HELPER = fileURLToPath(new URL('./helpers/py-rpc-peer.py', import.meta.url));
const env = { ...process.env, PYTHONPATH: [SNAKEMQ_PY, process.env.PYTHONPATH].filter(Boolean).join(':'), PYTHONIOENCODING: 'utf-8' };
const HAVE_PYTHON =
  SNAKEMQ_PY !== undefined &&
  spawnSync('python3', ['-c', 'import snakemq.rpc'], { env, timeout: 10_000, stdio: 'ignore' }).status === 0;
const NEEDS = HAVE_PYTHON ? '' : ' [skipped: needs python3 with snakeMQ importable from SNAKEMQ_PY]';

const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await closeAllPeers();
});

/** Run the helper; its stdout as parsed JSON lines, as they come. */
function python(args: string[]): { lines: Array<Record<string, any>>; next: (pred: (l: Record<string, any>) => boolean, ms?: number) => Promise<Record<string, any>>; exited: Promise<number | null>; stderr: () => string } {
  const proc = spawn('python3', [HELPER, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  const lines: Array<Record<string, any>> = [];
  let buf = '';
  let err = '';
  const waiters: Array<() => void> = [];
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
    for (const w of waiters.splice(0)) w();
  });
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const next = (pred: (l: Record<string, any>) => boolean, ms = 20_000): Promise<Record<string, any>> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`python helper: nothing matching after ${ms} ms; stderr: ${err}`)), ms);
      const check = (): void => {
        const l = lines.find(pred);
        if (l) {
          clearTimeout(timer);
          resolve(l);
        } else waiters.push(check);
      };
      check();
      void exited.then(() => {
        if (!lines.find(pred)) {
          clearTimeout(timer);
          reject(new Error(`python helper exited; stderr: ${err}`));
        }
      });
    });
  return { lines, next, exited, stderr: () => err };
}

const PY_TYPES = "[1, -7, 1180591620717411303424, -1180591620717411303424, 1.5, 'žluťoučký kůň', b'\\x00\\xffbytes', None, True, False, [1, [2, 3]], [4, 5], {'k': [1, 2], 'n': None}]";
const JS_TYPES = [1, -7, 2n ** 70n, -(2n ** 70n), 1.5, 'žluťoučký kůň', Buffer.from('00ff6279746573', 'hex'), null, true, false, [1, [2, 3]], [4, 5], { k: [1, 2], n: null }];

describe('RPC with a real Python snakeMQ 1.6 peer', () => {
  it.skipIf(!HAVE_PYTHON)(`Python reads our protocol-2 encoding of every recorded body as it reads snakeMQ's own${NEEDS}`, async () => {
    const codec = new PickleCodec();
    const hexes: string[] = [];
    for (const v of FILE.vectors) hexes.push(body(v.name).subarray(6).toString('hex'), codec.encode(EXPECTED[v.name].encodable).toString('hex'));
    const py = python(['compare', ...hexes]);
    expect(await py.exited).toBe(0);
    expect(py.lines).toHaveLength(FILE.vectors.length);
    for (const l of py.lines) expect(l, l.theirs).toMatchObject({ same: true });
  });

  it.skipIf(!HAVE_PYTHON)(
    `a Python RpcClient calls our RpcServer: calls, kwargs, a signal, exceptions, a big int, bytes, unicode, requests repeated (after a reconnect too)${NEEDS}`,
    async () => {
      const node = makePeer('node', { keepaliveInterval: 0 });
      const server = new RpcServer(new ReceiveHook(node.messaging));
      const notes: unknown[] = [];
      let bumps = 0;
      let slowRuns = 0;
      let slowRequests = 0;
      node.messaging.on('message', (_c, _i, m) => {
        if (m.body.includes('\x8c\x04slow', 0, 'latin1')) slowRequests++;
      });
      server.registerObject(
        {
          add: (a: number, b: number) => a + b,
          echo: (...args: unknown[]) => args,
          types: () => JS_TYPES,
          greet: (name: string, opts: { greeting?: string }) => `${opts.greeting ?? 'hello'}, ${name}`,
          fail: (what: string) => {
            const e = new Error(`bad input: ${what}`);
            e.name = 'ValueError';
            throw e;
          },
          explode: () => {
            throw new RangeError('exploded');
          },
          big: () => 2n ** 70n,
          notify: rpcSignal((text: string, opts: { level?: number }) => void notes.push([text, opts.level])),
          get_notes: () => notes,
          bump: () => ++bumps,
          slow: async () => {
            slowRuns++;
            const c = node.messaging.connectionOf('pyclient');
            if (c !== undefined) node.link.closeConnection(c);
            await new Promise((r) => setTimeout(r, 300));
            return slowRuns;
          },
        },
        'calc',
        { kwargs: ['greet', 'notify'] },
      );
      const errors: Error[] = [];
      server.on('error', (e) => errors.push(e));
      const port = await listen(node);
      const py = python(['client', 'pyclient', String(port), 'node']);
      await py.next((l) => l.done === true || l.crash !== undefined, 30_000);
      expect(py.lines.find((l) => l.crash)).toBeUndefined();
      expect(node.messaging.peerSpeaksExtensions('pyclient')).toBe(false);
      const got = new Map(py.lines.filter((l) => l.name).map((l) => [l.name as string, l]));
      expect(got.get('add')).toEqual({ name: 'add', repr: '5', type: 'int' });
      expect(got.get('echo')).toMatchObject({ repr: PY_TYPES, type: 'list' });
      expect(got.get('types')).toMatchObject({ repr: PY_TYPES, type: 'list' });
      expect(got.get('greet')).toMatchObject({ repr: "'hi, bob'" });
      expect(got.get('kwargs-refused')).toMatchObject({ error: 'TypeError', module: 'builtins' });
      expect(got.get('kwargs-refused')!.args).toMatch(/unexpected keyword arguments \(b\)/);
      expect(got.get('fail')).toMatchObject({ error: 'ValueError', module: 'builtins', args: "('bad input: bad',)" });
      expect(got.get('fail')!.tb).toMatch(/^ValueError: bad input: bad\n\s+at /);
      expect(got.get('explode')).toMatchObject({ error: 'RuntimeError', args: "('RangeError: exploded',)" });
      expect(got.get('nosuch')).toMatchObject({ error: 'NoMethodError', module: 'snakemq.rpc', args: "('nosuch',)" });
      expect(got.get('big')).toMatchObject({ repr: '1180591620717411303424', type: 'int' });
      expect(got.get('get_notes')).toMatchObject({ repr: "[['hello ž', 3]]" });
      expect(got.get('bump-1')).toMatchObject({ repr: '1' });
      expect(got.get('bump-1-again')).toMatchObject({ repr: '1' });
      expect(got.get('bump-2')).toMatchObject({ repr: '2' });
      expect(bumps).toBe(2);
      // a set is no type of ours: the Python caller gets a TypeError at once instead of waiting
      expect(got.get('set-argument')).toMatchObject({ error: 'TypeError', module: 'builtins' });
      expect(got.get('set-argument')!.args).toMatch(/the request could not be read: .*EMPTY_SET is refused/);
      // re-sent after the reconnect with the same req_id, run once, answered
      expect(got.get('slow-reconnect')).toMatchObject({ repr: '1' });
      expect(slowRequests).toBe(2);
      expect(slowRuns).toBe(1);
      expect(await py.exited).toBe(0);
      expect(errors.map((e) => (e as { code?: string }).code)).toEqual(['ERR_RPC_DECODE']); // the set
    },
    60_000,
  );

  it.skipIf(!HAVE_PYTHON)(
    `our RpcClient calls a Python RpcServer: calls, kwargs, a signal, exceptions, a big int, bytes, unicode${NEEDS}`,
    async () => {
      const py = python(['server', 'pyserver']);
      const { port } = await py.next((l) => typeof l.port === 'number');
      const node = makePeer('node', { keepaliveInterval: 0 });
      const client = new RpcClient(new ReceiveHook(node.messaging), { timeout: 10_000 });
      const errors: Error[] = [];
      client.on('error', (e) => errors.push(e));
      connect(node, port);
      type Calc = {
        add(a: number, b: number): number;
        echo(...args: unknown[]): { args: unknown[]; kwargs: Record<string, unknown>; repr: string };
        types(): unknown[];
        big(): bigint;
        fail(): never;
        custom(): never;
        nosuch(): never;
        notify(text: string): void;
        get_notes(): unknown[];
      };
      const calc = client.getProxy<Calc>('pyserver', 'calc');
      // made before the peer is connected: guessed MessagePack, encoded again as a pickle on connect
      const early = calc.add(2, 3);
      expect(await early).toBe(5);
      expect(node.messaging.peerSpeaksExtensions('pyserver')).toBe(false);

      const echoed = await calc.echo.withOptions({ kwargs: { flag: true, name: 'x' } })(1, 2n ** 70n, 'žluť', Buffer.from([0, 255]), null, true, [1, [2]], { k: 'v' });
      expect(echoed.args).toEqual([1, 2n ** 70n, 'žluť', Buffer.from([0, 255]), null, true, [1, [2]], { k: 'v' }]);
      expect(echoed.kwargs).toEqual({ flag: true, name: 'x' });
      expect(echoed.repr).toBe("((1, 1180591620717411303424, 'žluť', b'\\x00\\xff', None, True, [1, [2]], {'k': 'v'}), {'flag': True, 'name': 'x'})");
      expect(await calc.types()).toEqual(JS_TYPES);
      expect(await calc.big()).toBe(2n ** 70n);

      const fail = await calc.fail().catch((e: unknown) => e);
      expect(fail).toBeInstanceOf(RemoteError);
      expect(fail).toMatchObject({ code: 'ERR_RPC_REMOTE', remoteName: 'ValueError', remoteModule: 'builtins', remoteArgs: ['bad value', 42] });
      expect((fail as RemoteError).remoteMessage).toBe("('bad value', 42)");
      expect((fail as RemoteError).remoteStack).toMatch(/^Traceback \(most recent call last\):\n[\s\S]*raise ValueError\("bad value", 42\)/);
      const custom = await calc.custom().catch((e: unknown) => e);
      expect(custom).toMatchObject({ remoteName: 'CustomError', remoteModule: '__main__', remoteMessage: 'custom failure', remoteArgs: ['custom failure'] });
      await expect(calc.nosuch()).rejects.toBeInstanceOf(UnknownMethodError);
      await expect(client.getProxy<{ x(): void }>('pyserver', 'nothing').x()).rejects.toBeInstanceOf(UnknownObjectError);

      await calc.notify.asSignal(10_000).withOptions({ kwargs: { level: 3 } })('hello ž');
      calc.notify.asSignal(null);
      // the signal and the call go out in this order on one connection; Python runs each in a thread
      let notes: unknown[] = [];
      for (let i = 0; i < 50 && notes.length === 0; i++) {
        notes = await calc.get_notes();
        if (notes.length === 0) await new Promise((r) => setTimeout(r, 20));
      }
      expect(notes).toEqual([['hello ž', 3]]);
      expect(await calc.add(40, 2)).toBe(42);
      expect(errors).toEqual([]);
      // a Python set in a reply: the call fails at once with the typed error, the next one works
      await expect(client.getProxy<{ aset(): unknown }>('pyserver', 'calc').aset()).rejects.toMatchObject({ code: 'ERR_RPC_DECODE' });
      expect(errors.map((e) => (e as { code?: string }).code)).toEqual(['ERR_RPC_DECODE']);
      expect(await calc.add(1, 2)).toBe(3);
    },
    60_000,
  );
});
