import type { AbiArg } from './abi-types.js';
import type { BackendName, KernelBackend } from './backend.js';
import { KLE_ABI, type KleFunctionName } from './kle-abi.js';

type WasmFn = (...args: number[]) => number;

/** The exports of wasm/dist/kle-*.wasm that the host uses directly. */
interface KleWasmExports {
  memory: WebAssembly.Memory;
  _initialize?: () => void;
  malloc: (bytes: number) => number;
  free: (ptr: number) => void;
}

/**
 * The kernel library compiled to WebAssembly. Works wherever WebAssembly does (Node, Deno, Bun,
 * Workers, browsers): it needs only the compiled module, never the file system.
 *
 * Two ways in: {@link call} copies typed arrays into linear memory and back (simple, used by
 * tests and the vector checker); {@link alloc}/{@link f32}/{@link raw} place data once and call
 * with pointers (what the engine and the benchmarks do, so no copy is timed).
 */
export class WasmBackend implements KernelBackend {
  private readonly exports: KleWasmExports;
  private readonly fns: Record<string, WasmFn>;

  private constructor(
    readonly name: BackendName,
    instance: WebAssembly.Instance,
  ) {
    this.exports = instance.exports as unknown as KleWasmExports;
    this.fns = instance.exports as unknown as Record<string, WasmFn>;
    this.exports._initialize?.();
  }

  /**
   * Instantiates a kle module (`kle-simd.wasm` or `kle-scalar.wasm`): compiled already (what a
   * Worker's bundler hands over; Workers may not compile at run time), or its bytes.
   */
  static async instantiate(name: BackendName, module: WebAssembly.Module | BufferSource): Promise<WasmBackend> {
    const compile = (WebAssembly as unknown as { compile(b: BufferSource): Promise<WebAssembly.Module> }).compile;
    const compiled = module instanceof WebAssembly.Module ? module : await compile(module);
    const imports = {
      // Memory growth detaches old views; views are re-created from memory.buffer on every use.
      env: { emscripten_notify_memory_growth: () => {} },
    };
    const instance = await WebAssembly.instantiate(compiled, imports);
    return new WasmBackend(name, instance);
  }

  get memory(): WebAssembly.Memory {
    return this.exports.memory;
  }

  /** Allocates `bytes` in linear memory; throws when the module cannot grow. */
  alloc(bytes: number): number {
    // addresses above 2 GiB come back from wasm as negative i32s
    const p = this.exports.malloc(Math.max(1, bytes)) >>> 0;
    if (p === 0) throw new RangeError(`wasm allocation of ${bytes} bytes failed`);
    return p;
  }

  free(ptr: number): void {
    if (ptr) this.exports.free(ptr);
  }

  /** A Float32Array view of `length` floats at `ptr` (valid until memory grows). */
  f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.exports.memory.buffer, ptr, length);
  }

  /** Calls an export with numbers only (pointers already in linear memory). */
  raw(fn: KleFunctionName, ...args: number[]): number {
    const f = this.fns[fn];
    if (!f) throw new Error(`${fn} is not exported by this wasm module`);
    return f(...args);
  }

  /**
   * Copies the array arguments of `fn` into linear memory: returns the numeric argument list for
   * {@link raw} and the allocations the caller must {@link free}.
   */
  place(fn: KleFunctionName, args: readonly AbiArg[]): { ptrs: number[]; owned: number[] } {
    const sig = KLE_ABI[fn];
    if (args.length !== sig.params.length) throw new TypeError(`${fn}: expected ${sig.params.length} arguments`);
    const ptrs: number[] = [];
    const owned: number[] = [];
    try {
      sig.params.forEach((p, i) => {
        const a = args[i];
        if (p.kind === 'in' || p.kind === 'inout') {
          if (a === null || a === undefined) return void ptrs.push(0);
          if (typeof a === 'number') throw new TypeError(`${fn}: ${p.name} must be a typed array`);
          const ptr = this.alloc(a.byteLength);
          owned.push(ptr);
          new Uint8Array(this.exports.memory.buffer, ptr, a.byteLength).set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
          ptrs.push(ptr);
        } else {
          if (typeof a !== 'number') throw new TypeError(`${fn}: ${p.name} must be a number`);
          ptrs.push(a);
        }
      });
    } catch (e) {
      owned.forEach((p) => this.free(p));
      throw e;
    }
    return { ptrs, owned };
  }

  call(fn: KleFunctionName, args: readonly AbiArg[]): number {
    const { ptrs, owned } = this.place(fn, args);
    try {
      const r = this.raw(fn, ...ptrs);
      // addresses come back as i32: above 2 GiB they read negative
      const rc = KLE_ABI[fn].ret === 'addr' ? r >>> 0 : r;
      KLE_ABI[fn].params.forEach((p, i) => {
        const a = args[i];
        if (p.kind === 'inout' && a && typeof a !== 'number') {
          new Uint8Array(a.buffer, a.byteOffset, a.byteLength).set(new Uint8Array(this.exports.memory.buffer, ptrs[i], a.byteLength));
        }
      });
      return rc;
    } finally {
      for (const p of owned) this.free(p);
    }
  }
}
