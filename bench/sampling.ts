// npm run bench:sampling [-- --quick]
// Sampling at vocabulary sizes from 512 to 262,144 (Kimi's is 163,840), every mode, the
// reference implementation (the TypeScript sampler this runtime had: copy, penalize, sort the
// whole vocabulary) against the AssemblyScript one reading the logits in the engine's memory
// (in place) and copied in (other backends), in Node, Bun, Deno (their binaries from npm) and
// workerd (Miniflare; its clocks stop while code runs, so it is timed from outside: requests
// that sample N times against ones that sample none). ms per token, medians. Writes
// bench/results/sampling-<machine>.json.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { Miniflare } from 'miniflare';
import { packageRoot } from '../src/node.js';
import { MODES, penaltiesByContext, runSampling, type SamplingRow } from './sampling-run.js';
import { machine, machineTag, table, writeResult } from './lib.js';
import { lineChart } from './svg.js';

const quick = process.argv.includes('--quick');
const replot = process.argv.includes('--replot'); // redraw the plot from the last results, measuring nothing
const root = packageRoot();
const SIZES = quick ? [512, 163_840] : [512, 4096, 32_000, 163_840, 262_144];
const RUNS = quick ? 20 : 100;
const mod = (f: string) => new WebAssembly.Module(readFileSync(join(root, 'wasm', 'dist', f)));
const tmp = mkdtempSync(join(tmpdir(), 'kle-sampling-'));

/** ms per token against vocabulary size, every mode, before and after, in Node (log-log) */
function plot(results: Record<string, SamplingRow[]>, sizes: number[]): void {
  const series = Object.keys(MODES).flatMap((mode) => {
    const rows = results.node!.filter((r) => r.mode === mode);
    return [
      { name: `${mode}, AssemblyScript`, points: sizes.map((v) => [v, rows.find((r) => r.vocab === v)!.fastInPlace] as [number, number]) },
      { name: `${mode}, before (sort)`, points: sizes.map((v) => [v, rows.find((r) => r.vocab === v)!.reference ?? NaN] as [number, number]).filter((p) => Number.isFinite(p[1])) },
    ];
  });
  writeFileSync(join(root, 'bench', 'results', `sampling-${machineTag()}.svg`), lineChart(`Sampling: ms per token vs vocabulary (Node, ${machine().cpu})`, 'vocabulary (log scale)', 'ms per token (log scale)', series, { logY: true }));
}
if (replot) {
  const last = JSON.parse(readFileSync(join(root, 'bench', 'results', `sampling-${machineTag()}.json`), 'utf8')) as { sizes: number[]; results: Record<string, SamplingRow[]> };
  plot(last.results, last.sizes);
  process.exit(0);
}

const results: Record<string, SamplingRow[]> = {};
results.node = await runSampling(mod('kle-simd.wasm'), mod('kle-as.wasm'), SIZES, { runs: RUNS, referenceUpTo: 262_144, clock: () => performance.now() });
const contexts = await penaltiesByContext(mod('kle-simd.wasm'), [1_000, 10_000, 100_000], RUNS);
console.error('node done');

