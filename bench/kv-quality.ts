// npm run bench:kv-quality [-- --docs N --length L]
// What a bounded MLA cache (docs/kv-budget.md) costs in quality: the trained default model reads
// long held-out documents of the Brown corpus token by token (as a generation would, rows
// dropping after every token) with its full cache and with budgets of 12.5%, 25%, 50% and 75% of
// the document length, under the attention-score policy and the recent-only baseline (sink +
// newest rows, StreamingLLM's), plus a sweep of the score's decay. Reported: perplexity over the
// whole document and over the positions past the budget (where the caches differ), and how
// often the next-token argmax agrees with the full cache's there. The learned policy (DynTS's
// idea) runs with the importance head train/kv_importance.py fit for this model
// (train/checkpoints/default/kv-importance.safetensors), added to the embedded weights. Needs
// train/data from `npm run train:prepare`. Writes bench/results/kv-quality-<machine>.json and an SVG.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { EngineModel, KvPolicy } from '../src/engine/engine.js';
import { loadModelFromDirectory, loadNativeBackend, packageRoot } from '../src/node.js';
import { parseSafetensors, tensorF32 } from '../src/formats/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../src/formats/safetensors-writer.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { loadModel } from '../src/model/load.js';
import { idsFromU16 } from '../src/verify/perplexity.js';
import { KV_DEFAULTS } from '../src/generate/kv-budget.js';
import { machine, machineTag, table, writeResult } from './lib.js';
import { lineChart } from './svg.js';

const { values } = parseArgs({ options: { docs: { type: 'string', default: '24' }, length: { type: 'string', default: '2048' } } });
const root = packageRoot();
const heldPath = join(root, 'train', 'data', 'heldout.u16');
if (!existsSync(heldPath)) {
  console.error(`${heldPath} is missing: run npm run train:prepare first`);
  process.exit(2);
}
const model = await loadModelFromDirectory(undefined, { backend: 'native' });
const engine: EngineModel = model.engine;
// the same weights with the learned importance head, when train/kv_importance.py has made one
const headPath = join(root, 'train', 'checkpoints', 'default', 'kv-importance.safetensors');
let withHead: EngineModel | null = null;
if (existsSync(headPath)) {
  const dir = join(root, 'models', 'default');
  const cfg = { ...(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>), kv_importance_head: true };
  const tensors: Record<string, TensorToWrite> = {};
  for (const f of [join(dir, 'model.safetensors'), headPath])
    for (const [name, t] of parseSafetensors(new Uint8Array(readFileSync(f))).tensors) tensors[name] = { dtype: 'F32', shape: [...t.shape], data: tensorF32(t) };
  const files: Record<string, Uint8Array | string> = { 'config.json': JSON.stringify(cfg), 'model.safetensors': writeSafetensors(tensors, { format: 'pt' }) };
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) files[f] = new Uint8Array(readFileSync(join(dir, f)));
  withHead = (await loadModel(sourceFromFiles(files), { backend: loadNativeBackend() })).engine;
}
const V = model.config.vocabSize;
const bos = model.config.bosTokenId ?? 256;
const L = Number(values.length), maxDocs = Number(values.docs);

// documents start at BOS; the first L tokens of those at least L long
const ids = idsFromU16(readFileSync(heldPath), heldPath);
const docs: Uint16Array[] = [];
for (let i = 0, start = 0; i <= ids.length; i++) {
  if (i === ids.length || (ids[i] === bos && i > start)) {
    if (i - start >= L && docs.length < maxDocs) docs.push(ids.subarray(start, start + L));
    start = i;
  }
}
if (!docs.length) throw new Error(`no held-out document has ${L} tokens`);

interface Run {
  budget: number;
  policy: KvPolicy;
  decay: number;
  sink: number;
  window: number;
}

/** per position: the next token's negative log-likelihood and the argmax */
function read(doc: Uint16Array, run: Run | null): { nll: Float64Array; top: Int32Array } {
  const s = (run?.policy === 'learned' ? withHead! : engine).createSession();
  if (run) s.setKvBudget(run.budget, run.sink, run.window, run.decay, run.policy);
  const nll = new Float64Array(L - 1), top = new Int32Array(L - 1);
  for (let t = 0; t < L - 1; t++) {
    const z = s.forward([doc[t]!]);
    let m = -Infinity, best = 0;
    for (let j = 0; j < V; j++) if (z[j]! > m) (m = z[j]!), (best = j);
    let sum = 0;
    for (let j = 0; j < V; j++) sum += Math.exp(z[j]! - m);
    nll[t] = m + Math.log(sum) - z[doc[t + 1]!]!;
    top[t] = best;
  }
  s.free();
  return { nll, top };
}

const t0 = performance.now();
const full = docs.map((d) => read(d, null));
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
const fullLoss = mean(full.flatMap((f) => [...f.nll]));

interface Row extends Run {
  fraction: number;
  loss: number;
  perplexity: number;
  /** positions >= budget: where the caches differ */
  tailLoss: number;
  tailPerplexity: number;
  fullTailPerplexity: number;
  tailAgreement: number;
}

