// kimi-edge convert HF_DIR OUT.gguf [--type f32|bf16|q8_0|q4_0|q4_k_m]
// Writes an HF Kimi Linear checkpoint (single-file safetensors) as a GGUF in llama.cpp's
// Kimi-Linear layout, with its tokenizer, quantizing the matmul weights if asked.
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kernels } from '../engine/kernels.js';
import { loadWasmBackend } from '../engine/node-kernels.js';
import { parseSafetensors } from '../formats/safetensors.js';
import { hfToGguf, type GgufWeightType } from '../weights/to-gguf.js';

export async function convert(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { type: { type: 'string', default: 'bf16' } } });
  const [dir, out] = positionals;
  if (!dir || !out) throw new Error('usage: kimi-edge convert HF_DIR OUT.gguf [--type f32|bf16|q8_0|q4_0|q4_k_m]');
  const type = values.type!.toUpperCase() as GgufWeightType;
  if (!['F32', 'BF16', 'Q8_0', 'Q4_0', 'Q4_K_M'].includes(type)) throw new Error(`--type must be f32, bf16, q8_0, q4_0 or q4_k_m, not ${values.type}`);
  const json = (f: string) => (existsSync(join(dir, f)) ? (JSON.parse(readFileSync(join(dir, f), 'utf8')) as Record<string, unknown>) : undefined);
  const st = join(dir, 'model.safetensors');
  if (!existsSync(st)) throw new Error(`${st} is missing (convert takes single-file checkpoints)`);
  const kernels = new Kernels(await loadWasmBackend('simd'));
  const t0 = performance.now();
  const bytes = hfToGguf(json('config.json'), parseSafetensors(new Uint8Array(readFileSync(st)), st), kernels, { weights: type, tokenizerJson: json('tokenizer.json'), tokenizerConfig: json('tokenizer_config.json') });
  writeFileSync(out, bytes);
  console.error(`wrote ${out}: ${(bytes.length / 2 ** 20).toFixed(1)} MiB, ${type} weights, in ${(performance.now() - t0).toFixed(0)} ms`);
  return 0;
}
