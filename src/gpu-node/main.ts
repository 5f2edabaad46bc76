// kimi-edge GPU node, the command: the OpenAI-compatible server on the CUDA engine.
//   node dist/src/gpu-node/main.js [--port 8788] [--host 127.0.0.1] [--model DIR|FILE.gguf]
//     [--model-id ID] [--api-key KEY]... [--max-prompt-tokens N] [--max-concurrent N]
//     [--synthetic-weights SEED [--synthetic-format bf16|q8_0]] [--precision f32|bf16]
// --synthetic-weights: seeded random BF16 weights made on the GPU for DIR's config.json (its
// tokenizer as usual, no safetensors needed): the full-size model served without its checkpoint;
// --synthetic-format q8_0 makes them Q8_0 blocks instead (half the device memory and bytes a step).
// --precision bf16: prefill, batched steps and the MLA attention multiply BF16-rounded inputs, as
// vLLM does (EngineModel.precision); f32 (the default) keeps f32 accuracy at twice the work.
// Prints the URL on stdout once the model is on the GPU. API keys also come from KLE_API_KEYS;
// session hand-offs are taken when KLE_HANDOFF_KEYS holds the key a router signs them with.
import { parseArgs } from 'node:util';
import { handoffKeysFrom } from '../server/handoff-auth.js';
import { startGpuNode } from './index.js';

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string', default: '8788' },
      host: { type: 'string', default: '127.0.0.1' },
      model: { type: 'string' },
      'model-id': { type: 'string' },
      'api-key': { type: 'string', multiple: true },
      'max-prompt-tokens': { type: 'string' },
      'max-concurrent': { type: 'string' },
      'synthetic-weights': { type: 'string' },
      'synthetic-format': { type: 'string' },
      precision: { type: 'string' },
    },
  });
  const n = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  const seed = values['synthetic-weights'];
  if (seed !== undefined && !/^-?\d+$/.test(seed)) throw new Error(`--synthetic-weights takes an integer seed, not ${JSON.stringify(seed)}`);
  if (seed !== undefined && !values.model) throw new Error('--synthetic-weights needs --model DIR (its config.json and tokenizer)');
  const format = values['synthetic-format'];
  if (format !== undefined && format !== 'bf16' && format !== 'q8_0') throw new Error(`--synthetic-format takes bf16 or q8_0, not ${JSON.stringify(format)}`);
  if (format !== undefined && seed === undefined) throw new Error('--synthetic-format goes with --synthetic-weights');
  const precision = values.precision;
  if (precision !== undefined && precision !== 'f32' && precision !== 'bf16') throw new Error(`--precision takes f32 or bf16, not ${JSON.stringify(precision)}`);
  const keys = [...(values['api-key'] ?? []), ...(process.env.KLE_API_KEYS ?? '').split(',').map((s) => s.trim()).filter(Boolean)];
  const { url } = await startGpuNode({
    port: Number(values.port),
    hostname: values.host,
    model: values.model,
    synthesizeWeights: seed === undefined ? undefined : { seed: Number(seed), dtype: format },
    precision,
    modelId: values['model-id'],
    apiKeys: keys,
    handoffKeys: handoffKeysFrom(process.env.KLE_HANDOFF_KEYS),
    limits: { maxPromptTokens: n(values['max-prompt-tokens']), maxConcurrent: n(values['max-concurrent']) },
  });
  console.log(url);
  console.error(`kimi-edge GPU node: serving on ${url} (CUDA engine)`);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  console.error(`kimi-edge GPU node: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
