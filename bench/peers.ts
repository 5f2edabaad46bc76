// npm run bench:peers -- --llama-bench PATH/TO/llama-bench
// The same GGUF files on llama.cpp's CPU build and on this runtime, in one run: prompt
// processing (512 tokens) and generation (128 tokens) tokens/s; llama.cpp with 1 thread and
// with all threads; ours in wasm SIMD (Node) and native (one thread, and all: engine.threads; workerd runs the same
// wasm, see bench:load). Models: the embedded default model, the synthetic 105M one in BF16, Q8_0
// and Q4_0 as kimi-edge convert writes them, and the 105M as Q6_K, Q4_K_M, Q3_K_M and Q2_K from
// llama.cpp's llama-quantize when it sits beside llama-bench; then the largest this machine kind
// holds comfortably, a synthetic 430M, as Q8_0 (ours) and Q4_K_M (llama-quantize).
// llama.cpp is built outside this repository (test/fixtures/README.md says how).
// Writes bench/results/peers-<machine>.json.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kernels } from '../src/engine/kernels.js';
import { loadModel } from '../src/model/load.js';
import { parseSafetensors, type SafetensorsFile } from '../src/formats/safetensors.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { syntheticWeights } from '../src/weights/synthetic.js';
import { hfToGguf } from '../src/weights/to-gguf.js';
import { defaultModelDir, nodeBackend } from '../src/node.js';
import { MID_CONFIG } from './generate.js';
import { defaultModelJson, defaultTokenizer, enginePpTg, machine, machineTag, median, table, writeResult } from './lib.js';
import { barChart } from './svg.js';
import { startWranglerDev } from './wrangler.js';
import { packageRoot } from '../src/node.js';

const { values } = parseArgs({ options: { 'llama-bench': { type: 'string' }, 'llama-quantize': { type: 'string' }, quick: { type: 'boolean', default: false } } });
const llamaBench = values['llama-bench'] ?? process.env.LLAMA_BENCH;
if (!llamaBench) throw new Error('pass --llama-bench PATH (a llama.cpp CPU build; see test/fixtures/README.md)');
const PP = 512, TG = values.quick ? 32 : 128;

const dir = mkdtempSync(join(tmpdir(), 'kle-peers-'));
const d = defaultModelDir();
const kernels = new Kernels(await nodeBackend('native'));
const tok = defaultTokenizer();
// llama.cpp's kimi-linear loader (d32676d7) requires output.weight: a tied checkpoint gets the
// embedding again as its LM head, the same math for both engines
function untied(cfg: Record<string, unknown>, file: SafetensorsFile): [Record<string, unknown>, SafetensorsFile] {
  if (!cfg.tie_word_embeddings) return [cfg, file];
  const tensors = new Map(file.tensors);
  tensors.set('lm_head.weight', tensors.get('model.embed_tokens.weight')!);
  return [{ ...cfg, tie_word_embeddings: false }, { ...file, tensors }];
}
const defaultModel = untied(defaultModelJson('config.json'), parseSafetensors(new Uint8Array(readFileSync(join(d, 'model.safetensors')))));
const mid = parseSafetensors(syntheticWeights(MID_CONFIG, 7));
const models: Record<string, Uint8Array> = {
  'default (1.0M, BF16)': hfToGguf(defaultModel[0], defaultModel[1], kernels, { weights: 'BF16', ...tok }),
  '105M Q8_0': hfToGguf(MID_CONFIG, mid, kernels, { weights: 'Q8_0', ...tok }),
};
// (not with --quick) the 105M model in 16 bits and in Q4_0, as kimi-edge convert writes them
if (!values.quick) {
  models['105M BF16'] = hfToGguf(MID_CONFIG, mid, kernels, { weights: 'BF16', ...tok });
  models['105M Q4_0'] = hfToGguf(MID_CONFIG, mid, kernels, { weights: 'Q4_0', ...tok });
}
// people's files are K-quant mixes: the same 105M model through llama.cpp's own llama-quantize
// (beside llama-bench, or --llama-quantize PATH), as Q4_K_M, and (not with --quick) Q6_K, Q3_K_M
// and Q2_K
{
  const quantize = values['llama-quantize'] ?? join(dirname(llamaBench), 'llama-quantize');
  if (existsSync(quantize)) {
    const f32 = join(dir, 'mid-f32.gguf');
    writeFileSync(f32, hfToGguf(MID_CONFIG, mid, kernels, { weights: 'F32', ...tok }));
    for (const mix of values.quick ? ['Q4_K_M'] : ['Q6_K', 'Q4_K_M', 'Q3_K_M', 'Q2_K']) {
      const q = join(dir, `mid-${mix.toLowerCase()}.gguf`);
      execFileSync(quantize, [f32, q, mix], { stdio: 'ignore' });
      models[`105M ${mix}`] = new Uint8Array(readFileSync(q));
    }
  } else console.error(`${quantize} not found: no K-quant rows`);
}

