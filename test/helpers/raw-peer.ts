/** A raw Packeter speaking the messaging protocol by hand, for tests that craft what a peer sends. */
import type { ConnId } from '../../src/link.js';
import type { Packeter } from '../../src/packeter.js';
import { EXTENSION_VERSION, encodeHello, encodeIdentification, encodeProtocolVersion } from '../../src/protocol.js';

/**
 * What a peer sends first on connection `conn`: the protocol version, a hello offering
 * `features` (leave it out for a plain snakeMQ 1.6 peer, which sends none), and its identity.
 */
export function introduce(p: Packeter, conn: ConnId, ident: string, features?: number): void {
  p.sendPacket(conn, encodeProtocolVersion());
  if (features !== undefined) p.sendPacket(conn, encodeHello({ extVersion: EXTENSION_VERSION, maxPacketSize: 1 << 26, features }));
  p.sendPacket(conn, encodeIdentification(ident));
}
