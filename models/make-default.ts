// npm run make:default — writes models/default/: the embedded default model (config.json and
// model.safetensors with seeded random BF16 weights in KimiLinearForCausalLM's names and shapes,
// about 2.5 MB). Reproducible: the same bytes on every run (checked by a test).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { syntheticWeights, TINY_CONFIG } from '../src/model/synthetic.js';

/** The seed and options the committed default model was made with. */
export const DEFAULT_MODEL_SEED = 20261124;

export function defaultModelFiles(): { config: string; weights: Uint8Array } {
  return {
    config: JSON.stringify(TINY_CONFIG, null, 2) + '\n',
    weights: syntheticWeights(TINY_CONFIG, DEFAULT_MODEL_SEED, { dtype: 'BF16', zeroRouterBias: true }),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'default');
  mkdirSync(dir, { recursive: true });
  const { config, weights } = defaultModelFiles();
  writeFileSync(join(dir, 'config.json'), config);
  writeFileSync(join(dir, 'model.safetensors'), weights);
  console.log(`wrote ${dir}: config.json, model.safetensors (${weights.length} bytes)`);
}
