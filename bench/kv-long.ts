// npm run bench:kv-long [-- --backend native|wasm|cuda] [--budget 4096] [--quick]
// Time per output token against the context a session already holds, out to 1M tokens, for the
// architecture study's hybrid (8 layers: 6 KDA, 2 MLA; bench/study-models.ts) with its full MLA
// cache and with a budget (docs/kv-budget.md), beside the all-KDA model of the same size: the
// cost a budget aims for ("a hybrid that decodes at all-KDA cost at any length"). State at each
// length comes from a crafted blob (version 1 for the full cache, version 2 with budget rows for
// the bounded one), so no prefill is needed; each point is the median of 96 decode steps.
// Natively and in wasm (to what wasm32 holds) here; with --backend cuda on a GPU machine.
// Writes bench/results/kv-long-<backend>-<machine or gpu>.json and an SVG.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { sessionBlobBytes } from '../src/engine/layer-kinds.js';
import { KV_DEFAULTS } from '../src/generate/kv-budget.js';
import { loadCudaBackend, nodeBackend, packageRoot, type NodeBackendName } from '../src/node.js';
import { gpuTag, machine, machineTag, table, writeResultAs } from './lib.js';
import { cannotHold, craftBlob, craftBoundedBlob, medianDecodeMs, placeStudyModel } from './study-models.js';
import { lineChart } from './svg.js';

const { values } = parseArgs({ options: { backend: { type: 'string', default: 'native' }, budget: { type: 'string', default: '4096' }, quick: { type: 'boolean', default: false } } });
const backendName = values.backend as NodeBackendName;
const budget = Number(values.budget);
const kv = { budget, sink: KV_DEFAULTS.sink, window: budget * KV_DEFAULTS.windowFraction, decay: KV_DEFAULTS.decay };
const device = backendName === 'cuda' ? loadCudaBackend().device : null;
// the budget's length, 2x and 16x it (the issue's flatness goal), then on to 1M
const CONTEXTS = values.quick ? [4096, 8192, 65536] : [4096, 8192, 16384, 65536, 262144, 1048576];
const STEPS = 96;

interface Row { model: string; cache: string; context: number; msPerToken: number; mlaCacheMiB: number; stateMiB: number }
const rows: Row[] = [];

const backend = await nodeBackend(backendName);
for (const name of ['hybrid 3:1', 'all KDA'] as const) {
  const { model, template } = await placeStudyModel(backend, name);
  // warm-up: a GPU's clocks ramp up under load, and the first context measured would pay for it
  {
    const s = model.createSession();
    s.forward([1]);
    const t0 = performance.now();
    while (performance.now() - t0 < 2000) medianDecodeMs(s, 16);
    s.free();
  }
  const c = model.config;
  const mla = c.layerKinds.filter((k) => k === 'mla').length, rowBytes = 4 * (c.mla.kvLoraRank + c.mla.qkRopeHeadDim);
  for (const ctx of CONTEXTS) {
    // the recent-only policy beside the attention scores: the same eviction without scoring, so
    // the two differ by what scoring costs and recent-only vs the full cache at the budget's
    // length by what eviction costs
    // (bounded first: the full cache's blob at 1M is 2.3 GB of JavaScript memory, whose
    // collection would otherwise land in the next run's timing)
    for (const policy of mla ? ['attention', 'recent', null] as const : [null]) {
      const bounded = policy !== null;
      const bytes = sessionBlobBytes(c, ctx, bounded ? budget : 0);
      const why = cannotHold(backendName, bytes);
      if (why) {
        console.error(`${name}: ${ctx} tokens skipped (${why})`);
        continue;
      }
      const s = model.createSession();
      if (bounded) s.load(craftBoundedBlob(model, template, ctx, { ...kv, recent: policy === 'recent' })); // the blob carries the budget
      else {
        const blob = craftBlob(model, template, ctx);
        s.loadParts(blob.parts, blob.bytes);
      }
      const ms = medianDecodeMs(s, STEPS);
      const held = s.kvLength;
      const cache = policy === null ? 'full' : policy === 'recent' ? `budget ${budget} recent` : `budget ${budget}`;
      rows.push({ model: name, cache, context: ctx, msPerToken: ms, mlaCacheMiB: (held * mla * (rowBytes + (bounded ? 8 : 0))) / 2 ** 20, stateMiB: s.stateSize() / 2 ** 20 });
      console.error(`${name} ${cache} at ${ctx}: ${ms.toFixed(3)} ms, ${held} rows per MLA layer`);
      s.free();
    }
  }
  model.free();
}

