/** Temporary folders and SQLite storages that {@link cleanupTemp} closes and removes. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteQueuesStorage } from '../../storage/sqlite.js';

const storages: SqliteQueuesStorage[] = [];
const dirs: string[] = [];

/** A fresh folder under the system's temporary folder. */
export function tempDir(prefix = 'snakemq-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

/** An SQLite storage on `file`, closed by {@link cleanupTemp}. */
export function sqlite(file: string): SqliteQueuesStorage {
  const s = new SqliteQueuesStorage(file);
  storages.push(s);
  return s;
}

/** Close the storages, then remove the folders (call in afterEach, after the peers are closed). */
export async function cleanupTemp(): Promise<void> {
  for (const s of storages.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
}
