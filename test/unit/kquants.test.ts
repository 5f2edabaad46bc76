// GGUF K-quants (Q2_K to Q6_K) and the 5-bit formats llama.cpp's mixes fall back to (Q5_0, Q5_1),
// as llama.cpp writes them: test/fixtures/kquants.safetensors holds
// rows that llama.cpp's llama-quantize wrote and the values its own gguf-py decoder gives them;
// every CPU backend must decode the same bits, and multiply them like any other format.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseSafetensors } from '../../src/formats/safetensors.js';
import { packageRoot } from '../../src/node.js';
import { relErr } from '../../src/verify/relerr.js';
import { FiniteCheck } from '../../src/weights/finite-check.js';
import { allKernels } from '../helpers/kernels.js';
import { WeightFormat } from '../../src/engine/kernels.js';
import { Rng, SEED } from '../helpers/rng.js';

const fixture = parseSafetensors(new Uint8Array(readFileSync(join(packageRoot(), 'test', 'fixtures', 'kquants.safetensors'))));
const ROWS = 8, COLS = 256;
const cases = (['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'q5_0', 'q5_1'] as const).map((fmt) => ({
  fmt,
  raw: fixture.tensors.get(`${fmt}_raw`)!.bytes.slice(),
  want: new Float32Array(fixture.tensors.get(`${fmt}_deq`)!.bytes.slice().buffer),
}));

