import type { AbiArg } from './abi-types.js';
import type { KernelBackend } from './backend.js';
import type { KleFunctionName } from './kle-abi.js';
import { loadAddon, type NativeFn } from './native-backend.js';

/**
 * The engine on an NVIDIA GPU: the Node addon `build/cuda/kle-cuda.node` (made by
 * `npm run build:cuda` with nvcc) implements kle.h's engine API with weights, KDA states and MLA
 * caches in device memory (the engine with kernels-cuda/src/backend_cuda.cu). Models and sessions behave as on the
 * other backends, state blobs included; the per-kernel entry points of kle.h run on the CPU.
 */
export class CudaBackend implements KernelBackend {
  readonly name = 'cuda' as const;

  private constructor(
    private readonly addon: Record<string, NativeFn>,
    /** the GPU's name, as the driver reports it */
    readonly device: string,
    /** compute capability, major * 10 + minor (90 for Hopper) */
    readonly computeCapability: number,
  ) {}

  /** Loads the addon and checks that a CUDA device answers; throws with the reason if not. */
  static load(path: string): CudaBackend {
    const addon = loadAddon(path, 'npm run build:cuda');
    const name = new Uint8Array(256);
    const cc = addon.kle_cuda_device_info!(name, name.length);
    if (cc < 0) throw new Error(`the CUDA backend found no usable GPU (kle_cuda_device_info: ${cc})`);
    const end = name.indexOf(0);
    return new CudaBackend(addon, new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end)), cc);
  }

  /**
   * The card's copy bandwidth in GB/s (bytes read plus bytes written per second): the median of
   * `reps` device-to-device copies of `bytes`. Benchmarks divide a step's bytes by it.
   */
  copyGbps(bytes = 2 ** 30, reps = 20): number {
    const gbps = this.addon.kle_cuda_copy_gbps!(bytes, reps);
    if (!(gbps > 0)) throw new Error('kle_cuda_copy_gbps failed');
    return gbps;
  }

  call(fn: KleFunctionName, args: readonly AbiArg[]): number {
    const f = this.addon[fn];
    if (!f) throw new Error(`${fn} is not in the CUDA addon`);
    return f(...args);
  }
}
