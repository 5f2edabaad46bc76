/**
 * The whole Kimi Linear forward pass in float64, token by token, written from docs/model.md for
 * the tests (it shares nothing with the C engine): MLA attends over decompressed keys and values
 * per head (no weight absorption), the KDA recurrence is the plain delta rule, MoE routing is the
 * grouped top-k as the docs define it (a missing selection bias is a zero bias). Slow on purpose;
 * for models of a few layers and a few hundred tokens.
 */
import type { KimiConfig, MoeConfig } from '../engine/config.js';
import { isMoeLayer } from '../engine/config.js';
import { parseSafetensors, tensorF32 } from '../formats/safetensors.js';

/** A tensor by its HF name, as float values (row-major, HF shapes flattened). */
export type WeightGetter = (name: string) => ArrayLike<number> | undefined;

/** The tensors of a safetensors file's bytes, each decoded to f32 once, on first use. */
export function safetensorsGetter(bytes: Uint8Array): WeightGetter {
  const f = parseSafetensors(bytes);
  const cache = new Map<string, Float32Array>();
  return (name) => {
    const t = f.tensors.get(name);
    if (!t) return undefined;
    if (!cache.has(name)) cache.set(name, tensorF32(t));
    return cache.get(name);
  };
}

type Vec = Float64Array;

function need(get: WeightGetter, name: string): ArrayLike<number> {
  const w = get(name);
  if (!w) throw new Error(`model-ref64: missing tensor ${name}`);
  return w;
}

/** y[rows] = W[rows, cols] x */
function matvec(W: ArrayLike<number>, x: Vec, rows: number, cols: number): Vec {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = 0;
    for (let i = 0; i < cols; i++) acc += W[r * cols + i]! * x[i]!;
    y[r] = acc;
  }
  return y;
}

function rmsnorm(x: Vec, w: ArrayLike<number>, eps: number, off = 0, n = x.length - off): Vec {
  let s = 0;
  for (let i = 0; i < n; i++) s += x[off + i]! ** 2;
  const inv = 1 / Math.sqrt(s / n + eps);
  return Float64Array.from({ length: n }, (_, i) => x[off + i]! * inv * w[i]!);
}

const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));
const silu = (z: number): number => z * sigmoid(z);
const softplus = (z: number): number => (z > 20 ? z : Math.log1p(Math.exp(z)));

/** One sequence's state, per layer: KDA conv histories and S, or MLA's cached (kv, rope) rows. */
interface LayerState {
  hist?: Vec[][]; // [3][W-1] previous inputs of the q, k, v convs, oldest first
  S?: Vec; // [H, K, K]
  rows?: Vec[]; // MLA: normalized latent + rope part per cached token
  meta?: RowMeta[]; // MLA with a budget: each cached row's token, score and pin
}

interface RowMeta {
  pos: number;
  score: number;
  pinned: boolean;
}

/** The bounded MLA cache's settings (docs/kv-budget.md), as the engine takes them. */
export interface RefKvBudget {
  budget: number;
  sink: number;
  window: number;
  decay: number;
  /** 'recent': the newest rows past the sink, scores unused; 'learned': each row's importance head output */
  policy?: 'attention' | 'recent' | 'learned';
}

/**
 * What a reference run does beyond one token at a time: `calls` splits the tokens into forward
 * calls (the cache is brought back to the budget after each, as the engine does after each
 * batch); `pinned` tokens at the start are kept whatever the budget.
 */
export interface RefOptions {
  kv?: RefKvBudget;
  calls?: readonly number[];
  pinned?: number;
}

