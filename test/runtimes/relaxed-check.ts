// Run by relaxed.test.ts in Deno and Bun (which run relaxed SIMD as specified), from the sources:
// the relaxed-SIMD build's quantized matvecs against the SIMD build's and the scalar integer
// reference, on the same weights and tokens. Prints one JSON line.
import { readFileSync } from 'node:fs';
import { Kernels, type WeightFormatName } from '../../src/engine/kernels.js';
import { relaxedSimdWorks } from '../../src/engine/relaxed-simd.js';
import { WasmBackend } from '../../src/engine/wasm-backend.js';

const dist = new URL('../../wasm/dist/', import.meta.url);
const simd = new Kernels(await WasmBackend.instantiate('wasm-simd', readFileSync(new URL('kle-simd.wasm', dist))));
const relaxed = new Kernels(await WasmBackend.instantiate('wasm-relaxed', readFileSync(new URL('kle-simd-relaxed.wasm', dist))));

let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
const rows: { fmt: string; T: number; vsSimd: number; vsRef: number; simdVsRef: number }[] = [];
const worst = (a: Float32Array, b: Float32Array) => {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) (num += (a[i]! - b[i]!) ** 2), (den += b[i]! ** 2);
  return Math.sqrt(num / den);
};
function q5kRows(nOut: number, nIn: number): Uint8Array {
  const out = new Uint8Array((nOut * nIn / 256) * 176).map(() => (rand() * 128 + 128) & 255);
  for (let b = 0; b < out.length; b += 176) out.set([0x1f, 0x21, 0x1f, 0x21], b);
  return out;
}
for (const fmt of ['q4_k', 'q5_k', 'q6_k', 'q8_0', 'q4_0'] as WeightFormatName[])
  for (const T of [1, 2, 3]) {
    const nOut = 48, nIn = 768;
    // Q5_K has no encoder here: random bytes with sane scales (f16 0.01 for d and dmin)
    const W = fmt === 'q5_k' ? q5kRows(nOut, nIn) : simd.quantize(fmt, new Float32Array(nOut * nIn).map(rand));
    const X = new Float32Array(T * nIn).map(rand);
    const run = (k: Kernels, impl: 'fast' | 'q8-ref') => {
      const Y = new Float32Array(T * nOut);
      k.matmul({ fmt, W, X, Y, T, nOut, nIn }, impl);
      return Y;
    };
    const r = run(relaxed, 'fast'), s = run(simd, 'fast'), ref = run(simd, 'q8-ref');
    rows.push({ fmt, T, vsSimd: worst(r, s), vsRef: worst(r, ref), simdVsRef: worst(s, ref) });
  }
const g = globalThis as unknown as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
const runtime = g.Deno ? `deno ${g.Deno.version.deno}` : g.Bun ? `bun ${g.Bun.version}` : 'unknown';
console.log(JSON.stringify({ runtime, relaxedSimdWorks: relaxedSimdWorks(), rows }));