function measure(run: Run, fraction: number): Row {
  const all: number[] = [], tail: number[] = [], fullTail: number[] = [];
  let agree = 0, n = 0;
  docs.forEach((d, i) => {
    const r = read(d, run);
    for (let t = 0; t < L - 1; t++) {
      all.push(r.nll[t]!);
      // position t's prediction is made with t + 1 rows cached: the caches differ from t = budget
      if (t >= run.budget) {
        tail.push(r.nll[t]!);
        fullTail.push(full[i]!.nll[t]!);
        agree += r.top[t] === full[i]!.top[t] ? 1 : 0;
        n++;
      }
    }
  });
  const row = { ...run, fraction, loss: mean(all), perplexity: Math.exp(mean(all)), tailLoss: mean(tail), tailPerplexity: Math.exp(mean(tail)), fullTailPerplexity: Math.exp(mean(fullTail)), tailAgreement: agree / n };
  console.error(`${run.policy} budget ${run.budget} decay ${run.decay}: ppl ${row.perplexity.toFixed(3)}, past the budget ${row.tailPerplexity.toFixed(3)} (full ${row.fullTailPerplexity.toFixed(3)}), agreement ${(100 * row.tailAgreement).toFixed(1)}%`);
  return row;
}

const fractions = [0.125, 0.25, 0.5, 0.75];
const settings = (budget: number, policy: KvPolicy, decay: number = KV_DEFAULTS.decay): Run => ({
  budget, policy, decay, sink: Math.min(KV_DEFAULTS.sink, Math.floor(budget / 4)), window: Math.floor(budget * KV_DEFAULTS.windowFraction),
});
const rows: Row[] = [];
const policies: KvPolicy[] = withHead ? ['attention', 'recent', 'learned'] : ['attention', 'recent'];
for (const f of fractions) for (const policy of policies) rows.push(measure(settings(Math.round(L * f), policy), f));
// the decay the default takes: measured beside its neighbours at the two tightest budgets
const sweep: Row[] = [];
for (const f of [0.125, 0.25])
  for (const decay of [0.5, 0.8, 0.9, 0.95, 0.99, 1]) sweep.push(measure(settings(Math.round(L * f), 'attention', decay), f));
const seconds = (performance.now() - t0) / 1000;

console.log(`machine: ${JSON.stringify(machine())}`);
console.log(`model: models/default (trained, ${model.config.numLayers} layers, ${model.config.layerKinds.filter((k) => k === 'mla').length} MLA), native engine`);
console.log(`documents: ${docs.length} held-out Brown documents, their first ${L} tokens each, read token by token; full cache perplexity ${Math.exp(fullLoss).toFixed(3)}\n`);
console.log(table(['budget', 'of length', 'policy', 'perplexity', 'vs full', 'past budget', 'full there', 'vs full', 'argmax agrees'], rows.map((r) => [
  r.budget, `${r.fraction * 100}%`, r.policy, r.perplexity.toFixed(3), `${((r.perplexity / Math.exp(fullLoss) - 1) * 100).toFixed(2)}%`,
  r.tailPerplexity.toFixed(3), r.fullTailPerplexity.toFixed(3), `${((r.tailPerplexity / r.fullTailPerplexity - 1) * 100).toFixed(2)}%`, `${(100 * r.tailAgreement).toFixed(1)}%`,
])));
console.log('\ndecay of the attention score (policy attention):');
console.log(table(['budget', 'decay', 'past budget', 'vs full', 'argmax agrees'], sweep.map((r) => [r.budget, r.decay, r.tailPerplexity.toFixed(3), `${((r.tailPerplexity / r.fullTailPerplexity - 1) * 100).toFixed(2)}%`, `${(100 * r.tailAgreement).toFixed(1)}%`])));
console.log(`\n${seconds.toFixed(0)} s`);

const svg = lineChart(`Held-out perplexity past the budget (${docs.length} docs x ${L} tokens, trained default model)`, 'MLA cache budget (tokens)', 'perplexity past the budget', [
  { name: 'attention score', points: rows.filter((r) => r.policy === 'attention').map((r) => [r.budget, r.tailPerplexity]) },
  { name: 'recent only', points: rows.filter((r) => r.policy === 'recent').map((r) => [r.budget, r.tailPerplexity]) },
  ...(withHead ? [{ name: 'learned head', points: rows.filter((r) => r.policy === 'learned').map((r): [number, number] => [r.budget, r.tailPerplexity]) }] : []),
  { name: 'full cache', points: rows.filter((r) => r.policy === 'attention').map((r) => [r.budget, r.fullTailPerplexity]) },
]);
const svgPath = join(root, 'bench', 'results', `kv-quality-${machineTag()}.svg`);
writeFileSync(svgPath, svg);
console.log(`wrote ${writeResult('kv-quality', { date: new Date().toISOString(), machine: machine(), model: 'models/default', documents: docs.length, length: L, fullPerplexity: Math.exp(fullLoss), defaults: KV_DEFAULTS, rows, decaySweep: sweep, seconds })} and ${svgPath}`);
