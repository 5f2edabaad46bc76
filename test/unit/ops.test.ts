import { describe, expect, it } from 'vitest';
import { relErr } from '../../src/verify/relerr.js';
import { routeRef } from '../../src/verify/model-ref64.js';
import { allKernels } from '../helpers/kernels.js';
import { Rng, SEED } from '../helpers/rng.js';

const rng = new Rng(SEED ^ 0x0b5);
const sig = (x: number) => 1 / (1 + Math.exp(-x));
const softplus = (x: number) => (x > 20 ? x : Math.log1p(Math.exp(x)));

describe(`norms, activations, gates and the short conv against their formulas (seed ${SEED})`, () => {
  it('rmsnorm and gated rmsnorm', async () => {
    const rows = 5, D = 36, eps = 1e-6;
    const x = rng.normals(rows * D, 3), w = rng.normals(D), gate = rng.normals(rows * D, 4);
    const want = new Float64Array(rows * D), wantG = new Float64Array(rows * D);
    for (let r = 0; r < rows; r++) {
      let ss = 0;
      for (let i = 0; i < D; i++) ss += x[r * D + i]! ** 2;
      const inv = 1 / Math.sqrt(ss / D + eps);
      for (let i = 0; i < D; i++) {
        want[r * D + i] = x[r * D + i]! * inv * w[i]!;
        wantG[r * D + i] = want[r * D + i]! * sig(gate[r * D + i]!);
      }
    }
    for (const k of await allKernels())
      for (const impl of ['fast', 'ref'] as const) {
        const y = new Float32Array(rows * D), yg = new Float32Array(rows * D);
        k.rmsnorm({ x, w, y, rows, D, eps }, impl);
        k.rmsnormGated({ x, gate, w, y: yg, rows, D, eps }, impl);
        expect(relErr(y, want), `${k.name} ${impl}`).toBeLessThan(1e-6);
        expect(relErr(yg, wantG), `${k.name} ${impl} gated`).toBeLessThan(1e-6);
      }
  });

  it('l2norm rows', async () => {
    const rows = 4, D = 130, x0 = rng.normals(rows * D);
    for (const k of await allKernels()) {
      const x = x0.slice();
      k.l2norm({ x, rows, D, eps: 1e-6 });
      for (let r = 0; r < rows; r++) {
        let s = 0;
        for (let i = 0; i < D; i++) s += x[r * D + i]! ** 2;
        expect(Math.abs(s - 1), k.name).toBeLessThan(1e-5);
      }
    }
  });

  it('swiglu and sigmoid, including saturated inputs', async () => {
    const n = 103;
    const g = rng.normals(n, 8), u = rng.normals(n);
    g[0] = -200; g[1] = 200; g[2] = -87.5; g[3] = 88.5;
    const wantS = Float64Array.from(g, sig), wantW = Float64Array.from(g, (x, i) => x * sig(x) * u[i]!);
    for (const k of await allKernels())
      for (const impl of ['fast', 'ref'] as const) {
        const s = new Float32Array(n), w = new Float32Array(n);
        k.sigmoid({ x: g, y: s }, impl);
        k.swiglu({ gate: g, up: u, out: w }, impl);
        expect(relErr(s, wantS), `${k.name} ${impl}`).toBeLessThan(1e-6);
        expect(relErr(w, wantW), `${k.name} ${impl}`).toBeLessThan(1e-6);
        expect(s.every((v) => v >= 0 && v <= 1)).toBe(true);
      }
  });

  it('KDA gate: softplus form and lower-bound form', async () => {
    const nTok = 3, H = 2, K = 12;
    const x = rng.normals(nTok * H * K, 6), A_log = rng.normals(H), dtBias = rng.normals(H * K);
    // the softplus's regimes: log1p of a small e^-|z| (|z| past 17, where 1 + u rounds to 1),
    // the crossing of sqrt(2) in its log, and z near 0
    [-40, -25, -17.5, -9, -1.2, -0.35, 0, 0.35, 1.2, 9, 17.5, 25, 40].forEach((v, i) => (x[i * 5] = v - dtBias[(i * 5) % (H * K)]!));
    for (const lowerBound of [0, -5]) {
      const want = new Float64Array(nTok * H * K);
      for (let t = 0; t < nTok; t++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < K; i++) {
            const at = (t * H + h) * K + i, z = x[at]! + dtBias[h * K + i]!, a = Math.exp(A_log[h]!);
            want[at] = lowerBound === 0 ? -a * softplus(z) : lowerBound * sig(a * z);
          }
      for (const k of await allKernels())
        for (const impl of ['fast', 'ref'] as const) {
          const g = new Float32Array(nTok * H * K);
          k.kdaGate({ x, A_log, dtBias, g, nTok, H, K, lowerBound }, impl);
          expect(relErr(g, want), `${k.name} ${impl} lb=${lowerBound}`).toBeLessThan(1e-6);
          // value by value too: the tiny softplus values of very negative z keep their digits (the
          // sigmoid form's can fall below f32's range, e^-200, where only the L2 bound above means much)
          if (lowerBound === 0) {
            let worst = 0;
            for (let i = 0; i < g.length; i++) worst = Math.max(worst, Math.abs(g[i]! - want[i]!) / Math.abs(want[i]!));
            expect(worst, `${k.name} ${impl} softplus, worst value`).toBeLessThan(2e-6);
          }
          expect(g.every((v) => v <= 0)).toBe(true);
          if (lowerBound < 0) expect(g.every((v) => v >= lowerBound)).toBe(true);
        }
    }
  });

  it('short conv: causal taps over the rolling tail, and T tokens at once equal T single steps', async () => {
    const T = 9, C = 12, W = 4;
    const x = rng.normals(T * C), w = rng.normals(W * C), state0 = rng.normals((W - 1) * C);
    // the formula: y_t[c] = silu(sum_tap w[tap,c] * in[t - (W-1) + tap, c]), in = [state; x]
    const seq = new Float32Array((W - 1 + T) * C);
    seq.set(state0);
    seq.set(x, (W - 1) * C);
    const want = new Float64Array(T * C);
    for (let t = 0; t < T; t++)
      for (let c = 0; c < C; c++) {
        let acc = 0;
        for (let tap = 0; tap < W; tap++) acc += w[tap * C + c]! * seq[(t + tap) * C + c]!;
        want[t * C + c] = acc * sig(acc);
      }
    const wantTail = seq.slice(T * C);
    for (const k of await allKernels())
      for (const impl of ['fast', 'ref'] as const) {
        const state = state0.slice(), y = new Float32Array(T * C);
        k.convShort({ x, w, state, y, T, C, W, silu: true }, impl);
        expect(relErr(y, want), `${k.name} ${impl}`).toBeLessThan(1e-6);
        expect(Array.from(state)).toEqual(Array.from(wantTail));
        const st = state0.slice(), y1 = new Float32Array(T * C);
        for (let t = 0; t < T; t++) {
          k.convShort({ x: x.subarray(t * C, (t + 1) * C), w, state: st, y: y1.subarray(t * C, (t + 1) * C), T: 1, C, W, silu: true }, impl);
        }
        expect(relErr(y1, want), `${k.name} ${impl} stepwise`).toBeLessThan(1e-6);
        expect(Array.from(st)).toEqual(Array.from(wantTail));
      }
  });
});

