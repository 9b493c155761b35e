// Packeter over Link, connecting side (port of snakeMQ's packeter_connector.py).
// Run: npx tsx examples/packeter-connector.ts [port]   sends one packet, prints the echo, exits.
import { Link, Packeter } from '../src/index.js';

const port = Number(process.argv[2] ?? 4000);
const link = new Link();
const packeter = new Packeter(link);

packeter.on('connect', (connId) => {
  console.log(`connected (${connId}), sending a packet`);
  packeter.sendPacket(connId, Buffer.from('hello from the connector'));
});
packeter.on('packet-sent', (connId, id) => console.log(`packet ${id} written to ${connId}`));
packeter.on('packet', async (_connId, payload) => {
  console.log(`got: ${payload.toString()}`);
  await link.close();
});
link.addConnector({ host: '127.0.0.1', port, reconnectInterval: 500 });
