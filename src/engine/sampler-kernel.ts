/**
 * Where the compiled sampler (as/sampler.ts, in wasm/dist/kle-as.wasm: see as-module.ts) works:
 * one instance per wasm engine memory (reading the logits in place, its scratch allocated by
 * the engine's malloc), and one over a memory of its own for the other backends.
 */
import type { WasmBackend } from './wasm-backend.js';
import { instantiateRuntimeModule } from './as-module.js';

export interface SamplerExports {
  scratchBytes(V: number): number;
  penalize(logits: number, V: number, scratch: number, toks: number, counts: number, cbias: number, n: number, rep: number, freq: number, pres: number, btoks: number, bvals: number, nb: number): number;
  argmax(p: number, V: number): number;
  sample(logits: number, V: number, scratch: number, T: number, topK: number, topP: number, logMinP: number, u: number): number;
}


/** One instance of the module over one memory, with the scratch it reserved there. */
export class KernelSite {
  readonly fns: SamplerExports;
  private scratch = 0;
  private scratchV = 0;
  private buf = 0;
  private bufCap = 0;
  private logits = 0;
  private logitsCap = 0;

  constructor(
    readonly memory: WebAssembly.Memory,
    private readonly alloc: (bytes: number) => number,
    private readonly release: (ptr: number) => void,
  ) {
    this.fns = instantiateRuntimeModule<SamplerExports>(memory)!;
  }

  scratchFor(V: number): number {
    if (V !== this.scratchV) {
      if (this.scratch) this.release(this.scratch);
      this.scratch = this.alloc(this.fns.scratchBytes(V));
      this.scratchV = V;
    }
    return this.scratch;
  }

  /** Room for V logits copied in (sites over a memory of their own). */
  logitsFor(V: number): number {
    if (V > this.logitsCap) {
      if (this.logits) this.release(this.logits);
      this.logits = this.alloc(4 * V);
      this.logitsCap = V;
    }
    return this.logits;
  }

  /** A buffer of at least `bytes` (8-byte aligned) for what a call passes by pointer. */
  bufferFor(bytes: number): number {
    if (bytes > this.bufCap) {
      if (this.buf) this.release(this.buf);
      this.bufCap = Math.max(bytes, 2 * this.bufCap, 1024);
      this.buf = this.alloc(this.bufCap);
    }
    return this.buf;
  }
}

const engineSites = new WeakMap<WebAssembly.Memory, KernelSite>();
let ownSite: KernelSite | null = null;

/** The kernel working in a wasm engine's memory (zero copy). */
export function engineSite(b: WasmBackend): KernelSite {
  let s = engineSites.get(b.memory);
  if (!s) engineSites.set(b.memory, (s = new KernelSite(b.memory, (n) => b.alloc(n), (p) => b.free(p))));
  return s;
}

/** The kernel in a memory of its own (a bump allocator: scratch, logits and pairs only grow). */
export function ownKernel(): KernelSite {
  if (ownSite) return ownSite;
  const memory = new WebAssembly.Memory({ initial: 1 });
  let top = 64;
  const alloc = (bytes: number): number => {
    const p = (top + 15) & ~15;
    top = p + bytes;
    const need = Math.ceil(top / 65536) - memory.buffer.byteLength / 65536;
    if (need > 0) memory.grow(need);
    return p;
  };
  return (ownSite = new KernelSite(memory, alloc, () => {}));
}

