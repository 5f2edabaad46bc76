/**
 * Token sampling written the plain way: the whole vocabulary copied, penalized and sorted. Slow
 * at large vocabularies (tens of ms at 163,840 tokens), it is what the fast sampler
 * (./sampler.ts, over as/sampler.ts) is tested against: the same options, the same order of
 * operations, the same distribution.
 */

export interface SamplingOptions {
  /** 0 picks the most likely token (greedy). Default 1. */
  temperature?: number;
  /** keep only the k most likely tokens (0: all) */
  topK?: number;
  /** keep the smallest set of tokens whose probability reaches p (1: all) */
  topP?: number;
  /** keep only tokens at least this fraction as likely as the most likely one (0: all) */
  minP?: number;
  /** > 1 makes tokens already in the context less likely (CTRL's rule, as in HF transformers) */
  repetitionPenalty?: number;
  /** subtracted from a token's logit once per time it occurs in the context (OpenAI's, -2..2) */
  frequencyPenalty?: number;
  /** subtracted from the logit of every token that occurs in the context (OpenAI's, -2..2) */
  presencePenalty?: number;
  /** added to the logits of these token ids before anything else (OpenAI's logit_bias, -100..100) */
  logitBias?: Readonly<Record<number, number>> | ReadonlyMap<number, number>;
  /** seed of the sampler's generator, for reproducible sampling */
  seed?: number;
}

/** mulberry32: small, fast, seeded, the same on every platform */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Entries of a logit-bias option, whichever form it came in. */
export function biasEntries(b: SamplingOptions['logitBias']): [number, number][] {
  if (!b) return [];
  return b instanceof Map ? [...b.entries()] : Object.entries(b).map(([k, v]) => [Number(k), v as number]);
}

export function validateSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 1;
  if (!(t >= 0 && Number.isFinite(t))) throw new RangeError(`temperature must be >= 0, got ${t}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) throw new RangeError(`topK must be a non-negative integer, got ${o.topK}`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${o.topP}`);
  if (o.minP !== undefined && !(o.minP >= 0 && o.minP <= 1)) throw new RangeError(`minP must be in [0, 1], got ${o.minP}`);
  if (o.repetitionPenalty !== undefined && !(o.repetitionPenalty > 0 && Number.isFinite(o.repetitionPenalty))) throw new RangeError(`repetitionPenalty must be > 0, got ${o.repetitionPenalty}`);
  for (const k of ['frequencyPenalty', 'presencePenalty'] as const) {
    const v = o[k];
    if (v !== undefined && !(v >= -2 && v <= 2)) throw new RangeError(`${k} must be in [-2, 2], got ${v}`);
  }
  for (const [id, v] of biasEntries(o.logitBias)) {
    if (!(Number.isInteger(id) && id >= 0)) throw new RangeError(`logitBias: "${id}" is not a token id`);
    if (!(v >= -100 && v <= 100)) throw new RangeError(`logitBias for token ${id} must be in [-100, 100], got ${v}`);
  }
}

/** Token counts of a context, for the penalties. */
export function countTokens(context: Iterable<number>): Map<number, number> {
  const n = new Map<number, number>();
  for (const t of context) n.set(t, (n.get(t) ?? 0) + 1);
  return n;
}

/**
 * The logit a token gets before temperature: logit bias, then the repetition penalty (CTRL),
 * then the frequency and presence penalties (OpenAI). `count` is its occurrences in the context.
 */
export function adjustedLogit(o: SamplingOptions, l: number, bias: number, count: number): number {
  l += bias;
  if (count > 0) {
    const pen = o.repetitionPenalty ?? 1;
    if (pen !== 1) l = l > 0 ? l / pen : l * pen;
    l -= (o.frequencyPenalty ?? 0) * count + (o.presencePenalty ?? 0);
  }
  return l;
}

export class ReferenceSampler {
  private readonly next: () => number;

  constructor(private readonly o: SamplingOptions = {}) {
    validateSampling(o);
    this.next = rng(o.seed ?? (Math.random() * 2 ** 32) >>> 0);
  }

  /** Picks a token from logits; `context` holds the tokens the penalties apply to. */
  sample(logits: Float32Array, context: Iterable<number> = []): number {
    const d = this.distribution(logits, context);
    if (d.ids.length === 1) return d.ids[0]!;
    let r = this.next() * d.sum;
    for (let i = 0; i < d.p.length; i++) {
      r -= d.p[i]!;
      if (r < 0) return d.ids[i]!;
    }
    return d.ids[d.ids.length - 1]!;
  }

  /**
   * The tokens sampling may pick, most likely first, with their unnormalized probabilities and
   * their sum (greedy: the one token). What the tests compare the fast sampler's draws against.
   */
  distribution(logits: Float32Array, context: Iterable<number> = []): { ids: number[]; p: number[]; sum: number } {
    const l = Float32Array.from(logits);
    const counts = countTokens(context);
    const bias = new Map(biasEntries(this.o.logitBias));
    for (const t of new Set([...counts.keys(), ...bias.keys()])) {
      if (t >= 0 && t < l.length) l[t] = adjustedLogit(this.o, l[t]!, bias.get(t) ?? 0, counts.get(t) ?? 0);
    }
    const temp = this.o.temperature ?? 1;
    if (temp === 0) {
      let best = 0;
      for (let i = 1; i < l.length; i++) if (l[i]! > l[best]!) best = i;
      return { ids: [best], p: [1], sum: 1 };
    }
    let idx = Array.from(l.keys()).sort((a, b) => l[b]! - l[a]! || a - b);
    const k = this.o.topK ?? 0;
    if (k > 0 && k < idx.length) idx = idx.slice(0, k);
    const max = l[idx[0]!]!;
    let p = idx.map((i) => Math.exp((l[i]! - max) / temp));
    const topP = this.o.topP ?? 1;
    if (topP < 1) {
      const sum = p.reduce((a, b) => a + b, 0);
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
    }
    const minP = this.o.minP ?? 0;
    if (minP > 0) {
      // p[0] is the most likely token's (unnormalized: exp(0) = 1)
      let cut = p.length;
      while (cut > 1 && p[cut - 1]! < minP) cut--;
      idx = idx.slice(0, cut);
      p = p.slice(0, cut);
    }
    return { ids: idx, p, sum: p.reduce((a, b) => a + b, 0) };
  }
}
