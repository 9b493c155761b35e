// The snakemq demo: `npm run demo`. Three peers on loopback, narrated on stderr; the last line
// on stdout is a JSON summary. Exits 0 by itself.
//
//   1. bob queues 5 persistent messages for alice, who is down; they are committed to SQLite.
//   2. bob stops (a restart), starts again on the same SQLite file: the 5 are still there.
//   3. bob sends carol a message with a 300 ms TTL; carol never shows up: it is dropped.
//   4. alice comes up: the 5 arrive, in order, once each.
//   5. bob calls alice over RPC: add(2, 3), then a method that throws.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FLAG_PERSISTENT,
  Link,
  Message,
  Messaging,
  Packeter,
  ReceiveHook,
  RemoteError,
  RpcClient,
  RpcServer,
} from '../src/index.js';
import { SqliteQueuesStorage } from '../storage/sqlite.js';

const say = (line: string): void => void process.stderr.write(`demo: ${line}\n`);
const dir = mkdtempSync(join(tmpdir(), 'snakemq-demo-'));
const cleanups: Array<() => Promise<void> | void> = [() => rmSync(dir, { recursive: true, force: true })];

interface Peer {
  link: Link;
  messaging: Messaging;
  storage: SqliteQueuesStorage;
  stop(): Promise<void>;
}

function startPeer(ident: string): Peer {
  const storage = new SqliteQueuesStorage(join(dir, `${ident}.db`));
  const link = new Link();
  const messaging = new Messaging(ident, '', new Packeter(link), { storage });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await messaging.close();
    await link.close();
    await storage.close();
  };
  cleanups.unshift(stop);
  return { link, messaging, storage, stop };
}

const timeout = setTimeout(() => {
  say('timed out after 30 s');
  process.exit(1);
}, 30_000);

try {
  // 1. alice is down; bob queues persistent messages for her.
  let bob = startPeer('bob');
  const bodies = Array.from({ length: 5 }, (_, i) => `persistent message ${i + 1}`);
  for (const body of bodies) {
    await bob.messaging.sendMessage('alice', new Message(body, { flags: FLAG_PERSISTENT }));
  }
  say(`bob queued ${bodies.length} persistent messages for alice, who is not running (committed to bob.db)`);

  // 2. bob restarts on the same file.
  await bob.stop();
  say('bob stopped');
  bob = startPeer('bob');
  await bob.messaging.ready;
  say(`bob restarted: ${bob.messaging.queueSize('alice')} messages for alice loaded from bob.db`);

  // 3. A TTL drop: carol never comes.
  let droppedByTtl = 0;
  const dropped = new Promise<void>((resolve) => {
    bob.messaging.on('message-drop', (ident, _uuid, reason) => {
      if (reason !== 'ttl') return;
      droppedByTtl++;
      say(`bob dropped a message for ${ident}: its TTL ran out while ${ident} stayed away`);
      resolve();
    });
  });
  await bob.messaging.sendMessage('carol', new Message('are you there?', { ttl: 300 }));
  say('bob sent carol a message with a 300 ms TTL; carol is not running');
  await dropped;

  // 4. alice comes up and bob connects to her.
  const alice = startPeer('alice');
  const received: string[] = [];
  const allIn = new Promise<void>((resolve) => {
    const onMessage = (_connId: string, ident: string, message: Message): void => {
      received.push(message.body.toString());
      say(`alice received from ${ident}: "${message.body.toString()}"`);
      if (received.length === bodies.length) {
        alice.messaging.off('message', onMessage); // RPC traffic follows; the hooks handle it
        resolve();
      }
    };
    alice.messaging.on('message', onMessage);
  });
  const server = new RpcServer(new ReceiveHook(alice.messaging));
  server.registerObject(
    {
      add: (a: number, b: number) => a + b,
      divide: (a: number, b: number) => {
        if (b === 0) throw new RangeError('division by zero');
        return a / b;
      },
    },
    'calc',
  );
  const { port } = await alice.link.addListener({ host: '127.0.0.1', port: 0 });
  say(`alice started, listening on 127.0.0.1:${port}; bob connects`);
  bob.link.addConnector({ host: '127.0.0.1', port, reconnectInterval: 100 });
  await allIn;
  say(`all ${received.length} messages arrived, in order: ${received.every((b, i) => b === bodies[i])}`);

  // 5. RPC: a call and a remote exception.
  const client = new RpcClient(new ReceiveHook(bob.messaging));
  const calc = client.getProxy<{ add(a: number, b: number): Promise<number>; divide(a: number, b: number): Promise<number> }>(
    'alice',
    'calc',
  );
  const sum = await calc.add(2, 3);
  say(`bob called alice's calc.add(2, 3) over RPC: ${sum}`);
  let remoteError = '';
  try {
    await calc.divide(1, 0);
  } catch (err) {
    if (!(err instanceof RemoteError)) throw err;
    remoteError = err.remoteName;
    say(`calc.divide(1, 0) raised on alice: ${err.remoteName}: ${err.remoteMessage}`);
    say(`  remote stack: ${err.remoteStack.split('\n')[1]?.trim() ?? ''}`);
  }

  const summary = {
    delivered_after_return: received.length,
    in_order: received.every((b, i) => b === bodies[i]),
    dropped_by_ttl: droppedByTtl,
    rpc_result: sum,
    remote_error: remoteError,
  };
  for (const c of cleanups) await c();
  clearTimeout(timeout);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
} catch (err) {
  say(`failed: ${(err as Error).stack ?? err}`);
  for (const c of cleanups) await Promise.resolve(c()).catch(() => {});
  process.exit(1);
}
