/**
 * The frame codec of snakeMQ protocol version 1, plus our extension frames. Pure functions:
 * bytes in, frames out, and back. No sockets, no state.
 *
 * A frame is the payload of one packet (the uint32 length prefix belongs to the packet layer):
 * `[1 byte type][payload]`. All integers are big-endian.
 *
 * | type | frame                 | payload                                              |
 * |------|-----------------------|------------------------------------------------------|
 * | 0x00 | protocol version      | uint32 version (= 1)                                 |
 * | 0x01 | incompatible protocol | (empty)                                              |
 * | 0x02 | identification        | UTF-8 identity                                       |
 * | 0x03 | message               | 16-byte uuid, uint32 TTL seconds, uint32 flags, body |
 * | 0x04 | ping                  | (empty)                                              |
 * | 0x05 | pong                  | (empty)                                              |
 * | 0x10 | hello (extension)     | uint16 ext version, uint32 max packet, uint32 features, [8-byte incarnation] |
 * | 0x11 | ack (extension v1)    | n × 16-byte uuid                                     |
 * | 0x12 | sequenced message (v2)| uint64 seq, 16-byte uuid, uint32 TTL s, uint32 flags, body |
 * | 0x13 | cumulative ack (v2)   | 8-byte incarnation, uint64 seq                       |
 * | 0x14 | resume (v2)           | 8-byte incarnation, uint64 seq                       |
 *
 * Leniency of {@link decodeFrame}, modelled on what snakeMQ 1.6 itself accepts:
 * - protocol version: the payload must be exactly 4 bytes (snakeMQ checks `len != 4` and closes);
 *   the version number itself is returned as is, the caller decides whether it is compatible;
 * - incompatible protocol, ping, pong: any payload is ignored (snakeMQ never looks at it);
 * - identification: must be valid UTF-8 (stricter than snakeMQ, which decodes with
 *   replacement characters) and at most {@link MAX_REMOTE_IDENT_BYTES} bytes; may be empty;
 * - message: at least the 24-byte header (vector `short-message-closes`); the rest is the body;
 * - hello: at least 10 payload bytes; longer is accepted (room for future fields). A shorter
 *   one decodes as `{ kind: 'unknown', type: 0x10 }`, so it is ignored just as snakeMQ ignores
 *   unknown frame types (vector `unknown-frame-type-ignored` sends exactly such a frame);
 *   A hello of 18 payload bytes or more carries the sender's 8-byte incarnation (version 2);
 * - ack: the payload must be a multiple of 16 bytes (0 uuids is valid);
 * - sequenced message: at least the 32-byte header; cumulative ack and resume: exactly 16
 *   payload bytes. Sequence numbers above 2^53 - 1 (`Number.MAX_SAFE_INTEGER`) are broken: no
 *   peer of ours comes near them (a million messages a second for 285 years), and numbers
 *   stay exact JavaScript numbers;
 * - any other type decodes as `{ kind: 'unknown' }` (snakeMQ ignores unknown types);
 * - an empty frame (no type byte) is broken (snakeMQ closes on it).
 *
 * @module
 */
import { Buffer } from 'node:buffer';
import { BadFrameError, InvalidArgumentError } from './errors.js';

