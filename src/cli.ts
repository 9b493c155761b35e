/**
 * The `snakemq` command-line tool: `listen`, `send`, `queues` and `bench`.
 *
 * stdout of `listen`, `send` and `queues` carries JSON lines only; logs, warnings and errors go
 * to stderr. `SNAKEMQ_DEBUG=1` turns on the library's debug log (stderr).
 *
 * Exit codes: 0 ok, 1 runtime failure (timeout, unreachable peer, dropped message, storage
 * failure), 2 bad arguments (with a usage hint on stderr).
 *
 * Run it through `bin/snakemq.js` (which uses the built `dist/` or, in a fresh clone, runs
 * this file through tsx), or directly with `npx tsx src/cli.ts ...`.
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { Link, type TlsConfig } from './link.js';
import { MAX_IDENT_LENGTH, Message, Messaging } from './messaging.js';
import { FLAG_PERSISTENT } from './message.js';
import { Packeter } from './packeter.js';
import type { DeliveredMark, ItemKey, QueuesStorage, StoredItem, TtlUpdate } from './storage.js';

/** Exit code: success. */
export const EXIT_OK = 0;
/** Exit code: runtime failure (timeout, unreachable peer, dropped message, storage failure). */
export const EXIT_FAILURE = 1;
/** Exit code: bad arguments. */
export const EXIT_USAGE = 2;

/** Default `send --timeout`, ms. */
export const DEFAULT_SEND_TIMEOUT = 30_000;

/** Reconnect pacing of the CLI's connectors: quick, because a CLI run is short. */
const RECONNECT = { reconnectInterval: 200, reconnectMaxInterval: 2000, connectTimeout: 5000 } as const;

// ------------------------------------------------------------------------------------ help

