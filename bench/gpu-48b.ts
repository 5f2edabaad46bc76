// npm run bench:gpu-48b   (on a GPU machine: kernels-cuda/run-gpu.sh big)
// The full-size Kimi-Linear-48B-A3B on one GPU, weights in BF16 made by the engine in device
// memory (EngineModel.synthesize: the exact config, seeded values, the loaded model's code
// paths), and an all-MLA model of the same shape (every layer MLA) beside it:
// - time per output token at batch 1 against the context a session holds (4K .. 1M; the state
//   made on the device by EngineSession.synthesize, so no prefill is needed), the median of 24
//   steps, each a forward of one token with its 163,840 logits copied to the host; then the same
//   with a token sampled each step (temperature 0.7, top-p 0.9) by the runtime's sampler after
//   the copy, and on the GPU (kle_session_sample) with no copy;
// - next to the physical limit of the same run: the bytes one token must read (the dense and
//   active expert weights, the LM head, the KDA states read and written, the MLA cache at that
//   length) over the card's copy bandwidth measured now;
// - a short prompt's prefill rate;
// - with --ttft 32768,65536,...: instead of the decode table, the time to prefill prompts of those
//   lengths (4,096-token chunks, as a server feeds them), hybrid vs all-MLA, longest last; a length
//   whose time, estimated from the one before as growing with its square (the attention's part),
//   would pass --ttft-budget seconds for that model is reported as skipped with the estimate.
// --precision f32|bf16 (default f32): the products' arithmetic (EngineModel.precision) for all of
// it; the decode table also times each context's steps with BF16 precision.
// Contexts whose MLA cache (BF16, the GPU's default) does not fit beside the weights are reported as such.
// Writes bench/results/gpu-48b-<gpu>.json and an SVG.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseKimiConfig, type KimiConfig } from '../src/engine/config.js';
import { EngineModel } from '../src/engine/engine.js';
import { expertTensors, layerTensors } from '../src/engine/layer-kinds.js';
import { loadCudaBackend, packageRoot } from '../src/node.js';
import { KIMI_LINEAR_48B_CONFIG } from '../src/weights/synthetic.js';
import { Sampler } from '../src/generate/sampler.js';
import type { EngineSession } from '../src/engine/engine.js';
import { gpuTag, machine, matrixWeights, table, writeResultAs } from './lib.js';
import { medianDecodeMs } from './study-models.js';
import { lineChart } from './svg.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false }, model: { type: 'string', default: 'both' }, profile: { type: 'boolean', default: false },
    ttft: { type: 'string' }, 'ttft-budget': { type: 'string', default: '240' }, precision: { type: 'string', default: 'f32' },
    weights: { type: 'string', default: 'bf16' },
  },
});
// --weights q8_0: the matrices as Q8_0 blocks on the device (gemm_q8.cu) instead of BF16
const W = matrixWeights(values.weights), WB = W.bytes;
if (values.precision !== 'f32' && values.precision !== 'bf16') throw new Error(`--precision ${values.precision}: expected f32 or bf16`);
const PRECISION = values.precision;
const TTFT = (values.ttft ?? '').split(',').filter(Boolean).map(Number).sort((a, b) => a - b);
if (TTFT.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--ttft takes prompt lengths, not ${values.ttft}`);
// --profile: the GPU time of every operation, printed when the model closes (backend_cuda.cu)
if (values.profile) process.env.KLE_CUDA_PROFILE = '1';
// a little under each power of two: the 3 + 4 x 24 steps then fit the cache the session reserved
const CONTEXTS = (values.quick ? [4096, 131072] : [4096, 131072, 262144, 524288, 1048576]).map((n) => n - 128);
const STEPS = 24;
const GiB = 2 ** 30;

const ALL_MLA = {
  ...KIMI_LINEAR_48B_CONFIG,
  linear_attn_config: { ...KIMI_LINEAR_48B_CONFIG.linear_attn_config, kda_layers: [], full_attn_layers: Array.from({ length: 27 }, (_, i) => i + 1) },
};

/** bytes one decode step must read at batch 1: everything but the unchosen experts, as the engine stores it */
function activeWeightBytes(c: KimiConfig): number {
  let n = 0;
  for (let l = 0; l < c.numLayers; l++)
    for (const t of layerTensors(c, l)) {
      const e = t.rows * t.cols;
      // kv_b is split into f32 W_uk and W_uv at load (engine/model/layers.c): those are what decode reads
      n += t.role === 'MLA_KV_B' ? 4 * e : t.f32 ? 4 * e : WB * e;
    }
  const moeLayers = Array.from({ length: c.numLayers }, (_, l) => l).filter((l) => c.moe && l >= c.moe.firstKDenseReplace && l % c.moe.moeLayerFreq === 0).length;
  const perExpert = expertTensors(c).reduce((a, t) => a + WB * t.rows * t.cols, 0);
  n += moeLayers * c.moe!.expertsPerToken * perExpert;
  return n + WB * c.vocabSize * c.hiddenSize + WB * c.hiddenSize; // LM head, one embedding row
}

function stateBytes(c: KimiConfig, context: number, kvBytes: number): { kda: number; mla: number } {
  const kinds = c.layerKinds;
  const kdaLayers = kinds.filter((k) => k === 'kda').length, mlaLayers = kinds.length - kdaLayers;
  const S = c.kda.numHeads * c.kda.headDim * c.kda.headDim * 4;
  return { kda: 2 * kdaLayers * S, mla: mlaLayers * context * (c.mla.kvLoraRank + c.mla.qkRopeHeadDim) * kvBytes };
}

/** median ms per token of decoding with a token sampled each step, on the host (after copying the logits) or on the GPU */
function sampledMs(s: EngineSession, steps: number, onDevice: boolean): number {
  const sampler = new Sampler({ temperature: 0.7, topP: 0.9, seed: 1 });
  const ctx: number[] = [];
  let tok = 1;
  const t: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    if (onDevice) {
      s.step([tok]);
      tok = sampler.sample(s.logitsRef()!, ctx);
    } else tok = sampler.sample(s.forward([tok]), ctx);
    t.push(performance.now() - t0);
    ctx.push(tok);
  }
  t.sort((a, b) => a - b);
  return t[t.length >> 1]!;
}

const cuda = loadCudaBackend();
const gbps = cuda.copyGbps(GiB, 30);
console.error(`${cuda.device}: copy bandwidth ${gbps.toFixed(0)} GB/s`);

interface Row { model: string; context: number; msPerToken: number | null; limitMs: number; ofLimit: number | null; mlaCacheGiB: number; note: string; eagerMs?: number; sampledHostMs?: number; sampledGpuMs?: number; bf16PrecisionMs?: number }
const rows: Row[] = [];
const kvFormats: string[] = [];
const loads: { model: string; seconds: number; weightsGiB: number; freeAfterGiB: number; activeGiBPerToken: number; prefillTokens: number; prefillTokPerS: number }[] = [];

interface TtftRow { model: string; tokens: number; seconds: number | null; tokPerS: number | null; note: string }
const ttftRows: TtftRow[] = [];
/** a prompt of each --ttft length through a fresh session, 4,096 tokens a forward */
function prefillTimes(model: EngineModel, name: string, V: number): TtftRow[] {
  const out: TtftRow[] = [];
  const budget = Number(values['ttft-budget']);
  let spent = 0, last: { tokens: number; seconds: number } | null = null;
  for (const n of TTFT) {
    const est = last ? last.seconds * (n / last.tokens) ** 2 : 0;
    if (spent + est > budget) {
      out.push({ model: name, tokens: n, seconds: null, tokPerS: null, note: `skipped: about ${est.toFixed(0)} s by the length before, past the ${budget} s budget` });
      continue;
    }
    const s = model.createSession();
    const t0 = performance.now();
    for (let i = 0; i < n; i += 4096) s.forward(Array.from({ length: Math.min(4096, n - i) }, (_, j) => ((i + j) * 104729 + 17) % V));
    const seconds = (performance.now() - t0) / 1000;
    s.free();
    spent += seconds;
    last = { tokens: n, seconds };
    out.push({ model: name, tokens: n, seconds, tokPerS: n / seconds, note: '' });
    console.error(`${name}: ${n} tokens prefilled in ${seconds.toFixed(2)} s`);
  }
  return out;
}

const which = values.model === 'both' ? ['hybrid', 'all-MLA'] : [values.model!];
for (const name of which) {
  const json = name === 'hybrid' ? KIMI_LINEAR_48B_CONFIG : ALL_MLA;
  const c = parseKimiConfig(json);
  const t0 = performance.now();
  const model = EngineModel.synthesize(cuda, c, 7, W.dtype);
  model.precision(PRECISION);
  const seconds = (performance.now() - t0) / 1000;
  const active = activeWeightBytes(c);
  if (!kvFormats.includes(model.kvFormat)) kvFormats.push(model.kvFormat);
  // warm-up (clocks, first launches), then a short prompt's prefill
  const w = model.createSession();
  w.forward(Array.from({ length: 64 }, (_, i) => (i * 7919) % c.vocabSize));
  const t1 = performance.now();
  const PREFILL = values.profile ? 512 : 2048;
  w.forward(Array.from({ length: PREFILL }, (_, i) => (i * 104729 + 17) % c.vocabSize));
  const prefillTokPerS = PREFILL / ((performance.now() - t1) / 1000);
  w.free();
  if (TTFT.length) {
    ttftRows.push(...prefillTimes(model, name, c.vocabSize));
    model.free();
    continue;
  }
  loads.push({ model: name, seconds, weightsGiB: model.bytes() / GiB, freeAfterGiB: (model.deviceFree() ?? 0) / GiB, activeGiBPerToken: active / GiB, prefillTokens: PREFILL, prefillTokPerS });
  console.error(`${name}: made in ${seconds.toFixed(1)} s, ${(model.bytes() / GiB).toFixed(1)} GiB of weights, ${((model.deviceFree() ?? 0) / GiB).toFixed(1)} GiB free; prefill ${prefillTokPerS.toFixed(0)} tok/s`);
  for (const context of CONTEXTS) {
    const kvBytes = model.kvFormat === 'bf16' ? 2 : 4;
    const st = stateBytes(c, context, kvBytes);
    const limitMs = ((active + st.kda + st.mla) / (gbps * 1e9)) * 1e3;
    const base = { model: name, context, limitMs, mlaCacheGiB: st.mla / GiB };
    // the cache is reserved in powers of two of rows; keep 2 GiB for activations and logits
    const reserve = stateBytes(c, 2 ** Math.ceil(Math.log2(context)), kvBytes).mla + 2 * GiB;
    if (reserve > (model.deviceFree() ?? 0)) {
      rows.push({ ...base, msPerToken: null, ofLimit: null, note: `cache (${model.kvFormat}) does not fit: ${(reserve / GiB).toFixed(1)} GiB needed, ${((model.deviceFree() ?? 0) / GiB).toFixed(1)} free` });
      continue;
    }
    const s = model.createSession();
    s.synthesize(context, 3);
    medianDecodeMs(s, 3);
    const ms = medianDecodeMs(s, STEPS);
    // the same steps without the CUDA graph (each operation launched as the host gets to it)
    process.env.KLE_CUDA_GRAPHS = '0';
    const eagerMs = medianDecodeMs(s, STEPS);
    delete process.env.KLE_CUDA_GRAPHS;
    const sampledHostMs = sampledMs(s, STEPS, false), sampledGpuMs = sampledMs(s, STEPS, true);
    // BF16 precision (the MLA attention's query and probabilities rounded; a step's matvecs as they are)
    model.precision('bf16');
    medianDecodeMs(s, 2); // the graph captured again
    const bf16PrecisionMs = medianDecodeMs(s, STEPS);
    model.precision(PRECISION);
    s.free();
    rows.push({ ...base, msPerToken: ms, ofLimit: limitMs / ms, note: '', eagerMs, sampledHostMs, sampledGpuMs, bf16PrecisionMs });
    console.error(`${name} @ ${context}: ${ms.toFixed(3)} ms/token (limit ${limitMs.toFixed(3)}; no graph ${eagerMs.toFixed(3)}; BF16 precision ${bf16PrecisionMs.toFixed(3)}); sampled top-p on the host ${sampledHostMs.toFixed(3)}, on the GPU ${sampledGpuMs.toFixed(3)}`);
  }
  model.free();
}

if (TTFT.length) {
  console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}\n`);
  console.log(`Time to first token: a prompt prefilled in 4,096-token forwards (BF16 weights and MLA cache, ${PRECISION} products)\n`);
  console.log(table(['model', 'prompt tokens', 'seconds', 'tokens/s', 'all-MLA / hybrid', 'note'], ttftRows.map((r) => {
    const h = ttftRows.find((x) => x.model === 'hybrid' && x.tokens === r.tokens);
    const ratio = r.model === 'all-MLA' && h?.seconds && r.seconds ? `${(r.seconds / h.seconds).toFixed(2)}x` : '';
    return [r.model, r.tokens, r.seconds?.toFixed(2) ?? '-', r.tokPerS?.toFixed(0) ?? '-', ratio, r.note];
  })));
  console.log(`wrote ${writeResultAs(`gpu-ttft-${PRECISION === 'bf16' ? 'bf16-' : ''}${gpuTag(cuda.device)}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, chunk: 4096, precision: PRECISION, rows: ttftRows })}`);
  process.exit(0);
}

const k = (n: number) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)}M` : `${(n / 1024).toFixed(1)}K`);
console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}, copy bandwidth ${gbps.toFixed(0)} GB/s\n`);
console.log(table(['model', 'weights made (s)', 'weights GiB', 'free GiB', 'active GiB/token', `prefill ${loads[0]?.prefillTokens ?? 0} tok/s`],
  loads.map((l) => [l.model, l.seconds.toFixed(1), l.weightsGiB.toFixed(1), l.freeAfterGiB.toFixed(1), l.activeGiBPerToken.toFixed(2), l.prefillTokPerS.toFixed(0)])));
console.log(`\nTime per output token at batch 1 (${W.name} weights, ${kvFormats.join('/')} MLA cache, ${PRECISION} products; median of 24 steps, logits copied to the host each step)\n`);
console.log(table(['model', 'context', 'ms/token', 'limit ms', 'of limit', 'no graph', 'BF16 precision', 'top-p on host', 'top-p on GPU', 'MLA cache GiB', 'note'],
  rows.map((r) => [r.model, k(r.context), r.msPerToken?.toFixed(3) ?? '-', r.limitMs.toFixed(3), r.ofLimit ? `${(100 * r.ofLimit).toFixed(0)}%` : '-', r.eagerMs?.toFixed(3) ?? '-', r.bf16PrecisionMs?.toFixed(3) ?? '-', r.sampledHostMs?.toFixed(3) ?? '-', r.sampledGpuMs?.toFixed(3) ?? '-', r.mlaCacheGiB.toFixed(2), r.note])));
const h = rows.filter((r) => r.model === 'hybrid' && r.msPerToken), a = rows.filter((r) => r.model === 'all-MLA' && r.msPerToken);
for (const r of h) {
  const m = a.find((x) => x.context === r.context);
  if (m) console.log(`at ${k(r.context)}: all-MLA / hybrid time per token ${(m.msPerToken! / r.msPerToken!).toFixed(2)}x`);
}
console.log('The Kimi Linear report (its own setup): about 6-8 ms per token up to 512K, 11 ms at 1M.');
const tag = gpuTag(cuda.device);
writeFileSync(join(packageRoot(), 'bench', 'results', `gpu-48b-tpot-${W.tag}${tag}.svg`), lineChart(`Kimi-Linear-48B-A3B, batch 1, ${W.name} (${cuda.device})`, 'context tokens (log scale)', 'ms per output token', [
  ...['hybrid', 'all-MLA'].flatMap((m) => {
    const rs = rows.filter((r) => r.model === m);
    return rs.length ? [{ name: `${m} measured`, points: rs.filter((r) => r.msPerToken).map((r) => [r.context, r.msPerToken!] as [number, number]) },
      { name: `${m} limit`, points: rs.map((r) => [r.context, r.limitMs] as [number, number]) }] : [];
  }),
].filter((s) => s.points.length)));
console.log(`wrote ${writeResultAs(`gpu-48b-${W.tag}${tag}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, copyGBps: gbps, steps: STEPS, weights: W.dtype, kvFormats, precision: PRECISION, loads, rows })}`);
