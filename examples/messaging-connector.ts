// Messaging, connecting side (port of snakeMQ's messaging_connector.py).
// Run: npx tsx examples/messaging-connector.ts [port]   sends one message, waits for the reply, exits.
import { Link, Message, Messaging, Packeter } from '../src/index.js';

const port = Number(process.argv[2] ?? 4000);
const link = new Link();
const messaging = new Messaging('xconnector', '', new Packeter(link));

let pending = 2; // our message delivered, and the reply received
const done = async (): Promise<void> => {
  if (--pending > 0) return;
  await messaging.close();
  await link.close();
};
messaging.on('message-delivered', (ident) => {
  console.log(`delivered to ${ident}`);
  void done();
});
messaging.on('message', (_connId, ident, message) => {
  console.log(`reply from ${ident}: ${message.body.toString()}`);
  void done();
});
link.addConnector({ host: '127.0.0.1', port, reconnectInterval: 500 });
// Queued at once; goes out when xlistener is connected. Dropped if it waits over 60 s.
await messaging.sendMessage('xlistener', new Message('hello', { ttl: 60_000 }));
console.log('message queued for xlistener');