const HELP: Record<string, string> = {
  main: `Usage: snakemq <command> [options]

Brokerless peer-to-peer messaging (snakeMQ 1.6 wire-compatible).

Commands:
  listen   run a peer and print every received message as a JSON line
  send     send messages to a peer and wait until they are delivered
  queues   list the queues kept in a storage
  bench    run the benchmark suite (bench/run.ts, needs a source checkout)

Run 'snakemq <command> --help' for a command's options.

stdout carries JSON lines only; logs and errors go to stderr.
SNAKEMQ_DEBUG=1 turns on a readable debug log on stderr.
Exit codes: 0 ok, 1 runtime failure (timeout, unreachable, dropped), 2 bad arguments.
`,
  listen: `Usage: snakemq listen --ident NAME --port N [options]

Run a peer that listens (and optionally connects), printing received messages.

Options:
  --ident NAME          our identity (1..${MAX_IDENT_LENGTH} characters)               [required]
  --port N              port to listen on; 0 picks a free one               [required]
  --host H              interface to bind (default 127.0.0.1)
  --connect HOST:PORT   also connect to a peer (repeatable; reconnects on its own)
  --storage sqlite:PATH keep the deduplication window in SQLite across runs
  --tls-key FILE        TLS private key (PEM); with --tls-cert the listener speaks TLS
  --tls-cert FILE       TLS certificate (PEM)
  --tls-ca FILE         CA (PEM): connecting peers must present a certificate it signed,
                        and peers we --connect to are verified against it
  --count N             exit 0 after N received messages
  -h, --help            show this help

stdout (JSON lines):
  first  {"event":"listening","port":N}
  then one line per received message:
         {"from":IDENT,"uuid":"<32 hex>","ttl":MS|null,"flags":N,"body":STRING,"encoding":"utf8"|"base64"}
  body is the text when it is valid UTF-8 ("encoding":"utf8"), else base64. ttl is the
  remaining time to live as it came on the wire (whole seconds × 1000), null = infinite.

With --count, the messages are acknowledged before the process exits; messages that arrive
after the Nth are not taken (the sender keeps them and re-sends them to its next peer).
SIGINT/SIGTERM stop it cleanly (exit 0; 1 if --count was not reached).
`,
  send: `Usage: snakemq send --ident NAME --connect HOST:PORT --to PEER [options] [MESSAGE...]

Send each MESSAGE (UTF-8) to PEER and wait until every one is delivered: acknowledged by a
snakemq peer, or fully written to a plain snakeMQ 1.6 peer.

Options:
  --ident NAME          our identity (1..${MAX_IDENT_LENGTH} characters)               [required]
  --connect HOST:PORT   where to connect (repeatable; reconnects until done)  [required]
  --to PEER             identity of the destination                          [required]
  --ttl MS              time to live while PEER is not connected (default: infinite)
  --persistent          keep the messages in --storage until delivered (needs --storage)
  --storage sqlite:PATH the storage; messages for PEER stored by an earlier run are sent
                        (and waited for) too, so MESSAGE may be omitted to flush them
  --count N             send MESSAGE-1 ... MESSAGE-N for each MESSAGE
  --timeout MS          give up after MS (default ${DEFAULT_SEND_TIMEOUT}; 0 = wait forever)
  --tls-key FILE        client certificate key (PEM), with --tls-cert
  --tls-cert FILE       client certificate (PEM)
  --tls-ca FILE         connect with TLS and verify the peer against this CA (PEM)
  -h, --help            show this help

stdout (JSON lines), one per message:
  {"event":"delivered","to":PEER,"uuid":"<32 hex>"}
  {"event":"dropped","to":PEER,"uuid":"<32 hex>","reason":"ttl"|"queue-full"|"too-large"}

Persistent messages are queued and stored at once (their TTL runs while PEER is not
connected); other messages are queued once PEER is connected (so --ttl 0 means "only if PEER
is there"). On timeout,
undelivered persistent messages stay stored for the next run; others are discarded.
Exit: 0 all delivered, 1 timeout or a message dropped, 2 bad arguments.
`,
  queues: `Usage: snakemq queues --storage sqlite:PATH

List the queues kept in a storage, one JSON line per queue (sorted by name):
  {"queue":PEER,"count":N,"bytes":N,"minTtl":MS|null,"maxTtl":MS|null}
bytes is the sum of the bodies; minTtl/maxTtl are the smallest and largest remaining time to
live in ms (null = infinite). The storage keeps no timestamps, so no ages are shown.

Options:
  --storage sqlite:PATH the storage file (must exist)                      [required]
  -h, --help            show this help
`,
  bench: `Usage: snakemq bench [--quick] [--json] [other options of bench/run.ts]

Run the benchmark suite: bench/run.ts through tsx, with these arguments (it needs a source
checkout with the devDependencies installed). Exits 2 when bench/run.ts is not there,
otherwise with the suite's exit code.

Options (see bench/run.ts for the others):
  --quick     a reduced version of every scenario
  --json      one JSON object with every figure on stdout
  -h, --help  show this help
`,
};

// ------------------------------------------------------------------------------------ errors

/** A bad command line: reported with a usage hint, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A runtime failure: reported as it is, exit code 1. */
export class CliFailure extends Error {
  override name = 'CliFailure';
}

// ------------------------------------------------------------------------------------ output

function out(obj: unknown): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function warn(cmd: string, message: string): void {
  process.stderr.write(`snakemq ${cmd}: ${message}\n`);
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A body as `{ body, encoding }`: the text when it is valid UTF-8, else base64. */
export function encodeBody(body: Uint8Array): { body: string; encoding: 'utf8' | 'base64' } {
  try {
    return { body: utf8.decode(body), encoding: 'utf8' };
  } catch {
    return { body: Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('base64'), encoding: 'base64' };
  }
}

// ------------------------------------------------------------------------------------ argument parsing

function int(name: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `${min}..${max}`;
    throw new UsageError(`--${name} must be an integer ${range}, got ${JSON.stringify(v)}`);
  }
  return Number(v);
}

/** Parse `HOST:PORT` (IPv6 as `[::1]:PORT`). */
export function parseHostPort(s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UsageError(`--connect expects HOST:PORT with a port 1..65535, got ${JSON.stringify(s)}`);
  }
  return { host: m[1], port };
}

/** Parse a `--storage` value: only `sqlite:PATH` for now. Returns the absolute path. */
export function parseStorage(s: string): string {
  const m = /^sqlite:(.+)$/.exec(s);
  if (!m) throw new UsageError(`--storage expects sqlite:PATH, got ${JSON.stringify(s)}`);
  return resolvePath(m[1]);
}

