#!/usr/bin/env node
// Launcher of the `snakemq` command-line tool.
//
// 1. An installed package (no src/ beside dist/): the built CLI, dist/src/cli.js.
// 2. A source checkout: src/cli.ts, compiled by esbuild (tsx's own compiler, installed with the
//    devDependencies) into a cached bundle under node_modules/.cache/snakemq/. The bundle is
//    rebuilt whenever one of its source files changed (size or mtime). Starts in ~0.1 s instead
//    of ~0.3 s through tsx's loader. A checkout's dist/ (built by `prepare` on every install)
//    is not used: it goes stale as soon as a source changes.
// 3. If esbuild cannot be used: src/cli.ts through tsx's loader, registered in this process.
//
// SNAKEMQ_CLI_SOURCE=dist runs dist/ even in a checkout; SNAKEMQ_CLI_SOURCE=tsx skips the
// bundle and uses tsx's loader.
import { existsSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const built = `${root}dist/src/cli.js`;
const source = `${root}src/cli.ts`;
const flag = process.env.SNAKEMQ_CLI_SOURCE;
const wantSource = existsSync(source) && flag !== 'dist';

function fail(message) {
  process.stderr.write(`snakemq: ${message}\n`);
  process.exit(1);
}

/** URL of an up-to-date esbuild bundle of src/cli.ts, or undefined when esbuild is unusable. */
async function bundle() {
  const cache = `${root}node_modules/.cache/snakemq/`;
  const stampFile = `${cache}cli-stamp.json`;
  const fresh = (stamp) =>
    stamp.inputs.every(([file, size, mtime]) => {
      try {
        const s = statSync(`${root}${file}`);
        return s.size === size && s.mtimeMs === mtime;
      } catch {
        return false;
      }
    }) && existsSync(`${cache}${stamp.dir}/cli.js`);
  try {
    const stamp = JSON.parse(readFileSync(stampFile, 'utf8'));
    if (stamp.root === root && fresh(stamp)) return pathToFileURL(`${cache}${stamp.dir}/cli.js`).href;
  } catch {
    // no stamp yet, or unreadable: build
  }
  let esbuild;
  try {
    esbuild = await import('esbuild');
  } catch {
    return undefined;
  }
  // Build into a fresh folder and switch the stamp atomically: concurrent launchers never see
  // a half-written bundle. Folders older than a day are removed (none still running from them).
  const dir = `b${Date.now().toString(36)}-${process.pid}`;
  const { metafile } = esbuild.buildSync({
    absWorkingDir: root,
    entryPoints: { cli: 'src/cli.ts' },
    outdir: `${cache}${dir}`,
    bundle: true,
    splitting: true, // lazily imported modules (the SQLite backend) stay lazy
    format: 'esm',
    platform: 'node',
    target: 'node20',
    packages: 'external',
    sourcemap: 'linked',
    metafile: true,
    logLevel: 'silent',
  });
  const inputs = Object.keys(metafile.inputs).map((file) => {
    const s = statSync(`${root}${file}`);
    return [file, s.size, s.mtimeMs];
  });
  const tmp = `${stampFile}.${process.pid}`;
  writeFileSync(tmp, JSON.stringify({ root, dir, inputs }));
  renameSync(tmp, stampFile);
  for (const old of readdirSync(cache)) {
    const m = /^b([0-9a-z]+)-\d+$/.exec(old);
    if (m && old !== dir && Date.now() - parseInt(m[1], 36) > 86_400_000) rmSync(`${cache}${old}`, { recursive: true, force: true });
  }
  return pathToFileURL(`${cache}${dir}/cli.js`).href;
}

let cli;
if (!wantSource && existsSync(built)) {
  cli = await import(pathToFileURL(built).href);
} else if (wantSource) {
  let url;
  try {
    if (flag !== 'tsx') url = await bundle();
  } catch (err) {
    // a compile error: tsx below reports it the same way it would at run time
    if (process.env.SNAKEMQ_DEBUG) process.stderr.write(`snakemq: bundling failed: ${err.message}\n`);
  }
  if (url) {
    process.setSourceMapsEnabled(true);
    cli = await import(url);
  } else {
    let register;
    try {
      ({ register } = await import('tsx/esm/api'));
    } catch {
      fail("the CLI is not built (no dist/src/cli.js) and tsx is not installed.\nRun 'npm install' or 'npm run build'.");
    }
    register();
    cli = await import(pathToFileURL(source).href);
  }
} else {
  fail("dist/src/cli.js is missing; run 'npm run build'.");
}
await cli.run();
