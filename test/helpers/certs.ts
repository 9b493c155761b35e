/**
 * Throwaway TLS material for tests, made with the `openssl` binary: a CA, a server certificate
 * for 127.0.0.1 / localhost, a client certificate (clientAuth), all signed by that CA, and an
 * unrelated second CA with its own certificate (for "untrusted peer" tests). EC P-256 keys, so
 * it takes a few tens of milliseconds. Made once per process (per test file under vitest's
 * isolation) and removed at exit or by `cleanup()`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** PEM buffers of the generated material, and the directory holding the files. */
export interface TestCerts {
  /** Directory with the PEM files (`ca.crt`, `server.key`, ...). */
  dir: string;
  /** The CA certificate that signed the server and client certificates. */
  ca: Buffer;
  serverKey: Buffer;
  /** Server certificate: subjectAltName IP:127.0.0.1, DNS:localhost; serverAuth. */
  serverCert: Buffer;
  clientKey: Buffer;
  /** Client certificate: CN snakemq-test-client; clientAuth. */
  clientCert: Buffer;
  /** A second, unrelated CA. */
  otherCa: Buffer;
  otherKey: Buffer;
  /** Signed by `otherCa`: same names as the server cert, serverAuth and clientAuth. */
  otherCert: Buffer;
  /** Remove the directory; the next `makeTestCerts()` makes new material. */
  cleanup(): void;
}

let made: Promise<TestCerts> | undefined;

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr}`, { cause: err });
  }
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function makeCa(dir: string, name: string): void {
  openssl(dir, [
    'req', '-x509', ...EC, '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '7',
    '-subj', `/CN=snakemq-test-${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

function makeLeaf(dir: string, name: string, ca: string, cn: string, ext: string): void {
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(dir, ['req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
  openssl(dir, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-out', `${name}.crt`, '-days', '7', '-extfile', `${name}.ext`,
  ]);
}

function generate(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'snakemq-certs-'));
  const removeAtExit = (): void => rmSync(dir, { recursive: true, force: true });
  process.once('exit', removeAtExit);
  try {
    const leaf = 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n';
    const names = 'subjectAltName=IP:127.0.0.1,DNS:localhost\n';
    makeCa(dir, 'ca');
    makeLeaf(dir, 'server', 'ca', 'localhost', `${leaf}${names}extendedKeyUsage=serverAuth\n`);
    makeLeaf(dir, 'client', 'ca', 'snakemq-test-client', `${leaf}extendedKeyUsage=clientAuth\n`);
    makeCa(dir, 'other-ca');
    makeLeaf(dir, 'other', 'other-ca', 'localhost', `${leaf}${names}extendedKeyUsage=serverAuth,clientAuth\n`);
  } catch (err) {
    removeAtExit();
    process.removeListener('exit', removeAtExit);
    throw err;
  }
  const read = (f: string): Buffer => readFileSync(join(dir, f));
  return {
    dir,
    ca: read('ca.crt'),
    serverKey: read('server.key'),
    serverCert: read('server.crt'),
    clientKey: read('client.key'),
    clientCert: read('client.crt'),
    otherCa: read('other-ca.crt'),
    otherKey: read('other.key'),
    otherCert: read('other.crt'),
    cleanup() {
      removeAtExit();
      process.removeListener('exit', removeAtExit);
      made = undefined;
    },
  };
}

/**
 * The test TLS material, generated on first call and shared by later calls in this process.
 *
 * @throws Error if the `openssl` binary is missing or fails (its stderr is in the message).
 */
export async function makeTestCerts(): Promise<TestCerts> {
  made ??= Promise.resolve().then(generate);
  try {
    return await made;
  } catch (err) {
    made = undefined;
    throw err;
  }
}