function kdaToken(c: KimiConfig, get: WeightGetter, p: string, st: LayerState, h: Vec): Vec {
  const D = c.hiddenSize, H = c.kda.numHeads, K = c.kda.headDim, HK = H * K, W = c.kda.convKernel;
  const Kg = c.kda.gatePerHead ? 1 : K;
  st.hist ??= [0, 1, 2].map(() => Array.from({ length: W - 1 }, () => new Float64Array(HK)));
  st.S ??= new Float64Array(H * K * K);
  const qkv = ['q', 'k', 'v'].map((x, i) => {
    const raw = matvec(need(get, `${p}self_attn.${x}_proj.weight`), h, HK, D);
    const w = need(get, `${p}self_attn.${x}_conv1d.weight`); // [HK, 1, W]: tap W-1 meets the newest input
    const hist = st.hist![i]!;
    const out = new Float64Array(HK);
    for (let ch = 0; ch < HK; ch++) {
      let acc = w[ch * W + W - 1]! * raw[ch]!;
      for (let j = 0; j < W - 1; j++) acc += w[ch * W + j]! * hist[j]![ch]!;
      out[ch] = silu(acc);
    }
    hist.push(raw);
    hist.shift();
    return out;
  });
  const [q, k, v] = qkv as [Vec, Vec, Vec];
  const fa = matvec(need(get, `${p}self_attn.f_a_proj.weight`), h, K, D);
  const f = matvec(need(get, `${p}self_attn.f_b_proj.weight`), fa, H * Kg, K);
  const Alog = need(get, `${p}self_attn.A_log`), dt = need(get, `${p}self_attn.dt_bias`);
  const lb = c.kda.gateLowerBound;
  const beta = matvec(need(get, `${p}self_attn.b_proj.weight`), h, H, D).map(sigmoid);
  const ga = matvec(need(get, `${p}self_attn.g_a_proj.weight`), h, K, D);
  const gout = matvec(need(get, `${p}self_attn.g_b_proj.weight`), ga, HK, K);
  const onorm = need(get, `${p}self_attn.o_norm.weight`);
  const o = new Float64Array(HK);
  const S = st.S;
  for (let hh = 0; hh < H; hh++) {
    const norm = (x: Vec) => {
      let s = 0;
      for (let i = 0; i < K; i++) s += x[hh * K + i]! ** 2;
      const inv = 1 / Math.sqrt(s + 1e-6);
      return Float64Array.from({ length: K }, (_, i) => x[hh * K + i]! * inv);
    };
    const qh = norm(q), kh = norm(k), vh = v.subarray(hh * K, hh * K + K);
    const a = Math.exp(Alog[hh]!);
    const base = hh * K * K;
    for (let i = 0; i < K; i++) {
      const z = f[hh * Kg + (Kg === 1 ? 0 : i)]! + dt[hh * Kg + (Kg === 1 ? 0 : i)]!;
      const g = lb === 0 ? -a * softplus(z) : lb * sigmoid(a * z);
      const e = Math.exp(g);
      for (let j = 0; j < K; j++) S[base + i * K + j]! *= e;
    }
    const u = new Float64Array(K);
    for (let j = 0; j < K; j++) {
      let acc = 0;
      for (let i = 0; i < K; i++) acc += S[base + i * K + j]! * kh[i]!;
      u[j] = vh[j]! - acc;
    }
    for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) S[base + i * K + j]! += beta[hh]! * kh[i]! * u[j]!;
    const scale = 1 / Math.sqrt(K);
    const oh = new Float64Array(K);
    for (let j = 0; j < K; j++) {
      let acc = 0;
      for (let i = 0; i < K; i++) acc += S[base + i * K + j]! * qh[i]! * scale;
      oh[j] = acc;
    }
    const n = rmsnorm(oh, onorm, c.rmsNormEps);
    for (let j = 0; j < K; j++) o[hh * K + j] = n[j]! * sigmoid(gout[hh * K + j]!);
  }
  return matvec(need(get, `${p}self_attn.o_proj.weight`), o, D, HK);
}