const where = device ?? machine().cpu;
console.log(`machine: ${JSON.stringify(machine())}${device ? `, GPU: ${device}` : ''}; backend ${backend.name}`);
console.log(`time per output token (median of ${STEPS}) by the context already held; budget ${budget} (sink ${kv.sink}, window ${kv.window}, decay ${kv.decay})\n`);
const ctxs = [...new Set(rows.map((r) => r.context))];
const series = [['hybrid 3:1', 'full'], ['hybrid 3:1', `budget ${budget}`], ['hybrid 3:1', `budget ${budget} recent`], ['all KDA', 'full']] as const;
console.log(table(['model', 'MLA cache', ...ctxs.map((x) => `${x / 1024}K ms`), 'MLA cache at the longest, MiB'], series.map(([m, cache]) => {
  const rs = rows.filter((r) => r.model === m && r.cache === cache);
  return [m, cache, ...ctxs.map((x) => rs.find((r) => r.context === x)?.msPerToken.toFixed(3) ?? '-'), rs.at(-1)?.mlaCacheMiB.toFixed(1) ?? '-'];
})));
const at = (m: string, cache: string, x: number) => rows.find((r) => r.model === m && r.cache === cache && r.context === x)?.msPerToken;
const longest = Math.max(...rows.filter((r) => r.cache === 'full' && r.model === 'hybrid 3:1').map((r) => r.context));
const bFirst = at('hybrid 3:1', `budget ${budget}`, ctxs[0]!), bLast = at('hybrid 3:1', `budget ${budget}`, longest);
const rFirst = at('hybrid 3:1', `budget ${budget} recent`, ctxs[0]!), fFirst = at('hybrid 3:1', 'full', ctxs[0]!);
console.log(`\nat ${ctxs[0]! / 1024}K (the budget's length): scoring costs ${(((bFirst ?? NaN) - (rFirst ?? NaN)) * 1000).toFixed(0)} us per token (attention - recent), evicting ${(((rFirst ?? NaN) - (fFirst ?? NaN)) * 1000).toFixed(0)} us (recent - full)`);
const flat = (at('hybrid 3:1', `budget ${budget}`, 16 * budget) ?? NaN) / (at('hybrid 3:1', `budget ${budget}`, 2 * budget) ?? NaN);
console.log(`budget: time per token at 16x the budget over 2x: ${flat.toFixed(3)} (goal: within 10%)`);
console.log(`at ${longest / 1024}K: full / budget ${((at('hybrid 3:1', 'full', longest) ?? NaN) / (bLast ?? NaN)).toFixed(2)}x; budget / all-KDA ${((bLast ?? NaN) / (at('all KDA', 'full', longest) ?? NaN)).toFixed(2)}x; budget ${longest / 1024}K / ${ctxs[0]! / 1024}K ${((bLast ?? NaN) / (bFirst ?? NaN)).toFixed(3)}x`);
const tag = device ? `cuda-${gpuTag(device)}` : `${backend.name}-${machineTag()}`;
const svg = lineChart(`Time per token vs context, full MLA cache vs budget ${budget} (${backend.name}, ${where})`, 'context (tokens, log scale)', 'ms per token (log scale)',
  series.map(([m, cache]) => ({ name: `${m} ${cache}`, points: rows.filter((r) => r.model === m && r.cache === cache).map((r): [number, number] => [r.context, r.msPerToken]) })), { logY: true });
const svgPath = join(packageRoot(), 'bench', 'results', `kv-long-${tag}.svg`);
writeFileSync(svgPath, svg);
console.log(`wrote ${writeResultAs(`kv-long-${tag}`, { date: new Date().toISOString(), machine: machine(), gpu: device, backend: backend.name, kv, steps: STEPS, flat16over2: flat, rows })} and ${svgPath}`);
