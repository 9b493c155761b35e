import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two shared cores: socket and child-process suites run one file at a time so that
    // real-time assertions (lower bounds only) are not starved.
    fileParallelism: false,
    pool: 'forks',
  },
});
