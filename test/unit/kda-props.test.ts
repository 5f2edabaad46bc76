import { describe, expect, it } from 'vitest';
import { KDA_CHUNK_LENGTHS, KernelError, type KdaChunkLength, type Kernels } from '../../src/engine/kernels.js';
import { relErr } from '../../src/verify/relerr.js';
import { allKernels } from '../helpers/kernels.js';
import { kdaRecurrence64 } from '../../src/verify/kda-ref64.js';
import { l2rows, Rng, SEED } from '../helpers/rng.js';

interface Case { T: number; H: number; K: number; V: number; gLo: number; l2: boolean }

function makeInputs(rng: Rng, c: Case) {
  const { T, H, K, V } = c;
  const q = rng.normals(T * H * K), k = rng.normals(T * H * K);
  if (!c.l2) {
    l2rows(q, K);
    l2rows(k, K);
  }
  return {
    q, k,
    v: rng.normals(T * H * V),
    g: rng.uniforms(T * H * K, c.gLo, 0),
    beta: rng.uniforms(T * H, 0, 1),
    S: rng.normals(H * K * V, 0.5),
  };
}

function run(kern: Kernels, inp: ReturnType<typeof makeInputs>, c: Case, mode: 'step' | 'chunk' | 'ref', chunk: KdaChunkLength = 16) {
  const S = inp.S.slice();
  const o = new Float32Array(c.T * c.H * c.V);
  const scale = 1 / Math.sqrt(c.K);
  const base = { ...inp, S, o, H: c.H, K: c.K, V: c.V, scale, l2norm: c.l2 };
  if (mode === 'chunk') kern.kdaPrefill({ ...base, T: c.T, chunk }, 'fast');
  else if (mode === 'ref') kern.kdaPrefill({ ...base, T: c.T }, 'ref');
  else
    for (let t = 0; t < c.T; t++) {
      const a = t * c.H * c.K, b = t * c.H * c.V;
      kern.kdaStep({
        ...base, q: inp.q.subarray(a, a + c.H * c.K), k: inp.k.subarray(a, a + c.H * c.K), g: inp.g.subarray(a, a + c.H * c.K),
        v: inp.v.subarray(b, b + c.H * c.V), beta: inp.beta.subarray(t * c.H, (t + 1) * c.H), o: o.subarray(b, b + c.H * c.V),
      });
    }
  return { S, o };
}

describe(`KDA property tests on fresh random inputs (seed ${SEED})`, () => {
  const rng = new Rng(SEED);
  // Chunk boundaries (63, 64, 65, 128+ragged), non-square heads, strong and weak decay.
  const cases: Case[] = [
    { T: 1, H: 3, K: 16, V: 8, gLo: -1, l2: false },
    { T: 63, H: 2, K: 32, V: 20, gLo: -0.5, l2: false },
    { T: 64, H: 1, K: 8, V: 64, gLo: -2, l2: true },
    { T: 65, H: 2, K: 64, V: 64, gLo: -0.05, l2: false },
    { T: 200, H: 2, K: 128, V: 128, gLo: -8, l2: true },
    { T: 131, H: 1, K: 4, V: 4, gLo: -30, l2: false },
  ];
  for (const c of cases) {
    it(`T=${c.T} H=${c.H} K=${c.K} V=${c.V} g>=${c.gLo}${c.l2 ? ' l2norm-in-kernel' : ''}: fast step, chunked and reference agree with float64`, async () => {
      const inp = makeInputs(rng, c);
      // The float64 recurrence sees what the kernels see after their own normalization.
      const q = inp.q.slice(), k = inp.k.slice();
      if (c.l2) {
        l2rows(q, c.K);
        l2rows(k, c.K);
      }
      const exact = kdaRecurrence64({ ...inp, q, k }, c.T, c.H, c.K, c.V, 1 / Math.sqrt(c.K));
      for (const kern of await allKernels()) {
        const ref = run(kern, inp, c, 'ref');
        for (const [mode, chunk] of [['step', 16], ...KDA_CHUNK_LENGTHS.map((n) => ['chunk', n])] as ['step' | 'chunk', KdaChunkLength][]) {
          const got = run(kern, inp, c, mode, chunk);
          const tag = `${kern.name} ${mode}${mode === 'chunk' ? chunk : ''} seed=${SEED}`;
          expect(relErr(got.o, ref.o), `${tag} o vs scalar ref`).toBeLessThan(1e-5);
          expect(relErr(got.S, ref.S), `${tag} S vs scalar ref`).toBeLessThan(1e-5);
          expect(relErr(got.o, exact.o), `${tag} o vs float64`).toBeLessThan(1e-5);
          expect(relErr(got.S, exact.S), `${tag} S vs float64`).toBeLessThan(1e-5);
        }
      }
    });
  }

  it('a prefill split at any point equals one prefill (state carries across calls)', async () => {
    const c: Case = { T: 150, H: 2, K: 32, V: 32, gLo: -1, l2: false }; // cut mid-chunk at any length
    const inp = makeInputs(rng, c);
    for (const kern of await allKernels()) {
      const whole = run(kern, inp, c, 'chunk');
      const cut = rng.int(1, c.T - 1);
      const S = inp.S.slice();
      const o = new Float32Array(c.T * c.H * c.V);
      for (const [t0, t1] of [[0, cut], [cut, c.T]] as const) {
        const a = t0 * c.H * c.K, b = t0 * c.H * c.V, a1 = t1 * c.H * c.K, b1 = t1 * c.H * c.V;
        kern.kdaPrefill({
          S, q: inp.q.subarray(a, a1), k: inp.k.subarray(a, a1), g: inp.g.subarray(a, a1), v: inp.v.subarray(b, b1),
          beta: inp.beta.subarray(t0 * c.H, t1 * c.H), o: o.subarray(b, b1), T: t1 - t0, H: c.H, K: c.K, V: c.V, scale: 1 / Math.sqrt(c.K),
        });
      }
      expect(relErr(o, whole.o), `${kern.name} cut=${cut}`).toBeLessThan(1e-5);
      expect(relErr(S, whole.S), `${kern.name} cut=${cut}`).toBeLessThan(1e-5);
    }
  });

  it('rejects sizes the kernels do not support, and short arrays, without touching memory', async () => {
    for (const kern of await allKernels()) {
      const S = new Float32Array(6 * 8), z = new Float32Array(8), o = new Float32Array(8);
      const bad = { S, q: z, k: z, v: z, g: z, beta: new Float32Array(1), o, H: 1, K: 6, V: 8, scale: 1 };
      expect(() => kern.kdaStep(bad)).toThrow(KernelError);
      expect(() => kern.kdaStep({ ...bad, K: 8, S: new Float32Array(63) })).toThrow(/S: has 63 elements, the shape needs 64/);
      expect(() => kern.kdaPrefill({ ...bad, K: 8, S: new Float32Array(64), T: 2 })).toThrow(RangeError);
      const ok = { ...bad, K: 8, S: new Float32Array(64) };
      expect(() => kern.kdaPrefill({ ...ok, T: 1, chunk: 24 as KdaChunkLength })).toThrow(/kle_kda_chunk failed: invalid/);
      expect(() => kern.kdaPrefill({ ...ok, T: 1, chunk: 128 as KdaChunkLength })).toThrow(KernelError);
      expect(() => kern.kdaStep({ ...bad, K: 2048, S: new Float32Array(2048 * 8), q: new Float32Array(2048), k: new Float32Array(2048), g: new Float32Array(2048) })).toThrow(KernelError);
    }
  });
});
