import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTestCerts } from './helpers/certs.js';

describe('test certificates', () => {
  afterAll(async () => (await makeTestCerts()).cleanup());

  it('are made once per process', async () => {
    expect(await makeTestCerts()).toBe(await makeTestCerts());
  });

  it('let a client with the client cert in through requestCert + rejectUnauthorized, on 127.0.0.1 and localhost', async () => {
    const c = await makeTestCerts();
    const authorized: boolean[] = [];
    const server = tls.createServer(
      { key: c.serverKey, cert: c.serverCert, ca: c.ca, requestCert: true, rejectUnauthorized: true },
      (socket) => {
        authorized.push(socket.authorized);
        socket.end('ok');
      },
    );
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    try {
      for (const servername of [undefined, 'localhost']) {
        const client = tls.connect({ host: '127.0.0.1', port, servername, ca: c.ca, key: c.clientKey, cert: c.clientCert });
        await once(client, 'secureConnect');
        expect(client.authorized).toBe(true);
        const [data] = (await once(client, 'data')) as [Buffer];
        expect(data.toString()).toBe('ok');
        client.destroy();
      }
      expect(authorized).toEqual([true, true]);
    } finally {
      server.close();
    }
  });
});
