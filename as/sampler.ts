// Token sampling over a vocabulary of any size without sorting it (AssemblyScript, SIMD).
//
// The module owns no memory: it imports the memory it works in, so on the wasm engine it reads
// the logits where the engine left them (one instance per engine memory), and elsewhere it gets
// a memory of its own that the logits are copied into. Every pointer is a byte offset into that
// memory; `scratch` is a region of scratchBytes(V) the caller reserves.
//
// The filters keep a prefix of the vocabulary sorted by (logit descending, index ascending), as
// src/generate/sampler-reference.ts does with a full sort: top-k by a radix select on the
// logits' bits (three histogram passes), top-p by a histogram of probability mass over the
// distance below the maximum (1/64 nat bins; only the bin where the mass crosses is sorted) of
// the few tokens that a bound on the mass below them shows can reach the crossing, min-p as a
// plain threshold. A cut is a value and how many of the tokens equal to it (in index
// order) stay. The draw walks the kept tokens in index order, whose distribution is the
// reference's; the same seed gives a different token than the reference's walk in sorted order,
// so the two are compared statistically, and exactly where sampling is deterministic.

const BINS: i32 = 2048;
const KBINS: i32 = 65536; // top-k buckets: the top 16 bits of a logit's key
const BIN_SCALE: f32 = 64; // bins per nat below the maximum: 2047 bins cover 32 nats, the last the rest
const BLOCK: i32 = 1024; // tokens per partial sum of the draw
const LN2: f32 = 0.6931471805599453;
const INV_LN2: f32 = 1.4426950408889634;

// scratch layout, in bytes from `scratch`
function offE(): i32 { return 0; } // [V] f32: exp((l - max) / T), 0 where cut
function offMass(V: i32): i32 { return V * 4; } // [BINS] f64 mass per bin
function offCount(V: i32): i32 { return offMass(V) + BINS * 8; } // [KBINS] i32 histogram counts
function offBlock(V: i32): i32 { return offCount(V) + KBINS * 4; } // [ceil(V / BLOCK)] f64
function offList(V: i32): i32 { return offBlock(V) + ((V + BLOCK - 1) / BLOCK) * 8; } // [V] i32
function offBin(V: i32): i32 { return offList(V) + V * 4; } // [V] i32: top-p's crossing bin, sorted
function offWork(V: i32): i32 { return offBin(V) + V * 4; } // [V] f32 logits with the penalties applied

/** Bytes of scratch a vocabulary of V tokens needs. */
export function scratchBytes(V: i32): i32 {
  return offWork(V) + V * 4;
}

/**
 * Copies the logits to the work area and adjusts the tokens the caller names, each rounded to
 * float32 once, as the reference does: the n tokens of the context (toks[i] i32 with counts[i]
 * i32 and their logit bias cbias[i] f64, 0 for none) get the bias added, then the repetition
 * penalty (CTRL's: a positive logit divided by `rep`, a negative one multiplied), then
 * frequency * count + presence subtracted; the nb other biased tokens (btoks[i] i32) get
 * bvals[i] (f64) added. Tokens outside [0, V) are ignored. Returns the work area's address.
 */
export function penalize(logits: usize, V: i32, scratch: usize, toks: usize, counts: usize, cbias: usize, n: i32, rep: f64, freq: f64, pres: f64, btoks: usize, bvals: usize, nb: i32): usize {
  const w = scratch + <usize>offWork(V);
  memory.copy(w, logits, <usize>V << 2);
  for (let i = 0; i < nb; i++) {
    const t = load<i32>(btoks + (<usize>i << 2));
    if (t >= 0 && t < V) {
      const q = w + (<usize>t << 2);
      store<f32>(q, <f32>(<f64>load<f32>(q) + load<f64>(bvals + (<usize>i << 3))));
    }
  }
  for (let i = 0; i < n; i++) {
    const t = load<i32>(toks + (<usize>i << 2)), c = load<i32>(counts + (<usize>i << 2));
    if (t < 0 || t >= V) continue;
    const q = w + (<usize>t << 2);
    let l = <f64>load<f32>(q) + load<f64>(cbias + (<usize>i << 3));
    if (c > 0) {
      if (rep != 1) l = l > 0 ? l / rep : l * rep;
      l -= freq * <f64>c + pres;
    }
    store<f32>(q, <f32>l);
  }
  return w;
}