function mlaToken(c: KimiConfig, get: WeightGetter, p: string, st: LayerState, h: Vec, meta?: RowMeta, decay = 1, learned = false): Vec {
  const D = c.hiddenSize, { numHeads: Hm, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: vh, kvLoraRank: R } = c.mla;
  const q = matvec(need(get, `${p}self_attn.q_proj.weight`), h, Hm * (nope + rope), D);
  const kv = matvec(need(get, `${p}self_attn.kv_a_proj_with_mqa.weight`), h, R + rope, D);
  const row = new Float64Array(R + rope);
  row.set(rmsnorm(kv, need(get, `${p}self_attn.kv_a_layernorm.weight`), c.rmsNormEps, 0, R));
  row.set(kv.subarray(R), R);
  (st.rows ??= []).push(row);
  if (meta) (st.meta ??= []).push(meta);
  const mass = new Float64Array(st.rows.length); // attention each row gets, summed over heads
  const kvb = need(get, `${p}self_attn.kv_b_proj.weight`); // [Hm * (nope + vh), R]
  const out = new Float64Array(Hm * vh);
  const scale = 1 / Math.sqrt(nope + rope);
  for (let hh = 0; hh < Hm; hh++) {
    const kb = hh * (nope + vh);
    const scores = st.rows.map((r) => {
      let acc = 0;
      for (let i = 0; i < nope; i++) {
        let kn = 0; // the decompressed key: W_uk[h] times the latent
        for (let j = 0; j < R; j++) kn += kvb[(kb + i) * R + j]! * r[j]!;
        acc += q[hh * (nope + rope) + i]! * kn;
      }
      for (let i = 0; i < rope; i++) acc += q[hh * (nope + rope) + nope + i]! * r[R + i]!;
      return acc * scale;
    });
    const m = Math.max(...scores);
    const ps = scores.map((s) => Math.exp(s - m));
    const sum = ps.reduce((a, b) => a + b, 0);
    ps.forEach((x, t) => (mass[t]! += x / sum));
    st.rows.forEach((r, t) => {
      for (let i = 0; i < vh; i++) {
        let val = 0;
        for (let j = 0; j < R; j++) val += kvb[(kb + nope + i) * R + j]! * r[j]!;
        out[hh * vh + i]! += (ps[t]! / sum) * val;
      }
    });
  }
  // the row score the budget keeps: decayed, the query's own row starting fresh; or, with a
  // learned head, the head's rating of the token's input, once
  if (meta && learned) {
    const w = need(get, `${p}self_attn.kv_importance.weight`);
    meta.score = h.reduce((a, x, i) => a + x * w[i]!, 0);
  } else st.meta?.forEach((m, t) => (m.score = (t === st.meta!.length - 1 ? 0 : decay * m.score) + mass[t]! / Hm));
  return matvec(need(get, `${p}self_attn.o_proj.weight`), out, D, Hm * vh);
}

/**
 * Drops rows until the layer holds `budget`: sink, window and pinned rows last, then the lowest
 * score, then the oldest (a plain sort, the definition the engine's scan and sort must match).
 */
function evictRef(st: LayerState, kv: RefKvBudget, seen: number): void {
  const rows = st.rows!, meta = st.meta!;
  if (rows.length <= kv.budget) return;
  const guarded = (m: RowMeta): number => (m.pos < kv.sink || m.pos >= seen - kv.window || m.pinned ? 1 : 0);
  const score = (m: RowMeta): number => (kv.policy === 'recent' ? 0 : m.score);
  const order = meta.map((m, i) => i).sort((a, b) => guarded(meta[a]!) - guarded(meta[b]!) || score(meta[a]!) - score(meta[b]!) || meta[a]!.pos - meta[b]!.pos);
  const drop = new Set(order.slice(0, rows.length - kv.budget));
  st.rows = rows.filter((_, i) => !drop.has(i));
  st.meta = meta.filter((_, i) => !drop.has(i));
}

function swiglu(get: WeightGetter, gate: string, up: string, down: string, h: Vec, I: number, D: number): Vec {
  const g = matvec(need(get, gate), h, I, D), u = matvec(need(get, up), h, I, D);
  return matvec(need(get, down), g.map((x, i) => silu(x) * u[i]!), D, I);
}

/** The MoE settings routing reads. */
export type MoeRouting = Pick<MoeConfig, 'numExperts' | 'expertsPerToken' | 'numExpertGroup' | 'topkGroup' | 'routerActivation' | 'renormalize' | 'routedScalingFactor'>;

/**
 * Expert choice: scores s = act(router logits); choice = s + bias (zero when the checkpoint
 * has none); each group scores the sum of its two best choices; the best topk_group groups
 * stay eligible; the top k choices among them are taken, weighted by s, renormalized when
 * configured (and more than one is chosen), times the routed scale.
 */