/** Frame type 0: protocol version, payload uint32 version. */
export const FRAME_PROTOCOL_VERSION = 0;
/** Frame type 1: incompatible protocol, no payload. Sent before closing on a version mismatch. */
export const FRAME_INCOMPATIBLE_PROTOCOL = 1;
/** Frame type 2: identification, payload the UTF-8 identity. */
export const FRAME_IDENTIFICATION = 2;
/** Frame type 3: message, payload uuid(16) + TTL seconds (uint32) + flags (uint32) + body. */
export const FRAME_MESSAGE = 3;
/** Frame type 4: ping, no payload; answered with a pong. */
export const FRAME_PING = 4;
/** Frame type 5: pong, no payload. */
export const FRAME_PONG = 5;
/** Frame type 0x10 (extension): hello, payload uint16 ext version + uint32 max packet + uint32 features. */
export const FRAME_HELLO = 0x10;
/** Frame type 0x11 (extension version 1): ack, payload n × 16-byte message uuids. */
export const FRAME_ACK = 0x11;
/** Frame type 0x12 (extension version 2): a message with its sequence number, see {@link SeqMessageFrame}. */
export const FRAME_SEQ_MESSAGE = 0x12;
/** Frame type 0x13 (extension version 2): cumulative ack, "everything up to seq from incarnation". */
export const FRAME_SEQ_ACK = 0x13;
/** Frame type 0x14 (extension version 2): resume, "the highest seq I delivered from your incarnation". */
export const FRAME_RESUME = 0x14;

/** The snakeMQ protocol version we speak (snakeMQ 1.6's). */
export const PROTOCOL_VERSION = 1;
/**
 * The version of our extension frames, sent in the hello frame. Version 2: sequenced messages,
 * cumulative acks and resume (a peer offering version 1 gets plain snakeMQ 1.6 delivery,
 * plus acks of its messages so that its own window keeps moving).
 */
export const EXTENSION_VERSION = 2;
/** Bytes of a sender's incarnation id (in hello, cumulative ack and resume frames). */
export const INCARNATION_SIZE = 8;
/** The largest sequence number (the wire has 64 bits; we keep to exact JavaScript integers). */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;
/** Hello feature bit: acknowledged delivery (ack frames, resend, dedup). */
export const FEATURE_ACKS = 1;
/** Hello feature bit: flow window (bounded in-flight unacknowledged messages). */
export const FEATURE_FLOW = 2;

/** Wire TTL value meaning "infinite" (no expiry). */
export const TTL_INFINITE_WIRE = 0xffffffff;
/** The largest finite wire TTL, in seconds. */
const TTL_MAX_FINITE_WIRE = 0xfffffffe;
/** Message flag bit: persistent (stored until delivered). */
export const FLAG_PERSISTENT = 1;
/** Bytes of a message frame's header after the type byte: uuid(16) + TTL(4) + flags(4). */
export const MESSAGE_HEADER_SIZE = 24;
/** Offsets in a message frame (from its type byte): uuid, wire TTL (uint32 BE), flags (uint32 BE). */
export const MESSAGE_UUID_OFFSET = 1;
export const MESSAGE_TTL_OFFSET = 17;
export const MESSAGE_FLAGS_OFFSET = 21;
/** Bytes of a message frame before its body: type byte and header. */
export const MESSAGE_FRAME_HEAD_SIZE = 1 + MESSAGE_HEADER_SIZE;
/** Bytes of a sequenced message frame's header after the type byte: seq(8) + uuid(16) + TTL(4) + flags(4). */
export const SEQ_MESSAGE_HEADER_SIZE = 32;
/** Offsets in a sequenced message frame (from its type byte): seq, uuid, wire TTL, flags. */
export const SEQ_MESSAGE_SEQ_OFFSET = 1;
export const SEQ_MESSAGE_UUID_OFFSET = 9;
export const SEQ_MESSAGE_TTL_OFFSET = 25;
export const SEQ_MESSAGE_FLAGS_OFFSET = 29;
/** Bytes of a sequenced message frame before its body. */
export const SEQ_MESSAGE_FRAME_HEAD_SIZE = 1 + SEQ_MESSAGE_HEADER_SIZE;
/** Bytes of a cumulative ack or resume frame's payload: incarnation(8) + seq(8). */
const MARK_PAYLOAD_SIZE = 16;
/** The longest remote identity accepted, in UTF-8 bytes; a longer one is a broken frame. */
export const MAX_REMOTE_IDENT_BYTES = 255;

