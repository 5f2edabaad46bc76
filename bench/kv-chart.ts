// npm run bench:kv-chart [-- --steps 16384 --budget 1024 --models default,105M --backends native,wasm]
// The seed chart of DynTS (docs/kv-budget.md), with this engine: decode throughput, MLA cache
// memory and time per token against decoding steps, full cache vs a bounded one, for the trained
// default model and the synthetic 105M model (bench:generate's, Q8_0), natively and in wasm SIMD
// (Node). Each run prefills 16 tokens and then generates greedily; a step's time is the whole
// decode (forward + sampling). Points are medians over the 128 steps that end at each x. The goal
// the issue sets: with a budget, time per token and memory flat (within 10%) from 2x to 16x the
// budget. Writes bench/results/kv-chart-<machine>.json and a three-panel SVG per model.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kernels } from '../src/engine/kernels.js';
import { parseSafetensors } from '../src/formats/safetensors.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { loadModel } from '../src/model/load.js';
import type { Model } from '../src/model/model.js';
import { loadModelFromDirectory, nodeBackend, packageRoot, type NodeBackendName } from '../src/node.js';
import { syntheticWeights } from '../src/weights/synthetic.js';
import { hfToGguf } from '../src/weights/to-gguf.js';
import { KV_DEFAULTS } from '../src/generate/kv-budget.js';
import { MID_CONFIG } from './generate.js';
import { machine, machineTag, table, writeResult } from './lib.js';
import { lineChart, panels } from './svg.js';

const { values } = parseArgs({ options: {
  steps: { type: 'string', default: '16384' }, budget: { type: 'string', default: '1024' },
  models: { type: 'string', default: 'default,105M' }, backends: { type: 'string', default: 'native,wasm' },
} });
const steps = Number(values.steps), budget = Number(values.budget);
const WINDOW = 128;

async function load(name: string, backendName: NodeBackendName): Promise<Model> {
  if (name === 'default') return loadModelFromDirectory(undefined, { backend: backendName });
  const backend = await nodeBackend(backendName);
  const gguf = hfToGguf(MID_CONFIG, parseSafetensors(syntheticWeights(MID_CONFIG, 7)), new Kernels(backend), { weights: 'Q8_0' });
  return loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend });
}

interface Point {
  step: number;
  msPerToken: number;
  tokensPerS: number;
  /** bytes the MLA layers' caches hold (with a budget, each row's position and score too) */
  mlaCacheBytes: number;
}

interface Run {
  model: string;
  backend: string;
  budget: number | null;
  points: Point[];
  /** the issue's goal: time and memory at 16x the budget over those at 2x */
  flat?: { timeRatio: number; memoryRatio: number };
}

function xs(): number[] {
  const out: number[] = [];
  for (let x = 256; x <= steps; x *= 2) out.push(x);
  return out;
}

async function run(modelName: string, backendName: NodeBackendName, bound: number | null): Promise<Run> {
  const model = await load(modelName, backendName);
  const c = model.config;
  const mla = c.layerKinds.filter((k) => k === 'mla').length, row = 4 * (c.mla.kvLoraRank + c.mla.qkRopeHeadDim);
  const s = model.createSession(bound ? { kvBudget: bound } : {});
  s.prefill(Array.from({ length: 16 }, (_, i) => (i * 7919 + 13) % c.vocabSize));
  const times = new Float64Array(steps + 1);
  const marks = new Set(xs());
  const points: Point[] = [];
  for (let i = 1; i <= steps; i++) {
    const t = performance.now();
    s.decode({ temperature: 0 });
    times[i] = performance.now() - t;
    if (marks.has(i)) {
      const w = [...times.subarray(i - WINDOW + 1, i + 1)].sort((a, b) => a - b);
      const ms = w[w.length >> 1]!;
      points.push({ step: i, msPerToken: ms, tokensPerS: 1000 / ms, mlaCacheBytes: s.kvLength * mla * (row + (bound ? 8 : 0)) });
    }
  }
  s.free();
  model.free();
  const r: Run = { model: modelName, backend: backendName === 'wasm' ? 'wasm-simd' : backendName, budget: bound, points };
  const at = (x: number) => points.find((p) => p.step === x);
  if (bound && at(2 * bound) && at(16 * bound)) r.flat = { timeRatio: at(16 * bound)!.msPerToken / at(2 * bound)!.msPerToken, memoryRatio: at(16 * bound)!.mlaCacheBytes / at(2 * bound)!.mlaCacheBytes };
  console.error(`${modelName} ${r.backend} ${bound ? `budget ${bound}` : 'full cache'}: ${points.map((p) => `${p.step}:${p.msPerToken.toFixed(2)}ms`).join(' ')}`);
  return r;
}

