/**
 * Token sampling at any vocabulary size: temperature, top-k, top-p, min-p, repetition /
 * frequency / presence penalties, logit bias, seeded. The work is done by as/sampler.ts
 * (AssemblyScript compiled to SIMD wasm, wasm/dist/kle-as.wasm): no copy of the vocabulary, no
 * sort. On the wasm engine it reads the logits where the engine left them, in the engine's own
 * memory; with other backends they are copied into the sampler's memory first.
 *
 * The compiled module has to be installed once per process (src/engine/as-module.ts). Without
 * it, sampling falls back to the reference implementation (./sampler-reference.ts), which gives
 * the same distribution, slowly.
 */
import { WasmBackend } from '../engine/wasm-backend.js';
import type { DeviceDraw, LogitsRef } from '../engine/engine.js';
import { engineSite, ownKernel, type KernelSite } from '../engine/sampler-kernel.js';
import { runtimeModuleInstalled } from '../engine/as-module.js';
import { biasEntries, ReferenceSampler, rng, validateSampling, type SamplingOptions } from './sampler-reference.js';

export { validateSampling, type SamplingOptions } from './sampler-reference.js';
export { installRuntimeModule, runtimeModuleInstalled } from '../engine/as-module.js';

/**
 * Where the logits to sample from are: an array, or a session's (in a wasm engine's memory,
 * read in place; on a GPU, drawn from there).
 */
export type LogitsSource = Float32Array | LogitsRef;

/** The penalties' and the bias's lists for one draw. */
interface Patches {
  toks: Int32Array;
  counts: Int32Array;
  cbias: Float64Array;
  btoks: Int32Array;
  bvals: Float64Array;
}

export class Sampler {
  private readonly next: () => number;
  private readonly reference: ReferenceSampler | null;
  private readonly biasMap: Map<number, number>;
  private readonly penalized: boolean;
  private readonly logMinP: number;
  // the context's distinct tokens and their counts, kept up to date as it grows
  private slotOf = new Map<number, number>();
  private tokens = new Int32Array(64);
  private countsOf = new Int32Array(64);
  private distinct = 0;
  private seen = 0;
  private lastSeen = -1;

  constructor(private readonly o: SamplingOptions = {}) {
    validateSampling(o);
    const seed = o.seed ?? (Math.random() * 2 ** 32) >>> 0;
    this.next = rng(seed);
    this.reference = runtimeModuleInstalled() ? null : new ReferenceSampler({ ...o, seed });
    this.biasMap = new Map(biasEntries(o.logitBias));
    this.penalized = (o.repetitionPenalty ?? 1) !== 1 || (o.frequencyPenalty ?? 0) !== 0 || (o.presencePenalty ?? 0) !== 0;
    this.logMinP = (o.minP ?? 0) > 0 ? Math.log(o.minP!) : -Infinity;
  }

  /** Picks a token from logits; `context` holds the tokens the penalties apply to. */
  sample(logits: LogitsSource, context: Iterable<number> = []): number {
    if (!(logits instanceof Float32Array) && logits.draw) return logits.draw(this.deviceDraw(context));
    if (this.reference) return this.reference.sample(logits instanceof Float32Array ? logits : logits.copy(), context);
    let site: KernelSite, addr: number, V: number;
    // in the engine's memory where the sampler module can import it (not a shared one: the threads build)
    if (!(logits instanceof Float32Array) && logits.backend instanceof WasmBackend && !logits.backend.sharedMemory) {
      site = engineSite(logits.backend);
      addr = logits.address;
      V = logits.vocabSize;
    } else {
      const data = logits instanceof Float32Array ? logits : logits.copy();
      site = ownKernel();
      V = data.length;
      addr = site.logitsFor(V);
      new Float32Array(site.memory.buffer, addr, V).set(data);
    }
    const scratch = site.scratchFor(V);
    const src = this.adjusted(site, addr, V, scratch, context) || addr;
    const T = this.o.temperature ?? 1;
    if (T === 0) return site.fns.argmax(src, V);
    return site.fns.sample(src, V, scratch, T, this.o.topK ?? 0, this.o.topP ?? 1, this.logMinP, this.next());
  }