/** Bytes of a message uuid. */
const UUID_SIZE = 16;
/** Bytes of a hello frame's payload (fields of extension version 1). */
const HELLO_PAYLOAD_SIZE = 10;
/** ... and with the incarnation of version 2. */
const HELLO_V2_PAYLOAD_SIZE = HELLO_PAYLOAD_SIZE + INCARNATION_SIZE;
const UINT32_MAX = 0xffffffff;

/** A protocol-version frame. */
export interface VersionFrame {
  kind: 'version';
  /** The protocol version the peer speaks (compare with {@link PROTOCOL_VERSION}). */
  version: number;
}
/** An incompatible-protocol frame: the peer refused our version. */
export interface IncompatibleFrame {
  kind: 'incompatible';
}
/** An identification frame. */
export interface IdentFrame {
  kind: 'ident';
  /** The peer's identity (may be empty; at most {@link MAX_REMOTE_IDENT_BYTES} UTF-8 bytes). */
  ident: string;
}
/**
 * A message frame. `uuid` and `body` are views of the decoded frame's memory, not copies: copy
 * them (`Buffer.from(x)`) before keeping them if that memory may be reused, or to avoid keeping
 * a large input chunk alive through a small view.
 */
export interface MessageFrame {
  kind: 'message';
  /** The 16-byte message uuid (a view of the input). */
  uuid: Buffer;
  /** Time to live in milliseconds (wire seconds × 1000), or `null` for infinite. */
  ttlMs: number | null;
  /** Flag bits, see {@link FLAG_PERSISTENT}. */
  flags: number;
  /** The message body (a view of the input). */
  body: Buffer;
}
/** A ping frame; answer with a pong. */
export interface PingFrame {
  kind: 'ping';
}
/** A pong frame. */
export interface PongFrame {
  kind: 'pong';
}
/** A hello frame (extension): the peer speaks our extensions. */
export interface HelloFrame {
  kind: 'hello';
  /** The peer's extension version (uint16). */
  extVersion: number;
  /** The largest packet payload the peer accepts, in bytes (uint32). */
  maxPacketSize: number;
  /** The peer's feature bits (uint32), see {@link FEATURE_ACKS}, {@link FEATURE_FLOW}. */
  features: number;
  /** The peer's 8-byte incarnation (a view of the input), when the hello is long enough (version 2). */
  incarnation?: Buffer;
}
/**
 * A sequenced message (extension version 2): a message frame's fields after a sequence number.
 * `uuid` and `body` are views of the input, as in {@link MessageFrame}.
 */
export interface SeqMessageFrame {
  kind: 'seq-message';
  /** The sender's sequence number of this message toward us (1..{@link MAX_SEQ}). */
  seq: number;
  uuid: Buffer;
  ttlMs: number | null;
  flags: number;
  body: Buffer;
}
/** A cumulative ack (extension version 2): every message up to `seq` of `incarnation` is delivered. */
export interface SeqAckFrame {
  kind: 'seq-ack';
  /** The incarnation of ours the receiver acknowledges (8 bytes, a view of the input). */
  incarnation: Buffer;
  seq: number;
}
/**
 * A resume frame (extension version 2), sent once right after identification: the highest
 * sequence number the sender of this frame has delivered from `incarnation` (0: none, or an
 * incarnation it does not know).
 */
export interface ResumeFrame {
  kind: 'resume';
  incarnation: Buffer;
  seq: number;
}
/** An ack frame (extension). */
export interface AckFrame {
  kind: 'ack';
  /** The acknowledged 16-byte message uuids (views of the input). */
  uuids: Buffer[];
}
/** A frame of a type we do not know (or a hello too short to read); to be ignored. */
export interface UnknownFrame {
  kind: 'unknown';
  /** The frame's type byte. */
  type: number;
}

/** Any decoded frame, discriminated by `kind`. */
export type Frame =
  | VersionFrame
  | IncompatibleFrame
  | IdentFrame
  | MessageFrame
  | PingFrame
  | PongFrame
  | HelloFrame
  | AckFrame
  | SeqMessageFrame
  | SeqAckFrame
  | ResumeFrame
  | UnknownFrame;

