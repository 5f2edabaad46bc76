// npm run bench:gpu-batch   (on a GPU machine: kernels-cuda/run-gpu.sh batch)
// Aggregate decode throughput of the full-size Kimi-Linear-48B-A3B on one GPU with continuous
// batching's step (EngineModel.stepBatch): n streams, each a session whose state is made on the
// device at the given context (EngineSession.synthesize), advance one token each per step.
// Tokens/s in total and per stream and time per step, the median of 8 steps, next to the limit
// of the same run: the bytes a step must read (the dense weights and LM head once, each expert
// the step's tokens route to once (expected distinct experts under uniform routing), every
// stream's KDA state read and written and its MLA cache read) over the card's copy bandwidth.
// Writes bench/results/gpu-batch-<gpu>.json.
//
// --peer DIR (kernels-cuda/run-gpu.sh peer): first what a user would run instead, Moonshot's
// modeling_kimi.py with fla's kernels in BF16 (bench/peers/kimi_peer_bench.py; DIR holds fla/ and
// the modeling file, fetched outside this repository) at the same shapes, contexts and batch
// sizes, in its own process (the GPU holds one 48B model at a time); then ours, side by side, into
// bench/results/gpu-peer-<gpu>.json.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseKimiConfig, type KimiConfig } from '../src/engine/config.js';
import { EngineModel, type EngineSession, type Precision } from '../src/engine/engine.js';
import { expertTensors, layerTensors } from '../src/engine/layer-kinds.js';
import { loadCudaBackend, packageRoot } from '../src/node.js';
import { KIMI_LINEAR_48B_CONFIG } from '../src/weights/synthetic.js';
import { batchChart, batchChartTitle } from './gpu-batch-chart.js';
import { gpuTag, machine, matrixWeights, median, table, writeResultAs } from './lib.js';

// --only CONTEXTxSTREAMS[,STREAMS...]: those points, printed and not written (with
// KLE_CUDA_PROFILE=1, the profile of their steps: what limits them)
// --precision f32|bf16|both (default both): the products' arithmetic (EngineModel.precision),
// each point measured in each, one after the other
// --weights q8_0: the matrices as Q8_0 blocks on the device (gemm_q8.cu) instead of BF16
const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, only: { type: 'string' }, peer: { type: 'string' }, precision: { type: 'string', default: 'both' }, weights: { type: 'string', default: 'bf16' } } });
const W = matrixWeights(values.weights), WB = W.bytes;
if (!['f32', 'bf16', 'both'].includes(values.precision)) throw new Error(`--precision ${values.precision}: expected f32, bf16 or both`);
const PRECISIONS: Precision[] = values.precision === 'both' ? ['f32', 'bf16'] : [values.precision as Precision];
const only = values.only?.match(/^(\d+)x(\d+(?:,\d+)*)$/);
if (values.only && !only) throw new Error(`--only ${values.only}: expected CONTEXTxSTREAMS[,STREAMS...], e.g. 4096x1,8`);
const PLAN: [number, number[]][] = only ? [[Number(only[1]), only[2]!.split(',').map(Number)]]
  : values.peer ? [[4096, [1, 8]]] : values.quick ? [[4096, [1, 32]]] : [[4096, [1, 8, 32, 128, 256]], [65536, [1, 8, 32, 64]]];

