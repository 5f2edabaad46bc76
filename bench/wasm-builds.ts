// npm run bench:wasm-builds -- --rev REV   (or --before FILE.wasm)
// The committed wasm SIMD build (wasm/dist/kle-simd.wasm) against an older one, in one process, on
// the same inputs: the quantized and 16-bit matvecs at the 48B model's 2304 -> 4096 shape (one
// token, cycling through enough copies to stream from DRAM, as bench:kernels; and a 64-token
// Q8_0 matmul, prefill's path), then the synthetic 105M model's pp512 and tg128 as bench:peers
// measures them (Q8_0 and Q4_0 GGUFs as kimi-edge convert writes them). Builds alternate, medians
// of the rounds. Next to the matvecs: the read bandwidth of the same process (kle_probe_read).
// Writes bench/results/wasm-builds-<machine>.json.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kernels, WeightFormat, type WeightFormatName } from '../src/engine/kernels.js';
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { parseSafetensors } from '../src/formats/safetensors.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { loadModel } from '../src/model/load.js';
import { packageRoot } from '../src/node.js';
import { syntheticWeights } from '../src/weights/synthetic.js';
import { hfToGguf } from '../src/weights/to-gguf.js';
import { MID_CONFIG } from './generate.js';
import { bind, defaultTokenizer, enginePpTg, lastLevelCacheBytes, machine, median, table, timeIt, writeResult } from './lib.js';

const { values } = parseArgs({ options: { rev: { type: 'string' }, before: { type: 'string' }, rounds: { type: 'string', default: '5' }, quick: { type: 'boolean', default: false } } });
if (!values.rev && !values.before) throw new Error('pass --rev REV (a commit whose wasm/dist/kle-simd.wasm is the "before") or --before FILE.wasm');
const beforeBytes = values.before
  ? readFileSync(values.before)
  : execFileSync('git', ['show', `${values.rev}:wasm/dist/kle-simd.wasm`], { cwd: packageRoot(), maxBuffer: 1 << 26 });
const afterBytes = readFileSync(join(packageRoot(), 'wasm', 'dist', 'kle-simd.wasm'));
const builds = [
  { name: 'before', backend: await WasmBackend.instantiate('wasm-simd', beforeBytes) },
  { name: 'after', backend: await WasmBackend.instantiate('wasm-simd', afterBytes) },
];
const ROUNDS = Number(values.rounds);
const kernels = new Kernels(builds[1]!.backend);
console.log(`machine: ${JSON.stringify(machine())}; before: ${values.rev ? `git ${values.rev}` : values.before}`);

// read bandwidth: a sum over twice the last-level cache (at least 256 MiB)
const bwFloats = Math.max(Math.min(2 * lastLevelCacheBytes(), 1.5 * 2 ** 30), 256 * 2 ** 20) / 4;
const probe = bind(builds[1]!.backend, 'kle_probe_read', [new Float32Array(bwFloats).fill(1), bwFloats]);
const readGBps = (bwFloats * 4) / (timeIt(() => probe.run(), 5).median / 1e3) / 1e9;
probe.dispose();
console.log(`read bandwidth ${readGBps.toFixed(1)} GB/s`);

/** median ms per call of each build, the builds alternating round by round */
function alternate(run: (i: number) => number): number[] {
  const ms: number[][] = builds.map(() => []);
  for (let r = 0; r < ROUNDS; r++) builds.forEach((_, i) => ms[i]!.push(run(i)));
  return ms.map(median);
}