/** The fields of a message frame to encode. */
export interface MessageFields {
  /** The 16-byte message uuid. */
  uuid: Uint8Array;
  /** Time to live in milliseconds, `null` for infinite; see {@link ttlMsToWire}. */
  ttlMs: number | null;
  /** Flag bits (uint32), see {@link FLAG_PERSISTENT}. */
  flags: number;
  /** The message body. */
  body: Uint8Array;
}

/** The fields of a hello frame to encode. */
export interface HelloFields {
  /** Our extension version (uint16), normally {@link EXTENSION_VERSION}. */
  extVersion: number;
  /** The largest packet payload we accept, in bytes (uint32). */
  maxPacketSize: number;
  /** Our feature bits (uint32). */
  features: number;
  /** Our 8-byte incarnation (extension version 2); without it the hello is version 1's 10 bytes. */
  incarnation?: Uint8Array;
}

/** The fields of a cumulative ack or a resume frame. */
export interface MarkFields {
  /** 8 bytes. */
  incarnation: Uint8Array;
  /** 0..{@link MAX_SEQ}. */
  seq: number;
}

const PING = Buffer.from([FRAME_PING]);
const PONG = Buffer.from([FRAME_PONG]);
const INCOMPATIBLE = Buffer.from([FRAME_INCOMPATIBLE_PROTOCOL]);

