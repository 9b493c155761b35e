// Persistent messaging, listening side (port of snakeMQ's persistent_messaging_listener.py).
// Run: npx tsx examples/persistent-messaging-listener.ts [port]   (default 4000; Ctrl-C to stop)
// Start it after examples/persistent-messaging-connector.ts queued messages while it was down.
import { Link, Messaging, Packeter } from '../src/index.js';
import { SqliteQueuesStorage } from '../storage/sqlite.js';

const port = Number(process.argv[2] ?? 4000);
const storage = new SqliteQueuesStorage('xlistener.db'); // remembers what it received (dedup)
const link = new Link();
const messaging = new Messaging('xlistener', '', new Packeter(link), { storage });

messaging.on('message', (_c, ident, message) =>
  console.log(`received from ${ident}: ${message.body.toString()} (uuid ${message.uuidHex}, persistent ${message.persistent})`),
);
await link.addListener({ host: '127.0.0.1', port });
console.log(`xlistener on 127.0.0.1:${port}`);
const stop = async (): Promise<void> => {
  await messaging.close();
  await link.close();
  await storage.close();
};
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
