import type { KernelBackend } from './backend.js';
import type { KleFunctionName } from './kle-abi.js';
import { WasmBackend } from './wasm-backend.js';

/** An argument of a bound call (as for KernelBackend.call). */
export type BoundArg = number | Float32Array | Uint8Array | Int32Array | null;

/**
 * A kernel call with its arguments placed once, so that timing covers the kernel only: for wasm
 * the arrays are copied into linear memory up front and the call passes pointers; for native the
 * addon takes the typed arrays by pointer anyway.
 */
export interface BoundCall {
  run(): number;
  /** reads an array argument back (after the runs), for sanity checks */
  read(i: number): Float32Array;
  dispose(): void;
}

/**
 * Places `args` for `fn` once and returns a call that reuses them: what benchmarks and the
 * engine's hot loops want, since {@link KernelBackend.call} copies arrays through wasm memory
 * on every call. The caller checks sizes (as {@link Kernels} does) before binding.
 */
export function bind(backend: KernelBackend, fn: KleFunctionName, args: BoundArg[]): BoundCall {
  if (backend instanceof WasmBackend) {
    const { ptrs, owned } = backend.place(fn, args);
    return {
      run: () => backend.raw(fn, ...ptrs),
      read: (i) => backend.f32(ptrs[i]!, (args[i] as Float32Array).length).slice(),
      dispose: () => owned.forEach((p) => backend.free(p)),
    };
  }
  return {
    run: () => backend.call(fn, args),
    read: (i) => (args[i] as Float32Array).slice(),
    dispose: () => {},
  };
}
