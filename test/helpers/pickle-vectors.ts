/** The RPC pickle bodies recorded from Python snakeMQ 1.6 (test/fixtures), and the values they hold. */
import { readFileSync } from 'node:fs';
import { PickledException, PickleTuple } from '../../src/rpc-pickle.js';

export interface PickleVector {
  name: string;
  description: string;
  python: string;
  hex: string;
}
export const FILE = JSON.parse(readFileSync(new URL('../fixtures/snakemq-1.6-rpc-pickle.json', import.meta.url), 'utf8')) as {
  vectors: PickleVector[];
};
export const body = (name: string): Buffer => {
  const v = FILE.vectors.find((x) => x.name === name);
  if (!v) throw new Error(`no vector ${name}`);
  return Buffer.from(v.hex, 'hex');
};
const id = (last: number): Buffer => {
  const b = Buffer.alloc(16);
  b[15] = last;
  return b;
};

export const TRACE_VALUE_ERROR =
  'Traceback (most recent call last):\n  File "/tmp/vec/capture_rpc.py", line 54, in <module>\n    raise ValueError("bad value", 42)\nValueError: (\'bad value\', 42)\n';
export const TRACE_CUSTOM =
  'Traceback (most recent call last):\n  File "/tmp/vec/capture_rpc.py", line 61, in <module>\n    raise CustomError("custom failure")\nmyservice.CustomError: custom failure\n';

/** Each vector's expected value, and the same value in the form our encoder takes (tuples marked). */
export const EXPECTED: Record<string, { value: unknown; encodable: unknown; prefix: string; exceptions?: number }> = {
  'rpc-py-signal': {
    prefix: 'rpcreq',
    value: { command: 'signal', object: 'calc', method: 'notify', args: ['hello'], kwargs: { level: 3 } },
    encodable: { command: 'signal', object: 'calc', method: 'notify', args: new PickleTuple(['hello']), kwargs: { level: 3 } },
  },
  'rpc-py-call-add': {
    prefix: 'rpcreq',
    value: { command: 'call', object: 'calc', method: 'add', args: [2, 3], kwargs: {}, req_id: id(2) },
    encodable: { command: 'call', object: 'calc', method: 'add', args: new PickleTuple([2, 3]), kwargs: {}, req_id: id(2) },
  },
  'rpc-py-call-mixed': (() => {
    const args = [
      1,
      -7,
      2n ** 70n,
      -(2n ** 70n),
      1.5,
      'žluťoučký kůň',
      Buffer.from('00ff6279746573', 'hex'),
      null,
      true,
      false,
      [1, [2, 3]],
      [4, 5],
      { k: [1, 2], n: null },
    ];
    const encArgs: unknown[] = [...args];
    encArgs[11] = new PickleTuple([4, 5]);
    return {
      prefix: 'rpcreq',
      value: { command: 'call', object: 'calc', method: 'mix', args, kwargs: { flag: true, name: 'x' }, req_id: id(3) },
      encodable: { command: 'call', object: 'calc', method: 'mix', args: new PickleTuple(encArgs), kwargs: { flag: true, name: 'x' }, req_id: id(3) },
    };
  })(),
  'rpc-py-reply-ok': {
    prefix: 'rpcrep',
    value: { ok: true, return: { sum: 5, items: [1, 2.5, 'three'], blob: Buffer.from([1, 2]) }, req_id: id(0x63) },
    encodable: { ok: true, return: { sum: 5, items: [1, 2.5, 'three'], blob: Buffer.from([1, 2]) }, req_id: id(0x63) },
  },
  'rpc-py-reply-none': {
    prefix: 'rpcrep',
    value: { ok: true, return: null, req_id: id(0x63) },
    encodable: { ok: true, return: null, req_id: id(0x63) },
  },
  'rpc-py-reply-valueerror': {
    prefix: 'rpcrep',
    exceptions: 1,
    value: { req_id: id(0x63), ok: false, exception: new PickledException('builtins', 'ValueError', ['bad value', 42]), exception_format: TRACE_VALUE_ERROR },
    encodable: {
      req_id: id(0x63),
      ok: false,
      exception: new PickledException('builtins', 'ValueError', ['bad value', 42]),
      exception_format: TRACE_VALUE_ERROR,
    },
  },
  'rpc-py-reply-custom-exception': {
    prefix: 'rpcrep',
    exceptions: 1,
    value: { req_id: id(0x63), ok: false, exception: new PickledException('myservice', 'CustomError', ['custom failure']), exception_format: TRACE_CUSTOM },
    encodable: {
      req_id: id(0x63),
      ok: false,
      exception: new PickledException('myservice', 'CustomError', ['custom failure']),
      exception_format: TRACE_CUSTOM,
    },
  },
};

