/**
 * Seeded random numbers for property tests. Each run draws a fresh seed unless KLE_SEED is set;
 * tests put the seed in their failure messages so any failure can be replayed.
 */
export const SEED = process.env.KLE_SEED ? Number(process.env.KLE_SEED) : (Date.now() ^ (Math.random() * 2 ** 31)) >>> 0;

export class Rng {
  private s: number;
  constructor(seed: number = SEED) {
    this.s = seed >>> 0 || 1;
  }
  /** uniform in [0, 1) (mulberry32) */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  normal(): number {
    const u = Math.max(this.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  normals(n: number, std = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.normal() * std;
    return a;
  }
  uniforms(n: number, lo: number, hi: number): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.uniform(lo, hi);
    return a;
  }
}

/** L2-normalize each row of length D in place. */
export function l2rows(x: Float32Array, D: number): Float32Array {
  for (let r = 0; r < x.length / D; r++) {
    let s = 0;
    for (let i = 0; i < D; i++) s += x[r * D + i]! ** 2;
    const inv = 1 / Math.sqrt(s);
    for (let i = 0; i < D; i++) x[r * D + i]! *= inv;
  }
  return x;
}
