import { describe, expect, it } from 'vitest';
import { relErr } from '../../src/verify/relerr.js';
import { allKernels } from '../helpers/kernels.js';
import { mlaLongWay64 } from '../../src/verify/mla-ref64.js';
import { Rng, SEED } from '../helpers/rng.js';

const rng = new Rng(SEED ^ 0x5eed);

/** Random MLA problem; the latent cache row is [latent (Dl) | k_rope (Dr)]. */
function problem(L: number, H: number, Dl: number, Dr: number, Dn: number, Dvh: number) {
  const latent = rng.normals(L * Dl), kRope = rng.normals(L * Dr);
  const cache = new Float32Array(L * (Dl + Dr));
  for (let j = 0; j < L; j++) {
    cache.set(latent.subarray(j * Dl, (j + 1) * Dl), j * (Dl + Dr));
    cache.set(kRope.subarray(j * Dr, (j + 1) * Dr), j * (Dl + Dr) + Dl);
  }
  return {
    latent, kRope, cache,
    qNope: rng.normals(H * Dn), qRope: rng.normals(H * Dr),
    Wuk: rng.normals(H * Dn * Dl, 1 / Math.sqrt(Dl)), Wuv: rng.normals(H * Dvh * Dl, 1 / Math.sqrt(Dl)),
  };
}

