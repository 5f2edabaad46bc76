import type { Kernels } from '../../src/engine/kernels.js';
import { loadAllKernels } from '../../src/engine/node-kernels.js';

let all: Promise<Kernels[]> | undefined;
/** wasm SIMD, wasm scalar and native kernels, loaded once per test file. */
export function allKernels(): Promise<Kernels[]> {
  all ??= loadAllKernels();
  return all;
}
