/**
 * Dedup state per remembered peer: the receiver's marks (src/inbound.ts, what Messaging keeps
 * per sender: identity, incarnation, highest sequence number delivered and committed) for `n`
 * peers with identities like a device fleet's (`device-000123456`, 16 characters), each
 * identified once as a real connection would.
 *
 * Reported: bytes_per_peer = (heapUsed + arrayBuffers after − before, full GCs around it) / n,
 * identity strings included; and the peers that fit in 100 MB at that rate.
 * params: { n }.
 */
import { randomBytes } from 'node:crypto';
import { DeliveredMarks } from '../../src/inbound.js';
import { fullGc, installCrashHandlers, params, report } from '../lib/child.js';

installCrashHandlers();
const n = params.n as number;
const incs = Array.from({ length: 64 }, () => randomBytes(8));
// identities decoded from bytes as the identification frame's decoder does (a flat string each)
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const identBytes = Buffer.from('device-000000000');

const used = (): number => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};
fullGc();
await new Promise((r) => setTimeout(r, 50));
fullGc();
const before = used();
const marks = new DeliveredMarks();
for (let i = 0; i < n; i++) {
  identBytes.write(String(i).padStart(9, '0'), 7, 'latin1');
  const ident = utf8.decode(identBytes);
  const slot = marks.identified(ident, incs[i & 63]);
  marks.setDelivered(slot, 1000 + i);
}
fullGc();
await new Promise((r) => setTimeout(r, 50));
fullGc();
const after = used();
if (marks.size !== n) throw new Error(`remembered ${marks.size} of ${n}`);
const perPeer = (after - before) / n;
report('result', { bytes_per_peer: perPeer, peers_per_100mb: Math.floor(100e6 / perPeer) });