describe(`MLA absorbed decode against attention the long way (seed ${SEED})`, () => {
  const shapes = [
    { L: 1, H: 2, Dl: 16, Dr: 0, Dn: 8, Dvh: 8 },
    { L: 37, H: 5, Dl: 32, Dr: 8, Dn: 16, Dvh: 12 },
    { L: 130, H: 4, Dl: 64, Dr: 16, Dn: 32, Dvh: 32 },
  ];
  for (const s of shapes) {
    it(`L=${s.L} H=${s.H} latent=${s.Dl}+${s.Dr} nope=${s.Dn} v=${s.Dvh}`, async () => {
      const p = problem(s.L, s.H, s.Dl, s.Dr, s.Dn, s.Dvh);
      const D = s.Dl + s.Dr;
      const scale = 1 / Math.sqrt(s.Dn + s.Dr);
      const exact = mlaLongWay64(p, s.L, s.H, s.Dl, s.Dr, s.Dn, s.Dvh, scale);
      for (const k of await allKernels()) {
        for (const impl of ['fast', 'ref'] as const) {
          // absorb: q = [W_uk^T q_nope | q_rope]
          const q = new Float32Array(s.H * D);
          k.mlaAbsorbQ({ W: p.Wuk, x: p.qNope, qLat: q, H: s.H, R: s.Dn, Dv: s.Dl, ldq: D }, impl);
          for (let h = 0; h < s.H; h++) q.set(p.qRope.subarray(h * s.Dr, (h + 1) * s.Dr), h * D + s.Dl);
          const oLat = new Float32Array(s.H * s.Dl);
          k.mlaDecode({ q, cache: p.cache, L: s.L, H: s.H, D, Dv: s.Dl, scale, out: oLat }, impl);
          const y = new Float32Array(s.H * s.Dvh);
          k.mlaUpV({ W: p.Wuv, o: oLat, y, H: s.H, R: s.Dvh, Dv: s.Dl }, impl);
          expect(relErr(y, exact), `${k.name} ${impl} seed=${SEED}`).toBeLessThan(1e-5);
        }
      }
    });
  }

  it('the scored decode keeps each row\'s attention (the bounded cache\'s scores) and the same output', async () => {
    for (const [L, H, D, Dv] of [[1, 2, 16, 16], [45, 5, 40, 32], [300, 4, 80, 64]] as const) {
      const q = rng.normals(H * D), cache = rng.normals(L * D, 0.5), before = Float32Array.from(rng.normals(L), Math.abs);
      const scale = 0.2, decay = 0.9;
      // float64: softmax weights per head, averaged; the last row starts fresh
      const want = new Float64Array(L);
      for (let h = 0; h < H; h++) {
        const sc = Array.from({ length: L }, (_, j) => {
          let a = 0;
          for (let d = 0; d < D; d++) a += q[h * D + d]! * cache[j * D + d]!;
          return a * scale;
        });
        const m = Math.max(...sc), z = sc.reduce((acc, x) => acc + Math.exp(x - m), 0);
        sc.forEach((x, j) => (want[j]! += Math.exp(x - m) / z / H));
      }
      for (let j = 0; j < L - 1; j++) want[j]! += decay * before[j]!;
      for (const k of await allKernels()) {
        const plain = new Float32Array(H * Dv);
        k.mlaDecode({ q, cache, L, H, D, Dv, scale, out: plain });
        for (const impl of ['fast', 'ref'] as const) {
          const out = new Float32Array(H * Dv), score = before.slice();
          k.mlaDecodeScored({ q, cache, L, H, D, Dv, scale, out, score, decay }, impl);
          expect(relErr(score, want), `${k.name} ${impl} L=${L}`).toBeLessThan(1e-5);
          if (impl === 'fast') expect(out).toEqual(plain); // the same kernel: scoring changes no output bit
          else expect(relErr(out, plain)).toBeLessThan(1e-5);
        }
      }
    }
  });

  it('split-KV partials merged by log-sum-exp equal the whole decode', async () => {
    const L = 203, H = 6, D = 40, Dv = 32;
    const q = rng.normals(H * D), cache = rng.normals(L * D, 2);
    for (const k of await allKernels()) {
      const whole = new Float32Array(H * Dv), lse = new Float32Array(H);
      k.mlaDecode({ q, cache, L, H, D, Dv, scale: 0.3, out: whole, lse });
      const cuts = [0, rng.int(1, 60), rng.int(61, 150), 150, L]; // includes an empty split
      const n = cuts.length - 1;
      const outs = new Float32Array(n * H * Dv), lses = new Float32Array(n * H);
      for (let i = 0; i < n; i++) {
        k.mlaDecodePartial({ q, cache, j0: cuts[i]!, j1: cuts[i + 1]!, H, D, Dv, scale: 0.3, out: outs.subarray(i * H * Dv, (i + 1) * H * Dv), lse: lses.subarray(i * H, (i + 1) * H) });
      }
      const merged = new Float32Array(H * Dv), mlse = new Float32Array(H);
      k.mlaMerge({ outs, lses, n, H, Dv, out: merged, lse: mlse });
      expect(relErr(merged, whole), k.name).toBeLessThan(1e-5);
      expect(relErr(mlse, lse), k.name).toBeLessThan(1e-5);
    }
  });

  it('stays finite when scores are huge (online softmax subtracts the running max)', async () => {
    const L = 64, H = 2, D = 8, Dv = 8;
    const q = rng.normals(H * D, 100), cache = rng.normals(L * D, 100);
    for (const k of await allKernels()) {
      const out = new Float32Array(H * Dv), ref = new Float32Array(H * Dv);
      k.mlaDecode({ q, cache, L, H, D, Dv, scale: 1, out });
      k.mlaDecode({ q, cache, L, H, D, Dv, scale: 1, out: ref }, 'ref');
      expect(out.every(Number.isFinite)).toBe(true);
      expect(relErr(out, ref), k.name).toBeLessThan(1e-5);
    }
  });

  it('causal prefill equals one decode per query over its prefix', async () => {
    const L0 = 10, T = 23, H = 3, D = 24, Dv = 16;
    const q = rng.normals(T * H * D), cache = rng.normals((L0 + T) * D);
    for (const k of await allKernels()) {
      const out = new Float32Array(T * H * Dv), ref = new Float32Array(T * H * Dv);
      k.mlaPrefill({ q, cache, L0, T, H, D, Dv, scale: 0.2, out });
      k.mlaPrefill({ q, cache, L0, T, H, D, Dv, scale: 0.2, out: ref }, 'ref');
      expect(relErr(out, ref), k.name).toBeLessThan(1e-5);
      const last = new Float32Array(H * Dv);
      k.mlaDecode({ q: q.subarray((T - 1) * H * D), cache, L: L0 + T, H, D, Dv, scale: 0.2, out: last });
      expect(relErr(out.subarray((T - 1) * H * Dv), last)).toBeLessThan(1e-6);
    }
  });
});
