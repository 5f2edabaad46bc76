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
import type { KernelBackend } from '../engine/backend.js';
import { engineSite, ownKernel, type KernelSite } from '../engine/sampler-kernel.js';
import { runtimeModuleInstalled } from '../engine/as-module.js';
import { adjustedLogit, biasEntries, ReferenceSampler, rng, validateSampling, type SamplingOptions } from './sampler-reference.js';

export { validateSampling, type SamplingOptions } from './sampler-reference.js';
export { installRuntimeModule, runtimeModuleInstalled } from '../engine/as-module.js';

/** Where the logits to sample from are: in a wasm engine's memory, or an array. */
export type LogitsSource = Float32Array | { readonly backend: KernelBackend; readonly address: number; readonly vocabSize: number; copy(): Float32Array };

export class Sampler {
  private readonly next: () => number;
  private readonly reference: ReferenceSampler | null;
  private readonly biasMap: Map<number, number>;
  private readonly penalized: boolean;
  private readonly logMinP: number;
  // token counts of the context seen so far, kept up to date as it grows
  private counts = new Map<number, number>();
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
    if (this.reference) return this.reference.sample(logits instanceof Float32Array ? logits : logits.copy(), context);
    let site: KernelSite, addr: number, V: number;
    if (!(logits instanceof Float32Array) && logits.backend instanceof WasmBackend) {
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
    let src = addr;
    const patches = this.patches(site, addr, V, context);
    if (patches.n) src = site.fns.patch(addr, V, scratch, patches.ptr, patches.n) >>> 0;
    const T = this.o.temperature ?? 1;
    if (T === 0) return site.fns.argmax(src, V);
    return site.fns.sample(src, V, scratch, T, this.o.topK ?? 0, this.o.topP ?? 1, this.logMinP, this.next());
  }

  /** The (token, adjusted logit) pairs of the penalties and the bias, written into the kernel's memory. */
  private patches(site: KernelSite, addr: number, V: number, context: Iterable<number>): { ptr: number; n: number } {
    if (!this.penalized && !this.biasMap.size) return { ptr: 0, n: 0 };
    if (this.penalized) this.count(context);
    const most = (this.penalized ? this.counts.size : 0) + this.biasMap.size;
    const ptr = site.pairsFor(most);
    const logits = new Float32Array(site.memory.buffer, addr, V);
    const ids = new Int32Array(site.memory.buffer, ptr, 2 * most);
    const vals = new Float32Array(site.memory.buffer, ptr, 2 * most);
    let n = 0;
    const put = (t: number, count: number) => {
      if (!(t >= 0 && t < V)) return;
      ids[2 * n] = t;
      vals[2 * n + 1] = adjustedLogit(this.o, logits[t]!, this.biasMap.get(t) ?? 0, count);
      n++;
    };
    if (this.penalized) for (const [t, c] of this.counts) put(t, c);
    for (const t of this.biasMap.keys()) if (!(this.penalized && this.counts.has(t))) put(t, 0);
    return { ptr, n };
  }

  /** Brings the counts up to date: an array that grew since the last call is counted from where it was. */
  private count(context: Iterable<number>): void {
    if (Array.isArray(context) && context.length >= this.seen && (this.seen === 0 || context[this.seen - 1] === this.lastSeen)) {
      for (let i = this.seen; i < context.length; i++) this.counts.set(context[i]!, (this.counts.get(context[i]!) ?? 0) + 1);
      this.seen = context.length;
      this.lastSeen = this.seen ? (context[this.seen - 1] as number) : -1;
      return;
    }
    this.counts = new Map();
    for (const t of context) this.counts.set(t, (this.counts.get(t) ?? 0) + 1);
    this.seen = 0;
    this.lastSeen = -1;
  }
}
