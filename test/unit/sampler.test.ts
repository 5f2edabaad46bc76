// The AssemblyScript sampler (as/sampler.ts) against the reference (src/generate/sampler-reference.ts):
// exactly where sampling is deterministic (greedy, top-k 1), and by the distribution of its draws
// elsewhere (chi-square against the reference's probabilities, never a token outside the set the
// reference keeps). Both places the kernel works: in the wasm engine's memory (zero copy) and in
// a memory of its own (logits copied in).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Sampler, type SamplingOptions } from '../../src/generate/sampler.js';
import { ReferenceSampler } from '../../src/generate/sampler-reference.js';
import { loadWasmBackend, packageRoot } from '../../src/engine/node-kernels.js';
import { runtimeModuleInstalled } from '../../src/engine/as-module.js';

function logitsOf(V: number, seed: number, quantized = false): Float32Array {
  const l = new Float32Array(V);
  let s = seed;
  for (let i = 0; i < V; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const x = ((s >>> 8) / 16777216) * 12 - 6;
    // quantized logits make many exact ties, which the cuts must split in index order
    l[i] = quantized ? Math.round(x * 4) / 4 : x;
  }
  return l;
}

const MODES: Record<string, SamplingOptions> = {
  'temperature 0.7': { temperature: 0.7 },
  'temperature 1.3': { temperature: 1.3 },
  'top-k 40': { temperature: 1.5, topK: 40 },
  'top-k 7 (ties split)': { temperature: 1, topK: 7 },
  'top-p 0.9': { temperature: 0.7, topP: 0.9 },
  // the histogram resolves only the top ln(V / (1 - p)) + 1 nats: a peaked distribution puts
  // most tokens below that, a flat one at p near 1 puts the crossing near it
  'top-p 0.99 peaked (temperature 0.3)': { temperature: 0.3, topP: 0.99 },
  'top-p 0.9999 flat (temperature 2)': { temperature: 2, topP: 0.9999 },
  'top-p 0.5 after top-k 200': { temperature: 1, topK: 200, topP: 0.5 },
  'min-p 0.05': { temperature: 0.7, minP: 0.05 },
  'top-p 0.95 then min-p 0.2': { temperature: 1, topP: 0.95, minP: 0.2 },
  'penalties and logit bias': { temperature: 0.7, repetitionPenalty: 1.3, frequencyPenalty: 0.5, presencePenalty: 0.3, logitBias: { 3: 5, 10: -100, 4999: 2 } },
};
/** Gaussian logits (standard deviation 3) at Kimi's vocabulary: top-p's first guess gathers a few times the nucleus there */
function gaussianLogits(V: number, seed: number): Float32Array {
  const l = new Float32Array(V);
  let s = seed;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296;
  for (let i = 0; i < V; i++) l[i] = 3 * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return l;
}
const BIG: Record<string, SamplingOptions> = {
  'top-p 0.9 at 163,840 Gaussian logits': { temperature: 0.7, topP: 0.9 },
  'top-p 0.6 at 163,840 Gaussian logits, then min-p 0.01': { temperature: 1, topP: 0.6, minP: 0.01 },
};
const context = Array.from({ length: 300 }, (_, i) => (i * 7919) % 60);

