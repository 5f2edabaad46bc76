// kimi-edge selftest [DIR]: verify every kernel build here against the shared KDA vectors in DIR
// (default: the package's test/fixtures), check absorbed MLA against attention the long way, and
// time the decode step.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bind } from '../engine/bound-call.js';
import { Kernels, KDA_CHUNK_CPU } from '../engine/kernels.js';
import { loadAllKernels } from '../engine/node-kernels.js';
import { readKdaVector, runKdaVector, type KdaPath } from '../verify/kda-vectors.js';
import { mlaLongWay64 } from '../verify/mla-ref64.js';
import { relErr } from '../verify/relerr.js';

const TOL = 1e-5;

/** Verifies every kernel build here; returns the exit code. */
export async function selftest(dir: string): Promise<number> {
  const kernels = await loadAllKernels();
  console.log(`kimi-linear-edge kernel self-test (${process.version}, ${process.platform}-${process.arch})`);
  console.log(`backends: ${kernels.map((k) => `${k.name}${k.simdEnabled() ? ' (SIMD)' : ''}`).join(', ')}\n`);
  let worst = 0;
  let failures = 0;
  const files = readdirSync(dir).filter((f) => /^kda_.*\.safetensors$/.test(f)).sort();
  const paths: KdaPath[] = ['step', `chunk${KDA_CHUNK_CPU}`, 'chunk64'];
  for (const f of files) {
    const vec = readKdaVector(new Uint8Array(readFileSync(join(dir, f))), f);
    const errs: number[] = [];
    for (const k of kernels)
      for (const p of paths) {
        const r = runKdaVector(vec, k, p);
        errs.push(r.relErrO, r.relErrState);
      }
    const max = Math.max(...errs);
    worst = Math.max(worst, max);
    if (!(max <= TOL)) failures++;
    console.log(`  ${f.padEnd(32)} B=${vec.B} T=${vec.T} H=${vec.H} K=${vec.K} V=${vec.V}  max rel err ${max.toExponential(2)}  ${max <= TOL ? 'ok' : 'FAIL'}`);
  }
  console.log(`KDA: ${files.length} vector files x ${kernels.length} backends x ${paths.join('/')}: worst ${worst.toExponential(2)} (bar ${TOL})\n`);

  const mla = checkMla(kernels);
  if (!(mla <= TOL)) failures++;
  console.log(`MLA: absorbed decode vs attention the long way (float64), L=300 H=8 latent 64+16: worst ${mla.toExponential(2)}  ${mla <= TOL ? 'ok' : 'FAIL'}\n`);

  console.log('KDA decode step at Kimi Linear shape (H=32, K=V=128), median of 200:');
  for (const k of kernels) console.log(`  ${k.name.padEnd(12)} ${timeStep(k).toFixed(1)} us/token/layer`);
  console.log(failures ? `\n${failures} check(s) FAILED` : '\nall checks passed');
  return failures ? 1 : 0;
}

function rnd(n: number, seed: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 2 * scale;
  }
  return a;
}

function checkMla(kernels: Kernels[]): number {
  const L = 300, H = 8, Dl = 64, Dr = 16, Dn = 32, Dvh = 32, D = Dl + Dr;
  const latent = rnd(L * Dl, 1), kRope = rnd(L * Dr, 2), qNope = rnd(H * Dn, 3), qRope = rnd(H * Dr, 4);
  const Wuk = rnd(H * Dn * Dl, 5, 0.2), Wuv = rnd(H * Dvh * Dl, 6, 0.2);
  const scale = 1 / Math.sqrt(Dn + Dr);
  const exact = mlaLongWay64({ latent, kRope, qNope, qRope, Wuk, Wuv }, L, H, Dl, Dr, Dn, Dvh, scale);
  const cache = new Float32Array(L * D);
  for (let j = 0; j < L; j++) {
    cache.set(latent.subarray(j * Dl, (j + 1) * Dl), j * D);
    cache.set(kRope.subarray(j * Dr, (j + 1) * Dr), j * D + Dl);
  }
  let worst = 0;
  for (const k of kernels) {
    const q = new Float32Array(H * D);
    k.mlaAbsorbQ({ W: Wuk, x: qNope, qLat: q, H, R: Dn, Dv: Dl, ldq: D });
    for (let h = 0; h < H; h++) q.set(qRope.subarray(h * Dr, (h + 1) * Dr), h * D + Dl);
    const oLat = new Float32Array(H * Dl), y = new Float32Array(H * Dvh);
    k.mlaDecode({ q, cache, L, H, D, Dv: Dl, scale, out: oLat });
    k.mlaUpV({ W: Wuv, o: oLat, y, H, R: Dvh, Dv: Dl });
    worst = Math.max(worst, relErr(y, exact));
  }
  return worst;
}

function timeStep(k: Kernels): number {
  const H = 32, K = 128, V = 128;
  const S = rnd(H * K * V, 7, 0.1), q = rnd(H * K, 8), key = rnd(H * K, 9), v = rnd(H * V, 10);
  const g = rnd(H * K, 11, 0.05).map((x) => -Math.abs(x)), beta = rnd(H, 12).map((x) => 0.5 + 0.4 * x), o = new Float32Array(H * V);
  // arguments placed once (in wasm memory for wasm), so the time is the kernel's alone
  const call = bind(k.backend, 'kle_kda_step', [S, q, key, v, g, beta, o, H, K, V, 1 / Math.sqrt(K), 0]);
  const t: number[] = [];
  for (let i = 0; i < 220; i++) {
    const t0 = performance.now();
    call.run();
    if (i >= 20) t.push(performance.now() - t0);
  }
  call.dispose();
  t.sort((a, b) => a - b);
  return t[t.length >> 1]! * 1e3;
}

