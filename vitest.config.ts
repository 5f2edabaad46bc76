import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/server/**/*.test.ts', 'test/runtimes/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
