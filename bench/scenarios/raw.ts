/**
 * Ceiling: raw Node `net` sockets, no library.
 *  - mode "framed": 4-byte-length-prefixed frames of `size` bytes, written in batches of
 *    `batch` frames per write (each batch built fresh), receiver parses every frame; with
 *    `views`, it also makes a Buffer view of each frame's payload (whole in its chunk) and
 *    hands it to a function, the least a receiver that delivers messages must do.
 *  - mode "bulk": `size`-byte writes (64 KiB) of opaque bytes; receiver counts bytes.
 * params: { role, mode, size, batch?, views?, port? }; run command: { n } (frames or writes).
 */
import * as net from 'node:net';
import { once } from 'node:events';
import { RunCounter, installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';

installCrashHandlers();
const mode = params.mode as 'framed' | 'bulk';
const size = params.size as number;
const views = params.views === true;
/** Where frames are handed (with `views`): it keeps the last one, so none can be optimised away. */
let lastFrame: Buffer | undefined;
function hand(frame: Buffer): void {
  lastFrame = frame;
}

if (params.role === 'receiver') {
  const counter = new RunCounter();
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    if (mode === 'bulk') {
      s.on('data', (d: Buffer) => counter.add(d.length / size, d.length));
      return;
    }
    // Minimal frame parser: count complete frames, carry partial headers/payloads over.
    const hdr = Buffer.alloc(4);
    let hdrFill = 0;
    let remaining = 0; // payload bytes still to skip for the current frame
    s.on('data', (d: Buffer) => {
      let off = 0;
      let frames = 0;
      const n = d.length;
      while (off < n) {
        if (remaining > 0) {
          const take = Math.min(remaining, n - off);
          remaining -= take;
          off += take;
          if (remaining === 0) frames++;
          continue;
        }
        let len: number;
        if (hdrFill === 0 && n - off >= 4) {
          len = d.readUInt32BE(off);
          off += 4;
        } else {
          const take = Math.min(4 - hdrFill, n - off);
          d.copy(hdr, hdrFill, off, off + take);
          hdrFill += take;
          off += take;
          if (hdrFill < 4) break;
          hdrFill = 0;
          len = hdr.readUInt32BE(0);
        }
        if (n - off >= len) {
          if (views) hand(d.subarray(off, off + len));
          off += len;
          frames++;
        } else {
          remaining = len - (n - off);
          off = n;
        }
      }
      if (frames) counter.add(frames, d.length);
      else counter.bytes += d.length;
    });
  });
  server.listen(0, '127.0.0.1', () => report('ready', { port: (server.address() as net.AddressInfo).port }));
  void serve(async (cmd) => {
    const done = counter.arm(cmd.n as number);
    report('armed');
    await done;
    report('result', counter.result());
  });
} else {
  const sock = net.connect({ host: '127.0.0.1', port: params.port as number });
  await once(sock, 'connect');
  sock.setNoDelay(true);
  const body = Buffer.alloc(size, 0x61);
  const batch = (params.batch as number) ?? 512;
  report('ready');
  void serve(async (cmd) => {
    const n = cmd.n as number;
    const t0 = nowMs();
    if (mode === 'bulk') {
      const chunk = Buffer.alloc(size, 0x62);
      for (let i = 0; i < n; i++) {
        if (!sock.write(chunk)) await once(sock, 'drain');
      }
    } else {
      const frame = 4 + size;
      let sent = 0;
      while (sent < n) {
        const k = Math.min(batch, n - sent);
        const buf = Buffer.allocUnsafe(k * frame);
        for (let i = 0, off = 0; i < k; i++, off += frame) {
          buf.writeUInt32BE(size, off);
          body.copy(buf, off + 4);
        }
        sent += k;
        if (!sock.write(buf)) await once(sock, 'drain');
      }
    }
    report('done', { ms: nowMs() - t0 });
  }, () => void sock.destroy());
}
