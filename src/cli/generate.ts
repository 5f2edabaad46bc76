// kimi-edge generate [PROMPT] [--model DIR] [--backend wasm|wasm-scalar|native] [--chat | --raw]
//   [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--repetition-penalty R]
//   [--seed S] [--stop STR]... [--kv-budget N]
// Loads the model (default: the embedded one) with a progress bar, streams the generated text to
// stdout, and reports prefill and decode speed on stderr.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { defaultModelDir, loadModelFromDirectory, type NodeBackendName } from '../node.js';
import { ProgressBar } from './progress.js';

function fileBytes(dir: string): number | null {
  try {
    return statSync(dir.endsWith('.gguf') ? dir : join(dir, 'model.safetensors')).size;
  } catch {
    return null;
  }
}

export async function generate(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      backend: { type: 'string', default: 'wasm' },
      raw: { type: 'boolean', default: false },
      'max-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string', default: '0.8' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      'repetition-penalty': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      // bound the MLA caches to N tokens (docs/kv-budget.md)
      'kv-budget': { type: 'string' },
    },
  });
  const backend = values.backend as NodeBackendName;
  if (!['wasm', 'wasm-scalar', 'native', 'cuda'].includes(backend)) throw new Error(`--backend must be wasm, wasm-scalar, native or cuda, not ${backend}`);
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, not ${v}`);
    return n;
  };
  const dir = values.model ?? defaultModelDir();
  const prompt = positionals.join(' ') || 'Hello! Tell me about Kimi Linear.';
  const bar = new ProgressBar(`loading ${dir}`);
  const total = fileBytes(dir);
  const t0 = performance.now();
  const model = await loadModelFromDirectory(dir, { backend, onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal ?? total) });
  const c = model.config;
  bar.done(
    `loaded ${c.numLayers} layers (${c.layerKinds.filter((k) => k === 'kda').length} KDA, ${c.layerKinds.filter((k) => k === 'mla').length} MLA), ` +
      `${(model.weightBytes / 2 ** 20).toFixed(1)} MiB of weights on ${model.backend.name} in ${(performance.now() - t0).toFixed(0)} ms`,
  );
  const kvBudget = num(values['kv-budget'], 'kv-budget');
  const session = model.createSession(kvBudget === undefined ? {} : { kvBudget });
  const input = values.raw ? prompt : [{ role: 'user' as const, content: prompt }];
  const tStart = performance.now();
  let tFirst = 0, done: { promptTokens: number; completionTokens: number; finishReason: string } | null = null;
  for await (const ev of session.generate(input, {
    maxTokens: num(values['max-tokens'], 'max-tokens'),
    temperature: num(values.temperature, 'temperature'),
    topP: num(values['top-p'], 'top-p'),
    topK: num(values['top-k'], 'top-k'),
    repetitionPenalty: num(values['repetition-penalty'], 'repetition-penalty'),
    seed: num(values.seed, 'seed'),
    stop: values.stop,
  })) {
    if (ev.type === 'token') {
      if (!tFirst) tFirst = performance.now();
      process.stdout.write(ev.text);
    } else done = ev;
  }
  const tEnd = performance.now();
  process.stdout.write('\n');
  if (done) {
    const decodeMs = tEnd - tFirst;
    console.error(
      `\n${done.promptTokens} prompt tokens, first token after ${(tFirst - tStart).toFixed(1)} ms; ` +
        `${done.completionTokens} generated at ${((done.completionTokens - 1) / (decodeMs / 1e3)).toFixed(1)} tokens/s (${done.finishReason})` +
        (dir === defaultModelDir() ? '\n(the embedded default model: 1M parameters trained on the Brown corpus; it writes English-like text, not answers)' : '') +
        (kvBudget === undefined ? '' : `\nMLA cache bounded to ${kvBudget} tokens: ${session.kvLength} held`),
    );
  }
  session.free();
  model.free();
  return 0;
}
