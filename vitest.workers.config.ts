// Worker tests: run inside workerd (the real runtime, real WASM SIMD) through
// @cloudflare/vitest-pool-workers, against worker/index.ts as wrangler.toml builds it.
import { defineWorkersConfig } from '@cloudflare/vitest-pool-workers/config';

export default defineWorkersConfig({
  test: {
    include: ['test/workers/**/*.test.ts'],
    testTimeout: 120_000,
    poolOptions: {
      workers: {
        singleWorker: true,
        wrangler: { configPath: './wrangler.toml' },
        miniflare: { bindings: { API_KEYS: 'worker-test-key', MAX_PROMPT_TOKENS: '200', MAX_CONCURRENT: '4' } },
      },
    },
  },
});