function maxOf(p: usize, V: i32): f32 {
  let m = f32x4.splat(-Infinity);
  let i = 0;
  for (; i + 16 <= V; i += 16) {
    const q = p + (<usize>i << 2);
    m = f32x4.max(m, f32x4.max(f32x4.max(v128.load(q), v128.load(q, 16)), f32x4.max(v128.load(q, 32), v128.load(q, 48))));
  }
  for (; i + 4 <= V; i += 4) m = f32x4.max(m, v128.load(p + (<usize>i << 2)));
  let r = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
  for (; i < V; i++) r = max(r, load<f32>(p + (<usize>i << 2)));
  return r;
}

/** The most likely token; ties go to the lowest index. */
export function argmax(p: usize, V: i32): i32 {
  const m = maxOf(p, V);
  const mv = f32x4.splat(m);
  let i = 0;
  for (; i + 4 <= V; i += 4) if (i32x4.bitmask(f32x4.eq(v128.load(p + (<usize>i << 2)), mv))) break;
  for (; i < V; i++) if (load<f32>(p + (<usize>i << 2)) == m) return i;
  return 0;
}

/**
 * e^x for x <= 0 in four lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-5 Taylor
 * polynomial (relative error below 5e-6 with the rounding of n ln2), 2^n through the exponent bits; x is clamped at -87
 * (e^-87 is 1.6e-38, the smallest normal float's order).
 */
// @ts-ignore: decorator
@inline function exp4(x: v128): v128 {
  x = f32x4.max(x, f32x4.splat(-87.0));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(INV_LN2)));
  const r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(LN2)));
  let y = f32x4.add(f32x4.mul(r, f32x4.splat(1.0 / 120.0)), f32x4.splat(1.0 / 24.0));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.0 / 6.0));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(0.5));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.0));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.0));
  return f32x4.mul(y, i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23));
}

// @ts-ignore: decorator
@inline function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/** A float's bits as an unsigned key that orders like the float. */
// @ts-ignore: decorator
@inline function key(f: f32): u32 {
  const b = reinterpret<u32>(f);
  return (b & 0x80000000) ? ~b : b | 0x80000000;
}

// @ts-ignore: decorator
@inline function unkey(k: u32): f32 {
  return reinterpret<f32>((k & 0x80000000) ? k & 0x7fffffff : ~k);
}

// results of a cut, read back by the caller after sample()
let cutValue: f32 = 0;
let cutTies: i32 = 0;
let cutAllTies: bool = false;

/**
 * The k-th largest logit, into cutValue, and how many of the tokens equal to it are among the
 * k (cutTies): a histogram of the top 16 bits of the logits' order-preserving keys finds the
 * bucket the k-th falls in, whose few tokens are then sorted.
 */
function kth(p: usize, V: i32, k: i32, scratch: usize): void {
  const cnt = scratch + <usize>offCount(V);
  memory.fill(cnt, 0, <usize>KBINS << 2);
  const sign = i32x4.splat(0x80000000);
  let i = 0;
  for (; i + 4 <= V; i += 4) {
    const b = v128.load(p + (<usize>i << 2));
    // key = negative ? ~bits : bits | sign; its top 16 bits are the bucket
    const neg = i32x4.shr_s(b, 31);
    const kv = i32x4.shr_u(v128.xor(v128.or(b, sign), neg), 16);
    let c = cnt + (<usize>i32x4.extract_lane(kv, 0) << 2);
    store<i32>(c, load<i32>(c) + 1);
    c = cnt + (<usize>i32x4.extract_lane(kv, 1) << 2);
    store<i32>(c, load<i32>(c) + 1);
    c = cnt + (<usize>i32x4.extract_lane(kv, 2) << 2);
    store<i32>(c, load<i32>(c) + 1);
    c = cnt + (<usize>i32x4.extract_lane(kv, 3) << 2);
    store<i32>(c, load<i32>(c) + 1);
  }
  for (; i < V; i++) {
    const c = cnt + (<usize>(key(load<f32>(p + (<usize>i << 2))) >> 16) << 2);
    store<i32>(c, load<i32>(c) + 1);
  }
  let above = 0;
  let bucket = KBINS - 1;
  for (; bucket > 0; bucket--) {
    const c = load<i32>(cnt + (<usize>bucket << 2));
    if (above + c >= k) break;
    above += c;
  }
  // the bucket's tokens, in index order, then sorted
  const list = scratch + <usize>offList(V);
  let n = 0;
  const want = i32x4.splat(bucket);
  let t = 0;
  for (; t + 4 <= V; t += 4) {
    const b = v128.load(p + (<usize>t << 2));
    const kv = i32x4.shr_u(v128.xor(v128.or(b, sign), i32x4.shr_s(b, 31)), 16);
    const hit = i32x4.bitmask(i32x4.eq(kv, want));
    if (hit) n = pushHits(list, n, hit, t);
  }
  for (; t < V; t++) {
    if (<i32>(key(load<f32>(p + (<usize>t << 2))) >> 16) == bucket) store<i32>(list + (<usize>(n++) << 2), t);
  }
  sortList(p, list, n);
  const at = k - above - 1;
  cutValue = logitOf(p, list, at);
  cutTies = tiesUpTo(p, list, at);
  // equal logits share a bucket, so the list holds every token equal to the cut
  cutAllTies = at + 1 >= n || logitOf(p, list, at + 1) != cutValue;
}

