// npm run bench:arch [-- --quick] [-- --backend cuda]
// The architecture's claims on this runtime: four models of about the same size, Kimi Linear's
// hybrid (3 KDA : 1 MLA), the same hybrid with Gated DeltaNet's per-head gate (GDN-H), all-MLA
// and all-KDA; time per output token against context length
// (state at each length set directly from a session blob, so long contexts need no prefill),
// prefill latency against prompt length, and the state bytes per token, measured against the
// formula. wasm SIMD and native; with --backend cuda the engine's CUDA backend alone (on a GPU
// machine). Writes bench/results/arch-<machine>.json (arch-cuda-<gpu>.json) and SVG plots.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sessionBytes } from '../src/router/policy.js';
import { loadCudaBackend, nodeBackend, packageRoot } from '../src/node.js';
import { cannotHold, craftBlob, medianDecodeMs, placeStudyModel, STUDY_CONFIGS } from './study-models.js';
import { lineChart } from './svg.js';
import { gpuTag, machine, table, writeResult, writeResultAs, machineTag } from './lib.js';

const quick = process.argv.includes('--quick');
const onCuda = process.argv.includes('--backend') && process.argv[process.argv.indexOf('--backend') + 1] === 'cuda';
const cudaDevice = onCuda ? loadCudaBackend().device : null;
const BACKENDS = onCuda ? (['cuda'] as const) : (['wasm', 'native'] as const);
const SHOWN: string[] = onCuda ? ['cuda'] : ['wasm-simd', 'native'];
const REF = SHOWN.at(-1)!; // the backend the ratios are quoted for
const CONFIGS = STUDY_CONFIGS;
// up to 1M where it fits: wasm's 4 GiB and host memory decide below
const CONTEXTS = quick ? [1024, 4096, 16384] : [1024, 4096, 16384, 65536, 262144, 1048576];
const PREFILL = quick ? [256, 1024] : onCuda ? [1024, 4096, 16384, 32768] : [256, 1024, 4096];

interface Row { config: string; backend: string; context: number; tpotMs: number; stateBytes: number; formulaBytes: number }
const rows: Row[] = [];
const prefillRows: { config: string; backend: string; tokens: number; ms: number }[] = [];
const params: Record<string, number> = {};
for (const backendName of BACKENDS) {
  const backend = await nodeBackend(backendName);
  for (const [name, cfg] of Object.entries(CONFIGS)) {
    const { model, template } = await placeStudyModel(backend, name as keyof typeof CONFIGS);
    params[name] = model.bytes() / 4;
    for (const ctx of CONTEXTS) {
      const c = model.config;
      const bytes = sessionBytes(c, ctx);
      const why = cannotHold(backendName, bytes);
      if (why) {
        console.error(`${name} on ${backend.name}: ${ctx} tokens skipped (${why})`);
        continue;
      }
      const s = model.createSession();
      try {
        const blob = craftBlob(model, template, ctx);
        s.loadParts(blob.parts, blob.bytes);
      } catch (e) {
        console.error(`${name} on ${backend.name}: no state at ${ctx} tokens (${(e as Error).message})`);
        s.free();
        continue;
      }
      rows.push({ config: name, backend: backend.name, context: ctx, tpotMs: medianDecodeMs(s, quick ? 8 : 24), stateBytes: s.stateSize(), formulaBytes: bytes });
      s.free();
    }
    // one prefill first, so the first timed one pays for no lazy set-up (it read 68 ms for 256 tokens on the GPU, 29 for 1024)
    {
      const s = model.createSession();
      s.forward(Array.from({ length: 300 }, (_, i) => (i * 5 + 1) % 4096));
      s.free();
    }
    for (const T of PREFILL) {
      const toks = Array.from({ length: T }, (_, i) => (i * 7 + 3) % 4096);
      const s = model.createSession();
      const t0 = performance.now();
      s.forward(toks);
      prefillRows.push({ config: name, backend: backend.name, tokens: T, ms: performance.now() - t0 });
      s.free();
    }
    model.free();
    console.error(`done: ${name} on ${backend.name}`);
  }
}

