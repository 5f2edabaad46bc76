// The CUDA engine addon from Node: CI builds it (nvcc, no GPU), so there it must refuse to start
// with a clear reason; on a GPU machine it must name the device. The engine itself is checked on
// the GPU by bench/cuda-engine.ts (kernels-cuda/run-gpu.sh engine).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CudaBackend } from '../../src/engine/cuda-backend.js';
import { packageRoot } from '../../src/node.js';

const addon = join(packageRoot(), 'build', 'cuda', 'kle-cuda.node');

describe('CUDA backend', () => {
  it('names the build command when the addon is missing', () => {
    expect(() => CudaBackend.load(join(packageRoot(), 'build', 'cuda', 'no-such.node'))).toThrow(/npm run build:cuda/);
  });

  it.runIf(existsSync(addon))('loads the built addon: a device with its name, or a clear refusal without one', () => {
    let backend: CudaBackend | null = null;
    try {
      backend = CudaBackend.load(addon);
    } catch (e) {
      expect(String(e)).toMatch(/found no usable GPU/);
      return;
    }
    expect(backend.name).toBe('cuda');
    expect(backend.device.length).toBeGreaterThan(0);
    expect(backend.computeCapability).toBeGreaterThanOrEqual(50);
  });
});
