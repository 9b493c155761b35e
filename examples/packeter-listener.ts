// Packeter over Link, listening side (port of snakeMQ's packeter_listener.py).
// Run: npx tsx examples/packeter-listener.ts [port]   (default 4000; Ctrl-C to stop)
import { Link, Packeter } from '../src/index.js';

const port = Number(process.argv[2] ?? 4000);
const link = new Link();
const packeter = new Packeter(link);

packeter.on('connect', (connId, info) => console.log(`connect ${connId} from ${info.remoteAddress}:${info.remotePort}`));
packeter.on('disconnect', (connId) => console.log(`disconnect ${connId}`));
packeter.on('packet', (connId, payload) => {
  console.log(`packet from ${connId}: ${payload.toString()}`);
  packeter.sendPacket(connId, Buffer.from(`echo: ${payload.toString()}`));
});

const { port: bound } = await link.addListener({ host: '127.0.0.1', port });
console.log(`listening on 127.0.0.1:${bound}`);
process.once('SIGINT', () => void link.close());
process.once('SIGTERM', () => void link.close());