// (not with --quick) 430M parameters: 12 layers of 1280 (9 KDA, 3 MLA), 8 experts of 768 and a
// shared one; its F32 checkpoint is 1.7 GB (llama-quantize's input), Q8_0 0.46 GB, on a 23 GB,
// 2-vCPU host
const LARGE_CONFIG = {
  ...MID_CONFIG, hidden_size: 1280, intermediate_size: 3584, num_hidden_layers: 12, num_attention_heads: 10, num_key_value_heads: 10,
  kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, moe_intermediate_size: 768,
  linear_attn_config: { kda_layers: [1, 2, 3, 5, 6, 7, 9, 10, 11], full_attn_layers: [4, 8, 12], num_heads: 10, head_dim: 128, short_conv_kernel_size: 4 },
};
if (!values.quick) {
  const large = parseSafetensors(syntheticWeights(LARGE_CONFIG, 11));
  models['430M Q8_0'] = hfToGguf(LARGE_CONFIG, large, kernels, { weights: 'Q8_0', ...tok });
  const quantize = values['llama-quantize'] ?? join(dirname(llamaBench), 'llama-quantize');
  if (existsSync(quantize)) {
    const f32 = join(dir, 'large-f32.gguf'), q = join(dir, 'large-q4_k_m.gguf');
    writeFileSync(f32, hfToGguf(LARGE_CONFIG, large, kernels, { weights: 'F32', ...tok }));
    execFileSync(quantize, [f32, q, 'Q4_K_M'], { stdio: 'ignore' });
    unlinkSync(f32);
    models['430M Q4_K_M'] = new Uint8Array(readFileSync(q));
  }
}

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
  for (const [b, threads] of [['wasm', 1], ['wasm-threads', cpus().length], ['native', 1], ['native', cpus().length]] as const) {
    const backend = await nodeBackend(b);
    const m = await loadModel(sourceFromFiles({ 'model.gguf': bytes }), { backend });
    if (b !== 'wasm') m.engine.threads(threads);
    await m.engine.threadsReady(); // the wasm threads build's workers serving before the clock starts
    const { ppTokS, tgTokS } = enginePpTg(m.engine, m.config.vocabSize, PP, TG, values.quick ? 2 : 3, b !== 'native');
    rows.push({ model: name, engine: `kimi-linear-edge ${backend.name}`, threads, ppTokS, tgTokS });
    m.free();
  }
  // a BF16 file natively in BF16 precision as well (EngineModel.precision: activations rounded to
  // BF16, llama.cpp's arithmetic for it), where the processor has AVX-512 BF16
  if (name.includes('BF16'))
    for (const threads of [1, cpus().length]) {
      const backend = await nodeBackend('native');
      const m = await loadModel(sourceFromFiles({ 'model.gguf': bytes }), { backend });
      m.engine.threads(threads);
      try {
        m.engine.precision('bf16');
      } catch (e) {
        console.error(`${name}: no BF16 precision rows (${(e as Error).message})`);
        m.free();
        break;
      }
      const { ppTokS, tgTokS } = enginePpTg(m.engine, m.config.vocabSize, PP, TG, values.quick ? 2 : 3, false);
      rows.push({ model: name, engine: `kimi-linear-edge ${backend.name}, BF16 precision`, threads, ppTokS, tgTokS });
      m.free();
    }
}
// the Worker in workerd (wrangler dev) with the bundled default model: prefill as the time to
// the first token of a PP-token prompt, generation as the token rate after it (HTTP and SSE
// included: an upper bound on the engine's own time)
{
  const { url, stop } = await startWranglerDev({ args: ['--var', `MAX_TOKENS:${TG + 8}`, '--var', 'EDGE_MAX_TOKENS:100000'] });
  try {
    const { loadModelFromDirectory } = await import('../src/node.js');
    const tk = (await loadModelFromDirectory()).tokenizer!;
    let text = '';
    while (tk.encode(text).length < PP) text += 'the quick brown fox jumps over the lazy dog. ';
    const timed = async (prompt: string, maxTokens: number) => {
      const t0 = performance.now();
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'kimi-linear-default', prompt, max_tokens: maxTokens, temperature: 0, stream: true }) });
      const reader = res.body!.getReader();
      let first = 0, n = 0;
      for (;;) {
        const r = await reader.read();
        if (r.done) break;
        const chunk = new TextDecoder().decode(r.value);
        const m = chunk.match(/"text":"[^"]+"/g);
        if (m) {
          if (!first) first = performance.now() - t0;
          n += m.length;
        }
      }
      return { first, total: performance.now() - t0, n };
    };
    await timed('warm up', 4);
    const pp: number[] = [], tg: number[] = [];
    for (let i = 0; i < 3; i++) {
      // a different first word each time: the server's prefix cache must not help
      pp.push((await timed(`${['alpha', 'bravo', 'charlie'][i]} ${text}`, 1)).first);
      const g = await timed('Once upon a time', TG);
      tg.push((g.n - 1) / ((g.total - g.first) / 1e3));
    }
    rows.push({ model: 'default (1.0M, BF16)', engine: 'kimi-linear-edge workerd (HTTP)', threads: 1, ppTokS: PP / (median(pp) / 1e3), tgTokS: median(tg) });
  } finally {
    stop();
  }
}
console.log(`machine: ${JSON.stringify(machine())}\n`);
console.log(`Same GGUF files, pp${PP} and tg${TG} tokens/s (llama.cpp: llama-bench; ours: the engine API)\n`);
console.log(table(['model', 'engine', 'threads', `pp${PP} tok/s`, `tg${TG} tok/s`, 'pp vs llama.cpp (same threads)', 'tg vs llama.cpp (same threads)'], rows.map((r) => {
  const ref = rows.find((x) => x.model === r.model && x.engine === 'llama.cpp' && x.threads === r.threads)!;
  return [r.model, r.engine, r.threads, r.ppTokS.toFixed(0), r.tgTokS.toFixed(1), `${(r.ppTokS / ref.ppTokS).toFixed(2)}x`, `${(r.tgTokS / ref.tgTokS).toFixed(2)}x`];
})));
// one chart per metric; each model on its own scale (they differ by 25x)
const short = (r: Row) => (r.engine === 'llama.cpp' ? `llama.cpp ${r.threads}t` : r.engine.replace('kimi-linear-edge ', 'ours '));
for (const [kind, key] of [['prompt processing (pp512)', 'ppTokS'], ['generation (tg128)', 'tgTokS']] as const) {
  for (const m of Object.keys(models)) {
    const rs = rows.filter((r) => r.model === m);
    writeFileSync(join(packageRoot(), 'bench', 'results', `peers-${key === 'ppTokS' ? 'pp' : 'tg'}-${m.replace(/\s*\(.*\)/, '').replace(/[^A-Za-z0-9_]+/g, '-')}-${machineTag()}.svg`), barChart(`${kind}, ${m}: tokens/s`, 'tokens/s', rs.map(short), [{ name: 'tokens/s', values: rs.map((r) => r[key]) }]));
  }
}
console.log(`wrote ${writeResult('peers', { date: new Date().toISOString(), machine: machine(), llamaBench, pp: PP, tg: TG, rows })}`);
