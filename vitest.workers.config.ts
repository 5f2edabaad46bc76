// Worker tests: run inside workerd (the real runtime, real WASM SIMD) through
// @cloudflare/vitest-pool-workers, against worker/index.ts as wrangler.toml builds it.
import { defineWorkersConfig } from '@cloudflare/vitest-pool-workers/config';

export default defineWorkersConfig({
  test: {
    include: ['test/workers/**/*.test.ts'],
    globalSetup: ['./test/workers/global-setup.ts'],
    testTimeout: 120_000,
    poolOptions: {
      workers: {
        singleWorker: true,
        wrangler: { configPath: './wrangler.toml' },
        miniflare: {
          bindings: {
            API_KEYS: 'worker-test-key',
            MAX_PROMPT_TOKENS: '200',
            MAX_CONCURRENT: '4',
            // one loopback GPU node (started by global-setup.ts); jobs over 100 tokens go there
            // when they fit its 300
            EDGE_MAX_TOKENS: '100',
            GPU_NODES: JSON.stringify([{ name: 'loopback', url: 'http://127.0.0.1:18911', maxContext: 300 }]),
            GPU_NODE_TOKEN_LOOPBACK: 'node-secret',
          },
        },
      },
    },
  },
});
