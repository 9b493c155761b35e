// RPC, listening side (port of snakeMQ's rpc1_listener.py): "boss" exposes an object "abc".
// Run: npx tsx examples/rpc-listener.ts [port]   (default 4000; Ctrl-C to stop)
// Then: npx tsx examples/rpc-connector.ts [port]
// Or a Python snakeMQ 1.6 client: PYTHONPATH=$SNAKEMQ_PY python3 examples/python-rpc-client.py [port]
import { Link, Messaging, Packeter } from '../src/index.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { RpcServer, rpcSignal } from '../src/rpc.js';

class A {
  getFo(): string {
    return 'fo value';
  }

  /** A signal: callers do not wait for it, and its exceptions stay here. */
  @rpcSignal
  mysignal(): void {
    console.log('mysignal');
  }

  async slowAdd(a: number | bigint, b: number | bigint): Promise<number | bigint> {
    await new Promise((resolve) => setTimeout(resolve, 100));
    // ints past 2^53 come as BigInts (from Python, say)
    return typeof a === 'bigint' || typeof b === 'bigint' ? BigInt(a) + BigInt(b) : a + b;
  }

  /** Registered below to take keyword arguments: they arrive as a trailing object. */
  greet(name: string, options: { greeting?: string }): string {
    return `${options.greeting ?? 'hello'}, ${name}`;
  }

  fail(): never {
    throw new Error('this one fails on purpose');
  }
}

const port = Number(process.argv[2] ?? 4000);
const link = new Link();
const messaging = new Messaging('boss', '', new Packeter(link));
const server = new RpcServer(new ReceiveHook(messaging));
server.registerObject(new A(), 'abc', { kwargs: ['greet'] });
server.on('error', (err, ident) => console.log(`error in a request from ${ident}: ${err.message}`));
messaging.on('connect', (_connId, ident) => console.log(`${ident} connected`));
messaging.on('disconnect', (_connId, ident) => console.log(`${ident} disconnected`));

const { port: bound } = await link.addListener({ host: '127.0.0.1', port });
console.log(`boss serves "abc" on 127.0.0.1:${bound}`);
const stop = async (): Promise<void> => {
  await server.close();
  await messaging.close();
  await link.close();
};
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
