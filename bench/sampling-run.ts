// The sampling benchmark's body, free of Node APIs so that Node, Bun, Deno and workerd run the
// same code (bench/sampling.ts bundles it for the others). Logits are seeded Gaussian draws
// (standard deviation 3: an LLM's logits spread over tens of nats, unlike uniform noise), placed
// in the wasm engine's memory as a session's are.
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { installRuntimeModule } from '../src/engine/as-module.js';
import { Sampler } from '../src/generate/sampler.js';
import { ReferenceSampler, type SamplingOptions } from '../src/generate/sampler-reference.js';

export const MODES: Record<string, SamplingOptions> = {
  greedy: { temperature: 0 },
  'temperature 0.7': { temperature: 0.7 },
  'top-k 40': { temperature: 0.7, topK: 40 },
  'top-p 0.9': { temperature: 0.7, topP: 0.9 },
  'min-p 0.05': { temperature: 0.7, minP: 0.05 },
  'penalties + bias': { temperature: 0.7, repetitionPenalty: 1.1, frequencyPenalty: 0.3, presencePenalty: 0.3, logitBias: { 100: 2, 200: -100 } },
};

export interface SamplingRow {
  mode: string;
  vocab: number;
  /** ms per token, median */
  reference: number | null;
  fastCopy: number;
  fastInPlace: number;
}

/** Seeded Gaussian logits, standard deviation 3. */
export function gaussian(V: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const u = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 4294967296;
  };
  const l = new Float32Array(V);
  for (let i = 0; i < V; i++) l[i] = 3 * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return l;
}

function median(f: () => void, runs: number, clock: () => number): number {
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = clock();
    f();
    t.push(clock() - t0);
  }
  t.sort((a, b) => a - b);
  return t[t.length >> 1]!;
}

/** Times every mode at every size; `clock` null (workerd, whose clocks stop while code runs) times nothing and only samples `runs` times, for the caller to time from outside. */
export async function runSampling(engine: WebAssembly.Module, sampler: WebAssembly.Module, sizes: number[], opts: { runs: number; referenceUpTo: number; clock: (() => number) | null; modes?: string[] }): Promise<SamplingRow[]> {
  installRuntimeModule(sampler);
  const b = await WasmBackend.instantiate('wasm-simd', engine);
  const rows: SamplingRow[] = [];
  const context = Array.from({ length: 1000 }, (_, i) => (i * 7919) % 5000);
  const clock = opts.clock ?? (() => 0);
  for (const V of sizes) {
    const l = gaussian(V, V);
    const addr = b.alloc(4 * V);
    b.f32(addr, V).set(l);
    const src = { backend: b, address: addr, vocabSize: V, copy: () => b.f32(addr, V).slice() };
    for (const [mode, o] of Object.entries(MODES)) {
      if (opts.modes && !opts.modes.includes(mode)) continue;
      const fast = new Sampler({ ...o, seed: 1 });
      for (let i = 0; i < 5; i++) fast.sample(src, context);
      const fastInPlace = median(() => fast.sample(src, context), opts.runs, clock);
      const fastCopy = median(() => fast.sample(l, context), opts.runs, clock);
      let reference: number | null = null;
      if (V <= opts.referenceUpTo) {
        const ref = new ReferenceSampler({ ...o, seed: 1 });
        reference = median(() => ref.sample(l, context), Math.max(3, Math.min(opts.runs, Math.ceil(2e6 / V))), clock);
      }
      rows.push({ mode, vocab: V, reference, fastCopy, fastInPlace });
    }
    b.free(addr);
  }
  return rows;
}

/** The penalties' cost as the context grows: a context of n seeded random tokens, one more each draw. */
export async function penaltiesByContext(engine: WebAssembly.Module, contexts: number[], runs: number): Promise<{ context: number; distinct: number; ms: number }[]> {
  const b = await WasmBackend.instantiate('wasm-simd', engine);
  const V = 163_840;
  const addr = b.alloc(4 * V);
  b.f32(addr, V).set(gaussian(V, V));
  const src = { backend: b, address: addr, vocabSize: V, copy: () => b.f32(addr, V).slice() };
  const out: { context: number; distinct: number; ms: number }[] = [];
  for (const n of contexts) {
    let s = 7;
    const ctx = Array.from({ length: n }, () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % V);
    const sampler = new Sampler({ ...MODES['penalties + bias'], seed: 1 });
    for (let i = 0; i < 5; i++) ctx.push(sampler.sample(src, ctx));
    out.push({ context: n, distinct: new Set(ctx).size, ms: median(() => ctx.push(sampler.sample(src, ctx)), runs, () => performance.now()) });
  }
  b.free(addr);
  return out;
}
