// RPC, connecting side (port of snakeMQ's rpc1_connector.py): "soldier" calls boss's "abc"
// and exposes its own object "b" (a peer can be server and client at once).
// Run: npx tsx examples/rpc-connector.ts [port]   (after examples/rpc-listener.ts); exits when done.
// It calls a Python snakeMQ 1.6 server the same way (in pickles, picked by itself):
// PYTHONPATH=$SNAKEMQ_PY python3 examples/python-rpc-server.py [port]
import { Link, Messaging, Packeter } from '../src/index.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { RpcClient, RpcServer } from '../src/rpc.js';
import { RemoteError } from '../src/rpc-errors.js';

/** What boss exposes as "abc" (the types only; the object lives in the listener). */
interface A {
  getFo(): string;
  mysignal(): void;
  slowAdd(a: number, b: number): number;
  greet(name: string): string;
  fail(): never;
}

class B {
  wer(): void {
    console.log('wer');
  }
}

const port = Number(process.argv[2] ?? 4000);
const link = new Link();
const messaging = new Messaging('soldier', '', new Packeter(link));
const hook = new ReceiveHook(messaging);
const client = new RpcClient(hook);
new RpcServer(hook).registerObject(new B(), 'b');

link.addConnector({ host: '127.0.0.1', port, reconnectInterval: 500 });
const proxy = client.getProxy<A>('boss', 'abc');

try {
  // A regular call waits until boss is connected and answers (give up after 10 s).
  proxy.getFo.setTimeout(10_000);
  console.log(await proxy.getFo());

  // Calls are promises: many can be in flight at once.
  console.log('sums:', await Promise.all([proxy.slowAdd(1, 2), proxy.slowAdd(3, 4), proxy.slowAdd(5, 6)]));

  // Keyword arguments (Python's greet(name, greeting='hi')), sent only when given.
  console.log(await proxy.greet.withOptions({ kwargs: { greeting: 'hi' } })('soldier'));

  // A signal: fire-and-forget, dropped if boss is not connected within its TTL (10 s).
  await proxy.mysignal.asSignal(10_000)();
  console.log('mysignal sent');

  // A remote exception arrives with the remote stack trace.
  await proxy.fail();
} catch (err) {
  if (err instanceof RemoteError) {
    console.log('remote exception', err.remoteName, err.remoteArgs ?? '');
    console.log('remote traceback', err.remoteStack);
  } else console.log('call failed:', err);
} finally {
  client.close();
  await messaging.close();
  await link.close();
}