const runs: Run[] = [];
for (const m of values.models.split(','))
  for (const b of values.backends.split(',') as NodeBackendName[])
    for (const bound of [null, budget]) runs.push(await run(m, b, bound));

console.log(`machine: ${JSON.stringify(machine())}`);
console.log(`${steps} greedy decode steps after a 16-token prompt; budget ${budget} (defaults: sink ${KV_DEFAULTS.sink}, window ${budget * KV_DEFAULTS.windowFraction}, decay ${KV_DEFAULTS.decay}); medians of ${WINDOW} steps\n`);
for (const m of values.models.split(',')) {
  const mine = runs.filter((r) => r.model === m);
  console.log(`${m}: ms per token (MLA cache MiB)`);
  console.log(table(['backend', 'cache', ...xs().map((x) => (x >= 1024 ? `${x / 1024}K` : String(x))), '16x/2x budget'], mine.map((r) => [
    r.backend, r.budget ? `budget ${r.budget}` : 'full', ...r.points.map((p) => `${p.msPerToken.toFixed(2)} (${(p.mlaCacheBytes / 2 ** 20).toFixed(2)})`),
    r.flat ? `time ${r.flat.timeRatio.toFixed(3)}, memory ${r.flat.memoryRatio.toFixed(3)}` : '-',
  ])));
  const full = mine.filter((r) => !r.budget), bounded = mine.filter((r) => r.budget);
  const last = (r: Run) => r.points.at(-1)!;
  for (const f of full) {
    const b = bounded.find((x) => x.backend === f.backend);
    if (b) console.log(`  ${f.backend} at ${steps} steps: budget ${(last(f).msPerToken / last(b).msPerToken).toFixed(2)}x faster per token, ${(last(f).mlaCacheBytes / last(b).mlaCacheBytes).toFixed(1)}x less MLA cache`);
  }
  console.log('');
  const series = (f: (p: Point) => number) => mine.map((r) => ({ name: `${r.backend} ${r.budget ? `budget ${r.budget}` : 'full'}`, points: r.points.map((p): [number, number] => [p.step, f(p)]) }));
  const svg = panels(`${m === 'default' ? 'trained default model' : 'synthetic 105M model (Q8_0)'}: full MLA cache vs budget ${budget} (${machineTag()})`, [
    lineChart('throughput', 'decoding steps', 'tokens/s', series((p) => p.tokensPerS)),
    lineChart('MLA cache memory', 'decoding steps', 'MiB', series((p) => p.mlaCacheBytes / 2 ** 20)),
    lineChart('time per token', 'decoding steps', 'ms', series((p) => p.msPerToken)),
  ]);
  const path = join(packageRoot(), 'bench', 'results', `kv-chart-${m}-${machineTag()}.svg`);
  writeFileSync(path, svg);
  console.log(`wrote ${path}`);
}
console.log(`wrote ${writeResult('kv-chart', { date: new Date().toISOString(), machine: machine(), steps, budget, defaults: KV_DEFAULTS, window: WINDOW, runs })}`);
