import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelBackend } from '../../src/engine/backend.js';
import type { EngineModel } from '../../src/engine/engine.js';
import { loadNativeBackend, loadWasmBackend, packageRoot } from '../../src/engine/node-kernels.js';
import { placeHfModel } from '../../src/weights/hf-loader.js';

/** The seeded random model (models/make-random-tiny.ts): the tests' small model and the peers' inputs. */
export const tinyDir = join(packageRoot(), 'test', 'fixtures', 'random-tiny');

/** A checkpoint directory's config.json, parsed. */
export function configIn(dir: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
}

/** A checkpoint directory's model.safetensors bytes. */
export function weightsIn(dir: string): Uint8Array {
  return new Uint8Array(readFileSync(join(dir, 'model.safetensors')));
}

export function tinyConfig(): Record<string, unknown> {
  return configIn(tinyDir);
}

export function tinyWeights(): Uint8Array {
  return weightsIn(tinyDir);
}

let backends: Promise<KernelBackend[]> | undefined;
/** wasm SIMD, wasm scalar and native backends, once per test file */
export function allBackends(): Promise<KernelBackend[]> {
  backends ??= (async () => [await loadWasmBackend('simd'), await loadWasmBackend('scalar'), loadNativeBackend()])();
  return backends;
}

export function loadTiny(b: KernelBackend): Promise<EngineModel> {
  return placeHfModel(b, tinyConfig(), [{ name: 'model.safetensors', bytes: tinyWeights() }]);
}

export function argmax(a: Float32Array, off = 0, n = a.length): number {
  let best = 0;
  for (let j = 1; j < n; j++) if (a[off + j]! > a[off + best]!) best = j;
  return best;
}

/** 100-ish token ids from a seeded LCG */
export function tokens(n: number, vocab: number, seed = 7): number[] {
  let s = seed;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % vocab;
  });
}
