// npm run bench:kernels [-- --quick]
// Times every kernel at Kimi Linear's shapes (32 heads, K = V = 128; MLA latent 512 + 64;
// hidden 2304) in wasm SIMD, wasm scalar (the same C without -msimd128) and native, measures
// this machine's read bandwidth in the same run, prints tables and writes
// bench/results/kernels-<machine>.json. Medians of repeated runs; nothing here is a test.
import type { KernelBackend } from '../src/engine/backend.js';
import { Kernels, WeightFormat, type WeightFormatName } from '../src/engine/kernels.js';
import { loadNativeBackend, loadWasmBackend } from '../src/engine/node-kernels.js';
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { bind, lastLevelCacheBytes, machine, machineTag, table, timeIt, writeResult, type BenchArg } from './lib.js';
import { barChart, lineChart } from './svg.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/engine/node-kernels.js';

const quick = process.argv.includes('--quick');
const H = 32, K = 128, V = 128, DL = 512, DR = 64, HIDDEN = 2304;
const CONTEXTS = quick ? [1024] : [1024, 4096, 16384];
const PREFILL_T = quick ? [256, 1024] : [256, 1024, 4096, 16384];

function rand(n: number, scale = 0.1): Float32Array {
  const a = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    a[i] = ((s >>> 8) / 16777216 - 0.5) * 2 * scale;
  }
  return a;
}

const backends: KernelBackend[] = [await loadWasmBackend('simd'), await loadWasmBackend('scalar'), loadNativeBackend()];
const names = backends.map((b) => b.name);

/** median ms of one bound call per backend */
function perBackend(fn: Parameters<typeof bind>[1], args: BenchArg[], runs: number): Record<string, number> {
  return perBackendRotating(fn, [args], runs);
}

/**
 * Median ms per call when the calls cycle through several argument sets, as a model's layers
 * do: with enough copies the working set exceeds the last-level cache and the kernel streams
 * from DRAM, which is what decoding a real model does.
 */
function perBackendRotating(fn: Parameters<typeof bind>[1], copies: BenchArg[][], runs: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const b of backends) {
    const cs = copies.map((args) => bind(b, fn, args));
    out[b.name] = timeIt(() => cs.forEach((c) => c.run()), runs).median / cs.length;
    cs.forEach((c) => c.dispose());
  }
  return out;
}

/**
 * Copies needed so that the bytes touched exceed twice the last-level cache as the kernel sees
 * it (read from sysfs; hosts of this kind have had 32 MiB and 480 MiB L3s), so that a decode
 * kernel streams from DRAM as it does in a real model. Capped at 1.5 GiB for wasm's 4 GiB memory.
 */
const LLC_BYTES = Math.min(2 * lastLevelCacheBytes(), 1.5 * 2 ** 30);
const copiesFor = (bytes: number) => Math.max(1, Math.ceil(LLC_BYTES / bytes));

// ------------------------------------------------------------------ bandwidth
console.log(`machine: ${JSON.stringify(machine())}`);
// a read of twice the LLC (at least 256 MiB): streams from DRAM
const bwFloats = Math.max(LLC_BYTES, (quick ? 64 : 256) * 2 ** 20) / 4;
const bwBuf = rand(bwFloats);
const bandwidth: Record<string, number> = {};
for (const b of backends) {
  const c = bind(b, 'kle_probe_read', [bwBuf, bwFloats]);
  const ms = timeIt(() => c.run(), 7).median;
  bandwidth[b.name] = (bwFloats * 4) / (ms / 1e3) / 1e9;
  c.dispose();
}
const machineBW = Math.max(...Object.values(bandwidth));
console.log(`\nRead bandwidth (sum of a ${(bwFloats * 4 / 2 ** 20).toFixed(0)} MiB float array, 4 independent accumulators)\n`);
console.log(table(['backend', 'GB/s'], names.map((n) => [n, bandwidth[n]!.toFixed(1)])));

// ------------------------------------------------------------------ decode kernels
interface DecodeRow { kernel: string; shape: string; bytes: number; ms: Record<string, number> }
const decode: DecodeRow[] = [];