await build({ entryPoints: [join(root, 'bench', 'sampling-cli.ts')], bundle: true, platform: 'node', format: 'esm', outfile: join(tmp, 'cli.mjs'), logLevel: 'warning' });
const runtimes: [string, string, string[]][] = [
  ['bun', join(root, 'node_modules', '@oven', 'bun-linux-x64', 'bin', 'bun'), []],
  ['deno', join(root, 'node_modules', '@deno', 'linux-x64-glibc', 'deno'), ['run', '--allow-read', '--allow-env']],
];
const versions: Record<string, string> = { node: process.version };
for (const [name, bin, args] of runtimes) {
  try {
    versions[name] = execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
    const out = execFileSync(bin, [...args, join(tmp, 'cli.mjs'), root, SIZES.join(','), String(RUNS), '262144'], { encoding: 'utf8', maxBuffer: 1 << 24, env: { ...process.env, DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' } });
    results[name] = JSON.parse(out.trim().split('\n').at(-1)!) as SamplingRow[];
    console.error(`${name} done`);
  } catch (e) {
    console.error(`${name}: ${(e as Error).message.split('\n')[0]}`);
  }
}

// workerd: N samples per request against 0, from outside
await build({ entryPoints: [join(root, 'bench', 'sampling-worker.ts')], bundle: true, platform: 'neutral', format: 'esm', outfile: join(tmp, 'bench', 'worker.mjs'), external: ['*.wasm'], logLevel: 'warning', mainFields: ['module', 'main'] });
const mf = new Miniflare({
  // the bundle keeps its imports of ../wasm/dist/*.wasm: lay the modules out the same way
  modulesRoot: tmp,
  modules: [
    { type: 'ESModule', path: join(tmp, 'bench', 'worker.mjs'), contents: readFileSync(join(tmp, 'bench', 'worker.mjs'), 'utf8') },
    { type: 'CompiledWasm', path: join(tmp, 'wasm', 'dist', 'kle-simd.wasm'), contents: readFileSync(join(root, 'wasm', 'dist', 'kle-simd.wasm')) },
    { type: 'CompiledWasm', path: join(tmp, 'wasm', 'dist', 'kle-as.wasm'), contents: readFileSync(join(root, 'wasm', 'dist', 'kle-as.wasm')) },
  ],
  compatibilityDate: '2025-01-01',
});
const timeReq = async (q: string) => {
  const t0 = performance.now();
  const r = await mf.dispatchFetch(`http://w/run?${q}`);
  await r.text();
  return performance.now() - t0;
};
results.workerd = [];
for (const V of SIZES) {
  for (const mode of Object.keys(MODES)) {
    const per = async (impl: string, n: number) => {
      const t: number[] = [];
      for (let k = 0; k < 5; k++) t.push(((await timeReq(`v=${V}&mode=${encodeURIComponent(mode)}&impl=${impl}&n=${n}`)) - (await timeReq(`v=${V}&mode=${encodeURIComponent(mode)}&impl=${impl}&n=0`))) / n);
      t.sort((a, b) => a - b);
      return Math.max(0, t[2]!);
    };
    const fastInPlace = await per('fast', RUNS);
    const reference = await per('reference', Math.max(3, Math.min(RUNS, Math.ceil(2e6 / V))));
    results.workerd.push({ mode, vocab: V, reference, fastCopy: NaN, fastInPlace });
  }
}
await mf.dispose();
versions.workerd = 'miniflare (workerd)';
console.error('workerd done');
rmSync(tmp, { recursive: true, force: true });

console.log(`machine: ${JSON.stringify(machine())}; ${Object.entries(versions).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
console.log('ms per token (median). reference: the TypeScript sampler (copy + full sort); in place: the AssemblyScript sampler on logits in the wasm engine\'s memory; copied: the same with the logits copied in first (native and CUDA backends).\n');
const fmt = (x: number | null) => (x === null || Number.isNaN(x) ? '-' : x < 1 ? x.toFixed(3) : x.toFixed(1));
for (const V of SIZES) {
  console.log(`\nvocabulary ${V}:\n`);
  console.log(table(['mode', ...Object.keys(results).flatMap((r) => [`${r} reference`, `${r} in place`, ...(r === 'workerd' ? [] : [`${r} copied`])]), 'speed-up (node)'],
    Object.keys(MODES).map((mode) => {
      const cells: string[] = [];
      for (const r of Object.keys(results)) {
        const row = results[r]!.find((x) => x.vocab === V && x.mode === mode);
        cells.push(fmt(row?.reference ?? null), fmt(row?.fastInPlace ?? null), ...(r === 'workerd' ? [] : [fmt(row?.fastCopy ?? null)]));
      }
      const n = results.node!.find((x) => x.vocab === V && x.mode === mode)!;
      return [mode, ...cells, n.reference ? `${(n.reference / n.fastInPlace).toFixed(0)}x` : '-'];
    })));
}
console.log('\npenalties and bias at 163,840 by context length (Node, in place; the counts are kept as the context grows):\n');
console.log(table(['context tokens', 'distinct', 'ms per token'], contexts.map((c) => [c.context, c.distinct, c.ms.toFixed(3)])));
writeResult('sampling', { versions, sizes: SIZES, runs: RUNS, results, contexts });
plot(results, SIZES);
