import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Link, type TlsConfig } from '../src/link.js';
import { Packeter } from '../src/packeter.js';
import { type TestCerts, makeTestCerts } from './helpers/certs.js';
import { until, waitFor } from './helpers/wait.js';

let certs: TestCerts;
beforeAll(async () => {
  certs = await makeTestCerts();
});

const links: Link[] = [];
afterEach(async () => {
  for (const l of links.splice(0)) await l.close();
});

function link(): Link {
  const l = new Link();
  links.push(l);
  return l;
}

function serverTls(): TlsConfig {
  return { key: certs.serverKey, cert: certs.serverCert, ca: certs.ca, requirePeerCert: true };
}

describe('TLS', () => {
  it('accepts a client with a certificate from the trusted CA, both ways, and exposes peer certificates', async () => {
    const server = link();
    const ps = new Packeter(server);
    const { port } = await server.addListener({ port: 0, tls: serverTls() });
    const client = link();
    const pc = new Packeter(client);
    const got: string[] = [];
    ps.on('packet', (_c, p) => got.push(p.toString()));
    pc.on('packet', (_c, p) => got.push(p.toString()));
    const sConn = waitFor<[string]>(ps, 'connect');
    const cConn = waitFor<[string]>(pc, 'connect');
    client.addConnector({ host: '127.0.0.1', port, tls: { key: certs.clientKey, cert: certs.clientCert, ca: certs.ca } });
    const [sId] = await sConn;
    const [cId] = await cConn;
    ps.sendPacket(sId, Buffer.from('to client'));
    pc.sendPacket(cId, Buffer.from('to server'));
    await until(() => got.length === 2);
    expect(got.sort()).toEqual(['to client', 'to server']);
    expect(server.connectionInfo(sId)?.tls).toBe(true);
    const clientCert = server.getPeerCertificate(sId);
    const serverCert = client.getPeerCertificate(cId);
    expect(clientCert?.subject?.CN).toBeTruthy();
    expect(serverCert?.subject?.CN).toBeTruthy();
    expect(clientCert?.fingerprint256).not.toBe(serverCert?.fingerprint256);
  });

  it('refuses a client without a certificate: no connect and no bytes on the listener', async () => {
    const server = link();
    let connects = 0;
    let bytes = 0;
    server.on('connect', () => connects++);
    server.on('recv', (_c, d) => (bytes += d.length));
    const { port } = await server.addListener({ port: 0, tls: serverTls() });
    const client = link();
    const pc = new Packeter(client);
    // under TLS 1.3 the client may see secureConnect before the server's alert: it sends anyway
    pc.on('connect', (c) => pc.sendPacket(c, Buffer.from('let me in')));
    const errors: Error[] = [];
    client.on('error', (e) => errors.push(e));
    let clientDisconnects = 0;
    client.on('disconnect', () => clientDisconnects++);
    client.addConnector({ host: '127.0.0.1', port, tls: { ca: certs.ca }, reconnectInterval: 60_000 });
    await until(() => errors.length > 0 || clientDisconnects > 0, 10_000, 'the client to be refused');
    expect(connects).toBe(0);
    expect(bytes).toBe(0);
  });

  it('refuses a client whose certificate comes from another CA', async () => {
    const server = link();
    let connects = 0;
    server.on('connect', () => connects++);
    const { port } = await server.addListener({ port: 0, tls: serverTls() });
    const client = link();
    const errors: Error[] = [];
    let clientDisconnects = 0;
    client.on('error', (e) => errors.push(e));
    client.on('disconnect', () => clientDisconnects++);
    client.addConnector({
      host: '127.0.0.1',
      port,
      tls: { key: certs.otherKey, cert: certs.otherCert, ca: certs.ca },
      reconnectInterval: 60_000,
    });
    await until(() => errors.length > 0 || clientDisconnects > 0, 10_000, 'the client to be refused');
    expect(connects).toBe(0);
  });

  it('a client verifies the server certificate by default', async () => {
    const server = link();
    const { port } = await server.addListener({ port: 0, tls: { key: certs.serverKey, cert: certs.serverCert } });
    const client = link();
    const err = waitFor<[Error & { code: string; cause?: { code?: string } }]>(client, 'error');
    let connects = 0;
    client.on('connect', () => connects++);
    client.addConnector({ host: '127.0.0.1', port, tls: {}, reconnectInterval: 60_000 }); // no CA given
    const [e] = await err;
    expect(e.code).toBe('ERR_CONNECT');
    expect(connects).toBe(0);
  });
});
