/** Node (and Bun/Deno with node: APIs) helpers: the committed wasm, the native addon, model directories. */
import { basename, dirname, join } from 'node:path';
import type { KernelBackend } from './engine/backend.js';
import { loadCudaBackend, loadNativeBackend, loadWasmBackend, packageRoot } from './engine/node-kernels.js';
import type { Model } from './model/model.js';
import type { LoadProgress } from './weights/hf-loader.js';
import { loadModel, type LoadOptions } from './model/load.js';
import { sourceFromDirectory } from './formats/node-source.js';

export { loadAllKernels, loadCudaBackend, loadNativeBackend, loadWasmBackend, packageRoot } from './engine/node-kernels.js';
export { CudaBackend } from './engine/cuda-backend.js';
export { NativeBackend } from './engine/native-backend.js';
export { sourceFromDirectory } from './formats/node-source.js';

/** Which kernels to run on in Node ('cuda': the engine on an NVIDIA GPU, see CudaBackend). */
export type NodeBackendName = 'wasm' | 'wasm-scalar' | 'wasm-threads' | 'native' | 'cuda';

export async function nodeBackend(name: NodeBackendName = 'wasm'): Promise<KernelBackend> {
  if (name === 'native') return loadNativeBackend();
  if (name === 'cuda') return loadCudaBackend();
  // 'wasm': the SIMD build. The relaxed-SIMD one (loadWasmBackend('auto' | 'relaxed')) measured no
  // faster where it runs (bench:relaxed, Deno: 0.96-1.00x), so it is not the default.
  return loadWasmBackend(name === 'wasm' ? 'simd' : name === 'wasm-threads' ? 'threads' : 'scalar');
}

/** The embedded default model's directory (models/default in the package). */
export function defaultModelDir(): string {
  return join(packageRoot(), 'models', 'default');
}

/**
 * Loads a model directory (default: the embedded default model) or a .gguf file on the chosen
 * kernels. `synthesize` makes seeded random weights in engine memory for the directory's
 * config.json instead of reading its safetensors (which may be absent); its tokenizer loads as usual.
 * @example
 * const model = await loadModelFromDirectory();
 * const session = model.createSession();
 * for await (const ev of session.generate([{ role: 'user', content: 'Hi' }], { maxTokens: 20 }))
 *   if (ev.type === 'token') process.stdout.write(ev.text);
 */
export async function loadModelFromDirectory(
  dir = defaultModelDir(),
  opts: { backend?: NodeBackendName; onProgress?: (p: LoadProgress) => void; synthesize?: LoadOptions['synthesize'] } = {},
): Promise<Model> {
  // a path to a .gguf file loads that file
  if (dir.endsWith('.gguf') && opts.synthesize) throw new Error(`${dir}: synthesized weights take a directory with config.json, not a GGUF file`);
  if (dir.endsWith('.gguf')) return loadModel(sourceFromDirectory(dirname(dir)), { backend: await nodeBackend(opts.backend), onProgress: opts.onProgress, gguf: basename(dir) });
  return loadModel(sourceFromDirectory(dir), { backend: await nodeBackend(opts.backend), onProgress: opts.onProgress, synthesize: opts.synthesize });
}