describe('the AssemblyScript sampler', async () => {
  const wasm = await loadWasmBackend('simd');
  /** the logits placed in the wasm engine's memory, as a session's are */
  const inEngine = (l: Float32Array) => {
    const address = wasm.alloc(4 * l.length);
    wasm.f32(address, l.length).set(l);
    return { backend: wasm, address, vocabSize: l.length, copy: () => wasm.f32(address, l.length).slice() };
  };

  it('is installed, borrows the memory it works in and puts no data there', () => {
    expect(runtimeModuleInstalled()).toBe(true);
    const mod = new WebAssembly.Module(readFileSync(join(packageRoot(), 'wasm', 'dist', 'kle-as.wasm')));
    expect(WebAssembly.Module.imports(mod)).toEqual([{ module: 'env', name: 'memory', kind: 'memory' }]);
    expect(WebAssembly.Module.exports(mod).some((e) => e.kind === 'memory')).toBe(false);
    // a data segment would overwrite engine memory at instantiation: section id 11 must be absent
    const bytes = readFileSync(join(packageRoot(), 'wasm', 'dist', 'kle-as.wasm'));
    let off = 8;
    const sections: number[] = [];
    while (off < bytes.length) {
      const id = bytes[off++]!;
      let size = 0, shift = 0, b: number;
      do {
        b = bytes[off++]!;
        size |= (b & 0x7f) << shift;
        shift += 7;
      } while (b & 0x80);
      sections.push(id);
      off += size;
    }
    expect(sections).not.toContain(11);
  });

  it('greedy and top-k 1 pick exactly the reference\'s token, penalties and bias included, at any vocabulary size', () => {
    for (const V of [1, 3, 4, 1001, 4096, 163_840]) {
      for (let seed = 1; seed <= 4; seed++) {
        const l = logitsOf(V, seed, seed % 2 === 0);
        for (const o of [{ temperature: 0 }, { temperature: 0.8, topK: 1 }, { temperature: 0, repetitionPenalty: 1.5, logitBias: { [V - 1]: 100 } }] as SamplingOptions[]) {
          const want = new ReferenceSampler(o).sample(l, context);
          expect(new Sampler(o).sample(l, context), `V ${V} ${JSON.stringify(o)}`).toBe(want);
          expect(new Sampler(o).sample(inEngine(l), context)).toBe(want);
        }
      }
    }
  });

  for (const [name, o] of [...Object.entries(MODES), ...Object.entries(BIG)]) {
    it(`${name}: draws follow the reference's distribution and stay in its set`, () => {
      const l = name in BIG ? gaussianLogits(163_840, 7) : logitsOf(5000, 99, name.includes('ties'));
      const d = new ReferenceSampler(o).distribution(l, context);
      const prob = new Map(d.ids.map((t, i) => [t, d.p[i]! / d.sum]));
      const src = inEngine(l);
      const s = new Sampler({ ...o, seed: 11 });
      const N = 20_000;
      const hist = new Map<number, number>();
      for (let i = 0; i < N; i++) {
        const t = s.sample(i % 2 ? src : l, context);
        expect(prob.has(t), `token ${t} is outside the reference's ${d.ids.length}`).toBe(true);
        hist.set(t, (hist.get(t) ?? 0) + 1);
      }
      // chi-square over the tokens expected 5 times or more, the rest pooled
      let chi = 0, df = -1, poolE = 0, poolO = 0;
      for (const [t, p] of prob) {
        const e = p * N, ob = hist.get(t) ?? 0;
        if (e >= 5) {
          chi += (ob - e) ** 2 / e;
          df++;
        } else {
          poolE += e;
          poolO += ob;
        }
      }
      if (poolE > 0) {
        chi += (poolO - poolE) ** 2 / poolE;
        df++;
      }
      // a fixed seed: no flakiness; the bar is about five standard deviations above the mean
      expect(chi, `chi2 ${chi.toFixed(1)} with ${df} degrees of freedom`).toBeLessThan(df + 5 * Math.sqrt(2 * Math.max(df, 1)) + 10);
    });
  }

  it('the same seed gives the same tokens; the logits in engine memory are left as they were', () => {
    const l = logitsOf(163_840, 5);
    const src = inEngine(l);
    const o = { temperature: 0.9, topP: 0.95, repetitionPenalty: 1.2, seed: 42 };
    const a = new Sampler(o), b = new Sampler(o);
    const ctx: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = a.sample(src, ctx);
      expect(b.sample(l, ctx)).toBe(t);
      ctx.push(t);
    }
    expect(src.copy()).toEqual(l);
  });

  it('counts a growing context incrementally and recounts one that changed', () => {
    const l = logitsOf(100, 8);
    const o = { temperature: 0, repetitionPenalty: 100 };
    const s = new Sampler(o), r = new ReferenceSampler(o);
    const ctx = [r.sample(l, [])];
    for (let i = 0; i < 20; i++) {
      const t = s.sample(l, ctx);
      expect(t).toBe(r.sample(l, ctx));
      ctx.push(t);
    }
    const other = [5, 5, 6];
    expect(s.sample(l, other)).toBe(r.sample(l, other));
  });

  it('refuses options out of range', () => {
    expect(() => new Sampler({ minP: 1.5 })).toThrow(/minP/);
    expect(() => new Sampler({ frequencyPenalty: 3 })).toThrow(/frequencyPenalty/);
    expect(() => new Sampler({ logitBias: { 5: 101 } })).toThrow(/logitBias/);
    expect(() => new Sampler({ logitBias: { [-1]: 1 } })).toThrow(/logitBias/);
  });
});
