import type { AbiArg } from './abi-types.js';
import type { BackendName, KernelBackend } from './backend.js';
import { KLE_ABI, type KleFunctionName } from './kle-abi.js';

type WasmFn = (...args: number[]) => number;

/** The exports of wasm/dist/kle-*.wasm that the host uses directly. */
interface KleWasmExports {
  memory?: WebAssembly.Memory;
  _initialize?: () => void;
  malloc: (bytes: number) => number;
  free: (ptr: number) => void;
  /** the threads build's allocator (engine/wasm-threads/alloc.c), which its threads share */
  kle_mt_malloc?: (bytes: number) => number;
  kle_mt_free?: (ptr: number) => void;
}

/** One thread's start: the module, the shared memory, the pool it serves, the top of its stack. */
interface ThreadStart {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  pool: number;
  stack: number;
}
/** Starts a thread that runs {@link THREAD_BODY} on `start`; `done` runs once it has left the pool. */
type SpawnThread = (start: ThreadStart, done: () => void) => void;

/**
 * The body of a wasm thread, as source (every runtime starts a worker from a string: no file to
 * resolve beside the bundle): an instance of the module on the shared memory, its own stack, then
 * kle_thread_serve until the pool is replaced or the model freed.
 */
const THREAD_BODY = `function serve(s) {
  const inst = new WebAssembly.Instance(s.module, { env: { memory: s.memory, emscripten_notify_memory_growth() {} } });
  inst.exports.stackRestore(s.stack);
  return inst.exports.kle_thread_serve(s.pool);
}`;
/** Bytes of each thread's stack (the main thread's is 1 MiB too: -sTOTAL_STACK). */
const THREAD_STACK = 1 << 20;

/** How this runtime starts threads: Web Workers (browsers, Deno, Bun), else Node's worker_threads. */
async function threadSpawner(): Promise<SpawnThread | null> {
  const g = globalThis as unknown as { Worker?: new (url: string, opts?: { type: 'module' }) => WebWorkerLike; Blob?: typeof Blob; URL?: { createObjectURL(b: Blob): string } };
  if (typeof g.Worker === 'function' && g.Blob && g.URL) {
    const url = g.URL.createObjectURL(new g.Blob([`${THREAD_BODY}\nonmessage = (e) => { postMessage(serve(e.data)); close(); };`], { type: 'text/javascript' }));
    const W = g.Worker;
    return (start, done) => {
      const w = new W(url, { type: 'module' });
      w.onmessage = () => {
        w.terminate();
        done();
      };
      w.postMessage(start);
    };
  }
  try {
    const wt = await import('node:worker_threads');
    return (start, done) => {
      const w = new wt.Worker(`${THREAD_BODY}\nconst wt = require('node:worker_threads'); wt.parentPort.postMessage(serve(wt.workerData));`, { eval: true, workerData: start });
      w.unref(); // a model never freed must not keep the process alive
      w.once('message', () => {
        void w.terminate();
        done();
      });
    };
  } catch {
    return null;
  }
}
interface WebWorkerLike {
  onmessage: ((e: unknown) => void) | null;
  postMessage(data: unknown): void;
  terminate(): void;
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
  private readonly mem: WebAssembly.Memory;
  private readonly malloc: (bytes: number) => number;
  private readonly release: (ptr: number) => void;

  private constructor(
    readonly name: BackendName,
    instance: WebAssembly.Instance,
    memory: WebAssembly.Memory | null,
    private readonly threads: { module: WebAssembly.Module; spawn: SpawnThread } | null,
  ) {
    this.exports = instance.exports as unknown as KleWasmExports;
    this.fns = instance.exports as unknown as Record<string, WasmFn>;
    this.mem = memory ?? this.exports.memory!;
    this.malloc = this.exports.kle_mt_malloc ?? this.exports.malloc;
    this.release = this.exports.kle_mt_free ?? this.exports.free;
    this.exports._initialize?.();
  }