/** The logit of the token at list[i]. */
// @ts-ignore: decorator
@inline function logitOf(p: usize, list: usize, i: i32): f32 {
  return load<f32>(p + (<usize>load<i32>(list + (<usize>i << 2)) << 2));
}

/** Appends the tokens t + j whose bit j of `hit` is set to list[n..]; returns the new length. */
// @ts-ignore: decorator
@inline function pushHits(list: usize, n: i32, hit: i32, t: i32): i32 {
  for (let j = 0; j < 4; j++) if (hit & (1 << j)) store<i32>(list + (<usize>(n++) << 2), t + j);
  return n;
}

/** In a sorted list, how many of list[0..at] share list[at]'s logit (it and the ties before it). */
// @ts-ignore: decorator
@inline function tiesUpTo(p: usize, list: usize, at: i32): i32 {
  const v = logitOf(p, list, at);
  let ties = 1;
  for (let q = at - 1; q >= 0 && logitOf(p, list, q) == v; q--) ties++;
  return ties;
}

/** Sorts list[0..n) of token ids by (logit descending, id ascending). */
function sortList(p: usize, list: usize, n: i32): void {
  // heap sort: no recursion, no allocation, n log n in the worst case
  for (let start = (n >> 1) - 1; start >= 0; start--) siftDown(p, list, start, n);
  for (let end = n - 1; end > 0; end--) {
    const a = load<i32>(list), b = load<i32>(list + (<usize>end << 2));
    store<i32>(list, b);
    store<i32>(list + (<usize>end << 2), a);
    siftDown(p, list, 0, end);
  }
}

// "comes after" in the kept order: smaller logit, or equal logit and larger id
// @ts-ignore: decorator
@inline function after(p: usize, a: i32, b: i32): bool {
  const la = load<f32>(p + (<usize>a << 2)), lb = load<f32>(p + (<usize>b << 2));
  return la < lb || (la == lb && a > b);
}

function siftDown(p: usize, list: usize, root: i32, n: i32): void {
  // a max-heap in "after" order leaves the list sorted first-kept-first
  while (true) {
    let child = 2 * root + 1;
    if (child >= n) return;
    const c1 = load<i32>(list + (<usize>child << 2));
    if (child + 1 < n) {
      const c2 = load<i32>(list + (<usize>(child + 1) << 2));
      if (after(p, c2, c1)) child++;
    }
    const r = load<i32>(list + (<usize>root << 2)), c = load<i32>(list + (<usize>child << 2));
    if (!after(p, c, r)) return;
    store<i32>(list + (<usize>root << 2), c);
    store<i32>(list + (<usize>child << 2), r);
    root = child;
  }
}

/** A block's partial sum: the four lanes' pairs in float32, then float64. */
// @ts-ignore: decorator
@inline function blockSum(v: v128): f64 {
  return <f64>(f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1)) + <f64>(f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3));
}