export function routeRef(m: MoeRouting, logits: ArrayLike<number>, bias: ArrayLike<number> | null | undefined): { idx: number[]; w: number[] } {
  const E = m.numExperts;
  let s: number[];
  if (m.routerActivation === 'sigmoid') s = Array.from(logits, sigmoid);
  else {
    const mx = Math.max(...Array.from(logits));
    const e = Array.from(logits, (x) => Math.exp(x - mx));
    const sum = e.reduce((a, b) => a + b, 0);
    s = e.map((x) => x / sum);
  }
  const choice = s.map((x, i) => x + (bias ? bias[i]! : 0));
  const per = E / m.numExpertGroup;
  const gscore = Array.from({ length: m.numExpertGroup }, (_, g) => {
    const top = choice.slice(g * per, (g + 1) * per).sort((a, b) => b - a);
    return top[0]! + (per > 1 ? top[1]! : 0);
  });
  const groups = gscore.map((v, g) => ({ v, g })).sort((a, b) => b.v - a.v || a.g - b.g).slice(0, m.topkGroup).map((x) => x.g);
  const idx = choice
    .map((v, e) => ({ v, e }))
    .filter((x) => groups.includes(Math.floor(x.e / per)))
    .sort((a, b) => b.v - a.v || a.e - b.e)
    .slice(0, m.expertsPerToken)
    .map((x) => x.e);
  let w = idx.map((e) => s[e]!);
  if (m.renormalize && idx.length > 1) {
    const tot = w.reduce((a, b) => a + b, 0);
    w = w.map((x) => x / tot);
  }
  return { idx, w: w.map((x) => x * m.routedScalingFactor) };
}

function moeToken(c: KimiConfig, get: WeightGetter, p: string, h: Vec): Vec {
  const m = c.moe!, D = c.hiddenSize, MI = m.moeIntermediateSize;
  const logits = matvec(need(get, `${p}block_sparse_moe.gate.weight`), h, m.numExperts, D);
  const { idx, w } = routeRef(m, logits, get(`${p}block_sparse_moe.gate.e_score_correction_bias`));
  const y = new Float64Array(D);
  idx.forEach((e, r) => {
    const x = `${p}block_sparse_moe.experts.${e}.`;
    const out = swiglu(get, `${x}w1.weight`, `${x}w3.weight`, `${x}w2.weight`, h, MI, D);
    for (let d = 0; d < D; d++) y[d]! += w[r]! * out[d]!;
  });
  if (m.numSharedExperts > 0) {
    const x = `${p}block_sparse_moe.shared_experts.`;
    const out = swiglu(get, `${x}gate_proj.weight`, `${x}up_proj.weight`, `${x}down_proj.weight`, h, MI * m.numSharedExperts, D);
    for (let d = 0; d < D; d++) y[d]! += out[d]!;
  }
  return y;
}

/**
 * Logits [tokens.length, vocab] of a fresh sequence, one token at a time; with `opts.kv` the MLA
 * caches are bounded (full attention over the rows kept, then the selection).
 */
export function modelForward64(c: KimiConfig, get: WeightGetter, tokens: readonly number[], opts: RefOptions = {}): Float64Array {
  const kv = opts.kv;
  const ends = new Set<number>();
  let at = 0;
  for (const n of opts.calls ?? tokens.map(() => 1)) ends.add((at += n));
  const D = c.hiddenSize, V = c.vocabSize;
  const emb = need(get, 'model.embed_tokens.weight');
  const head = get('lm_head.weight') ?? (c.tieWordEmbeddings ? emb : need(get, 'lm_head.weight'));
  const states: LayerState[] = Array.from({ length: c.numLayers }, () => ({}));
  const out = new Float64Array(tokens.length * V);
  tokens.forEach((tok, t) => {
    const x = Float64Array.from({ length: D }, (_, i) => emb[tok * D + i]!);
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      let h = rmsnorm(x, need(get, `${p}input_layernorm.weight`), c.rmsNormEps);
      const meta = kv ? { pos: t, score: 0, pinned: t < (opts.pinned ?? 0) } : undefined;
      let y = c.layerKinds[l] === 'kda' ? kdaToken(c, get, p, states[l]!, h) : mlaToken(c, get, p, states[l]!, h, meta, kv?.decay, kv?.policy === 'learned');
      for (let i = 0; i < D; i++) x[i]! += y[i]!;
      h = rmsnorm(x, need(get, `${p}post_attention_layernorm.weight`), c.rmsNormEps);
      y = isMoeLayer(c, l) ? moeToken(c, get, p, h) : swiglu(get, `${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`, `${p}mlp.down_proj.weight`, h, c.intermediateSize, D);
      for (let i = 0; i < D; i++) x[i]! += y[i]!;
    }
    out.set(matvec(head, rmsnorm(x, need(get, 'model.norm.weight'), c.rmsNormEps), V, D), t * V);
    if (kv && ends.has(t + 1)) for (let l = 0; l < c.numLayers; l++) if (states[l]!.rows) evictRef(states[l]!, kv, t + 1);
  });
  return out;
}