{
  const S = rand(H * K * V), q = rand(H * K), k = rand(H * K), v = rand(H * V), g = rand(H * K, 0.01).map((x) => -Math.abs(x));
  const beta = rand(H).map((x) => 0.5 + x), o = new Float32Array(H * V);
  const args = (st: Float32Array): BenchArg[] => [st, q, k, v, g, beta, o, H, K, V, 1 / Math.sqrt(K), 0];
  // minimal traffic: the state read once and written once
  const hot = perBackend('kle_kda_step', args(S), 200);
  decode.push({ kernel: 'kda_step (state in cache)', shape: `H=${H} K=${K} V=${V}`, bytes: 2 * S.byteLength, ms: hot });
  const n = copiesFor(S.byteLength);
  const cold = perBackendRotating('kle_kda_step', Array.from({ length: n }, () => args(S.slice())), 30);
  decode.push({ kernel: `kda_step (${n} layers' states)`, shape: `H=${H} K=${K} V=${V}`, bytes: 2 * S.byteLength, ms: cold });
}
for (const L of CONTEXTS) {
  const D = DL + DR;
  const q = rand(H * D), cache = rand(L * D, 1), out = new Float32Array(H * DL);
  const n = copiesFor(cache.byteLength);
  const ms = perBackendRotating('kle_mla_decode', Array.from({ length: n }, (_, i) => [q, i ? cache.slice() : cache, L, H, D, DL, 1 / Math.sqrt(192), out, null]), L > 4096 ? 3 : 7);
  decode.push({ kernel: 'mla_decode', shape: `L=${L} H=${H} D=${DL}+${DR}`, bytes: cache.byteLength, ms });
}
{
  const kern = new Kernels(backends[2]!);
  const nOut = H * K;
  const W = rand(nOut * HIDDEN, 0.05), X = rand(HIDDEN), Y = new Float32Array(nOut);
  for (const fmt of ['f32', 'bf16', 'q8_0', 'q4_0'] as WeightFormatName[]) {
    const rb = kern.rowBytes(fmt, HIDDEN);
    const bytes = new Uint8Array(rb * nOut);
    for (let r = 0; r < nOut; r++) bytes.set(kern.quantize(fmt, W.subarray(r * HIDDEN, (r + 1) * HIDDEN)), r * rb);
    const fcode = WeightFormat[fmt];
    const n = copiesFor(bytes.byteLength);
    const ms = perBackendRotating('kle_matmul', Array.from({ length: n }, (_, i) => [fcode, i ? bytes.slice() : bytes, X, Y, 1, nOut, HIDDEN]), 10);
    decode.push({ kernel: `matvec_${fmt}`, shape: `${HIDDEN}->${nOut}`, bytes: bytes.byteLength, ms });
  }
}
console.log(`\nDecode kernels: median time per call; GB/s = minimal bytes moved / time; % of the ${machineBW.toFixed(1)} GB/s measured above.\nWorking sets cycle through copies (a model's layers) until they exceed ${LLC_BYTES / 2 ** 20} MiB, except the first row.\n`);
console.log(
  table(
    ['kernel', 'shape', 'simd ms', 'scalar ms', 'native ms', 'simd/scalar', 'simd GB/s', 'simd %bw', 'native GB/s', 'native %bw'],
    decode.map((r) => {
      const gb = (n: string) => r.bytes / (r.ms[n]! / 1e3) / 1e9;
      return [
        r.kernel, r.shape, r.ms['wasm-simd']!.toFixed(3), r.ms['wasm-scalar']!.toFixed(3), r.ms.native!.toFixed(3),
        `${(r.ms['wasm-scalar']! / r.ms['wasm-simd']!).toFixed(2)}x`,
        gb('wasm-simd').toFixed(1), `${((100 * gb('wasm-simd')) / machineBW).toFixed(0)}%`,
        gb('native').toFixed(1), `${((100 * gb('native')) / machineBW).toFixed(0)}%`,
      ];
    }),
  ),
);