// @ts-ignore: decorator
@inline function addMass(mass: usize, l: f32, m: f32, invT: f32, e: f32): void {
  const mb = mass + (<usize>binOf(l, m, invT) << 3);
  store<f64>(mb, load<f64>(mb) + <f64>e);
}

// @ts-ignore: decorator
@inline function binOf(l: f32, m: f32, invT: f32): i32 {
  const d = (m - l) * invT * BIN_SCALE;
  return d >= <f32>(BINS - 1) ? BINS - 1 : <i32>d;
}

/**
 * A lower bound of ln(x) for x > 0 from its bits: ln 2 times (exponent + mantissa - 1), the chord
 * under the logarithm's curve on each octave (at most 0.06 nats low). -Infinity for 0 and
 * subnormals.
 */
function lnBelow(x: f32): f32 {
  const b = reinterpret<u32>(x);
  if (x <= 0 || (b >> 23) == 0) return -Infinity;
  const f = reinterpret<f32>((b & 0x7fffff) | 0x3f800000);
  return LN2 * (<f32>(<i32>(b >> 23) - 127) + f - 1);
}

/**
 * The tokens with logit >= lc (and, when `cut`, E > 0: top-k kept them) into list, in index
 * order; returns how many.
 */
function gather(logits: usize, E: usize, V: i32, lc: f32, cut: bool, list: usize): i32 {
  const lcv = f32x4.splat(lc), zero = f32x4.splat(0);
  let n = 0;
  let t = 0;
  if (cut) {
    for (; t + 4 <= V; t += 4) {
      const hit = i32x4.bitmask(v128.and(f32x4.ge(v128.load(logits + (<usize>t << 2)), lcv), f32x4.gt(v128.load(E + (<usize>t << 2)), zero)));
      if (hit) n = pushHits(list, n, hit, t);
    }
  } else {
    for (; t + 4 <= V; t += 4) {
      const hit = i32x4.bitmask(f32x4.ge(v128.load(logits + (<usize>t << 2)), lcv));
      if (hit) n = pushHits(list, n, hit, t);
    }
  }
  for (; t < V; t++) {
    if (load<f32>(logits + (<usize>t << 2)) >= lc && load<f32>(E + (<usize>t << 2)) > 0) store<i32>(list + (<usize>(n++) << 2), t);
  }
  return n;
}

/**
 * Top-p over E (exp((l - m) / T) with top-k's cut applied, summing to `total`), then min-p's
 * threshold mp, then the draw. Only the tokens that can reach the crossing are looked at: if
 * the tokens below a logit lc have E < c each, they hold less than V c, so with
 * c = (1 - p) total / V the tokens at or above lc hold more than p total and the crossing is
 * among them. A bolder guess (64 c) is tried first and checked by summing what it gathered:
 * on an LLM's logits it gathers a few times the nucleus. The gathered tokens' mass by distance
 * below the maximum (1/BIN_SCALE nat bins) finds the bin of the crossing, and only that bin's
 * tokens are sorted. The draw walks the kept tokens in index order.
 */
