// npm run make:random-tiny — writes test/fixtures/random-tiny/: the seeded random model the
// tests and the peer fixtures use (it was the embedded default model before a trained one took
// its place): config.json and model.safetensors with random BF16 weights in
// KimiLinearForCausalLM's names and shapes, about 2.5 MB; a byte-level BPE tokenizer of 512
// tokens trained on models/corpus.txt, with Kimi's special tokens and chat format.
// Reproducible: the same bytes on every run (checked by a test).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { syntheticWeights, TINY_CONFIG } from '../src/weights/synthetic.js';
import { tokenizerFiles } from './bpe-train.js';

/** The seed the committed random model was made with. */
export const RANDOM_TINY_SEED = 20261124;

export function randomTinyFiles(): { config: string; weights: Uint8Array; tokenizer: string; tokenizerConfig: string } {
  return {
    config: JSON.stringify(TINY_CONFIG, null, 2) + '\n',
    weights: syntheticWeights(TINY_CONFIG, RANDOM_TINY_SEED, { dtype: 'BF16', zeroRouterBias: true }),
    ...tokenizerFiles(TINY_CONFIG.vocab_size, readFileSync(new URL('./corpus.txt', import.meta.url), 'utf8')),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'random-tiny');
  mkdirSync(dir, { recursive: true });
  const { config, weights, tokenizer, tokenizerConfig } = randomTinyFiles();
  writeFileSync(join(dir, 'config.json'), config);
  writeFileSync(join(dir, 'model.safetensors'), weights);
  writeFileSync(join(dir, 'tokenizer.json'), tokenizer);
  writeFileSync(join(dir, 'tokenizer_config.json'), tokenizerConfig);
  console.log(`wrote ${dir}: config.json, model.safetensors (${weights.length} bytes), tokenizer.json, tokenizer_config.json`);
}