  /** A draw on the device: the same settings, lists and draw (consumed only when T > 0). */
  private deviceDraw(context: Iterable<number>): DeviceDraw {
    const o = this.o, T = o.temperature ?? 1;
    return {
      temperature: T,
      topK: o.topK ?? 0,
      topP: o.topP ?? 1,
      logMinP: this.logMinP,
      repetitionPenalty: o.repetitionPenalty ?? 1,
      frequencyPenalty: o.frequencyPenalty ?? 0,
      presencePenalty: o.presencePenalty ?? 0,
      ...this.patches(context),
      uBits: T === 0 ? 0 : Math.floor(this.next() * 4294967296),
    };
  }

  /**
   * The penalties and the bias applied to a copy of the logits in the kernel's memory (its
   * address), or 0 when there are none: the context's distinct tokens and their counts, kept
   * here as the context grows, go over in one copy, and the kernel adjusts each.
   */
  private adjusted(site: KernelSite, addr: number, V: number, scratch: number, context: Iterable<number>): number {
    if (!this.penalized && !this.biasMap.size) return 0;
    const p = this.patches(context);
    const n = p.toks.length, nb = p.btoks.length;
    // toks, counts (i32 each), cbias (f64) for the context; btoks (i32), bvals (f64) for the rest
    const cb = (8 * n + 7) & ~7, bt = cb + 8 * n, bv = (bt + 4 * nb + 7) & ~7, end = bv + 8 * nb;
    const ptr = site.bufferFor(end);
    const mem = site.memory.buffer;
    new Int32Array(mem, ptr, n).set(p.toks);
    new Int32Array(mem, ptr + 4 * n, n).set(p.counts);
    new Float64Array(mem, ptr + cb, n).set(p.cbias);
    new Int32Array(mem, ptr + bt, nb).set(p.btoks);
    new Float64Array(mem, ptr + bv, nb).set(p.bvals);
    const o = this.o;
    return site.fns.penalize(addr, V, scratch, ptr, ptr + 4 * n, ptr + cb, n, o.repetitionPenalty ?? 1, o.frequencyPenalty ?? 0, o.presencePenalty ?? 0, ptr + bt, ptr + bv, nb) >>> 0;
  }

  /**
   * The lists the penalties and the bias need: the context's distinct tokens with their counts
   * and bias (when a penalty is on), and the other biased tokens.
   */
  private patches(context: Iterable<number>): Patches {
    if (this.penalized) this.count(context);
    const n = this.penalized ? this.distinct : 0;
    const others = [...this.biasMap].filter(([t]) => !(this.penalized && this.slotOf.has(t)));
    const cbias = new Float64Array(n);
    if (this.penalized) for (const [t, b] of this.biasMap) if (this.slotOf.has(t)) cbias[this.slotOf.get(t)!] = b;
    return {
      // views: read before the context grows again
      toks: this.tokens.subarray(0, n),
      counts: this.countsOf.subarray(0, n),
      cbias,
      btoks: Int32Array.from(others, ([t]) => t),
      bvals: Float64Array.from(others, ([, b]) => b),
    };
  }

  /** Brings the counts up to date: an array that grew since the last call is counted from where it was. */
  private count(context: Iterable<number>): void {
    if (Array.isArray(context) && context.length >= this.seen && (this.seen === 0 || context[this.seen - 1] === this.lastSeen)) {
      for (let i = this.seen; i < context.length; i++) this.add(context[i]!);
      this.seen = context.length;
      this.lastSeen = this.seen ? (context[this.seen - 1] as number) : -1;
      return;
    }
    this.slotOf = new Map();
    this.distinct = 0;
    for (const t of context) this.add(t);
    this.seen = 0;
    this.lastSeen = -1;
  }

  private add(t: number): void {
    let slot = this.slotOf.get(t);
    if (slot === undefined) {
      slot = this.distinct++;
      if (slot >= this.tokens.length) {
        const grow = (a: Int32Array) => {
          const b = new Int32Array(2 * a.length);
          b.set(a);
          return b;
        };
        this.tokens = grow(this.tokens);
        this.countsOf = grow(this.countsOf);
      }
      this.slotOf.set(t, slot);
      this.tokens[slot] = t;
      this.countsOf[slot] = 0;
    }
    this.countsOf[slot]!++;
  }
}
