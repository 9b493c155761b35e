import { describe, expect, it } from 'vitest';
import { Message } from '../src/message.js';
import { MESSAGE_HEADER_SIZE } from '../src/protocol.js';
import { ReceiveHook } from '../src/receive-hook.js';
import { FakeNetwork } from './helpers/fake-messaging.js';

function setup() {
  const net = new FakeNetwork();
  const m = net.add('me');
  const hook = new ReceiveHook(m);
  const deliver = (body: string | Buffer, ident = 'peer'): void => {
    m.emit('message', 'c1', ident, new Message(body));
  };
  return { m, hook, deliver };
}

describe('ReceiveHook', () => {
  it('matches received messages on their body only, not on the bytes after it in their buffer', () => {
    const { m, hook } = setup();
    const got: string[] = [];
    hook.register(Buffer.from('abcd'), (_c, _i, msg) => got.push(`short:${msg.body}`));
    hook.register(Buffer.from('ab'.repeat(10)), (_c, _i, msg) => got.push(`long:${msg.body}`));
    hook.register(/(ab)+$/, (_c, _i, msg) => got.push(`re:${msg.body}`));
    const received: Message[] = [];
    // as Messaging hands them over: bodies in a buffer that goes on with more bytes
    const wire = (body: string, after: string): Message => {
      const slab = Buffer.concat([Buffer.alloc(16, 7), Buffer.alloc(8), Buffer.from(body + after, 'latin1')]);
      const msg = Message.fromWire(slab, 0, MESSAGE_HEADER_SIZE + body.length, null, 0);
      received.push(msg);
      return msg;
    };
    m.emit('message', 'c1', 'peer', wire('ab', 'cd' + 'ab'.repeat(10)));
    m.emit('message', 'c1', 'peer', wire('ab'.repeat(9), 'ab'));
    m.emit('message', 'c1', 'peer', wire('abcd', ''));
    expect(got).toEqual(['re:ab', `re:${'ab'.repeat(9)}`, 'short:abcd']);
    // a handler that reads the body gets it; the slab's bytes after it are not part of it
    expect(received.map((r) => r.body.toString('latin1'))).toEqual(['ab', 'ab'.repeat(9), 'abcd']);
  });

  it('matches message-like objects of another copy of the library by their body', () => {
    const { m, hook } = setup();
    const got: string[] = [];
    hook.register(Buffer.from('ab'), (_c, _i, msg) => got.push(`prefix:${msg.body}`));
    hook.register(/x$/, (_c, _i, msg) => got.push(`re:${msg.body}`));
    const foreign = (body: string) => ({ body: Buffer.from(body), ttl: null, flags: 0 }) as unknown as Message;
    m.emit('message', 'c1', 'peer', foreign('abc'));
    m.emit('message', 'c1', 'peer', foreign('x'));
    m.emit('message', 'c1', 'peer', foreign('zz'));
    expect(got).toEqual(['prefix:abc', 're:x']);
  });

  it('calls a handler whose Buffer prefix starts the body, and not others', () => {
    const { hook, deliver } = setup();
    const got: string[] = [];
    hook.register(Buffer.from('abc'), (_c, ident, msg) => got.push(`${ident}:${msg.body}`));
    deliver('abcdef');
    deliver('xabc');
    deliver('ab');
    deliver('abc');
    expect(got).toEqual(['peer:abcdef', 'peer:abc']);
  });

  it('tests a RegExp from index 0 only, whatever its flags, on the latin1 body', () => {
    const { hook, deliver } = setup();
    const got: string[] = [];
    hook.register(/b+c/g, (_c, _i, msg) => got.push(msg.body.toString('latin1')));
    deliver('bbc');
    deliver('abbc'); // matches at 1, not at 0
    deliver('bbc'); // a global RegExp's lastIndex must not leak between messages
    deliver(Buffer.from([0x62, 0x63, 0xff])); // non-UTF-8 bytes are fine (latin1)
    expect(got).toEqual(['bbc', 'bbc', 'bc\xff']);
  });

  it('runs every matching handler in registration order, and message still fires for all', () => {
    const { m, hook, deliver } = setup();
    const order: string[] = [];
    hook.register(Buffer.from('rpc'), () => order.push('prefix'));
    hook.register(/^rpcreq/, () => order.push('regexp'));
    hook.register(Buffer.from('zzz'), () => order.push('other'));
    let all = 0;
    m.on('message', () => all++);
    deliver('rpcreq...');
    deliver('nothing');
    expect(order).toEqual(['prefix', 'regexp']);
    expect(all).toBe(2);
  });

  it('ignores registering the same pattern and callback twice', () => {
    const { hook, deliver } = setup();
    let n = 0;
    const cb = (): void => void n++;
    hook.register(Buffer.from('a'), cb);
    hook.register(Buffer.from('a'), cb);
    expect(hook.size).toBe(1);
    deliver('a');
    expect(n).toBe(1);
  });

  it('unregisters by pattern, by callback, by both, or all', () => {
    const { hook, deliver } = setup();
    const got: string[] = [];
    const a = (): void => void got.push('a');
    const b = (): void => void got.push('b');
    hook.register(Buffer.from('x'), a);
    hook.register(Buffer.from('x'), b);
    hook.register(/^x/, a);
    expect(hook.unregister(Buffer.from('x'), a)).toBe(1);
    deliver('x');
    expect(got).toEqual(['b', 'a']);
    expect(hook.unregister(a)).toBe(1);
    expect(hook.unregister(/^x/)).toBe(0);
    expect(hook.unregister(Buffer.from('x'))).toBe(1);
    hook.register(/^x/, a);
    hook.register(/^y/, b);
    expect(hook.unregister()).toBe(2);
    got.length = 0;
    deliver('x');
    expect(got).toEqual([]);
  });

  it('a handler that unregisters itself during dispatch does not skip the next one', () => {
    const { hook, deliver } = setup();
    const got: string[] = [];
    const first = (): void => {
      got.push('first');
      hook.unregister(first);
    };
    hook.register(Buffer.from('m'), first);
    hook.register(Buffer.from('m'), () => got.push('second'));
    deliver('m');
    deliver('m');
    expect(got).toEqual(['first', 'second', 'second']);
  });

  it('reports a throwing or rejecting handler on its error event and keeps dispatching', async () => {
    const { m, hook, deliver } = setup();
    const errors: Array<[string, string]> = [];
    hook.on('error', (err, ident) => errors.push([err.message, ident]));
    let after = 0;
    let messages = 0;
    m.on('message', () => messages++);
    hook.register(Buffer.from('m'), () => {
      throw new Error('boom');
    });
    hook.register(Buffer.from('m'), async () => {
      throw new Error('async boom');
    });
    hook.register(Buffer.from('m'), () => void after++);
    deliver('m', 'bob');
    await new Promise((r) => setImmediate(r));
    expect(errors).toEqual([
      ['boom', 'bob'],
      ['async boom', 'bob'],
    ]);
    expect(after).toBe(1);
    expect(messages).toBe(1);
  });

  it('without an error listener a throwing handler does not throw out of messaging', () => {
    const { hook, deliver } = setup();
    hook.register(Buffer.from('m'), () => {
      throw new Error('boom');
    });
    expect(() => deliver('m')).not.toThrow();
  });

  it('copies a Buffer pattern and refuses other pattern types', () => {
    const { hook, deliver } = setup();
    const p = Buffer.from('ab');
    let n = 0;
    hook.register(p, () => void n++);
    p[0] = 0x78;
    deliver('ab');
    expect(n).toBe(1);
    expect(() => hook.register('ab' as unknown as Buffer, () => {})).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => hook.register(Buffer.from('a'), 1 as unknown as () => void)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });

  it('stops listening after close()', () => {
    const { m, hook, deliver } = setup();
    let n = 0;
    hook.register(Buffer.from(''), () => void n++);
    deliver('x');
    hook.close();
    deliver('x');
    expect(n).toBe(1);
    expect(m.listenerCount('message')).toBe(0);
  });
});