function nucleus(logits: usize, V: i32, scratch: usize, m: f32, invT: f32, total: f64, topP: f32, mp: f32, cut: bool, u: f64): i32 {
  const E = scratch + <usize>offE();
  const list = scratch + <usize>offList(V);
  const target = <f64>topP * total;
  let n = 0;
  for (let g = 0; g < 3; g++) {
    const c = <f32>((1 - <f64>topP) * total / <f64>V * (g == 0 ? 64.0 : 1.0));
    const lc: f32 = g == 2 ? -Infinity : m + lnBelow(c) / invT;
    n = gather(logits, E, V, lc, cut, list);
    let M: f64 = 0;
    for (let j = 0; j < n; j++) M += <f64>load<f32>(E + (<usize>load<i32>(list + (<usize>j << 2)) << 2));
    if (M >= target) break;
  }
  const mass = scratch + <usize>offMass(V);
  memory.fill(mass, 0, <usize>BINS << 3);
  for (let j = 0; j < n; j++) {
    const t = load<i32>(list + (<usize>j << 2));
    addMass(mass, load<f32>(logits + (<usize>t << 2)), m, invT, load<f32>(E + (<usize>t << 2)));
  }
  let acc: f64 = 0;
  let bc = 0;
  for (; bc < BINS - 1; bc++) {
    const mb = load<f64>(mass + (<usize>bc << 3));
    if (acc + mb >= target) break;
    acc += mb;
  }
  // the crossing bin's tokens, sorted; rounding may leave the crossing past every token, when
  // all are kept
  const bin = scratch + <usize>offBin(V);
  let nb = 0;
  for (let j = 0; j < n; j++) {
    const t = load<i32>(list + (<usize>j << 2));
    if (binOf(load<f32>(logits + (<usize>t << 2)), m, invT) == bc) store<i32>(bin + (<usize>(nb++) << 2), t);
  }
  sortList(logits, bin, nb);
  let pv: f32 = -Infinity;
  let pt: i32 = V;
  for (let j = 0; j < nb; j++) {
    const t = load<i32>(bin + (<usize>j << 2));
    acc += <f64>load<f32>(E + (<usize>t << 2));
    if (acc >= target || j == nb - 1) {
      pv = load<f32>(logits + (<usize>t << 2));
      // ties at pv kept: those before t in the sorted bin, and t (equal logits share a bin)
      pt = tiesUpTo(logits, bin, j);
      break;
    }
  }
  // kept: above pv, the first pt tokens equal to it in index order, and at least mp
  let sum: f64 = 0;
  let ties = 0;
  for (let j = 0; j < n; j++) {
    const t = load<i32>(list + (<usize>j << 2));
    const l = load<f32>(logits + (<usize>t << 2));
    if (l < mp || l < pv || (l == pv && ties++ >= pt)) store<i32>(list + (<usize>j << 2), -1);
    else sum += <f64>load<f32>(E + (<usize>t << 2));
  }
  let r = u * sum;
  let last = -1;
  for (let j = 0; j < n; j++) {
    const t = load<i32>(list + (<usize>j << 2));
    if (t < 0) continue;
    last = t;
    r -= <f64>load<f32>(E + (<usize>t << 2));
    if (r < 0) return t;
  }
  return last >= 0 ? last : argmax(logits, V);
}

/**
 * Draws a token from logits[0..V) at temperature T > 0, keeping the topK most likely (0: all),
 * then the smallest set whose probability reaches topP (1: all), then those at least minP times
 * as likely as the most likely (logMinP = ln(minP); -Infinity: all). u in [0, 1) is the draw.
 * (The caller takes the logarithm: the module's own log would bring lookup tables into a
 * memory it only borrows.)
 */