describe(`MoE routing (seed ${SEED})`, () => {
  const cfgs = [
    { E: 8, topk: 2, nGroup: 1, topkGroup: 1, act: 'softmax' as const, renorm: false, scale: 1, bias: false },
    { E: 64, topk: 6, nGroup: 8, topkGroup: 3, act: 'sigmoid' as const, renorm: true, scale: 2.5, bias: true },
    { E: 256, topk: 8, nGroup: 1, topkGroup: 1, act: 'sigmoid' as const, renorm: true, scale: 2.446, bias: true },
    { E: 16, topk: 4, nGroup: 4, topkGroup: 2, act: 'softmax' as const, renorm: true, scale: 1, bias: false },
  ];
  for (const c of cfgs) {
    it(`E=${c.E} top-${c.topk} groups ${c.topkGroup}/${c.nGroup} ${c.act}${c.bias ? ' with bias' : ''}`, async () => {
      for (let trial = 0; trial < 5; trial++) {
        const logits = rng.normals(c.E, 2), bias = c.bias ? rng.normals(c.E, 0.5) : null;
        // the float64 model's routing, written from kle.h's description
        const want = routeRef({ numExperts: c.E, expertsPerToken: c.topk, numExpertGroup: c.nGroup, topkGroup: c.topkGroup, routerActivation: c.act, renormalize: c.renorm, routedScalingFactor: c.scale }, logits, bias);
        for (const k of await allKernels()) {
          const got = k.moeRoute({ logits, bias, topk: c.topk, nGroup: c.nGroup, topkGroup: c.topkGroup, act: c.act, renormalize: c.renorm, scale: c.scale });
          expect(Array.from(got.idx), `${k.name} seed=${SEED}`).toEqual(want.idx);
          expect(relErr(got.weights, want.w)).toBeLessThan(1e-6);
        }
      }
    });
  }

  it('rejects impossible routing', async () => {
    for (const k of await allKernels()) {
      expect(() => k.moeRoute({ logits: new Float32Array(10), topk: 2, nGroup: 3, act: 'softmax', renormalize: false, scale: 1 })).toThrow(/kle_moe_route/);
      expect(() => k.moeRoute({ logits: new Float32Array(8), topk: 5, nGroup: 4, topkGroup: 2, act: 'softmax', renormalize: false, scale: 1 })).toThrow(/invalid/);
    }
  });
});
