import type { AbiArg } from './abi-types.js';
import type { KleFunctionName } from './kle-abi.js';

/** Which build of the kernel library a backend runs. */
export type BackendName = 'wasm-simd' | 'wasm-relaxed' | 'wasm-scalar' | 'wasm-threads' | 'native' | 'cuda';

/**
 * The raw boundary to one build of the C library. `call` passes typed arrays by reference
 * semantics: after it returns, arrays bound to non-const pointers hold what C wrote.
 * Sizes are not checked here; {@link Kernels} checks them before every call.
 */
export interface KernelBackend {
  readonly name: BackendName;
  call(fn: KleFunctionName, args: readonly AbiArg[]): number;
}
