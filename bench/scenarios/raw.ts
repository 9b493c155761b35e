/**
 * Ceiling: raw Node `net` sockets, no library.
 *  - mode "framed": 4-byte-length-prefixed frames of `size` bytes, written in batches of
 *    `batch` frames per write (each batch built fresh), receiver parses every frame; with
 *    `views`, it also makes a Buffer view of each frame's payload (whole in its chunk) and
 *    hands it to a function, the least a receiver that delivers messages must do.
 *  - mode "bulk": `size`-byte writes (64 KiB) of opaque bytes; receiver counts bytes.
 *  - mode "pingpong": one `size`-byte length-prefixed frame each way, sequential: the sender
 *    writes a frame, the receiver writes it back once it is whole, the sender waits for the
 *    whole frame before the next; the sender reports round-trip latencies. The floor of a
 *    request/reply round trip between two Node processes here.
 * params: { role, mode, size, batch?, views?, port? }; run command: { n } (frames or writes).
 */
import * as net from 'node:net';
import { once } from 'node:events';
import { RunCounter, installCrashHandlers, nowMs, params, report, serve } from '../lib/child.js';
import { latencyStats } from '../lib/stats.js';

installCrashHandlers();
const mode = params.mode as 'framed' | 'bulk' | 'pingpong';
const size = params.size as number;
const views = params.views === true;
/** Where frames are handed (with `views`): it keeps the last one, so none can be optimised away. */
let lastFrame: Buffer | undefined;
function hand(frame: Buffer): void {
  lastFrame = frame;
}

/**
 * Call `onFrame` with each whole length-prefixed frame (prefix included) arriving on `s`, for
 * peers that have one frame in flight at a time: a frame within one chunk is handed over as a
 * view, one split over chunks is joined.
 */
function onFrames(s: net.Socket, onFrame: (frame: Buffer) => void): void {
  let parts: Buffer[] = [];
  let have = 0;
  s.on('data', (d: Buffer) => {
    if (have === 0 && d.length >= 4 && d.length === 4 + d.readUInt32BE(0)) return onFrame(d);
    parts.push(d);
    have += d.length;
    for (;;) {
      const buf = parts.length === 1 ? parts[0] : Buffer.concat(parts, have);
      if (have < 4 || have < 4 + buf.readUInt32BE(0)) {
        parts = [buf];
        return;
      }
      const len = 4 + buf.readUInt32BE(0);
      onFrame(buf.subarray(0, len));
      parts = have > len ? [buf.subarray(len)] : [];
      have -= len;
      if (have === 0) return;
    }
  });
}

if (params.role === 'receiver') {
  const counter = new RunCounter();
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    if (mode === 'bulk') {
      s.on('data', (d: Buffer) => counter.add(d.length / size, d.length));
      return;
    }
    if (mode === 'pingpong') {
      // frames come one at a time: gather one whole frame, write it back
      onFrames(s, (frame) => s.write(frame));
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
    if (mode === 'pingpong') {
      // the sender measures
      report('armed');
      report('result', {});
      return;
    }
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
  let replied: (() => void) | undefined;
  if (mode === 'pingpong') onFrames(sock, () => replied?.());
  void serve(async (cmd) => {
    const n = cmd.n as number;
    const t0 = nowMs();
    if (mode === 'pingpong') {
      const frame = Buffer.allocUnsafe(4 + size);
      frame.writeUInt32BE(size, 0);
      body.copy(frame, 4);
      const lat = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const s = nowMs();
        const back = new Promise<void>((r) => (replied = r));
        sock.write(frame);
        await back;
        lat[i] = nowMs() - s;
      }
      const ms = nowMs() - t0;
      report('done', { ms, rate: (n / ms) * 1000, ...latencyStats(lat) });
      return;
    }
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