interface PeerRow { batch: number; context: number; prefillS: number; msPerStep: number; tokPerS: number }
interface PeerResult { peer: string; torch: string; transformers: string; layers: number; rows: PeerRow[] }
let peer: PeerResult | null = null;
if (values.peer) {
  const dir = mkdtempSync(join(tmpdir(), 'kle-peer-'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(KIMI_LINEAR_48B_CONFIG));
  for (const [context, counts] of PLAN)
    try { // bounded (Triton compiles fla's kernels first): ours is measured whatever the peer did
      execFileSync('python3', [join(process.cwd(), 'bench', 'peers', 'kimi_peer_bench.py'), '--peer', values.peer, // from the repository's root
        '--config', join(dir, 'config.json'), '--context', String(context), '--batches', counts.join(','), '--out', join(dir, `peer-${context}.json`)],
      { stdio: ['ignore', 'inherit', 'inherit'], timeout: 420_000 });
    } catch (e) {
      console.error(`peer at ${context}: ${(e as Error).message.split('\n')[0]}`);
    }
  const parts = PLAN.map(([context]) => join(dir, `peer-${context}.json`)).filter((f) => existsSync(f)).map((f) => JSON.parse(readFileSync(f, 'utf8')) as PeerResult);
  if (parts.length) peer = { ...parts[0]!, rows: parts.flatMap((p) => p.rows) };
}
const STEPS = 8;
const GiB = 2 ** 30;

/** bytes of the weights every step reads whatever the routing (WB a matrix weight; kv_b as the f32 W_uk, W_uv it is split into) */
function denseBytes(c: KimiConfig): number {
  let n = 0;
  for (let l = 0; l < c.numLayers; l++)
    for (const t of layerTensors(c, l)) n += t.role === 'MLA_KV_B' || t.f32 ? 4 * t.rows * t.cols : WB * t.rows * t.cols;
  return n + WB * c.vocabSize * c.hiddenSize;
}

function limitMs(c: KimiConfig, streams: number, context: number, gbps: number): number {
  const moe = c.moe!;
  const moeLayers = Array.from({ length: c.numLayers }, (_, l) => l).filter((l) => l >= moe.firstKDenseReplace && l % moe.moeLayerFreq === 0).length;
  const perExpert = expertTensors(c).reduce((a, t) => a + WB * t.rows * t.cols, 0);
  const distinct = moe.numExperts * (1 - (1 - moe.expertsPerToken / moe.numExperts) ** streams);
  const kinds = c.layerKinds;
  const kda = kinds.filter((k) => k === 'kda').length, mla = kinds.length - kda;
  const state = 2 * kda * c.kda.numHeads * c.kda.headDim * c.kda.headDim * 4;
  const cache = mla * context * (c.mla.kvLoraRank + c.mla.qkRopeHeadDim) * 2;
  return ((denseBytes(c) + moeLayers * distinct * perExpert + streams * (state + cache)) / (gbps * 1e9)) * 1e3;
}

const cuda = loadCudaBackend();
const gbps = cuda.copyGbps(GiB, 30);
const c = parseKimiConfig(KIMI_LINEAR_48B_CONFIG);
const model = EngineModel.synthesize(cuda, c, 7, W.dtype);
console.error(`${cuda.device}: copy ${gbps.toFixed(0)} GB/s; 48B made, ${((model.deviceFree() ?? 0) / GiB).toFixed(1)} GiB free, MLA cache ${model.kvFormat}`);

interface Row { context: number; streams: number; precision: Precision; msPerStep: number; tokPerS: number; perStream: number; limitMs: number; ofLimit: number }
const rows: Row[] = [];
for (const [context, counts] of PLAN) {
  const ctx = context - 64; // a little under the caches' power of two: the steps fit what they reserved
  const sessions: EngineSession[] = [];
  for (const n of counts) {
    while (sessions.length < n) {
      const s = model.createSession();
      s.synthesize(ctx, sessions.length + 1);
      s.step([sessions.length % c.vocabSize]); // logits to start from, and the caches reserved
      sessions.push(s);
    }
    const batch = sessions.slice(0, n);
    const toks = batch.map((_, i) => (i * 7919) % c.vocabSize);
    for (const precision of PRECISIONS) {
      model.precision(precision);
      const t: number[] = [];
      for (let i = 0; i < STEPS + 2; i++) {
        const t0 = performance.now();
        model.stepBatch(batch, toks);
        if (i >= 2) t.push(performance.now() - t0);
      }
      const ms = median(t);
      const lim = limitMs(c, n, context, gbps);
      rows.push({ context, streams: n, precision, msPerStep: ms, tokPerS: (n * 1000) / ms, perStream: 1000 / ms, limitMs: lim, ofLimit: lim / ms });
      console.error(`${context} x ${n}, precision ${precision}: ${ms.toFixed(2)} ms/step, ${((n * 1000) / ms).toFixed(0)} tok/s (limit ${lim.toFixed(2)} ms, ${((n * 1000) / lim).toFixed(0)} tok/s)`);
    }
  }
  for (const s of sessions) s.free();
}

console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}, copy bandwidth ${gbps.toFixed(0)} GB/s\n`);
console.log(`Decode throughput with continuous batching (48B, ${W.name} weights, BF16 MLA caches; median of 8 steps)\n`);
console.log(table(['context', 'streams', 'precision', 'ms/step', 'tokens/s', 'per stream', 'limit ms', 'limit tokens/s', 'of limit'],
  rows.map((r) => [r.context, r.streams, r.precision, r.msPerStep.toFixed(2), r.tokPerS.toFixed(0), r.perStream.toFixed(1), r.limitMs.toFixed(2), ((r.streams * 1000) / r.limitMs).toFixed(0), `${(100 * r.ofLimit).toFixed(0)}%`])));
if (peer) {
  console.log(`\nAgainst ${peer.peer} (torch ${peer.torch}, transformers ${peer.transformers}), same GPU and shapes, greedy decode with its cache\n`);
  const vs = rows.map((r) => ({ ...r, peer: peer!.rows.find((p) => p.batch === r.streams && p.context === r.context) ?? null }));
  console.log(table(['context', 'streams', 'precision', 'ours ms/step', 'peer ms/step', 'ours tokens/s', 'peer tokens/s', 'speed-up'],
    vs.map((r) => [r.context, r.streams, r.precision, r.msPerStep.toFixed(2), r.peer?.msPerStep.toFixed(2) ?? '-', r.tokPerS.toFixed(0), r.peer?.tokPerS.toFixed(1) ?? '-',
      r.peer ? `${(r.peer.msPerStep / r.msPerStep).toFixed(1)}x` : '-'])));
  console.log(`wrote ${writeResultAs(`gpu-peer-${gpuTag(cuda.device)}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, steps: STEPS, peer, rows: vs })}`);
} else if (!only && !values.peer) {
  const name = `gpu-batch-${W.tag}${gpuTag(cuda.device)}`;
  console.log(`wrote ${writeResultAs(name, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, copyGBps: gbps, steps: STEPS, weights: W.dtype, rows })}`);
  writeFileSync(join(packageRoot(), 'bench', 'results', `${name}.svg`), batchChart(batchChartTitle(cuda.device, W.dtype), rows));
}
model.free();