  /**
   * Instantiates a kle module (`kle-simd.wasm`, `kle-simd-relaxed.wasm` where `relaxedSimdWorks()`, `kle-scalar.wasm`, or `kle-simd-mt.wasm`, the
   * threads build): compiled already (what a Worker's bundler hands over; Workers may not compile
   * at run time), or its bytes. The threads build imports its memory: a shared one is made here,
   * and {@link startThreads} starts the threads a model asks for (where the runtime has workers:
   * not in Cloudflare Workers, whose isolates have one thread).
   */
  static async instantiate(name: BackendName, module: WebAssembly.Module | BufferSource): Promise<WasmBackend> {
    const compile = (WebAssembly as unknown as { compile(b: BufferSource): Promise<WebAssembly.Module> }).compile;
    const compiled = module instanceof WebAssembly.Module ? module : await compile(module);
    // the threads build: 16 MiB to start, up to 4 GiB, as the module declares (build.mjs)
    const shared = WebAssembly.Module.imports(compiled).some((i) => i.kind === 'memory')
      ? new WebAssembly.Memory({ initial: 256, maximum: 65536, shared: true } as WebAssembly.MemoryDescriptor)
      : null;
    const imports = {
      // Memory growth detaches old views; views are re-created from memory.buffer on every use.
      env: { emscripten_notify_memory_growth: () => {}, ...(shared ? { memory: shared } : {}) },
      // the relaxed build's placeholder for the instruction that replaced its every call (relaxed.mjs)
      kle: { rdot: () => { throw new Error('kle.rdot is never called'); } },
    };
    const instance = await WebAssembly.instantiate(compiled, imports);
    const spawn = shared ? await threadSpawner() : null;
    return new WasmBackend(name, instance, shared, spawn ? { module: compiled, spawn } : null);
  }

  get memory(): WebAssembly.Memory {
    return this.mem;
  }

  /** Whether the memory is shared (the threads build): modules that import a plain memory cannot take it. */
  get sharedMemory(): boolean {
    return typeof SharedArrayBuffer !== 'undefined' && this.mem.buffer instanceof SharedArrayBuffer;
  }

  /**
   * Starts the threads the model at `model` (a kle_model address) is missing after
   * kle_model_threads: each a worker with its own 1 MiB stack, serving the model's pool until the
   * pool is replaced or the model freed (then its stack is released). Returns how many it started:
   * 0 for builds without threads.
   */
  startThreads(model: number): number {
    if (!this.threads) return 0;
    const starts = this.alloc(4);
    try {
      const pool = this.raw('kle_model_thread_pool', model, starts) >>> 0;
      const n = new Int32Array(this.mem.buffer, starts, 1)[0]!;
      for (let i = 0; i < n; i++) {
        const stack = this.alloc(THREAD_STACK);
        this.threads.spawn({ module: this.threads.module, memory: this.mem, pool, stack: (stack + THREAD_STACK) & ~15 }, () => this.free(stack));
      }
      return pool ? n : 0;
    } finally {
      this.free(starts);
    }
  }

  /** Threads serving the model's pool now, besides the caller's (0 without threads). */
  threadsServing(model: number): number {
    const pool = this.raw('kle_model_thread_pool', model, 0) >>> 0; // the pool alone: nothing reserved
    return pool ? this.raw('kle_thread_serving', pool) : 0;
  }

  /** Allocates `bytes` in linear memory; throws when the module cannot grow. */
  alloc(bytes: number): number {
    // addresses above 2 GiB come back from wasm as negative i32s
    const p = this.malloc(Math.max(1, bytes)) >>> 0;
    if (p === 0) throw new RangeError(`wasm allocation of ${bytes} bytes failed`);
    return p;
  }

  free(ptr: number): void {
    if (ptr) this.release(ptr);
  }

  /** A Float32Array view of `length` floats at `ptr` (valid until memory grows). */
  f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.mem.buffer, ptr, length);
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
          new Uint8Array(this.mem.buffer, ptr, a.byteLength).set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
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
          new Uint8Array(a.buffer, a.byteOffset, a.byteLength).set(new Uint8Array(this.mem.buffer, ptrs[i], a.byteLength));
        }
      });
      return rc;
    } finally {
      for (const p of owned) this.free(p);
    }
  }
}
