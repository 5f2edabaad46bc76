import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { AbiArg } from './abi-types.js';
import type { KernelBackend } from './backend.js';
import type { KleFunctionName } from './kle-abi.js';

export type NativeFn = (...args: AbiArg[]) => number;

/** Loads a Node addon built from the C sources; throws naming the build command when it is missing. */
export function loadAddon(path: string, buildCommand: string): Record<string, NativeFn> {
  if (!existsSync(path)) throw new Error(`kernels not built: ${path} is missing (run \`${buildCommand}\`)`);
  const require = createRequire(import.meta.url);
  return require(resolve(path)) as Record<string, NativeFn>; // a relative path is a file here, not a package name
}

/**
 * The kernel library compiled natively (gcc -O3 -march=native) as a Node addon
 * (`build/native/kle.node`, made by `npm run build:native`). Node only. Typed arrays are passed
 * by pointer, without copies.
 */
export class NativeBackend implements KernelBackend {
  readonly name = 'native' as const;

  private constructor(private readonly addon: Record<string, NativeFn>) {}

  /** Loads the addon from `path`; throws with the build command when it is missing. */
  static load(path: string): NativeBackend {
    return new NativeBackend(loadAddon(path, 'npm run build:native'));
  }

  call(fn: KleFunctionName, args: readonly AbiArg[]): number {
    const f = this.addon[fn];
    if (!f) throw new Error(`${fn} is not in the native addon`);
    return f(...args);
  }
}
