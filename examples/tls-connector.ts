// Messaging over TLS, connecting side. Verifies the listener's certificate against CA and
// presents its own.   Run: npx tsx examples/tls-connector.ts KEY CERT CA [port]
import { readFileSync } from 'node:fs';
import { Link, Message, Messaging, Packeter } from '../src/index.js';

const [key, cert, ca, portArg] = process.argv.slice(2);
if (!key || !cert || !ca) {
  console.error('usage: tls-connector.ts KEY CERT CA [port]');
  process.exit(2);
}
const link = new Link();
const messaging = new Messaging('tlsconnector', '', new Packeter(link));
messaging.on('message-delivered', async (ident) => {
  console.log(`delivered to ${ident}`);
  await messaging.close();
  await link.close();
});
link.addConnector({
  host: '127.0.0.1',
  port: Number(portArg ?? 4000),
  tls: { key: readFileSync(key), cert: readFileSync(cert), ca: readFileSync(ca) },
});
await messaging.sendMessage('tlslistener', new Message('hello over TLS', { ttl: 60_000 }));