interface KernelRow { kernel: string; tokens: number; bytes: number; ms: number[] }
const kernelRows: KernelRow[] = [];
const N_IN = 2304, N_OUT = 4096;
const rand = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + 78.233) * s);
const W = rand(N_IN * N_OUT, 0.05);
const cases: [WeightFormatName, number][] = [['q8_0', 1], ['q4_0', 1], ['q4_k', 1], ['q6_k', 1], ['bf16', 1], ['q8_0', 64]];
for (const [fmt, T] of values.quick ? cases.slice(0, 2) : cases) {
  const rb = kernels.rowBytes(fmt, N_IN), bytes = new Uint8Array(rb * N_OUT);
  for (let r = 0; r < N_OUT; r++) bytes.set(kernels.quantize(fmt, W.subarray(r * N_IN, (r + 1) * N_IN)), r * rb);
  const X = rand(T * N_IN, 1), Y = new Float32Array(T * N_OUT);
  // one token: copies past the last-level cache, as a model's layers; 64 tokens: compute-bound, one copy
  const copies = T === 1 ? Math.max(1, Math.ceil(Math.min(2 * lastLevelCacheBytes(), 2 ** 30) / bytes.byteLength)) : 1;
  const calls = builds.map((b) => Array.from({ length: copies }, () => bind(b.backend, 'kle_matmul', [WeightFormat[fmt], bytes.slice(), X, Y, T, N_OUT, N_IN])));
  const ms = alternate((i) => timeIt(() => calls[i]!.forEach((c) => c.run()), 3).median / copies);
  calls.flat().forEach((c) => c.dispose());
  kernelRows.push({ kernel: `matmul ${fmt}`, tokens: T, bytes: bytes.byteLength, ms });
  console.error(`${fmt} x ${T}: ${ms.map((m) => m.toFixed(3)).join(' -> ')} ms`);
}
console.log(`\nMatvecs ${N_IN} -> ${N_OUT}, wasm SIMD, one thread: median ms a call over ${ROUNDS} alternating rounds; GB/s = weight bytes / time, % of the ${readGBps.toFixed(1)} GB/s read above\n`);
console.log(table(['kernel', 'tokens', 'before ms', 'after ms', 'before / after', 'after GB/s', 'after %bw'],
  kernelRows.map((r) => {
    // a read-bound figure for one token only: 64 tokens are bound by their arithmetic
    const gb = r.tokens === 1 ? r.bytes / (r.ms[1]! / 1e3) / 1e9 : NaN;
    return [r.kernel, r.tokens, r.ms[0]!.toFixed(3), r.ms[1]!.toFixed(3), `${(r.ms[0]! / r.ms[1]!).toFixed(2)}x`,
      Number.isNaN(gb) ? '-' : gb.toFixed(1), Number.isNaN(gb) ? '-' : `${((100 * gb) / readGBps).toFixed(0)}%`];
  })));

interface ModelRow { model: string; pp: number[]; tg: number[] }
const modelRows: ModelRow[] = [];
const tok = defaultTokenizer();
const mid = parseSafetensors(syntheticWeights(MID_CONFIG, 7));
for (const weights of values.quick ? (['Q4_0'] as const) : (['Q8_0', 'Q4_0'] as const)) {
  const gguf = hfToGguf(MID_CONFIG, mid, kernels, { weights, ...tok });
  const pp: number[][] = builds.map(() => []), tg: number[][] = builds.map(() => []);
  for (let r = 0; r < Math.min(ROUNDS, 3); r++)
    for (let i = 0; i < builds.length; i++) {
      const m = await loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend: builds[i]!.backend });
      const x = enginePpTg(m.engine, m.config.vocabSize, 512, values.quick ? 32 : 128, 1, true);
      m.free();
      pp[i]!.push(x.ppTokS);
      tg[i]!.push(x.tgTokS);
    }
  modelRows.push({ model: `105M ${weights}`, pp: pp.map(median), tg: tg.map(median) });
  console.error(`105M ${weights}: pp ${pp.map(median).map((v) => v.toFixed(0)).join(' -> ')}, tg ${tg.map(median).map((v) => v.toFixed(1)).join(' -> ')} tokens/s`);
}
console.log('\nThe synthetic 105M model, wasm SIMD, one thread (bench:peers\' pp512 and tg128), medians of alternating rounds\n');
console.log(table(['model', 'pp512 before', 'after', 'ratio', 'tg128 before', 'after', 'ratio'],
  modelRows.map((r) => [r.model, r.pp[0]!.toFixed(0), r.pp[1]!.toFixed(0), `${(r.pp[1]! / r.pp[0]!).toFixed(2)}x`, r.tg[0]!.toFixed(1), r.tg[1]!.toFixed(1), `${(r.tg[1]! / r.tg[0]!).toFixed(2)}x`])));
console.log(`\nwrote ${writeResult('wasm-builds', { date: new Date().toISOString(), machine: machine(), before: values.rev ?? values.before, rounds: ROUNDS, readGBps, kernels: kernelRows, models: modelRows })}`);
