/**
 * README.md's TypeScript samples against the current API: every ```ts block is type-checked
 * (as a module of its own, its imports of `snakemq` pointed at src/), and a block preceded by
 * `<!-- readme-sample: runs -->` is also run and must print what its `// →` comments say.
 *
 * The tutorial's blocks continue one another (`messaging` made in one is used in the next), so
 * each block gets ambient declarations of the tutorial's names it uses without declaring or
 * importing them itself (CONTEXT below).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const OUT = join(ROOT, '.tmp', 'readme-samples');
const run = promisify(execFile);

interface Sample {
  /** 1-based line of the opening fence in README.md. */
  line: number;
  code: string;
  runs: boolean;
}

function samples(markdown: string): Sample[] {
  const lines = markdown.split('\n');
  const out: Sample[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== '```ts') continue;
    const end = lines.indexOf('```', i + 1);
    if (end < 0) throw new Error(`README.md:${i + 1}: unclosed ts block`);
    let prev = i - 1;
    while (prev >= 0 && lines[prev]!.trim() === '') prev--;
    out.push({ line: i + 1, code: lines.slice(i + 1, end).join('\n'), runs: lines[prev] === '<!-- readme-sample: runs -->' });
    i = end;
  }
  return out;
}

/** The package's specifiers, pointed at the sources (files live in .tmp/readme-samples/). */
function toSources(code: string): string {
  return code
    .replace(/from 'snakemq'/g, "from '../../src/index.js'")
    .replace(/from 'snakemq\/storage\/([a-z]+)'/g, "from '../../storage/$1.js'");
}

/** Names the tutorial's blocks share: a value import or an ambient declaration each. */
const CONTEXT: Array<[name: string, prelude: string]> = [
  ['Link', "import { Link } from '../../src/index.js';"],
  ['Packeter', "import { Packeter } from '../../src/index.js';"],
  ['Messaging', "import { Messaging } from '../../src/index.js';"],
  ['Message', "import { Message } from '../../src/index.js';"],
  ['link', 'declare const link: __snakemq.Link;'],
  ['packeter', 'declare const packeter: __snakemq.Packeter;'],
  ['messaging', 'declare const messaging: __snakemq.Messaging;'],
  ['key', 'declare const key: string;'],
  ['cert', 'declare const cert: string;'],
  ['ca', 'declare const ca: string;'],
  ['connId', 'declare const connId: __snakemq.ConnId;'],
  ['server', 'declare const server: __snakemq.RpcServer;'],
  ['client', 'declare const client: __snakemq.RpcClient;'],
  ['calc', 'declare const calc: __snakemq.RpcProxy<{ power(base: number): Promise<number> }>;'],
];

function declares(code: string, name: string): boolean {
  const imported = [...code.matchAll(/import\s*(?:type\s*)?\{([^}]*)\}/g)].some((m) =>
    m[1]!.split(',').some((part) => part.trim().replace(/^type\s+/, '').split(/\s+as\s+/).pop() === name),
  );
  return imported || new RegExp(`\\b(?:const|let|var|function|class)\\s+${name}\\b`).test(code);
}

function module(sample: Sample): string {
  const prelude = ["import type * as __snakemq from '../../src/index.js';"];
  for (const [name, line] of CONTEXT) {
    if (new RegExp(`\\b${name}\\b`).test(sample.code) && !declares(sample.code, name)) prelude.push(line);
  }
  // one line, so that compiler positions stay README lines + a fixed offset
  return `${prelude.join(' ')}\n${toSources(sample.code)}\nexport {};\n`;
}

/** Type-check the given files (names relative to OUT); resolves with tsc's output ('' when clean). */
async function typecheck(files: string[]): Promise<string> {
  writeFileSync(
    join(OUT, 'tsconfig.json'),
    JSON.stringify({ extends: '../../tsconfig.json', compilerOptions: { noEmit: true, rootDir: '../..' }, files }),
  );
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  return run(process.execPath, [tsc, '-p', join(OUT, 'tsconfig.json')], { cwd: ROOT, timeout: 180_000 }).then(
    () => '',
    (err: { stdout?: string; message: string }) => err.stdout || err.message,
  );
}

const all = samples(readFileSync(join(ROOT, 'README.md'), 'utf8'));
let output = '';
const MUTANT = 'mutant-renamed-api.ts';

beforeAll(async () => {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const files = all.map((s) => {
    const file = `readme-line-${s.line}.ts`;
    writeFileSync(join(OUT, file), module(s));
    return file;
  });
  // a copy of the first sample with one API name changed: the check must catch it
  writeFileSync(join(OUT, MUTANT), module(all[0]!).replace(/\.addListener\(/, '.addListenr('));
  output = await typecheck([...files, MUTANT]);
}, 200_000);

describe("README.md's samples", () => {
  it('has TypeScript samples, one of them runnable', () => {
    expect(all.length).toBeGreaterThanOrEqual(5);
    expect(all.filter((s) => s.runs).length).toBeGreaterThanOrEqual(1);
    expect(all[0]!.code).toContain('.addListener(');
  });

  it('all type-check against the current API', () => {
    const errors = output.split('\n').filter((l) => l.includes('error TS') && !l.includes(MUTANT));
    // tsc reports `readme-line-N.ts(L,C)`: the README line is N + L - 1 (the prelude is line 1)
    const located = errors.map((l) =>
      l.replace(/readme-line-(\d+)\.ts\((\d+),(\d+)\)/, (_m, n: string, l2: string, c: string) => `README.md:${Number(n) + Number(l2) - 1}:${c}`),
    );
    expect(located).toEqual([]);
  });

  it('fails the check when an API name in a sample is changed', () => {
    expect(output).toMatch(new RegExp(`${MUTANT}\\(\\d+,\\d+\\): error TS2551: Property 'addListenr' does not exist`));
  });

  for (const sample of all.filter((s) => s.runs)) {
    it(`runs the sample at README.md:${sample.line} and it prints what its comments say`, async () => {
      const file = join(OUT, `run-line-${sample.line}.ts`);
      writeFileSync(file, toSources(sample.code));
      const expected = [...sample.code.matchAll(/\/\/ → (.*)$/gm)].map((m) => m[1]!.trim());
      expect(expected.length).toBeGreaterThan(0);
      const { stdout } = await run(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, timeout: 60_000 });
      expect(stdout.trim().split('\n')).toEqual(expected);
    });
  }
});