console.log(`machine: ${JSON.stringify(machine())}${cudaDevice ? `, GPU: ${cudaDevice}` : ''}\n`);
console.log(`Three models of about the same size (${Object.entries(params).map(([k, v]) => `${k}: ${(v / 1e6).toFixed(1)}M`).join(', ')} params; 8 layers, hidden 512, no MoE).`);
console.log('Time per output token (median), by the context already in the session:\n');
const ctxs = [...new Set(rows.map((r) => r.context))];
for (const b of SHOWN) {
  console.log(table(['config', ...ctxs.map((c) => `${c / 1024}K ms`), 'state at max KiB'], Object.keys(CONFIGS).map((cfg) => {
    const rs = rows.filter((r) => r.backend === b && r.config === cfg);
    return [`${cfg} (${b})`, ...ctxs.map((c) => rs.find((r) => r.context === c)?.tpotMs.toFixed(2) ?? '-'), (rs.at(-1)!.stateBytes / 1024).toFixed(0)];
  })));
  console.log('');
}
const at = (cfg: string, b: string, c: number) => rows.find((r) => r.config === cfg && r.backend === b && r.context === c)?.tpotMs;
const maxNative = Math.max(...rows.filter((r) => r.backend === REF && r.config === 'all MLA').map((r) => r.context));
console.log(`TPOT ratio all-MLA / hybrid at ${maxNative / 1024}K (${REF}): ${((at('all MLA', REF, maxNative) ?? NaN) / (at('hybrid 3:1', REF, maxNative) ?? NaN)).toFixed(2)}x; hybrid TPOT growth 1K -> ${maxNative / 1024}K: ${((at('hybrid 3:1', REF, maxNative) ?? NaN) / (at('hybrid 3:1', REF, 1024) ?? NaN)).toFixed(2)}x, all-KDA: ${((at('all KDA', REF, maxNative) ?? NaN) / (at('all KDA', REF, 1024) ?? NaN)).toFixed(2)}x, all-MLA: ${((at('all MLA', REF, maxNative) ?? NaN) / (at('all MLA', REF, 1024) ?? NaN)).toFixed(2)}x`);
const perTok = (cfg: string) => {
  const rs = rows.filter((r) => r.config === cfg && r.backend === REF);
  return (rs.at(-1)!.stateBytes - rs[0]!.stateBytes) / (rs.at(-1)!.context - rs[0]!.context);
};
console.log(`State bytes per token (measured blob growth; formula MLA layers x (kv_lora + rope) x 4): hybrid ${perTok('hybrid 3:1')} (formula ${2 * 288 * 4}), all-MLA ${perTok('all MLA')} (formula ${8 * 288 * 4}), all-KDA ${perTok('all KDA')} (formula 0): hybrid needs ${(100 * (1 - perTok('hybrid 3:1') / perTok('all MLA'))).toFixed(0)}% less cache than all-MLA\n`);
console.log('Prefill latency (ms):\n');
console.log(table(['config', 'backend', ...PREFILL.map((t) => `${t} tok`)], Object.keys(CONFIGS).flatMap((cfg) => SHOWN.map((b) => [cfg, b, ...PREFILL.map((t) => prefillRows.find((r) => r.config === cfg && r.backend === b && r.tokens === t)?.ms.toFixed(0) ?? '-')]))));
const dir = join(packageRoot(), 'bench', 'results');
for (const b of SHOWN) {
  const svg = lineChart(`Time per output token vs context (${b}, ${cudaDevice ?? machine().cpu})`, 'context (tokens, log scale)', 'ms per token (log scale)', Object.keys(CONFIGS).map((cfg) => ({ name: cfg, points: rows.filter((r) => r.backend === b && r.config === cfg).map((r) => [r.context, r.tpotMs] as [number, number]) })), { logY: true });
  writeFileSync(join(dir, `arch-tpot-${b}-${cudaDevice ? gpuTag(cudaDevice) : machineTag()}.svg`), svg);
}
writeFileSync(join(dir, `arch-prefill-${cudaDevice ? `cuda-${gpuTag(cudaDevice)}` : machineTag()}.svg`), lineChart(`Prefill latency vs prompt length (${cudaDevice ?? machine().cpu})`, 'prompt tokens (log scale)', 'ms (log scale)', Object.keys(CONFIGS).flatMap((cfg) => SHOWN.map((b) => ({ name: `${cfg} ${b}`, points: prefillRows.filter((r) => r.config === cfg && r.backend === b).map((r) => [r.tokens, r.ms] as [number, number]) }))), { logY: true }));
const result = { date: new Date().toISOString(), machine: machine(), gpu: cudaDevice, params, rows, prefillRows };
console.log(`wrote ${cudaDevice ? writeResultAs(`arch-cuda-${gpuTag(cudaDevice)}`, result) : writeResult('arch', result)} and SVG plots`);
