/**
 * The project's recorded fixtures (test/fixtures/, see its README.md). Tests read them from the
 * repository itself, never from outside it, so a fresh clone runs the whole suite.
 */
import { readFileSync } from 'node:fs';

/** Parsed JSON of `test/fixtures/<name>`. */
export function readJsonFixture<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8')) as T;
}

/** The vectors recorded from a real Python snakeMQ 1.6 peer (`snakemq-1.6-wire.json`). */
export function wireVectors<V>(): V[] {
  return readJsonFixture<{ vectors: V[] }>('snakemq-1.6-wire.json').vectors;
}
