/** Token sampling: repetition penalty, temperature, top-k, top-p, seeded. */

export interface SamplingOptions {
  /** 0 picks the most likely token (greedy). Default 1. */
  temperature?: number;
  /** keep only the k most likely tokens (0: all) */
  topK?: number;
  /** keep the smallest set of tokens whose probability reaches p (1: all) */
  topP?: number;
  /** > 1 makes tokens already in the context less likely (CTRL's rule, as in HF transformers) */
  repetitionPenalty?: number;
  /** seed of the sampler's generator, for reproducible sampling */
  seed?: number;
}

/** mulberry32: small, fast, seeded, the same on every platform */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function validateSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 1;
  if (!(t >= 0 && Number.isFinite(t))) throw new RangeError(`temperature must be >= 0, got ${t}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) throw new RangeError(`topK must be a non-negative integer, got ${o.topK}`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${o.topP}`);
  if (o.repetitionPenalty !== undefined && !(o.repetitionPenalty > 0 && Number.isFinite(o.repetitionPenalty))) throw new RangeError(`repetitionPenalty must be > 0, got ${o.repetitionPenalty}`);
}

export class Sampler {
  private readonly next: () => number;

  constructor(private readonly o: SamplingOptions = {}) {
    validateSampling(o);
    this.next = rng(o.seed ?? (Math.random() * 2 ** 32) >>> 0);
  }

  /** Picks a token from logits; `context` holds the tokens the repetition penalty applies to. */
  sample(logits: Float32Array, context: Iterable<number> = []): number {
    const l = Float32Array.from(logits);
    const pen = this.o.repetitionPenalty ?? 1;
    if (pen !== 1) for (const t of new Set(context)) if (t >= 0 && t < l.length) l[t] = l[t]! > 0 ? l[t]! / pen : l[t]! * pen;
    const temp = this.o.temperature ?? 1;
    if (temp === 0) {
      let best = 0;
      for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
      return best;
    }
    let idx = Array.from(l.keys()).sort((a, b) => l[b]! - l[a]! || a - b);
    const k = this.o.topK ?? 0;
    if (k > 0 && k < idx.length) idx = idx.slice(0, k);
    const max = l[idx[0]!]!;
    let p = idx.map((i) => Math.exp((l[i]! - max) / temp));
    let sum = p.reduce((a, b) => a + b, 0);
    const topP = this.o.topP ?? 1;
    if (topP < 1) {
      let acc = 0, cut = p.length;
      for (let i = 0; i < p.length; i++) {
        acc += p[i]! / sum;
        if (acc >= topP) {
          cut = i + 1;
          break;
        }
      }
      idx = idx.slice(0, cut);
      p = p.slice(0, cut);
      sum = p.reduce((a, b) => a + b, 0);
    }
    let r = this.next() * sum;
    for (let i = 0; i < p.length; i++) {
      r -= p[i]!;
      if (r < 0) return idx[i]!;
    }
    return idx[idx.length - 1]!;
  }
}