export function sample(logits: usize, V: i32, scratch: usize, T: f32, topK: i32, topP: f32, logMinP: f32, u: f64): i32 {
  const m = maxOf(logits, V);
  const invT: f32 = 1.0 / T;
  // the cut so far: keep l > cv, and the first ct tokens equal to cv
  let cv: f32 = -Infinity;
  let ct: i32 = V;
  let floor: f32 = -Infinity; // when every tie at the top-k cut is kept: keep l >= floor
  if (topK > 0 && topK < V) {
    kth(logits, V, topK, scratch);
    if (cutAllTies && topP >= 1) floor = cutValue;
    else {
      cv = cutValue;
      ct = cutTies;
    }
  }
  const E = scratch + <usize>offE();
  const block = scratch + <usize>offBlock(V);
  const nBlocks = (V + BLOCK - 1) / BLOCK;
  const wantP = topP < 1;
  // min-p: a value threshold (every tie kept); applied in the exp pass unless top-p needs the
  // mass it removes
  const mp: f32 = logMinP > -Infinity ? m + T * logMinP : -Infinity;
  // exp pass (SIMD), the top-k cut applied, a partial sum per block of BLOCK tokens
  const mv = f32x4.splat(m), tv = f32x4.splat(invT), cvv = f32x4.splat(cv);
  let total: f64 = 0;
  if (cv == -Infinity) {
    // thresholds only (temperature, top-k without a split tie, min-p unless top-p needs the
    // mass it removes): the tight loop
    const lo: f32 = wantP ? floor : max(mp, floor);
    const mpv = f32x4.splat(lo);
    for (let b = 0; b < nBlocks; b++) {
      const end = min(V, (b + 1) * BLOCK);
      let acc = f32x4.splat(0);
      let rest: f64 = 0;
      let i = b * BLOCK;
      if (lo == -Infinity) {
        // temperature alone (top-p's pass too): every token's exp, no mask
        for (; i + 8 <= end; i += 8) {
          const q = logits + (<usize>i << 2);
          const e0 = exp4(f32x4.mul(f32x4.sub(v128.load(q), mv), tv));
          const e1 = exp4(f32x4.mul(f32x4.sub(v128.load(q, 16), mv), tv));
          v128.store(E + (<usize>i << 2), e0);
          v128.store(E + (<usize>i << 2), e1, 16);
          acc = f32x4.add(acc, f32x4.add(e0, e1));
        }
      }
      for (; i + 4 <= end; i += 4) {
        const l = v128.load(logits + (<usize>i << 2));
        const keep = f32x4.ge(l, mpv);
        // below every threshold (most of the vocabulary under top-k or a high min-p): no exp
        if (!v128.any_true(keep)) {
          v128.store(E + (<usize>i << 2), f32x4.splat(0));
          continue;
        }
        const e = v128.and(exp4(f32x4.mul(f32x4.sub(l, mv), tv)), keep);
        v128.store(E + (<usize>i << 2), e);
        acc = f32x4.add(acc, e);
      }
      for (; i < end; i++) {
        const l = load<f32>(logits + (<usize>i << 2));
        const e: f32 = l >= lo ? exp1((l - m) * invT) : 0;
        store<f32>(E + (<usize>i << 2), e);
        rest += <f64>e;
      }
      const sb = blockSum(acc) + rest;
      store<f64>(block + (<usize>b << 3), sb);
      total += sb;
    }
  } else {
    // top-k's cut splits a tie: tokens equal to the cut value are kept in index order, up to ct
    let tiesSeen = 0;
    for (let b = 0; b < nBlocks; b++) {
      const end = min(V, (b + 1) * BLOCK);
      let acc = f32x4.splat(0);
      let rest: f64 = 0;
      let i = b * BLOCK;
      for (; i + 4 <= end; i += 4) {
        const l = v128.load(logits + (<usize>i << 2));
        let e = exp4(f32x4.mul(f32x4.sub(l, mv), tv));
        if (!i32x4.bitmask(f32x4.eq(l, cvv))) {
          e = v128.and(e, f32x4.gt(l, cvv));
          v128.store(E + (<usize>i << 2), e);
          acc = f32x4.add(acc, e);
        } else {
          v128.store(E + (<usize>i << 2), e);
          for (let j = 0; j < 4; j++) {
            const q = E + (<usize>(i + j) << 2);
            const lj = load<f32>(logits + (<usize>(i + j) << 2));
            if (lj < cv || (lj == cv && tiesSeen++ >= ct)) store<f32>(q, 0);
            rest += <f64>load<f32>(q);
          }
        }
      }
      for (; i < end; i++) {
        const l = load<f32>(logits + (<usize>i << 2));
        const e: f32 = l > cv || (l == cv && tiesSeen++ < ct) ? exp1((l - m) * invT) : 0;
        store<f32>(E + (<usize>i << 2), e);
        rest += <f64>e;
      }
      const sb = blockSum(acc) + rest;
      store<f64>(block + (<usize>b << 3), sb);
      total += sb;
    }
  }
  if (wantP) return nucleus(logits, V, scratch, m, invT, total, topP, mp, cv > -Infinity, u);
  const sum = total;
  let r = u * sum;
  let last = -1;
  for (let b = 0; b < nBlocks; b++) {
    const s = load<f64>(block + (<usize>b << 3));
    if (s == 0) continue;
    if (r >= s) {
      r -= s;
      // remember the block's last kept token in case rounding leaves r past the end
      const end = min(V, (b + 1) * BLOCK);
      for (let t = end - 1; t >= b * BLOCK; t--) if (load<f32>(E + (<usize>t << 2)) > 0) { last = t; break; }
      continue;
    }
    const end = min(V, (b + 1) * BLOCK);
    for (let t = b * BLOCK; t < end; t++) {
      const e = <f64>load<f32>(E + (<usize>t << 2));
      if (e == 0) continue;
      last = t;
      r -= e;
      if (r < 0) return t;
    }
  }
  return last >= 0 ? last : argmax(logits, V);
}
