import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kernels } from './kernels.js';
import { CudaBackend } from './cuda-backend.js';
import { NativeBackend } from './native-backend.js';
import { WasmBackend } from './wasm-backend.js';
import { relaxedSimdWorks } from './relaxed-simd.js';
import { installRuntimeModule, runtimeModuleInstalled } from './as-module.js';

/** The package root (where package.json and wasm/dist live), from src/ or dist/src/. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'wasm', 'dist'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('kimi-linear-edge: package root with wasm/dist not found');
}

// Node (and Bun, Deno) read the compiled sampler from the package once, on first import
if (!runtimeModuleInstalled()) installRuntimeModule(new WebAssembly.Module(readFileSync(join(packageRoot(), 'wasm', 'dist', 'kle-as.wasm'))));

/**
 * Loads the committed wasm build from the package (Node, Bun, Deno with node: APIs): SIMD, SIMD
 * with relaxed SIMD's int8 dot for the K-quants (`relaxed`: only where relaxedSimdWorks(), which
 * `auto` asks to choose between the two), scalar, or SIMD with wasm threads (`threads`;
 * EngineModel.threads(n) then starts n - 1 workers).
 */
export async function loadWasmBackend(variant: 'simd' | 'relaxed' | 'auto' | 'scalar' | 'threads' = 'simd'): Promise<WasmBackend> {
  const v = variant === 'auto' ? (relaxedSimdWorks() ? 'relaxed' : 'simd') : variant;
  if (v === 'relaxed' && !relaxedSimdWorks()) throw new Error('kle-simd-relaxed.wasm: this runtime does not run relaxed SIMD\'s int8 dot (see relaxedSimdWorks)');
  const file = { simd: 'simd', relaxed: 'simd-relaxed', scalar: 'scalar', threads: 'simd-mt' }[v];
  const name = ({ simd: 'wasm-simd', relaxed: 'wasm-relaxed', scalar: 'wasm-scalar', threads: 'wasm-threads' } as const)[v];
  return WasmBackend.instantiate(name, readFileSync(join(packageRoot(), 'wasm', 'dist', `kle-${file}.wasm`)));
}

/** Loads the native addon built by `npm run build:native`. */
export function loadNativeBackend(): NativeBackend {
  return NativeBackend.load(join(packageRoot(), 'build', 'native', 'kle.node'));
}

/** Loads the CUDA engine addon built by `npm run build:cuda` (needs a GPU to run). */
export function loadCudaBackend(): CudaBackend {
  return CudaBackend.load(join(packageRoot(), 'build', 'cuda', 'kle-cuda.node'));
}

/** Kernels over every backend available here: wasm SIMD, wasm scalar, and native if built. */
export async function loadAllKernels(): Promise<Kernels[]> {
  const out = [new Kernels(await loadWasmBackend('simd')), new Kernels(await loadWasmBackend('scalar'))];
  out.push(new Kernels(loadNativeBackend()));
  return out;
}
