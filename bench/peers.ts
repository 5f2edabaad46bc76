// npm run bench:peers -- --llama-bench PATH/TO/llama-bench
// The same GGUF files on llama.cpp's CPU build and on this runtime, in one run: prompt
// processing (512 tokens) and generation (128 tokens) tokens/s; llama.cpp with 1 thread and
// with all threads; ours in wasm SIMD (Node) and native (one thread; workerd runs the same
// wasm, see bench:load). Models: the embedded default model and the synthetic 105M Q8_0 one.
// llama.cpp is built outside this repository (test/fixtures/README.md says how).
// Writes bench/results/peers-<machine>.json.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kernels } from '../src/engine/kernels.js';
import { loadModel } from '../src/model/load.js';
import { parseSafetensors } from '../src/model/safetensors.js';
import { sourceFromFiles } from '../src/model/source.js';
import { syntheticWeights } from '../src/model/synthetic.js';
import { hfToGguf } from '../src/model/to-gguf.js';
import { defaultModelDir, nodeBackend } from '../src/node.js';
import { MID_CONFIG } from './generate.js';
import { machine, table, timeIt, writeResult } from './lib.js';

const { values } = parseArgs({ options: { 'llama-bench': { type: 'string' }, quick: { type: 'boolean', default: false } } });
const llamaBench = values['llama-bench'] ?? process.env.LLAMA_BENCH;
if (!llamaBench) throw new Error('pass --llama-bench PATH (a llama.cpp CPU build; see test/fixtures/README.md)');
const PP = 512, TG = values.quick ? 32 : 128;

const dir = mkdtempSync(join(tmpdir(), 'kle-peers-'));
const d = defaultModelDir();
const json = (f: string) => JSON.parse(readFileSync(join(d, f), 'utf8')) as Record<string, unknown>;
const kernels = new Kernels(await nodeBackend('native'));
const tok = { tokenizerJson: json('tokenizer.json'), tokenizerConfig: json('tokenizer_config.json') };
const models: Record<string, Uint8Array> = {
  'default (1.2M, BF16)': hfToGguf(json('config.json'), parseSafetensors(new Uint8Array(readFileSync(join(d, 'model.safetensors')))), kernels, { weights: 'BF16', ...tok }),
  '105M Q8_0': hfToGguf(MID_CONFIG, parseSafetensors(syntheticWeights(MID_CONFIG, 7)), kernels, { weights: 'Q8_0', ...tok }),
};

interface Row { model: string; engine: string; threads: number; ppTokS: number; tgTokS: number }
const rows: Row[] = [];
for (const [name, bytes] of Object.entries(models)) {
  const file = join(dir, `${name.replace(/[^a-z0-9]+/gi, '-')}.gguf`);
  writeFileSync(file, bytes);
  for (const t of [1, cpus().length]) {
    const out = execFileSync(llamaBench, ['-m', file, '-p', String(PP), '-n', String(TG), '-t', String(t), '-r', values.quick ? '2' : '3', '-o', 'json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const res = JSON.parse(out) as { n_prompt: number; n_gen: number; avg_ts: number }[];
    rows.push({ model: name, engine: 'llama.cpp', threads: t, ppTokS: res.find((r) => r.n_prompt > 0)!.avg_ts, tgTokS: res.find((r) => r.n_gen > 0)!.avg_ts });
  }
  for (const b of ['wasm', 'native'] as const) {
    const backend = await nodeBackend(b);
    const m = await loadModel(sourceFromFiles({ 'model.gguf': bytes }), { backend });
    const V = m.config.vocabSize;
    const prompt = Array.from({ length: PP }, (_, i) => (i * 7919 + 13) % V);
    const pp = timeIt(() => {
      const s = m.engine.createSession();
      s.forward(prompt);
      s.free();
    }, values.quick ? 2 : 3).median;
    // generation as llama-bench measures it: TG tokens from an empty context, one at a time
    const tg = timeIt(() => {
      const s = m.engine.createSession();
      for (let i = 0; i < TG; i++) s.forward([(i * 31 + 7) % V]);
      s.free();
    }, values.quick ? 2 : 3).median;
    rows.push({ model: name, engine: `kimi-linear-edge ${backend.name}`, threads: 1, ppTokS: PP / (pp / 1e3), tgTokS: TG / (tg / 1e3) });
    m.free();
  }
}
console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log(`Same GGUF files, pp${PP} and tg${TG} tokens/s (llama.cpp: llama-bench; ours: the engine API, one thread)\n`);
console.log(table(['model', 'engine', 'threads', `pp${PP} tok/s`, `tg${TG} tok/s`, 'pp vs llama.cpp (same threads)', 'tg vs llama.cpp (same threads)'], rows.map((r) => {
  const ref = rows.find((x) => x.model === r.model && x.engine === 'llama.cpp' && x.threads === r.threads)!;
  return [r.model, r.engine, r.threads, r.ppTokS.toFixed(0), r.tgTokS.toFixed(1), `${(r.ppTokS / ref.ppTokS).toFixed(2)}x`, `${(r.tgTokS / ref.tgTokS).toFixed(2)}x`];
})));
console.log(`wrote ${writeResult('peers', { date: new Date().toISOString(), machine: machine(), llamaBench, pp: PP, tg: TG, rows })}`);
