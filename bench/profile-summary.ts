/**
 * Summarize V8 CPU profiles (`.cpuprofile`, from `npm run bench -- --profile DIR` or
 * `node --cpu-prof`): self time per function, top N overall and top N in snakemq's own code
 * (src/, storage/).
 *
 *   tsx bench/profile-summary.ts [--top 25] file.cpuprofile...
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const args = process.argv.slice(2);
let top = 25;
const files: string[] = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = Number(args[++i]);
  else files.push(args[i]);
}

for (const file of files) {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0;
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
  }
  const total = p.endTime - p.startTime;
  const agg = new Map<string, { us: number; ours: boolean }>();
  let idle = 0;
  for (const [id, us] of self) {
    const cf = byId.get(id)!.callFrame;
    if (cf.functionName === '(idle)') idle += us;
    const url = cf.url.replace(/^file:\/\//, '');
    const rel = url.includes('/node_modules/') ? url.slice(url.lastIndexOf('/node_modules/') + 14) : url ? path.relative(process.cwd(), url) : '';
    const key = `${cf.functionName || '(anonymous)'} ${rel ? `${rel}:${cf.lineNumber + 1}` : ''}`.trim();
    const ours = /^(src|storage)\//.test(rel);
    const a = agg.get(key) ?? { us: 0, ours };
    a.us += us;
    agg.set(key, a);
  }
  const busy = total - idle;
  const rows = [...agg.entries()].sort((a, b) => b[1].us - a[1].us);
  const pct = (us: number): string => `${((us / busy) * 100).toFixed(1).padStart(5)}%`;
  console.log(`\n== ${path.basename(file)}: ${(total / 1e3).toFixed(0)} ms, busy ${(busy / 1e3).toFixed(0)} ms (percent of busy time)`);
  console.log('-- top self time, all code');
  for (const [k, a] of rows.filter(([k]) => !k.startsWith('(idle)')).slice(0, top)) console.log(`${pct(a.us)} ${(a.us / 1e3).toFixed(0).padStart(6)} ms  ${k}`);
  console.log('-- top self time, snakemq code (src/, storage/)');
  const ours = rows.filter(([, a]) => a.ours);
  const oursTotal = ours.reduce((s, [, a]) => s + a.us, 0);
  console.log(`   (all of our code together: ${pct(oursTotal)})`);
  for (const [k, a] of ours.slice(0, top)) console.log(`${pct(a.us)} ${(a.us / 1e3).toFixed(0).padStart(6)} ms  ${k}`);
}