// ------------------------------------------------------------------ KDA prefill: chunked vs step loop
interface PrefillRow { T: number; backend: string; runs: number; stepMs: number; stepMinMs: number; chunkMs: Record<number, number>; chunkMinMs: Record<number, number> }
const prefill: PrefillRow[] = [];
const maxT = PREFILL_T[PREFILL_T.length - 1]!;
const pq = rand(maxT * H * K), pk = rand(maxT * H * K), pv = rand(maxT * H * V);
const pg = rand(maxT * H * K, 0.05).map((x) => -Math.abs(x)), pb = rand(maxT * H).map((x) => 0.5 + x);
const S0 = rand(H * K * V);
const CHUNKS = [16, 32, 64];
for (const T of PREFILL_T) {
  const q = pq.subarray(0, T * H * K), k = pk.subarray(0, T * H * K), g = pg.subarray(0, T * H * K);
  const v = pv.subarray(0, T * H * V), beta = pb.subarray(0, T * H), o = new Float32Array(T * H * V);
  for (const b of backends) {
    if (b.name === 'wasm-scalar' && T > 4096) continue; // minutes per run; the ratio is clear by 4K
    // Rounds interleave the step loop and every chunk length, so that drift on a shared host
    // hits all of them alike; median and minimum over the rounds.
    const rounds = T >= 16384 ? 3 : T >= 4096 ? 5 : 9;
    // inputs placed once and shared by every variant (at T = 16K each array is 256 MiB)
    const ins = placeInputs(b, [q, k, v, g, beta, o]);
    const loop = stepLoop(b, T, ins);
    const calls = CHUNKS.map((chunk) => chunkCall(b, T, ins, chunk));
    const fns = [loop, ...calls.map((c) => c.run)];
    const times: number[][] = fns.map(() => []);
    fns.forEach((f) => f()); // warm-up
    for (let r = 0; r < rounds; r++)
      fns.forEach((f, i) => {
        const t0 = performance.now();
        f();
        times[i]!.push(performance.now() - t0);
      });
    calls.forEach((c) => c.dispose());
    ins.dispose();
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
    const min = (a: number[]) => Math.min(...a);
    prefill.push({
      T, backend: b.name, runs: rounds, stepMs: med(times[0]!), stepMinMs: min(times[0]!),
      chunkMs: Object.fromEntries(CHUNKS.map((c, i) => [c, med(times[i + 1]!)])),
      chunkMinMs: Object.fromEntries(CHUNKS.map((c, i) => [c, min(times[i + 1]!)])),
    });
  }
}

/** Prefill inputs [q, k, v, g, beta, o] placed once: wasm pointers, or the arrays for native. */
interface Placed { arrays: Float32Array[]; ptrs: number[]; dispose: () => void }
function placeInputs(b: KernelBackend, arrays: Float32Array[]): Placed {
  if (!(b instanceof WasmBackend)) return { arrays, ptrs: [], dispose: () => {} };
  const ptrs = arrays.map((a) => {
    const p = b.alloc(a.byteLength);
    b.f32(p, a.length).set(a);
    return p;
  });
  return { arrays, ptrs, dispose: () => ptrs.forEach((p) => b.free(p)) };
}

/** The chunked kernel over placed inputs, with its own state. */
function chunkCall(b: KernelBackend, T: number, ins: Placed, chunk: number): { run: () => void; dispose: () => void } {
  const scale = 1 / Math.sqrt(K);
  if (b instanceof WasmBackend) {
    const pS = b.alloc(S0.byteLength);
    b.f32(pS, S0.length).set(S0);
    const [pq, pk, pv, pg, pbeta, po] = ins.ptrs as [number, number, number, number, number, number];
    return { run: () => void b.raw('kle_kda_chunk', pS, pq, pk, pv, pg, pbeta, po, T, H, K, V, scale, 0, chunk), dispose: () => b.free(pS) };
  }
  const S = S0.slice();
  const [q, k, v, g, beta, o] = ins.arrays as [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array, Float32Array];
  return { run: () => void b.call('kle_kda_chunk', [S, q, k, v, g, beta, o, T, H, K, V, scale, 0, chunk]), dispose: () => {} };
}

