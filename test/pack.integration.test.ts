/**
 * The package as a user installs it: `npm pack` of this checkout, installed into a temporary
 * project of its own (outside the repository), then used there through its published entry
 * points only: ESM imports and a two-peer exchange, a type-check against the installed
 * declarations (moduleResolution node16 and bundler), the `snakemq` command, and require() from
 * CommonJS.
 *
 * The temporary project installs the tarball with exactly the production dependencies of our
 * package-lock.json (a lockfile made from ours, `npm ci --prefer-offline`: npm's cache, filled by
 * our own install, serves them). Install scripts are skipped and better-sqlite3's native addon is
 * copied from our own install of the same version, which spares a second ~100 s compile; when
 * the versions differ it is rebuilt instead.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupTemp, tempDir } from './helpers/temp.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FIXTURE = fileURLToPath(new URL('./fixtures/packed-app/', import.meta.url));
const run = promisify(execFile);
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

interface Lock {
  packages: Record<string, { dev?: boolean; version?: string }>;
}
interface Pkg {
  version: string;
  dependencies: Record<string, string>;
  bin: Record<string, string>;
  engines: Record<string, string>;
  license: string;
}

let app = '';

async function sh(cmd: string, args: string[], cwd: string, timeout = 120_000): Promise<{ stdout: string; stderr: string }> {
  // npm_config_* from the `npm test` that started us would steer the inner npm (prefix, cache mode)
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_')));
  return run(cmd, args, { cwd, timeout, env, maxBuffer: 16 * 1024 * 1024 });
}

beforeAll(async () => {
  const dir = tempDir('snakemq-pack-');
  const [packed] = JSON.parse((await sh(NPM, ['pack', '--json', '--pack-destination', dir], ROOT, 300_000)).stdout) as Array<{ filename: string }>;
  const tarball = `file:../${packed!.filename}`;
  app = join(dir, 'app');
  cpSync(FIXTURE, app, { recursive: true });

  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Pkg;
  const ours = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as Lock;
  const packages: Record<string, unknown> = {
    '': { name: 'packed-app', dependencies: { snakemq: tarball } },
    'node_modules/snakemq': {
      version: pkg.version,
      resolved: tarball,
      dependencies: pkg.dependencies,
      bin: pkg.bin,
      engines: pkg.engines,
      license: pkg.license,
    },
  };
  for (const [path, entry] of Object.entries(ours.packages)) if (path !== '' && !entry.dev) packages[path] = entry;
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'packed-app', private: true, type: 'module', dependencies: { snakemq: tarball } }),
  );
  writeFileSync(join(app, 'package-lock.json'), JSON.stringify({ name: 'packed-app', lockfileVersion: 3, requires: true, packages }));
  await sh(NPM, ['ci', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund'], app, 300_000);

  const addon = 'node_modules/better-sqlite3/build/Release/better_sqlite3.node';
  const version = (root: string): string =>
    (JSON.parse(readFileSync(join(root, 'node_modules/better-sqlite3/package.json'), 'utf8')) as { version: string }).version;
  if (existsSync(join(ROOT, addon)) && version(ROOT) === version(app)) {
    cpSync(join(ROOT, 'node_modules/better-sqlite3/build'), join(app, 'node_modules/better-sqlite3/build'), { recursive: true });
  } else {
    await sh(NPM, ['rebuild', 'better-sqlite3'], app, 600_000);
  }
}, 900_000);

afterAll(cleanupTemp);

describe('the packed package, installed into a project of its own', () => {
  it('ships the built entry points and the launcher, and no sources, tests or bench', async () => {
    const [info] = JSON.parse((await sh(NPM, ['pack', '--dry-run', '--json', '--ignore-scripts'], ROOT)).stdout) as Array<{
      files: Array<{ path: string }>;
    }>;
    const files = info!.files.map((f) => f.path);
    for (const f of ['bin/snakemq.js', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli.js', 'dist/storage/sqlite.js', 'dist/storage/memory.d.ts', 'dist/storage/mongodb.js', 'package.json', 'README.md']) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => /^(test|bench|examples|src|storage|\.ci)\//.test(f))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
  });

  it('imports snakemq, snakemq/storage/sqlite and snakemq/storage/memory from ESM and exchanges messages', async () => {
    const { stdout } = await sh(process.execPath, ['exchange.mjs', join(app, 'bob.db')], app, 60_000);
    expect(JSON.parse(stdout)).toEqual({
      received: [
        { from: 'bob', body: 'persistent hello', flags: 1 },
        { from: 'bob', body: 'transient hello', flags: 0 },
      ],
    });
  });

  for (const [name, compilerOptions] of [
    ['node16', { module: 'node16', moduleResolution: 'node16' }],
    ['bundler', { module: 'esnext', moduleResolution: 'bundler' }],
  ] as const) {
    it(`type-checks against the installed declarations with moduleResolution ${name}, and refuses a name it does not export`, async () => {
      const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
      const options = {
        ...compilerOptions,
        target: 'es2022',
        strict: true,
        noEmit: true,
        types: ['node'],
        typeRoots: [join(ROOT, 'node_modules/@types')],
      };
      writeFileSync(join(app, `tsconfig.${name}.json`), JSON.stringify({ compilerOptions: options, files: ['typed.ts'] }));
      await sh(process.execPath, [tsc, '-p', `tsconfig.${name}.json`], app);

      // the same check must fail on a name the package does not have
      copyFileSync(join(app, 'typed.ts'), join(app, 'typed-wrong.ts'));
      writeFileSync(join(app, 'typed-wrong.ts'), `import { NoSuchExport } from 'snakemq';\nvoid NoSuchExport;\n`, { flag: 'a' });
      writeFileSync(join(app, `tsconfig.${name}-wrong.json`), JSON.stringify({ compilerOptions: options, files: ['typed-wrong.ts'] }));
      const wrong = await sh(process.execPath, [tsc, '-p', `tsconfig.${name}-wrong.json`], app).then(
        () => undefined,
        (err: { stdout: string }) => err.stdout,
      );
      expect(wrong).toMatch(/TS2305: Module '"snakemq"' has no exported member 'NoSuchExport'/);
    });
  }

  it('runs `npx snakemq --help` and `--version` from the installed package (its dist/, not sources)', async () => {
    const help = await sh('npx', ['--no', '--', 'snakemq', '--help'], app);
    for (const cmd of ['listen', 'send', 'queues', 'bench']) expect(help.stdout).toContain(cmd);
    const version = await sh('npx', ['--no', '--', 'snakemq', '--version'], app);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Pkg;
    expect(version.stdout.trim()).toBe(pkg.version);
    expect(existsSync(join(app, 'node_modules/snakemq/src'))).toBe(false);
  });

  it("require('snakemq') works from CommonJS (Node 20.19+ loads ESM through require)", async () => {
    const { stdout } = await sh(process.execPath, ['required.cjs'], app);
    expect(JSON.parse(stdout)).toEqual({ Messaging: 'function', SqliteQueuesStorage: 'function' });
  });
});
