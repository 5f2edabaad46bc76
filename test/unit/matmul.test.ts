import { describe, expect, it } from 'vitest';
import type { WeightFormatName } from '../../src/engine/kernels.js';
import { relErr } from '../../src/verify/relerr.js';
import { allKernels } from '../helpers/kernels.js';
import { Rng, SEED } from '../helpers/rng.js';

const rng = new Rng(SEED ^ 0x3a7);
const FORMATS: WeightFormatName[] = ['f32', 'bf16', 'f16', 'q8_0', 'q4_0'];

/** Worst-case |w - decode(encode(w))| for one element, from the block's largest magnitude. */
function elementBound(fmt: WeightFormatName, w: number, blockAmax: number): number {
  switch (fmt) {
    case 'f32': return 0;
    case 'bf16': return Math.abs(w) * 2 ** -8;
    case 'f16': return Math.abs(w) * 2 ** -11 + 2 ** -25;
    // half a step (amax/127/2) plus the f16 rounding of the scale, times the largest code 127
    case 'q8_0': return blockAmax / 254 + blockAmax * 2 ** -11 + 1e-30;
    // the top code is clamped (8.5 -> 15), so the error reaches a whole step amax/8
    case 'q4_0': return (blockAmax / 8) * (1 + 2 ** -10) + 1e-30;
    // read only (no encoder here): test/unit/kquants.test.ts checks them against llama.cpp's decoder
    case 'q2_k': case 'q3_k': case 'q4_k': case 'q6_k': case 'q5_0': case 'q5_1': case 'q5_k': throw new Error(`${fmt} has no encoder`);
  }
}

function quantizeRows(k: Awaited<ReturnType<typeof allKernels>>[number], fmt: WeightFormatName, W: Float32Array, nOut: number, nIn: number) {
  const rb = k.rowBytes(fmt, nIn);
  const bytes = new Uint8Array(rb * nOut);
  for (let r = 0; r < nOut; r++) bytes.set(k.quantize(fmt, W.subarray(r * nIn, (r + 1) * nIn)), r * rb);
  return bytes;
}

