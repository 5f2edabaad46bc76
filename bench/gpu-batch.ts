// npm run bench:gpu-batch   (on a GPU machine: kernels-cuda/run-gpu.sh batch)
// Aggregate decode throughput of the full-size Kimi-Linear-48B-A3B on one GPU with continuous
// batching's step (EngineModel.stepBatch): n streams, each a session whose state is made on the
// device at the given context (EngineSession.synthesize), advance one token each per step.
// Tokens/s in total and per stream and time per step, the median of 8 steps, next to the limit
// of the same run: the bytes a step must read (the dense weights and LM head once, each expert
// the step's tokens route to once (expected distinct experts under uniform routing), every
// stream's KDA state read and written and its MLA cache read) over the card's copy bandwidth.
// Writes bench/results/gpu-batch-<gpu>.json.
import { parseArgs } from 'node:util';
import { parseKimiConfig, type KimiConfig } from '../src/engine/config.js';
import { EngineModel, type EngineSession } from '../src/engine/engine.js';
import { expertTensors, layerTensors } from '../src/engine/layer-kinds.js';
import { loadCudaBackend } from '../src/node.js';
import { KIMI_LINEAR_48B_CONFIG } from '../src/weights/synthetic.js';
import { gpuTag, machine, table, writeResultAs } from './lib.js';

// --only CONTEXTxSTREAMS: that one point, printed and not written (with KLE_CUDA_PROFILE=1, the
// profile of its steps: what limits it)
const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, only: { type: 'string' } } });
const only = values.only?.match(/^(\d+)x(\d+)$/);
if (values.only && !only) throw new Error(`--only ${values.only}: expected CONTEXTxSTREAMS, e.g. 4096x256`);
const PLAN: [number, number[]][] = only ? [[Number(only[1]), [Number(only[2])]]]
  : values.quick ? [[4096, [1, 32]]] : [[4096, [1, 8, 32, 128, 256]], [65536, [1, 8, 32, 64]]];
const STEPS = 8;
const GiB = 2 ** 30;

/** bytes of the weights every step reads whatever the routing (BF16; kv_b as the f32 W_uk, W_uv it is split into) */
function denseBytes(c: KimiConfig): number {
  let n = 0;
  for (let l = 0; l < c.numLayers; l++)
    for (const t of layerTensors(c, l)) n += t.role === 'MLA_KV_B' || t.f32 ? 4 * t.rows * t.cols : 2 * t.rows * t.cols;
  return n + 2 * c.vocabSize * c.hiddenSize;
}

function limitMs(c: KimiConfig, streams: number, context: number, gbps: number): number {
  const moe = c.moe!;
  const moeLayers = Array.from({ length: c.numLayers }, (_, l) => l).filter((l) => l >= moe.firstKDenseReplace && l % moe.moeLayerFreq === 0).length;
  const perExpert = expertTensors(c).reduce((a, t) => a + 2 * t.rows * t.cols, 0);
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
const model = EngineModel.synthesize(cuda, c, 7, 'bf16');
console.error(`${cuda.device}: copy ${gbps.toFixed(0)} GB/s; 48B made, ${((model.deviceFree() ?? 0) / GiB).toFixed(1)} GiB free, MLA cache ${model.kvFormat}`);

interface Row { context: number; streams: number; msPerStep: number; tokPerS: number; perStream: number; limitMs: number; ofLimit: number }
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
    const t: number[] = [];
    for (let i = 0; i < STEPS + 2; i++) {
      const t0 = performance.now();
      model.stepBatch(batch, toks);
      if (i >= 2) t.push(performance.now() - t0);
    }
    t.sort((a, b) => a - b);
    const ms = t[t.length >> 1]!;
    const lim = limitMs(c, n, context, gbps);
    rows.push({ context, streams: n, msPerStep: ms, tokPerS: (n * 1000) / ms, perStream: 1000 / ms, limitMs: lim, ofLimit: lim / ms });
    console.error(`${context} x ${n}: ${ms.toFixed(2)} ms/step, ${((n * 1000) / ms).toFixed(0)} tok/s (limit ${lim.toFixed(2)} ms, ${((n * 1000) / lim).toFixed(0)} tok/s)`);
  }
  for (const s of sessions) s.free();
}

console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}, copy bandwidth ${gbps.toFixed(0)} GB/s\n`);
console.log('Decode throughput with continuous batching (48B, BF16 weights, BF16 MLA caches; median of 8 steps)\n');
console.log(table(['context', 'streams', 'ms/step', 'tokens/s', 'per stream', 'limit ms', 'limit tokens/s', 'of limit'],
  rows.map((r) => [r.context, r.streams, r.msPerStep.toFixed(2), r.tokPerS.toFixed(0), r.perStream.toFixed(1), r.limitMs.toFixed(2), ((r.streams * 1000) / r.limitMs).toFixed(0), `${(100 * r.ofLimit).toFixed(0)}%`])));
if (!only) console.log(`wrote ${writeResultAs(`gpu-batch-${gpuTag(cuda.device)}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, copyGBps: gbps, steps: STEPS, rows })}`);
model.free();
