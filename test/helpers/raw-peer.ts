/** A raw Packeter speaking the messaging protocol by hand, for tests that craft what a peer sends. */
import { Buffer } from 'node:buffer';
import type { ConnId } from '../../src/link.js';
import type { Packeter } from '../../src/packeter.js';
import { EXTENSION_VERSION, FRAME_HELLO, encodeHello, encodeIdentification, encodeProtocolVersion } from '../../src/protocol.js';

/** The incarnation a raw peer announces unless told otherwise. */
export const RAW_INCARNATION = Buffer.from('raw-peer', 'latin1');

/**
 * What a peer sends first on connection `conn`: the protocol version, a hello offering
 * `features` (leave it out for a plain snakeMQ 1.6 peer, which sends none), and its identity.
 * The hello is of extension version `extVersion` (default ours), with `incarnation` when the
 * version is 2 or more.
 */
export function introduce(
  p: Packeter,
  conn: ConnId,
  ident: string,
  features?: number,
  { extVersion = EXTENSION_VERSION, incarnation = RAW_INCARNATION }: { extVersion?: number; incarnation?: Buffer } = {},
): void {
  p.sendPacket(conn, encodeProtocolVersion());
  if (features !== undefined) {
    p.sendPacket(conn, encodeHello({ extVersion, maxPacketSize: 1 << 26, features, incarnation: extVersion >= 2 ? incarnation : undefined }));
  }
  p.sendPacket(conn, encodeIdentification(ident));
}

/** The incarnation a hello packet carries (a copy), or `undefined` for another packet or a version 1 hello. */
export function helloIncarnation(packet: Buffer): Buffer | undefined {
  return packet[0] === FRAME_HELLO && packet.length >= 19 ? Buffer.from(packet.subarray(11, 19)) : undefined;
}