describe(`matmul over f32, bf16, f16, q8_0 and q4_0 weights (seed ${SEED})`, () => {
  const shapes = [
    { T: 1, nOut: 7, nIn: 32 },
    { T: 3, nOut: 4, nIn: 96 },
    { T: 2, nOut: 9, nIn: 288 }, // crosses the 256-wide weight tile
    { T: 5, nOut: 13, nIn: 544 },
    // decode shapes of whole block pairs (the native Q4_0 decode path: 1 to 3 tokens, even block count)
    { T: 1, nOut: 5, nIn: 512 },
    { T: 3, nOut: 6, nIn: 256 },
  ];
  for (const fmt of FORMATS)
    for (const s of shapes) {
      it(`${fmt} T=${s.T} ${s.nOut}x${s.nIn}: fast equals reference, and the quantization error is within its bound`, async () => {
        const W = rng.normals(s.nOut * s.nIn), X = rng.normals(s.T * s.nIn);
        for (const k of await allKernels()) {
          const bytes = quantizeRows(k, fmt, W, s.nOut, s.nIn);
          const fast = new Float32Array(s.T * s.nOut), ref = new Float32Array(s.T * s.nOut);
          const quant = fmt === 'q8_0' || fmt === 'q4_0';
          k.matmul({ fmt, W: bytes, X, Y: fast, T: s.T, nOut: s.nOut, nIn: s.nIn });
          // quantized weights multiply int8 activations: the same integers in scalar code
          k.matmul({ fmt, W: bytes, X, Y: ref, T: s.T, nOut: s.nOut, nIn: s.nIn }, quant ? 'q8-ref' : 'ref');
          expect(relErr(fast, ref), `${k.name} fast vs ref`).toBeLessThan(1e-5);
          const deq = quant ? Float64Array.from(k.dequantize(fmt, bytes, s.nOut * s.nIn)) : null;
          // against the unquantized weights: |y - y_f32| <= sum_i |x_i| * bound_i (+ f32 rounding),
          // and for quantized weights the activations' rounding: sum_i |w_i| * amax_x(block) / 254
          for (let t = 0; t < s.T; t++)
            for (let n = 0; n < s.nOut; n++) {
              let exact = 0, bound = 0, mag = 0;
              for (let i = 0; i < s.nIn; i++) {
                const w = W[n * s.nIn + i]!, x = X[t * s.nIn + i]!;
                let amax = 0, xmax = 0;
                const b0 = i - (i % 32);
                for (let j = b0; j < b0 + 32 && j < s.nIn; j++) amax = Math.max(amax, Math.abs(W[n * s.nIn + j]!));
                for (let j = b0; j < b0 + 32 && j < s.nIn; j++) xmax = Math.max(xmax, Math.abs(X[t * s.nIn + j]!));
                exact += w * x;
                bound += Math.abs(x) * elementBound(fmt, w, amax);
                if (deq) bound += Math.abs(deq[n * s.nIn + i]!) * (xmax / 254) * (1 + 2 ** -20);
                mag += Math.abs(w * x);
              }
              const err = Math.abs(fast[t * s.nOut + n]! - exact);
              expect(err, `${k.name} y[${t},${n}] seed=${SEED}`).toBeLessThanOrEqual(bound + mag * 1e-6);
            }
        }
      });
    }

  it('f32, bf16 and f16 take any input width (scalar tails)', async () => {
    for (const fmt of ['f32', 'bf16', 'f16'] as const) {
      const nIn = 37, nOut = 5, T = 3;
      const W = rng.normals(nOut * nIn), X = rng.normals(T * nIn);
      for (const k of await allKernels()) {
        const bytes = quantizeRows(k, fmt, W, nOut, nIn);
        const a = new Float32Array(T * nOut), b = new Float32Array(T * nOut);
        k.matmul({ fmt, W: bytes, X, Y: a, T, nOut, nIn });
        k.matmul({ fmt, W: bytes, X, Y: b, T, nOut, nIn }, 'ref');
        expect(relErr(a, b), `${k.name} ${fmt}`).toBeLessThan(1e-5);
      }
    }
  });

  // the wasm decode converts four block scales in one vector: subnormal, largest and non-finite
  // halves as a hostile or unusual file has them must come out as the scalar conversion's
  it('q8_0 and q4_0 block scales of every f16 class: one token equals the scalar reference', async () => {
    const halves = [0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0x8001, 0xfbff, 0x7c00, 0xfc00, 0x7e00];
    const nIn = 256, nOut = halves.length; // 8 blocks a row: two four-block steps
    for (const fmt of ['q8_0', 'q4_0'] as const) {
      const X = rng.normals(nIn);
      for (const k of await allKernels()) {
        const bytes = quantizeRows(k, fmt, rng.normals(nOut * nIn), nOut, nIn);
        const rb = k.rowBytes(fmt, nIn), bb = fmt === 'q8_0' ? 34 : 18;
        // row r: its blocks' scales the half r, but for block 5 (second step, lane 1) which stays 1.0
        for (let r = 0; r < nOut; r++)
          for (let b = 0; b < nIn / 32; b++) {
            const h = b === 5 ? 0x3c00 : halves[r]!;
            bytes[r * rb + b * bb] = h & 0xff;
            bytes[r * rb + b * bb + 1] = h >> 8;
          }
        const fast = new Float32Array(nOut), ref = new Float32Array(nOut);
        k.matmul({ fmt, W: bytes, X, Y: fast, T: 1, nOut, nIn });
        k.matmul({ fmt, W: bytes, X, Y: ref, T: 1, nOut, nIn }, 'q8-ref');
        const deq = k.dequantize(fmt, bytes, nOut * nIn);
        for (let r = 0; r < nOut; r++) {
          const what = `${k.name} ${fmt} scale 0x${halves[r]!.toString(16)}`;
          if (!Number.isFinite(ref[r]!)) {
            // infinite scales: the same infinity, or NaN on both sides where infinities of both signs meet
            if (Number.isNaN(ref[r]!)) expect(Number.isNaN(fast[r]!), what).toBe(true);
            else expect(fast[r], what).toBe(ref[r]);
            continue;
          }
          // the two differ only in the order of their float sums: bounded by the terms' magnitude
          let mag = 0;
          for (let i = 0; i < nIn; i++) mag += Math.abs(deq[r * nIn + i]! * X[i]!);
          expect(Math.abs(fast[r]! - ref[r]!), what).toBeLessThanOrEqual(4e-6 * mag + 1e-40);
        }
      }
    }
  });

  it('quantized formats refuse widths that are not whole blocks', async () => {
    for (const k of await allKernels()) {
      expect(k.rowBytes('q8_0', 48)).toBe(-1);
      expect(k.rowBytes('q8_0', 64)).toBe(68);
      expect(k.rowBytes('q4_0', 64)).toBe(36);
      expect(() => k.matmul({ fmt: 'q4_0', W: new Uint8Array(100), X: new Float32Array(48), Y: new Float32Array(1), T: 1, nOut: 1, nIn: 48 })).toThrow(/q4_0/);
      expect(() => k.matmul({ fmt: 'q8_0', W: new Uint8Array(33), X: new Float32Array(32), Y: new Float32Array(1), T: 1, nOut: 1, nIn: 32 })).toThrow(/W \(bytes\): has 33/);
    }
  });
});