function ident(name: string, v: string | undefined): string {
  if (v === undefined) throw new UsageError(`--${name} is required`);
  if (v.length === 0 || v.length > MAX_IDENT_LENGTH) {
    throw new UsageError(`--${name} must be 1..${MAX_IDENT_LENGTH} characters, got ${v.length}`);
  }
  return v;
}

function readPem(name: string, file: string | undefined): Buffer | undefined {
  if (file === undefined) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new UsageError(`--${name}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

interface TlsArgs {
  'tls-key'?: string;
  'tls-cert'?: string;
  'tls-ca'?: string;
}

const TLS_OPTIONS = {
  'tls-key': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-ca': { type: 'string' },
} as const;

function tlsFiles(v: TlsArgs): { key?: Buffer; cert?: Buffer; ca?: Buffer } | undefined {
  if (!v['tls-key'] && !v['tls-cert'] && !v['tls-ca']) return undefined;
  if (!!v['tls-key'] !== !!v['tls-cert']) throw new UsageError('--tls-key and --tls-cert go together');
  return { key: readPem('tls-key', v['tls-key']), cert: readPem('tls-cert', v['tls-cert']), ca: readPem('tls-ca', v['tls-ca']) };
}

function parse<const T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config); // strict by default: unknown options throw
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

// ------------------------------------------------------------------------------------ peers

async function openStorage(path: string): Promise<QueuesStorage> {
  const { SqliteQueuesStorage } = await import('../storage/sqlite.js');
  try {
    return new SqliteQueuesStorage(path);
  } catch (err) {
    throw new CliFailure(`cannot open storage sqlite:${path}: ${(err as Error).message}`);
  }
}

/** A storage whose `load()` returns items already read (so the CLI sees them too). */
class PreloadedStorage implements QueuesStorage {
  constructor(
    private readonly inner: QueuesStorage,
    private readonly items: StoredItem[],
  ) {}
  load(): Promise<StoredItem[]> {
    return Promise.resolve(this.items);
  }
  push(items: StoredItem[]): Promise<void> {
    return this.inner.push(items);
  }
  delete(keys: ItemKey[]): Promise<void> {
    return this.inner.delete(keys);
  }
  updateTtls(updates: TtlUpdate[]): Promise<void> {
    return this.inner.updateTtls(updates);
  }
  deleteAll(queue?: string): Promise<void> {
    return this.inner.deleteAll(queue);
  }
  putDelivered(marks: DeliveredMark[]): Promise<void> {
    return this.inner.putDelivered(marks);
  }
  loadDelivered(): Promise<DeliveredMark[]> {
    return this.inner.loadDelivered();
  }
  forgetDelivered(peers: string[]): Promise<void> {
    return this.inner.forgetDelivered(peers);
  }
  getMeta(key: string): Promise<Buffer | null> {
    return this.inner.getMeta(key);
  }
  setMeta(key: string, value: Buffer | null): Promise<void> {
    return this.inner.setMeta(key, value);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

interface Peer {
  link: Link;
  packeter: Packeter;
  messaging: Messaging;
  storage?: QueuesStorage;
}

function makePeer(name: string, storage: QueuesStorage | undefined): Peer {
  const link = new Link();
  const packeter = new Packeter(link);
  const messaging = new Messaging(name, '', packeter, { storage, queuePolicy: 'block' });
  return { link, packeter, messaging, storage };
}

/**
 * Stop a peer without losing what it owes the other side: stop taking messages, let pending
 * acknowledgements be committed and written, end every connection with a FIN (not a reset),
 * then close everything.
 */
async function shutdown(p: Peer, cmd: string): Promise<void> {
  // Messaging.close() commits the uuids of received messages and queues their acks; closing
  // a connection below lets queued packets leave before the FIN.
  await p.messaging.close();
  if (p.storage) {
    await p.storage.close().catch((err: Error) => warn(cmd, `closing the storage failed: ${err.message}`));
  }
  const ids = p.link.connectionIds();
  if (ids.length > 0) {
    await new Promise<void>((resolve) => {
      const left = new Set(ids);
      const timer = setTimeout(done, 2000);
      function done(): void {
        clearTimeout(timer);
        p.link.off('disconnect', onDisconnect);
        resolve();
      }
      function onDisconnect(connId: string): void {
        left.delete(connId);
        if (left.size === 0) done();
      }
      p.link.on('disconnect', onDisconnect);
      for (const id of ids) p.packeter.closeConnection(id);
    });
  }
  await p.link.close();
}

/** Call `handler` on the first SIGINT/SIGTERM; the returned function removes the handlers. */
function onSignal(handler: (signal: NodeJS.Signals) => void): () => void {
  const h = (signal: NodeJS.Signals): void => handler(signal);
  process.once('SIGINT', h);
  process.once('SIGTERM', h);
  return () => {
    process.off('SIGINT', h);
    process.off('SIGTERM', h);
  };
}

/** Report failed connection attempts once per connector (until it connects), on stderr. */
function reportConnectErrors(p: Peer, cmd: string, onError?: (message: string) => void): void {
  const reported = new Set<string>();
  p.link.on('error', (err) => {
    onError?.(err.message);
    if (reported.has(err.message)) return;
    reported.add(err.message);
    warn(cmd, `${err.message} (retrying)`);
  });
  p.link.on('connect', () => reported.clear());
}

// ------------------------------------------------------------------------------------ listen

async function listen(args: string[]): Promise<number> {
  const { values: v } = parse({
    args,
    options: {
      ident: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      connect: { type: 'string', multiple: true },
      storage: { type: 'string' },
      count: { type: 'string' },
      ...TLS_OPTIONS,
    },
  });
  const name = ident('ident', v.ident);
  if (v.port === undefined) throw new UsageError('--port is required');
  const port = int('port', v.port, 0, 65535)!;
  const count = int('count', v.count, 1);
  const connects = (v.connect ?? []).map(parseHostPort);
  const storagePath = v.storage === undefined ? undefined : parseStorage(v.storage);
  const files = tlsFiles(v);
  if (files && !files.key) throw new UsageError('a TLS listener needs --tls-key and --tls-cert');
  const listenerTls: TlsConfig | undefined = files && { ...files, requirePeerCert: !!files.ca };
  const connectorTls: TlsConfig | undefined = files && { ...files };

  const storage = storagePath === undefined ? undefined : await openStorage(storagePath);
  const p = makePeer(name, storage);
  let received = 0;
  let stopping = false;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));

  const stop = (code: number): void => {
    if (stopping) return;
    stopping = true;
    removeSignals();
    // close() synchronously stops the messaging layer from taking more messages
    shutdown(p, 'listen').then(
      () => finish(code),
      (err: Error) => {
        warn('listen', `shutdown failed: ${err.message}`);
        finish(EXIT_FAILURE);
      },
    );
  };
  const removeSignals = onSignal(() => {
    if (count !== undefined && received < count) {
      warn('listen', `stopped after ${received} of ${count} messages`);
      stop(EXIT_FAILURE);
    } else stop(EXIT_OK);
  });

  p.messaging.on('error', (err) => warn('listen', `warning: ${err.message}`));
  p.messaging.on('message', (_connId, from, m) => {
    if (stopping) return;
    received++;
    out({ from, uuid: m.uuid.toString('hex'), ttl: m.ttl, flags: m.flags, ...encodeBody(m.body) });
    if (count !== undefined && received >= count) stop(EXIT_OK);
  });
  reportConnectErrors(p, 'listen');

  try {
    await p.messaging.ready;
    const info = await p.link.addListener({ host: v.host ?? '127.0.0.1', port, tls: listenerTls });
    out({ event: 'listening', port: info.port });
  } catch (err) {
    removeSignals();
    await shutdown(p, 'listen').catch(() => {});
    const e = err as NodeJS.ErrnoException;
    throw new CliFailure(
      e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'EADDRNOTAVAIL'
        ? `cannot listen on ${v.host ?? '127.0.0.1'}:${port}: ${e.code}`
        : e.message,
    );
  }
  for (const c of connects) p.link.addConnector({ ...c, tls: connectorTls, ...RECONNECT });
  return finished;
}

// ------------------------------------------------------------------------------------ send

async function send(args: string[]): Promise<number> {
  const { values: v, positionals } = parse({
    args,
    allowPositionals: true,
    options: {
      ident: { type: 'string' },
      connect: { type: 'string', multiple: true },
      to: { type: 'string' },
      ttl: { type: 'string' },
      persistent: { type: 'boolean' },
      storage: { type: 'string' },
      count: { type: 'string' },
      timeout: { type: 'string' },
      ...TLS_OPTIONS,
    },
  });
  const name = ident('ident', v.ident);
  const to = ident('to', v.to);
  if (to === name) throw new UsageError('--to must differ from --ident (cannot send to oneself)');
  if (!v.connect?.length) throw new UsageError('--connect HOST:PORT is required');
  const connects = v.connect.map(parseHostPort);
  const ttl = int('ttl', v.ttl, 0) ?? null;
  const count = int('count', v.count, 1);
  const timeout = int('timeout', v.timeout, 0) ?? DEFAULT_SEND_TIMEOUT;
  const storagePath = v.storage === undefined ? undefined : parseStorage(v.storage);
  const persistent = !!v.persistent;
  if (persistent && storagePath === undefined) throw new UsageError('--persistent needs --storage sqlite:PATH');
  if (positionals.length === 0 && storagePath === undefined) {
    throw new UsageError('nothing to send: give MESSAGE arguments (or --storage to send stored messages)');
  }
  if (count !== undefined && positionals.length === 0) throw new UsageError('--count needs a MESSAGE');
  const files = tlsFiles(v);
  const connectorTls: TlsConfig | undefined = files && { ...files };
  const bodies = count === undefined ? positionals : positionals.flatMap((m) => Array.from({ length: count }, (_, i) => `${m}-${i + 1}`));

  // Read the storage first so that messages an earlier run left for `to` are waited for too.
  let storage: QueuesStorage | undefined;
  const pending = new Set<string>();
  let stored = 0;
  if (storagePath !== undefined) {
    const raw = await openStorage(storagePath);
    let items: StoredItem[];
    try {
      items = await raw.load();
    } catch (err) {
      await raw.close().catch(() => {});
      throw new CliFailure(`cannot read storage sqlite:${storagePath}: ${(err as Error).message}`);
    }
    for (const it of items) if (it.queue === to) pending.add(it.uuid.toString('hex'));
    stored = pending.size;
    storage = new PreloadedStorage(raw, items);
  }
  const messages = bodies.map((b) => new Message(b, { ttl, flags: persistent ? FLAG_PERSISTENT : 0 }));
  for (const m of messages) pending.add(m.uuidHex);
  const total = pending.size;
  if (total === 0) {
    warn('send', `nothing stored for ${JSON.stringify(to)}: nothing to send`);
    await storage?.close();
    return EXIT_OK;
  }

  const p = makePeer(name, storage);
  let delivered = 0;
  const dropped: string[] = [];
  let lastConnectError: string | undefined;
  const connectedIdents = new Map<string, string>();
  /** Connections identified as `to` so far (a flaky link makes many). */
  let connectionsToPeer = 0;
  let settled = false;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));

  const end = (code: number, message?: string): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    removeSignals();
    if (message) warn('send', message);
    shutdown(p, 'send').then(
      () => finish(code),
      (err: Error) => {
        warn('send', `shutdown failed: ${err.message}`);
        finish(EXIT_FAILURE);
      },
    );
  };
  const check = (): void => {
    if (pending.size > 0) return;
    if (dropped.length > 0) end(EXIT_FAILURE, `${dropped.length} of ${total} messages dropped (${[...new Set(dropped)].join(', ')})`);
    else end(EXIT_OK);
  };
  const why = (): string => {
    const n = pending.size;
    const what = `${n} of ${total} message${total === 1 ? '' : 's'} not delivered to ${JSON.stringify(to)} (${delivered} delivered)`;
    const peers = [...new Set(connectedIdents.values())];
    const times = `${connectionsToPeer} time${connectionsToPeer === 1 ? '' : 's'}`;
    let reason: string;
    if (peers.includes(to)) {
      reason = `${JSON.stringify(to)} is connected (connected ${times}) but has not acknowledged them`;
    } else if (connectionsToPeer > 0) {
      reason = `${JSON.stringify(to)} connected ${times} and is not connected now${lastConnectError ? ` (last attempt: ${lastConnectError})` : ''}`;
    } else if (peers.length > 0) {
      reason = `connected only to ${peers.map((s) => JSON.stringify(s)).join(', ')}, not to ${JSON.stringify(to)}`;
    } else {
      reason = lastConnectError ?? `${JSON.stringify(to)} did not connect`;
    }
    const fate =
      persistent || stored > 0
        ? persistent
          ? `; they stay in sqlite:${storagePath} for the next run`
          : `; stored ones stay in sqlite:${storagePath}, the others are discarded`
        : '; they are discarded (not --persistent)';
    return `${what}: ${reason}${fate}`;
  };

  const timer = timeout > 0 ? setTimeout(() => end(EXIT_FAILURE, `timed out after ${timeout} ms: ${why()}`), timeout) : undefined;
  const removeSignals = onSignal((signal) => end(EXIT_FAILURE, `interrupted by ${signal}: ${why()}`));

  p.messaging.on('error', (err) => warn('send', `warning: ${err.message}`));
  p.messaging.on('message-delivered', (peer, uuid) => {
    const hex = uuid.toString('hex');
    if (peer !== to || !pending.delete(hex)) return;
    delivered++;
    out({ event: 'delivered', to, uuid: hex });
    check();
  });
  p.messaging.on('message-drop', (peer, uuid, reason) => {
    const hex = uuid.toString('hex');
    if (peer !== to || !pending.delete(hex)) return;
    dropped.push(reason);
    out({ event: 'dropped', to, uuid: hex, reason });
    check();
  });
  let queuedLater = false;
  const queue = (list: Message[]): void => {
    for (const m of list) {
      p.messaging.sendMessage(to, m).catch((err: Error) => {
        if (!settled) end(EXIT_FAILURE, `cannot queue a message: ${err.message}`);
      });
    }
  };
  p.messaging.on('connect', (connId, peer) => {
    connectedIdents.set(connId, peer);
    if (peer === to) {
      connectionsToPeer++;
      lastConnectError = undefined; // an older failed attempt no longer says why
    }
    if (peer !== to) {
      const info = p.packeter.connectionInfo(connId);
      warn('send', `connected to ${JSON.stringify(peer)}${info ? ` at ${info.remoteAddress}:${info.remotePort}` : ''}, but the messages are for ${JSON.stringify(to)}`);
    } else if (!queuedLater && !persistent) {
      queuedLater = true;
      queue(messages);
    }
  });
  p.messaging.on('disconnect', (connId) => connectedIdents.delete(connId));
  reportConnectErrors(p, 'send', (m) => (lastConnectError = m));

  for (const c of connects) p.link.addConnector({ ...c, tls: connectorTls, ...RECONNECT });
  if (persistent) {
    // queued (and stored) at once, in order; a storage failure is fatal
    Promise.all(messages.map((m) => p.messaging.sendMessage(to, m))).catch((err: Error) => {
      if (!settled) end(EXIT_FAILURE, `cannot store the messages: ${err.message}`);
    });
  }
  return finished;
}

// ------------------------------------------------------------------------------------ queues

/** One line of `snakemq queues`. */
export interface QueueSummary {
  queue: string;
  count: number;
  bytes: number;
  minTtl: number | null;
  maxTtl: number | null;
}

/** Per-queue count, body bytes and smallest/largest remaining TTL (`null` = infinite). */
export function summarizeQueues(items: StoredItem[]): QueueSummary[] {
  const byQueue = new Map<string, QueueSummary>();
  const inf = (t: number | null): number => (t === null ? Infinity : t);
  for (const it of items) {
    const ttl = it.ttl === null ? null : Math.floor(it.ttl);
    const s = byQueue.get(it.queue);
    if (!s) {
      byQueue.set(it.queue, { queue: it.queue, count: 1, bytes: it.body.length, minTtl: ttl, maxTtl: ttl });
      continue;
    }
    s.count++;
    s.bytes += it.body.length;
    if (inf(ttl) < inf(s.minTtl)) s.minTtl = ttl;
    if (inf(ttl) > inf(s.maxTtl)) s.maxTtl = ttl;
  }
  return [...byQueue.values()].sort((a, b) => (a.queue < b.queue ? -1 : a.queue > b.queue ? 1 : 0));
}

async function queues(args: string[]): Promise<number> {
  const { values: v } = parse({ args, options: { storage: { type: 'string' } } });
  if (v.storage === undefined) throw new UsageError('--storage sqlite:PATH is required');
  const path = parseStorage(v.storage);
  if (!existsSync(path)) throw new CliFailure(`no storage at sqlite:${path}`);
  const storage = await openStorage(path);
  try {
    for (const s of summarizeQueues(await storage.load())) out(s);
  } catch (err) {
    throw new CliFailure(`cannot read storage sqlite:${path}: ${(err as Error).message}`);
  } finally {
    await storage.close().catch(() => {});
  }
  return EXIT_OK;
}

// ------------------------------------------------------------------------------------ bench

/** The package root: the nearest folder above this file holding package.json. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}

async function bench(args: string[]): Promise<number> {
  const root = packageRoot();
  const script = join(root, 'bench', 'run.ts');
  if (!existsSync(script)) throw new UsageError(`the benchmark suite is not available (${script} not found; it needs a source checkout)`);
  // bench/run.ts checks its own options
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: root, stdio: 'inherit' });
  const removeSignals = onSignal((signal) => child.kill(signal));
  return new Promise<number>((resolve) => {
    child.once('error', (err) => {
      removeSignals();
      warn('bench', `cannot start the benchmark: ${err.message}`);
      resolve(EXIT_FAILURE);
    });
    child.once('exit', (code, signal) => {
      removeSignals();
      if (signal) warn('bench', `benchmark ended by ${signal}`);
      resolve(code ?? EXIT_FAILURE);
    });
  });
}

// ------------------------------------------------------------------------------------ main

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = { listen, send, queues, bench };

/**
 * Run the CLI with `argv` (the arguments after the program name). Resolves with the exit code
 * once everything is closed; writes to stdout/stderr; never calls `process.exit` itself.
 */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined) {
    process.stderr.write(`snakemq: a command is needed: ${Object.keys(COMMANDS).join(', ')}\nRun 'snakemq --help' for usage.\n`);
    return EXIT_USAGE;
  }
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
    const topic = cmd === 'help' && rest[0] && rest[0] in COMMANDS ? rest[0] : 'main';
    process.stdout.write(HELP[topic]);
    return EXIT_OK;
  }
  if (cmd === '--version' || cmd === '-v') {
    const pkg = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
    process.stdout.write(`${pkg.version}\n`);
    return EXIT_OK;
  }
  const run = COMMANDS[cmd];
  if (!run || !Object.hasOwn(COMMANDS, cmd)) {
    process.stderr.write(`snakemq: unknown command ${JSON.stringify(cmd)}\nRun 'snakemq --help' for usage.\n`);
    return EXIT_USAGE;
  }
  const options = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (options.includes('--help') || options.includes('-h')) {
    process.stdout.write(HELP[cmd]);
    return EXIT_OK;
  }
  try {
    return await run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`snakemq ${cmd}: ${err.message}\nRun 'snakemq ${cmd} --help' for usage.\n`);
      return EXIT_USAGE;
    }
    if (err instanceof CliFailure) {
      warn(cmd, err.message);
      return EXIT_FAILURE;
    }
    warn(cmd, `error: ${(err as Error)?.stack ?? String(err)}`);
    return EXIT_FAILURE;
  }
}

/** Run {@link main} with the process's arguments and exit with its code once output is flushed. */
export async function run(): Promise<void> {
  const code = await main(process.argv.slice(2));
  process.exitCode = code;
  // stdout may be a pipe: exit only once what was written has left
  process.stdout.write('', () => process.exit(code));
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolvePath(process.argv[1])).href) void run();
