// Persistent messaging, connecting side (port of snakeMQ's persistent_messaging_connector.py).
// Run: npx tsx examples/persistent-messaging-connector.ts send [port]   queue a message and wait
//      npx tsx examples/persistent-messaging-connector.ts [port]        only deliver what is stored
// The message is committed to xconnector.db before `sendMessage` resolves: stop this program
// (Ctrl-C) while xlistener is down, start it again later, and the message is still delivered.
import { FLAG_PERSISTENT, Link, Message, Messaging, Packeter } from '../src/index.js';
import { SqliteQueuesStorage } from '../storage/sqlite.js';

const args = process.argv.slice(2);
const send = args[0] === 'send';
const port = Number((send ? args[1] : args[0]) ?? 4000);
const storage = new SqliteQueuesStorage('xconnector.db');
const link = new Link();
const messaging = new Messaging('xconnector', '', new Packeter(link), { storage });
await messaging.ready;

const stop = async (): Promise<void> => {
  await messaging.close();
  await link.close();
  await storage.close();
};
process.once('SIGINT', () => void stop());
messaging.on('message-delivered', (ident, uuid) => {
  console.log(`delivered to ${ident}: ${uuid.toString('hex')}`);
  if (messaging.queueSize('xlistener') === 0) void stop();
});
messaging.on('message-drop', (ident, uuid, reason) => console.log(`dropped ${uuid.toString('hex')} for ${ident}: ${reason}`));

if (send) {
  const message = new Message('hello', { ttl: 60_000, flags: FLAG_PERSISTENT });
  await messaging.sendMessage('xlistener', message);
  console.log(`message with 60 s TTL stored and queued (uuid ${message.uuidHex})`);
}
console.log(`${messaging.queueSize('xlistener')} message(s) waiting for xlistener`);
if (messaging.queueSize('xlistener') === 0) await stop();
else link.addConnector({ host: '127.0.0.1', port, reconnectInterval: 500 });
