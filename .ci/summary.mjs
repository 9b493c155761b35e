// Prints the skipped tests by name, then the final summary line of a vitest JSON report:
// `N passed, N failed[, N skipped]`.
// A test file that failed without any failed test (import error, failing hook) counts as one
// failed test, so a broken file never reads as "0 failed".
// Exit status: 0 if nothing failed, 1 if something failed, 2 if the report is missing or unreadable.
import { readFileSync } from 'node:fs';

const path = process.argv[2] ?? '.tmp/vitest.json';
let report;
try {
  report = JSON.parse(readFileSync(path, 'utf8'));
} catch (err) {
  console.log(`no test report: cannot read ${path} (${err.code ?? err.message})`);
  process.exit(2);
}

const files = Array.isArray(report.testResults) ? report.testResults : [];
const brokenFiles = files.filter(
  (f) => f.status === 'failed' && !(f.assertionResults ?? []).some((t) => t.status === 'failed'),
);
const passed = report.numPassedTests ?? 0;
const failed = (report.numFailedTests ?? 0) + brokenFiles.length;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);

for (const f of brokenFiles) console.error(`test file failed outside its tests: ${f.name}`);
// skipped tests by name (a test that needs something absent says so in its name)
for (const f of files) {
  for (const t of f.assertionResults ?? []) {
    if (t.status !== 'passed' && t.status !== 'failed') console.log(`${t.status}: ${f.name.split('/').pop()}: ${t.fullName}`);
  }
}
if (report.success === false && failed === 0) console.error('vitest reported errors outside the tests (see above)');
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 || report.success === false ? 1 : 0);
