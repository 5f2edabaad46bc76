import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/engine/node-kernels.js';
import { simdCounts } from '../helpers/wasm-simd.js';

const dist = join(packageRoot(), 'wasm', 'dist');
// The hot kernels and the least number of f32x4 instructions each must contain (their inner
// loops, counted once in the code, not per execution).
const HOT: Record<string, number> = {
  kle_kda_step: 40,
  kle_kda_chunk: 60,
  kle_mla_decode: 30,
  kle_matmul: 30,
  kle_rmsnorm_gated: 10,
  kle_conv_short: 8,
  kle_swiglu: 8,
  kle_probe_read: 4,
};

describe('the committed wasm builds', () => {
  it('kle-simd.wasm: every hot kernel runs on f32x4 instructions', async () => {
    const counts = await simdCounts(new Uint8Array(readFileSync(join(dist, 'kle-simd.wasm'))));
    for (const [fn, min] of Object.entries(HOT)) {
      const c = counts.get(fn);
      expect(c, `${fn} is exported`).toBeDefined();
      expect(c!.f32x4, `${fn}: f32x4 instructions`).toBeGreaterThanOrEqual(min);
      expect(c!.v128, `${fn}: v128 loads/stores`).toBeGreaterThan(0);
    }
  });

  it('kle-scalar.wasm: the same kernels with no SIMD at all (the baseline is honest)', async () => {
    const counts = await simdCounts(new Uint8Array(readFileSync(join(dist, 'kle-scalar.wasm'))));
    for (const fn of Object.keys(HOT)) {
      expect(counts.get(fn), fn).toEqual({ f32x4: 0, v128: 0 });
    }
  });
});