/** T calls of the fast decode step over the tokens' own rows of the placed inputs. */
function stepLoop(b: KernelBackend, T: number, ins: Placed): () => void {
  const scale = 1 / Math.sqrt(K);
  if (b instanceof WasmBackend) {
    const pS = b.alloc(S0.byteLength);
    b.f32(pS, S0.length).set(S0);
    const [pq, pk, pv, pg, pbeta, po] = ins.ptrs as [number, number, number, number, number, number];
    return () => {
      for (let t = 0; t < T; t++) {
        const a = t * H * K * 4, c = t * H * V * 4;
        b.raw('kle_kda_step', pS, pq + a, pk + a, pv + c, pg + a, pbeta + t * H * 4, po + c, H, K, V, scale, 0);
      }
    };
  }
  const S = S0.slice();
  const [q, k, v, g, beta, o] = ins.arrays as [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array, Float32Array];
  return () => {
    for (let t = 0; t < T; t++) {
      const a = t * H * K, c = t * H * V;
      b.call('kle_kda_step', [S, q.subarray(a, a + H * K), k.subarray(a, a + H * K), v.subarray(c, c + H * V), g.subarray(a, a + H * K), beta.subarray(t * H, t * H + H), o.subarray(c, c + H * V), H, K, V, scale, 0]);
    }
  };
}

console.log(`\nKDA prefill, H=${H} K=${K} V=${V}: chunked (chunk 16 / 32 / 64) vs the decode step looped over the T tokens.\nMedians of interleaved rounds; speedup = step loop / chunked, of medians (and of minimums)\n`);
console.log(
  table(
    ['T', 'backend', 'rounds', 'step loop ms', 'chunk16 ms', 'chunk32 ms', 'chunk64 ms', 'speedup c16', 'speedup c64', 'c16 (min)', 'chunk16 tok/s'],
    prefill.map((r) => [
      r.T, r.backend, r.runs, r.stepMs.toFixed(1), r.chunkMs[16]!.toFixed(1), r.chunkMs[32]!.toFixed(1), r.chunkMs[64]!.toFixed(1),
      `${(r.stepMs / r.chunkMs[16]!).toFixed(2)}x`, `${(r.stepMs / r.chunkMs[64]!).toFixed(2)}x`, `${(r.stepMinMs / r.chunkMinMs[16]!).toFixed(2)}x`,
      Math.round((r.T / r.chunkMs[16]!) * 1e3),
    ]),
  ),
);

// ------------------------------------------------------------------ MLA prefill (causal)
const mlaPrefill: { T: number; ms: Record<string, number> }[] = [];
{
  const T = quick ? 128 : 512, D = DL + DR;
  const q = rand(T * H * D), cache = rand(T * D, 1), out = new Float32Array(T * H * DL);
  mlaPrefill.push({ T, ms: perBackend('kle_mla_prefill', [q, cache, 0, T, H, D, DL, 1 / Math.sqrt(192), out], 3) });
  console.log(`\nMLA causal prefill, T=${T} H=${H} D=${DL}+${DR} (one query at a time over its prefix)\n`);
  console.log(table(['backend', 'ms', 'tok/s'], names.map((n) => [n, mlaPrefill[0]!.ms[n]!.toFixed(1), Math.round((T / mlaPrefill[0]!.ms[n]!) * 1e3)])));
}

// plots: the decode kernels' share of bandwidth, and the chunked-vs-step prefill speedup
const resDir = join(packageRoot(), 'bench', 'results');
writeFileSync(join(resDir, `kernels-decode-${machineTag()}.svg`), barChart(`Decode kernels: GB/s of minimal traffic (read bandwidth ${machineBW.toFixed(1)} GB/s)`, 'GB/s', decode.map((r) => `${r.kernel.replace(/ \(.*\)/, '')} ${r.shape.split(' ')[0]}`), names.map((n) => ({ name: n, values: decode.map((r) => r.bytes / (r.ms[n]! / 1e3) / 1e9) }))));
writeFileSync(join(resDir, `kernels-prefill-${machineTag()}.svg`), lineChart('KDA prefill: step loop / chunked (chunk 16), by T', 'T (log scale)', 'speedup', names.map((n) => ({ name: n, points: prefill.filter((r) => r.backend === n).map((r) => [r.T, r.stepMs / r.chunkMs[16]!] as [number, number]) }))));
const file = writeResult('kernels', { date: new Date().toISOString(), machine: machine(), quick, bandwidthGBs: bandwidth, decode, prefill, mlaPrefill });
console.log(`\nwrote ${file}`);