describe('K-quants and their fallbacks (llama.cpp Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1)', () => {
  it('every backend decodes llama.cpp-written rows to the values llama.cpp decodes them to, bit for bit', async () => {
    for (const k of await allKernels())
      for (const c of cases) {
        expect(k.rowBytes(c.fmt, COLS), `${k.name} ${c.fmt}`).toBe(c.raw.length / ROWS);
        expect(k.rowBytes(c.fmt, c.fmt.endsWith('_k') ? 255 : 31)).toBe(-1);
        expect(k.dequantize(c.fmt, c.raw, ROWS * COLS), `${k.name} ${c.fmt}`).toEqual(c.want);
      }
  });

  // Q5_0 and the K-quants multiply int8 activations (kle_matmul_int8 says where) (integer dots, engine/kernels/matmul_q8.c): their fast path is
  // checked against the same integers in scalar code, and against float64 with the activations'
  // rounding bound (|w| * amax of the activations sharing its scale / 254 per element: 256 of
  // them for a K-quant, 32 for Q5_0); the others decode to f32 tiles
  it('matmuls over them equal float64 over the decoded values (f32 rounding; Q4_K: int8 activations); only Q4_K and Q6_K have an encoder', async () => {
    const rng = new Rng(SEED ^ 0x5a);
    for (const T of [1, 3, 6, 9]) {
      const X = rng.normals(T * COLS);
      for (const k of await allKernels())
        for (const c of cases) {
          const fast = new Float32Array(T * ROWS), ref = new Float32Array(T * ROWS);
          k.matmul({ fmt: c.fmt, W: c.raw, X, Y: fast, T, nOut: ROWS, nIn: COLS });
          const intDots = k.backend.call('kle_matmul_int8', [WeightFormat[c.fmt], T]) === 1;
          k.matmul({ fmt: c.fmt, W: c.raw, X, Y: ref, T, nOut: ROWS, nIn: COLS }, intDots ? 'q8-ref' : 'ref');
          expect(relErr(fast, ref), `${k.name} ${c.fmt} fast vs ref`).toBeLessThan(intDots ? 1e-5 : 1e-6);
          // an odd row count (natively Q4_K / Q5_K rows go two at a time): the same rows to the bit
          const odd = new Float32Array(T * (ROWS - 1));
          k.matmul({ fmt: c.fmt, W: c.raw, X, Y: odd, T, nOut: ROWS - 1, nIn: COLS });
          for (let t = 0; t < T; t++) expect(odd.subarray(t * (ROWS - 1), (t + 1) * (ROWS - 1)), `${k.name} ${c.fmt} T=${T}, ${ROWS - 1} rows`).toEqual(fast.subarray(t * ROWS, t * ROWS + ROWS - 1));
          for (let t = 0; t < T; t++)
            for (let r = 0; r < ROWS; r++) {
              let exact = 0, mag = 0, bound = 0;
              for (let i = 0; i < COLS; i++) {
                exact += c.want[r * COLS + i]! * X[t * COLS + i]!;
                mag += Math.abs(c.want[r * COLS + i]! * X[t * COLS + i]!);
                if (intDots) {
                  // the activations' scale: one per super-block of 256 for a K-quant (as llama.cpp's
                  // Q8_K), one per block of 32 for Q5_0 / Q5_1
                  const span = c.fmt.endsWith('_k') ? 256 : 32;
                  let xmax = 0;
                  for (let j = i - (i % span); j < i - (i % span) + span; j++) xmax = Math.max(xmax, Math.abs(X[t * COLS + j]!));
                  bound += Math.abs(c.want[r * COLS + i]!) * (xmax / 254) * (1 + 2 ** -20);
                }
              }
              expect(Math.abs(fast[t * ROWS + r]! - exact), `${k.name} ${c.fmt} T=${T}`).toBeLessThanOrEqual(bound + mag * 1e-6);
            }
          if (c.fmt !== 'q4_k' && c.fmt !== 'q6_k') expect(() => k.quantize(c.fmt, new Float32Array(COLS))).toThrow();
        }
    }
  });

  // kimi-edge convert --type q4_k_m writes Q4_K and Q6_K (engine/kernels/kquant_encode.c): the
  // same bytes from every backend; decoded, within the errors measured for them (Gaussian rows,
  // some super-blocks 100 times smaller than others; over 300 seeds the largest were relative RMS
  // 0.0728 for Q4_K and 0.0176 for Q6_K, largest error 0.1365 and 0.0285 of its super-block's
  // largest magnitude: the bounds below leave a margin over those, where the first ones, from one
  // seed, failed on about one seed in a hundred)
  it('Q4_K and Q6_K encoders: one result on every backend, within their measured errors', async () => {
    const rng = new Rng(SEED ^ 0x4b);
    const n = 256 * 64;
    const x = rng.normals(n);
    for (let i = 0; i < n; i++) if ((i >> 8) % 4 === 1) x[i]! *= 0.01;
    const limits = { q4_k: [0.08, 0.15], q6_k: [0.02, 0.032] } as const;
    for (const fmt of ['q4_k', 'q6_k'] as const) {
      const outs: Uint8Array[] = [];
      for (const k of await allKernels()) {
        const b = k.quantize(fmt, x);
        expect(b.length).toBe(k.rowBytes(fmt, n));
        outs.push(b);
        const y = k.dequantize(fmt, b, n);
        let se = 0, sx = 0, worst = 0;
        for (let s = 0; s < n; s += 256) {
          let amax = 0, emax = 0;
          for (let i = s; i < s + 256; i++) {
            se += (y[i]! - x[i]!) ** 2;
            sx += x[i]! ** 2;
            amax = Math.max(amax, Math.abs(x[i]!));
            emax = Math.max(emax, Math.abs(y[i]! - x[i]!));
          }
          worst = Math.max(worst, emax / amax);
        }
        expect(Math.sqrt(se / sx), `${k.name} ${fmt} relative RMS`).toBeLessThan(limits[fmt][0]);
        expect(worst, `${k.name} ${fmt} largest error / block amax`).toBeLessThan(limits[fmt][1]);
        expect(() => k.quantize(fmt, new Float32Array(255))).toThrow();
      }
      for (const o of outs.slice(1)) expect(o).toEqual(outs[0]);
    }
    // values on llama.cpp's grids: its Q4_K rows come back exactly, its Q6_K ones to 2.4e-4
    const k = (await allKernels())[0]!;
    for (const fmt of ['q4_k', 'q6_k'] as const) {
      const want = cases.find((c) => c.fmt === fmt)!.want;
      const again = k.dequantize(fmt, k.quantize(fmt, want), want.length);
      if (fmt === 'q4_k') expect(again).toEqual(want);
      else expect(relErr(again, want)).toBeLessThan(1e-3);
    }
  });

  it('a non-finite super-block scale is refused as the file streams in', () => {
    const BLOCK = { Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210, Q5_0: 22, Q5_1: 24 };
    for (const [dtype, at] of [['Q2_K', 81], ['Q2_K', 83], ['Q3_K', 109], ['Q4_K', 1], ['Q4_K', 3], ['Q5_K', 3], ['Q6_K', 209], ['Q5_0', 1], ['Q5_1', 1], ['Q5_1', 3]] as const) {
      const c = cases.find((x) => x.fmt === dtype.toLowerCase())!;
      const bad = c.raw.slice();
      const block = BLOCK[dtype];
      bad[block * 2 + at] = 0x7c; // the f16 exponent all ones in the third super-block: infinity
      bad[block * 2 + at - 1] = 0;
      const chk = new FiniteCheck(dtype, 't');
      expect(() => {
        for (let o = 0; o < bad.length; o += 37) chk.push(bad.subarray(o, o + 37)); // blocks split across chunks
      }).toThrow(/t: block 2 has a scale that is not finite/);
      expect(() => new FiniteCheck(dtype, 't').push(c.raw)).not.toThrow();
    }
  });
});