/** Fatal: invalid UTF-8 throws. ignoreBOM keeps a leading U+FEFF, as Python's decode does. */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function checkUint(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer 0..${max}, got ${v}`);
  }
}

function checkUuid(uuid: Uint8Array): void {
  if (!(uuid instanceof Uint8Array) || uuid.length !== UUID_SIZE) {
    throw new InvalidArgumentError(`a message uuid must be ${UUID_SIZE} bytes`);
  }
}

/**
 * Convert a TTL in milliseconds to the wire's whole seconds: `floor(ttlMs / 1000)` clamped to
 * `0..0xfffffffe` (so 2900 ms → 2, negative → 0); `null` → {@link TTL_INFINITE_WIRE}.
 *
 * @throws InvalidArgumentError if `ttlMs` is NaN or not a number.
 */
export function ttlMsToWire(ttlMs: number | null): number {
  if (ttlMs === null) return TTL_INFINITE_WIRE;
  if (typeof ttlMs !== 'number' || Number.isNaN(ttlMs)) {
    throw new InvalidArgumentError(`ttlMs must be a number or null, got ${String(ttlMs)}`);
  }
  const s = Math.floor(ttlMs / 1000);
  return s <= 0 ? 0 : s >= TTL_MAX_FINITE_WIRE ? TTL_MAX_FINITE_WIRE : s;
}

/** Convert a wire TTL (whole seconds) to milliseconds; {@link TTL_INFINITE_WIRE} → `null`. */
export function ttlWireToMs(ttlSeconds: number): number | null {
  return ttlSeconds === TTL_INFINITE_WIRE ? null : ttlSeconds * 1000;
}

/**
 * Encode a protocol-version frame: type 0, uint32 version.
 *
 * @param version the version to announce (default {@link PROTOCOL_VERSION})
 * @throws InvalidArgumentError if `version` is not a uint32.
 */
export function encodeProtocolVersion(version: number = PROTOCOL_VERSION): Buffer {
  checkUint('version', version, UINT32_MAX);
  const buf = Buffer.allocUnsafe(5);
  buf[0] = FRAME_PROTOCOL_VERSION;
  buf.writeUInt32BE(version, 1);
  return buf;
}

/** Encode an incompatible-protocol frame: type 1, no payload. Returns a new buffer. */
export function encodeIncompatibleProtocol(): Buffer {
  return Buffer.from(INCOMPATIBLE);
}

/**
 * Encode an identification frame: type 2 then the identity in UTF-8. Cutting our own identity
 * to 50 characters (as snakeMQ does) is the caller's business.
 *
 * @throws InvalidArgumentError if the identity is longer than {@link MAX_REMOTE_IDENT_BYTES}
 *   UTF-8 bytes (a peer would refuse it).
 */
export function encodeIdentification(ident: string): Buffer {
  const n = Buffer.byteLength(ident, 'utf8');
  if (n > MAX_REMOTE_IDENT_BYTES) {
    throw new InvalidArgumentError(`identity is ${n} UTF-8 bytes, more than ${MAX_REMOTE_IDENT_BYTES}`);
  }
  const buf = Buffer.allocUnsafe(1 + n);
  buf[0] = FRAME_IDENTIFICATION;
  buf.write(ident, 1, 'utf8');
  return buf;
}

/** Write type + uuid + TTL + flags at offset 0 of `buf` (which has room for them). */
function writeMessageHeader(buf: Buffer, m: { uuid: Uint8Array; ttlMs: number | null; flags: number }): void {
  checkUuid(m.uuid);
  checkUint('flags', m.flags, UINT32_MAX);
  const ttl = ttlMsToWire(m.ttlMs);
  buf[0] = FRAME_MESSAGE;
  buf.set(m.uuid, MESSAGE_UUID_OFFSET);
  buf.writeUInt32BE(ttl, MESSAGE_TTL_OFFSET);
  buf.writeUInt32BE(m.flags, MESSAGE_FLAGS_OFFSET);
}

/**
 * Encode only the 25-byte head of a message frame (type, uuid, TTL, flags), so the caller can
 * write it and the body one after the other without copying the body. The packet's length
 * prefix must count `25 + body.length`.
 *
 * @throws InvalidArgumentError if the uuid is not 16 bytes, `flags` is not a uint32 or
 *   `ttlMs` is NaN.
 */
export function encodeMessageHeader(m: Omit<MessageFields, 'body'>): Buffer {
  const buf = Buffer.allocUnsafe(MESSAGE_FRAME_HEAD_SIZE);
  writeMessageHeader(buf, m);
  return buf;
}

/**
 * Encode a whole message frame: type 3, uuid, TTL in whole seconds (see {@link ttlMsToWire}),
 * flags, body. Copies the body once; see {@link encodeMessageHeader} to avoid that.
 *
 * @throws InvalidArgumentError as {@link encodeMessageHeader}.
 */
export function encodeMessage(m: MessageFields): Buffer {
  const buf = Buffer.allocUnsafe(MESSAGE_FRAME_HEAD_SIZE + m.body.length);
  writeMessageHeader(buf, m);
  buf.set(m.body, MESSAGE_FRAME_HEAD_SIZE);
  return buf;
}

/** Encode a ping frame: type 4, no payload. Returns a new buffer. */
export function encodePing(): Buffer {
  return Buffer.from(PING);
}

/** Encode a pong frame: type 5, no payload. Returns a new buffer. */
export function encodePong(): Buffer {
  return Buffer.from(PONG);
}

/**
 * Encode a hello frame (extension): type 0x10, uint16 extension version, uint32 maximum packet
 * payload in bytes, uint32 feature bits.
 *
 * @throws InvalidArgumentError if a field is out of its integer range.
 */
export function encodeHello(h: HelloFields): Buffer {
  checkUint('extVersion', h.extVersion, 0xffff);
  checkUint('maxPacketSize', h.maxPacketSize, UINT32_MAX);
  checkUint('features', h.features, UINT32_MAX);
  if (h.incarnation !== undefined) checkIncarnation(h.incarnation);
  const buf = Buffer.allocUnsafe(1 + (h.incarnation === undefined ? HELLO_PAYLOAD_SIZE : HELLO_V2_PAYLOAD_SIZE));
  buf[0] = FRAME_HELLO;
  buf.writeUInt16BE(h.extVersion, 1);
  buf.writeUInt32BE(h.maxPacketSize, 3);
  buf.writeUInt32BE(h.features, 7);
  if (h.incarnation !== undefined) buf.set(h.incarnation, 11);
  return buf;
}

function checkIncarnation(inc: Uint8Array): void {
  if (!(inc instanceof Uint8Array) || inc.length !== INCARNATION_SIZE) {
    throw new InvalidArgumentError(`an incarnation must be ${INCARNATION_SIZE} bytes`);
  }
}

/** Write `seq` (an integer 0..{@link MAX_SEQ}, unchecked) as a big-endian uint64 at `off`. */
export function writeSeq(buf: Uint8Array, off: number, seq: number): void {
  const hi = Math.floor(seq / 0x100000000);
  const lo = seq - hi * 0x100000000;
  buf[off] = hi >>> 24;
  buf[off + 1] = hi >>> 16;
  buf[off + 2] = hi >>> 8;
  buf[off + 3] = hi;
  buf[off + 4] = lo >>> 24;
  buf[off + 5] = lo >>> 16;
  buf[off + 6] = lo >>> 8;
  buf[off + 7] = lo;
}

/** The big-endian uint64 at `off` of `buf` (in bounds) as a number, or -1 when above {@link MAX_SEQ}. */
export function readSeq(buf: Uint8Array, off: number): number {
  const hi = ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
  const lo = ((buf[off + 4] << 24) | (buf[off + 5] << 16) | (buf[off + 6] << 8) | buf[off + 7]) >>> 0;
  return hi > 0x1fffff ? -1 : hi * 0x100000000 + lo;
}

function checkSeq(seq: number): void {
  if (!Number.isInteger(seq) || seq < 0 || seq > MAX_SEQ) {
    throw new InvalidArgumentError(`a sequence number must be an integer 0..${MAX_SEQ}, got ${seq}`);
  }
}

/**
 * Encode only the 33-byte head of a sequenced message frame (type 0x12, seq, uuid, TTL,
 * flags); the body follows it in the packet, see {@link encodeMessageHeader}.
 *
 * @throws InvalidArgumentError for a uuid not of 16 bytes, a seq out of 1..{@link MAX_SEQ},
 *   flags not a uint32 or a NaN TTL.
 */
export function encodeSeqMessageHeader(m: Omit<MessageFields, 'body'> & { seq: number }): Buffer {
  checkUuid(m.uuid);
  checkUint('flags', m.flags, UINT32_MAX);
  checkSeq(m.seq);
  if (m.seq === 0) throw new InvalidArgumentError('a message sequence number starts at 1');
  const buf = Buffer.allocUnsafe(SEQ_MESSAGE_FRAME_HEAD_SIZE);
  buf[0] = FRAME_SEQ_MESSAGE;
  writeSeq(buf, SEQ_MESSAGE_SEQ_OFFSET, m.seq);
  buf.set(m.uuid, SEQ_MESSAGE_UUID_OFFSET);
  buf.writeUInt32BE(ttlMsToWire(m.ttlMs), SEQ_MESSAGE_TTL_OFFSET);
  buf.writeUInt32BE(m.flags, SEQ_MESSAGE_FLAGS_OFFSET);
  return buf;
}

/** Encode a whole sequenced message frame (copies the body once). @throws as {@link encodeSeqMessageHeader} */
export function encodeSeqMessage(m: MessageFields & { seq: number }): Buffer {
  return Buffer.concat([encodeSeqMessageHeader(m), m.body]);
}

/** Bytes of a whole cumulative ack or resume frame. */
export const MARK_FRAME_SIZE = 1 + MARK_PAYLOAD_SIZE;

/**
 * Write a cumulative ack or resume frame (`type`, the 8-byte `incarnation`, `seq`) at the start
 * of `buf` (at least {@link MARK_FRAME_SIZE} bytes), unchecked: for a caller that reuses one buffer.
 */
export function writeMark(buf: Uint8Array, type: number, incarnation: Uint8Array, seq: number): void {
  buf[0] = type;
  buf.set(incarnation, 1);
  writeSeq(buf, 1 + INCARNATION_SIZE, seq);
}

function encodeMark(type: number, m: MarkFields): Buffer {
  checkIncarnation(m.incarnation);
  checkSeq(m.seq);
  const buf = Buffer.allocUnsafe(MARK_FRAME_SIZE);
  writeMark(buf, type, m.incarnation, m.seq);
  return buf;
}

/**
 * Encode a cumulative ack (type 0x13): 8-byte incarnation, uint64 seq.
 * @throws InvalidArgumentError for an incarnation not of 8 bytes or a seq out of 0..{@link MAX_SEQ}.
 */
export function encodeSeqAck(m: MarkFields): Buffer {
  return encodeMark(FRAME_SEQ_ACK, m);
}

/**
 * Encode a resume frame (type 0x14): 8-byte incarnation, uint64 seq.
 * @throws as {@link encodeSeqAck}
 */
export function encodeResume(m: MarkFields): Buffer {
  return encodeMark(FRAME_RESUME, m);
}

/**
 * Encode an ack frame (extension): type 0x11 then the 16-byte uuids back to back.
 *
 * @throws InvalidArgumentError if a uuid is not 16 bytes.
 */
export function encodeAck(uuids: readonly Uint8Array[]): Buffer {
  const buf = Buffer.allocUnsafe(1 + UUID_SIZE * uuids.length);
  buf[0] = FRAME_ACK;
  let off = 1;
  for (const u of uuids) {
    checkUuid(u);
    buf.set(u, off);
    off += UUID_SIZE;
  }
  return buf;
}

/**
 * Decode one frame (a packet's payload). `uuid`, `body` and ack `uuids` in the result are views
 * of `frame`'s memory, not copies. See the module documentation for what is accepted.
 *
 * Never allocates according to a length read from the input, and throws nothing but
 * {@link BadFrameError}.
 *
 * @throws BadFrameError (code `ERR_BAD_FRAME`, fault `'remote'`) for an empty frame, a version
 *   frame whose payload is not exactly 4 bytes, a message frame shorter than 25 bytes, an
 *   identification that is not valid UTF-8 or longer than {@link MAX_REMOTE_IDENT_BYTES} bytes,
 *   an ack whose payload is not a multiple of 16 bytes, a sequenced message shorter than 33
 *   bytes or with sequence number 0, a cumulative ack or resume whose payload is not exactly 16
 *   bytes, or a sequence number above {@link MAX_SEQ}.
 */
export function decodeFrame(frame: Buffer): Frame {
  if (frame.length === 0) throw new BadFrameError('empty frame');
  const type = frame.readUInt8(0);
  const payloadLength = frame.length - 1;
  switch (type) {
    case FRAME_PROTOCOL_VERSION:
      if (payloadLength !== 4) {
        throw new BadFrameError(`protocol version frame has ${payloadLength} payload bytes, expected 4`);
      }
      return { kind: 'version', version: frame.readUInt32BE(1) };
    case FRAME_INCOMPATIBLE_PROTOCOL:
      return { kind: 'incompatible' };
    case FRAME_IDENTIFICATION: {
      if (payloadLength > MAX_REMOTE_IDENT_BYTES) {
        throw new BadFrameError(`identity of ${payloadLength} bytes exceeds ${MAX_REMOTE_IDENT_BYTES}`);
      }
      let ident: string;
      try {
        ident = utf8.decode(frame.subarray(1));
      } catch (err) {
        throw new BadFrameError('identity is not valid UTF-8', { cause: err });
      }
      return { kind: 'ident', ident };
    }
    case FRAME_MESSAGE: {
      if (payloadLength < MESSAGE_HEADER_SIZE) {
        throw new BadFrameError(`message frame has ${payloadLength} payload bytes, expected at least ${MESSAGE_HEADER_SIZE}`);
      }
      const ttl = frame.readUInt32BE(MESSAGE_TTL_OFFSET);
      return {
        kind: 'message',
        uuid: frame.subarray(MESSAGE_UUID_OFFSET, MESSAGE_UUID_OFFSET + UUID_SIZE),
        ttlMs: ttl === TTL_INFINITE_WIRE ? null : ttl * 1000,
        flags: frame.readUInt32BE(MESSAGE_FLAGS_OFFSET),
        body: frame.subarray(MESSAGE_FRAME_HEAD_SIZE),
      };
    }
    case FRAME_PING:
      return { kind: 'ping' };
    case FRAME_PONG:
      return { kind: 'pong' };
    case FRAME_HELLO:
      // Too short to be ours: ignore it as snakeMQ ignores any unknown frame.
      if (payloadLength < HELLO_PAYLOAD_SIZE) return { kind: 'unknown', type };
      if (payloadLength < HELLO_V2_PAYLOAD_SIZE) {
        return { kind: 'hello', extVersion: frame.readUInt16BE(1), maxPacketSize: frame.readUInt32BE(3), features: frame.readUInt32BE(7) };
      }
      return {
        kind: 'hello',
        extVersion: frame.readUInt16BE(1),
        maxPacketSize: frame.readUInt32BE(3),
        features: frame.readUInt32BE(7),
        incarnation: frame.subarray(11, 11 + INCARNATION_SIZE),
      };
    case FRAME_ACK: {
      if (payloadLength % UUID_SIZE !== 0) {
        throw new BadFrameError(`ack frame payload of ${payloadLength} bytes is not a multiple of ${UUID_SIZE}`);
      }
      const uuids: Buffer[] = [];
      for (let off = 1; off < frame.length; off += UUID_SIZE) uuids.push(frame.subarray(off, off + UUID_SIZE));
      return { kind: 'ack', uuids };
    }
    case FRAME_SEQ_MESSAGE: {
      if (payloadLength < SEQ_MESSAGE_HEADER_SIZE) {
        throw new BadFrameError(`sequenced message frame has ${payloadLength} payload bytes, expected at least ${SEQ_MESSAGE_HEADER_SIZE}`);
      }
      const seq = readSeq(frame, SEQ_MESSAGE_SEQ_OFFSET);
      if (seq < 1) throw new BadFrameError(seq === 0 ? 'message sequence number 0' : 'message sequence number above 2^53 - 1');
      const ttl = frame.readUInt32BE(SEQ_MESSAGE_TTL_OFFSET);
      return {
        kind: 'seq-message',
        seq,
        uuid: frame.subarray(SEQ_MESSAGE_UUID_OFFSET, SEQ_MESSAGE_UUID_OFFSET + UUID_SIZE),
        ttlMs: ttl === TTL_INFINITE_WIRE ? null : ttl * 1000,
        flags: frame.readUInt32BE(SEQ_MESSAGE_FLAGS_OFFSET),
        body: frame.subarray(SEQ_MESSAGE_FRAME_HEAD_SIZE),
      };
    }
    case FRAME_SEQ_ACK:
    case FRAME_RESUME: {
      if (payloadLength !== MARK_PAYLOAD_SIZE) {
        throw new BadFrameError(`${type === FRAME_RESUME ? 'resume' : 'cumulative ack'} frame has ${payloadLength} payload bytes, expected ${MARK_PAYLOAD_SIZE}`);
      }
      const seq = readSeq(frame, 1 + INCARNATION_SIZE);
      if (seq < 0) throw new BadFrameError('sequence number above 2^53 - 1');
      return { kind: type === FRAME_RESUME ? 'resume' : 'seq-ack', incarnation: frame.subarray(1, 1 + INCARNATION_SIZE), seq };
    }
    default:
      return { kind: 'unknown', type };
  }
}
