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
 * | 0x10 | hello (extension)     | uint16 ext version, uint32 max packet, uint32 features |
 * | 0x11 | ack (extension)       | n × 16-byte uuid                                     |
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
 * - ack: the payload must be a multiple of 16 bytes (0 uuids is valid);
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
/** Frame type 0x11 (extension): ack, payload n × 16-byte message uuids. */
export const FRAME_ACK = 0x11;

/** The snakeMQ protocol version we speak (snakeMQ 1.6's). */
export const PROTOCOL_VERSION = 1;
/** The version of our extension frames, sent in the hello frame. */
export const EXTENSION_VERSION = 1;
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
/** The longest remote identity accepted, in UTF-8 bytes; a longer one is a broken frame. */
export const MAX_REMOTE_IDENT_BYTES = 255;

/** Bytes of a message uuid. */
const UUID_SIZE = 16;
/** Bytes of a hello frame's payload (fields of extension version 1). */
const HELLO_PAYLOAD_SIZE = 10;
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
  const buf = Buffer.allocUnsafe(1 + HELLO_PAYLOAD_SIZE);
  buf[0] = FRAME_HELLO;
  buf.writeUInt16BE(h.extVersion, 1);
  buf.writeUInt32BE(h.maxPacketSize, 3);
  buf.writeUInt32BE(h.features, 7);
  return buf;
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
 *   or an ack whose payload is not a multiple of 16 bytes.
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
      return {
        kind: 'hello',
        extVersion: frame.readUInt16BE(1),
        maxPacketSize: frame.readUInt32BE(3),
        features: frame.readUInt32BE(7),
      };
    case FRAME_ACK: {
      if (payloadLength % UUID_SIZE !== 0) {
        throw new BadFrameError(`ack frame payload of ${payloadLength} bytes is not a multiple of ${UUID_SIZE}`);
      }
      const uuids: Buffer[] = [];
      for (let off = 1; off < frame.length; off += UUID_SIZE) uuids.push(frame.subarray(off, off + UUID_SIZE));
      return { kind: 'ack', uuids };
    }
    default:
      return { kind: 'unknown', type };
  }
}
