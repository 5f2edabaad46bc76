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
/** A block of the site's memory that is reused, and replaced by a larger one when it is outgrown. */
class Region {
  private ptr = 0;
  private cap = 0;

  constructor(
    private readonly alloc: (bytes: number) => number,
    private readonly release: (ptr: number) => void,
  ) {}

  /** Room for `bytes` (as aligned as the allocator makes it). */
  need(bytes: number): number {
    if (bytes > this.cap) {
      if (this.ptr) this.release(this.ptr);
      this.cap = Math.max(bytes, 2 * this.cap, 1024);
      this.ptr = this.alloc(this.cap);
    }
    return this.ptr;
  }
}

export class KernelSite {
  readonly fns: SamplerExports;
  private readonly scratch: Region;
  private readonly logits: Region;
  private readonly buffer: Region;

  constructor(
    readonly memory: WebAssembly.Memory,
    alloc: (bytes: number) => number,
    release: (ptr: number) => void,
  ) {
    this.fns = instantiateRuntimeModule<SamplerExports>(memory)!;
    this.scratch = new Region(alloc, release);
    this.logits = new Region(alloc, release);
    this.buffer = new Region(alloc, release);
  }

  /** The kernel's scratch for a vocabulary of V tokens. */
  scratchFor(V: number): number {
    return this.scratch.need(this.fns.scratchBytes(V));
  }

  /** Room for V logits copied in (sites over a memory of their own). */
  logitsFor(V: number): number {
    return this.logits.need(4 * V);
  }

  /** A buffer of at least `bytes` (8-byte aligned) for what a call passes by pointer. */
  bufferFor(bytes: number): number {
    return this.buffer.need(bytes);
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

