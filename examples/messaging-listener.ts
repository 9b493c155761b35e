// Messaging, listening side (port of snakeMQ's messaging_listener.py).
// Run: npx tsx examples/messaging-listener.ts [port]   (default 4000; Ctrl-C to stop)
import { Link, Message, Messaging, Packeter } from '../src/index.js';

const port = Number(process.argv[2] ?? 4000);
const link = new Link();
const messaging = new Messaging('xlistener', '', new Packeter(link));

messaging.on('connect', (connId, ident) => console.log(`${ident} connected (${connId})`));
messaging.on('disconnect', (connId, ident) => console.log(`${ident} disconnected (${connId})`));
messaging.on('message', (_connId, ident, message) => {
  console.log(`received from ${ident}: ${message.body.toString()} (ttl ${message.ttl} ms)`);
  void messaging.sendMessage(ident, new Message(`thanks for "${message.body.toString()}"`, { ttl: 60_000 }));
});

await link.addListener({ host: '127.0.0.1', port });
console.log(`xlistener on 127.0.0.1:${port}`);
const stop = async (): Promise<void> => {
  await messaging.close();
  await link.close();
};
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
