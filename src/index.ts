/**
 * snakemq: brokerless peer-to-peer messaging for Node.js, wire-compatible with Python
 * snakeMQ 1.6.
 *
 * @module
 */
export * from './errors.js';
export * from './clock.js';
export * from './logger.js';
export * from './link.js';
export * from './throttle.js';
export * from './packet-decoder.js';
export * from './packeter.js';
export * from './message.js';
export * from './messaging.js';
export type * from './storage.js';
export * from './receive-hook.js';
export * from './rpc.js';
export * from './rpc-codec.js';
export * from './rpc-pickle.js';
export { type RpcEncoding, PYTHON_SAFE_EXCEPTIONS } from './rpc-python.js';
export * from './rpc-errors.js';
export * as protocol from './protocol.js';
