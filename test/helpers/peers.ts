/** Build real messaging peers over loopback for integration tests. */
import { Link } from '../../src/link.js';
import { Messaging, type MessagingOptions } from '../../src/messaging.js';
import { Packeter, type PacketerOptions } from '../../src/packeter.js';

export interface Peer {
  ident: string;
  link: Link;
  packeter: Packeter;
  messaging: Messaging;
  close(): Promise<void>;
}

const open = new Set<Peer>();

export function makePeer(ident: string, options: MessagingOptions = {}, packeterOptions: PacketerOptions = {}): Peer {
  const link = new Link();
  const packeter = new Packeter(link, packeterOptions);
  const messaging = new Messaging(ident, '', packeter, options);
  const peer: Peer = {
    ident,
    link,
    packeter,
    messaging,
    async close() {
      open.delete(peer);
      await messaging.close();
      await link.close();
    },
  };
  open.add(peer);
  return peer;
}

/** Close every peer made so far (call in afterEach). */
export async function closeAllPeers(): Promise<void> {
  for (const p of [...open]) await p.close();
}

/** Listen on 127.0.0.1:0 and return the port. */
export async function listen(peer: Peer): Promise<number> {
  return (await peer.link.addListener({ host: '127.0.0.1', port: 0 })).port;
}

export function connect(peer: Peer, port: number, reconnectInterval = 50): string {
  return peer.link.addConnector({ host: '127.0.0.1', port, reconnectInterval, reconnectMaxInterval: 500 });
}

/** Collect received messages as [from, body-as-utf8]. */
export function inbox(peer: Peer): Array<[string, string]> {
  const got: Array<[string, string]> = [];
  peer.messaging.on('message', (_c, ident, m) => got.push([ident, m.body.toString()]));
  return got;
}