describe('GGUF block layouts, byte by byte', () => {
  it('q8_0: f16 scale then 32 signed bytes', async () => {
    const block = new Uint8Array(34);
    block[0] = 0x00; block[1] = 0x38; // f16 0.5
    for (let i = 0; i < 32; i++) block[2 + i] = (i - 16) & 0xff;
    for (const k of await allKernels()) {
      const x = k.dequantize('q8_0', block, 32);
      for (let i = 0; i < 32; i++) expect(x[i]).toBe(0.5 * (i - 16));
    }
  });

  it('q4_0: f16 scale then 16 bytes; low nibbles are elements 0-15, high nibbles 16-31, offset 8', async () => {
    const block = new Uint8Array(18);
    block[0] = 0x00; block[1] = 0x3c; // f16 1.0
    for (let j = 0; j < 16; j++) block[2 + j] = (j & 15) | ((15 - j) << 4);
    for (const k of await allKernels()) {
      const x = k.dequantize('q4_0', block, 32);
      for (let j = 0; j < 16; j++) {
        expect(x[j]).toBe(j - 8);
        expect(x[j + 16]).toBe(15 - j - 8);
      }
    }
  });

  it('q8_0 and q4_0 encode as llama.cpp describes: d = amax/127, and d = max/-8 with the sign of the largest', async () => {
    const src = new Float32Array(32).map((_, i) => (i - 10) / 4); // largest magnitude +5.25 at i=31
    for (const k of await allKernels()) {
      const q8 = k.quantize('q8_0', src);
      const d8 = new DataView(q8.buffer).getUint16(0, true);
      expect(d8).toBe(0x294b); // f16(5.25/127 = 1.3228 * 2^-5): exponent bits 10, mantissa round(0.3228 * 1024) = 331
      expect((q8[2 + 31]! << 24) >> 24).toBe(127);
      const q4 = k.quantize('q4_0', src);
      expect(new DataView(q4.buffer).getUint16(0, true)).toBe(0xb940); // f16(-0.65625)
      expect(q4[2 + 15]! >> 4).toBe(0); // x = +5.25 = -8 * d -> code 0
    }
  });

  it('bf16 rounds to nearest even; f16 handles max, overflow and subnormals', async () => {
    for (const k of await allKernels()) {
      const bf = k.quantize('bf16', new Float32Array([1.00390625, 1.01171875, -0]));
      expect(Array.from(new Uint16Array(bf.buffer))).toEqual([0x3f80, 0x3f82, 0x8000]);
      const h = k.quantize('f16', new Float32Array([65504, 65520, 2 ** -24, 2 ** -25, 1 / 3, -2]));
      expect(Array.from(new Uint16Array(h.buffer))).toEqual([0x7bff, 0x7c00, 0x0001, 0x0000, 0x3555, 0xc000]);
      expect(Array.from(k.dequantize('f16', h, 6))).toEqual([65504, Infinity, 2 ** -24, 0, 0.333251953125, -2]);
    }
  });
});
