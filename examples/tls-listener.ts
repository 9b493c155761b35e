// Messaging over TLS, listening side (port of snakeMQ's tls examples). The listener requires a
// client certificate signed by the CA.
// Run: npx tsx examples/tls-listener.ts KEY CERT CA [port]
// Test certificates (server cert needs subjectAltName IP:127.0.0.1):
//   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=ca \
//     -keyout ca.key -out ca.pem
//   openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=server -keyout server.key \
//     -out server.csr && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
//     -days 7 -extfile <(echo subjectAltName=IP:127.0.0.1,DNS:localhost) -out server.pem
//   (the same for client.key / client.pem, without the subjectAltName)
import { readFileSync } from 'node:fs';
import { Link, Messaging, Packeter } from '../src/index.js';

const [key, cert, ca, portArg] = process.argv.slice(2);
if (!key || !cert || !ca) {
  console.error('usage: tls-listener.ts KEY CERT CA [port]');
  process.exit(2);
}
const link = new Link();
const messaging = new Messaging('tlslistener', '', new Packeter(link));
messaging.on('connect', (connId, ident) => {
  const peer = link.getPeerCertificate(connId);
  console.log(`${ident} connected over TLS, certificate subject ${JSON.stringify(peer?.subject)}`);
});
messaging.on('message', (_c, ident, message) => console.log(`received from ${ident}: ${message.body.toString()}`));
const { port } = await link.addListener({
  host: '127.0.0.1',
  port: Number(portArg ?? 4000),
  tls: { key: readFileSync(key), cert: readFileSync(cert), ca: readFileSync(ca), requirePeerCert: true },
});
console.log(`tlslistener on 127.0.0.1:${port}`);
const stop = async (): Promise<void> => {
  await messaging.close();
  await link.close();
};
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
