import type { AbiArg } from './abi-types.js';
import type { BackendName, KernelBackend } from './backend.js';
import type { KleFunctionName } from './kle-abi.js';

/** `fast` is the SIMD kernel; `ref` the plain scalar reference beside it (same build). */
export type Impl = 'fast' | 'ref';

/** Weight formats of {@link Kernels.matmul}, in GGUF's block layouts where quantized. */
export const WeightFormat = { f32: 0, bf16: 1, f16: 2, q8_0: 3, q4_0: 4, q4_k: 5, q6_k: 6, q5_0: 7, q5_1: 8, q5_k: 9, q2_k: 10, q3_k: 11 } as const;
export type WeightFormatName = keyof typeof WeightFormat;

/** Chunk lengths the chunked prefill takes (multiples of 16 up to the spec's 64). */
export const KDA_CHUNK_LENGTHS = [16, 32, 48, 64] as const;
export type KdaChunkLength = (typeof KDA_CHUNK_LENGTHS)[number];
/** The CPU default: the intra-chunk cost grows with the length and CPUs have no matrix units. */
export const KDA_CHUNK_CPU: KdaChunkLength = 16;
export const MAX_HEAD_DIM = 1024;

const RC_TEXT: Record<number, string> = { [-1]: 'invalid size, stride or flag', [-2]: 'out of memory' };

/** A kernel refused its arguments or could not allocate scratch memory. */
export class KernelError extends Error {
  constructor(
    readonly fn: string,
    readonly code: number,
  ) {
    super(`${fn} failed: ${RC_TEXT[code] ?? `error ${code}`}`);
    this.name = 'KernelError';
  }
}

type F32 = Float32Array;

/** Arguments of a KDA step or prefill; see engine/include/kle.h for the math and layouts. */
export interface KdaArgs {
  /** [H, K, V] state, updated in place */
  S: F32;
  /** [T, H, K] queries (T = 1 for a step) */
  q: F32;
  /** [T, H, K] keys */
  k: F32;
  /** [T, H, V] values */
  v: F32;
  /** [T, H, K] log forget gates (<= 0) */
  g: F32;
  /** [T, H] update strengths, after the sigmoid */
  beta: F32;
  /** [T, H, V] output */
  o: F32;
  H: number;
  K: number;
  V: number;
  /** query scale, usually 1/sqrt(K) */
  scale: number;
  /** L2-normalize q and k per head inside the kernel */
  l2norm?: boolean;
}

export interface MlaDecodeArgs {
  /** [H, D] absorbed queries */
  q: F32;
  /** [L, D] latent cache rows */
  cache: F32;
  L: number;
  H: number;
  /** row width: latent rank + rope part */
  D: number;
  /** value width: the latent rank */
  Dv: number;
  scale: number;
  /** [H, Dv] */
  out: F32;
  /** [H] log-sum-exp of scaled scores (optional) */
  lse?: F32 | null;
}

/**
 * The kernel library with shapes checked before every call, over any backend (wasm SIMD,
 * wasm scalar, native). Every method throws {@link KernelError} when C rejects the call and
 * RangeError when an array is too short for the stated shape, so C never reads out of bounds.
 *
 * @example
 * const k = new Kernels(await loadWasmBackend('simd'));
 * k.kdaStep({ S, q, k: key, v, g, beta, o, H: 32, K: 128, V: 128, scale: 128 ** -0.5 });
 */
export class Kernels {
  constructor(readonly backend: KernelBackend) {}

  get name(): BackendName {
    return this.backend.name;
  }

  private call(fn: KleFunctionName, args: AbiArg[]): number {
    const rc = this.backend.call(fn, args);
    if (rc < 0) throw new KernelError(fn, rc);
    return rc;
  }

  /** Whether this build uses 128-bit SIMD. */
  simdEnabled(): boolean {
    return this.backend.call('kle_simd_enabled', []) === 1;
  }

  // ------------------------------------------------------------------ KDA

  /** One decode token for H heads: S <- (I - b k k^T) Diag(exp g) S + b k v^T, o = S^T (scale q). */
  kdaStep(a: KdaArgs, impl: Impl = 'fast'): void {
    checkKda(a, 1);
    this.call(impl === 'fast' ? 'kle_kda_step' : 'kle_kda_step_ref', [
      a.S, a.q, a.k, a.v, a.g, a.beta, a.o, a.H, a.K, a.V, a.scale, a.l2norm ? 1 : 0,
    ]);
  }

  /**
   * T tokens at once: `fast` is the chunked (WY) form with `chunk` tokens per state pass
   * (default {@link KDA_CHUNK_CPU}), `ref` loops the scalar step. Both give the output of every
   * token and leave the final state in S.
   */
  kdaPrefill(a: KdaArgs & { T: number; chunk?: KdaChunkLength }, impl: Impl = 'fast'): void {
    checkKda(a, a.T);
    const flags = a.l2norm ? 1 : 0;
    if (impl === 'fast') {
      this.call('kle_kda_chunk', [a.S, a.q, a.k, a.v, a.g, a.beta, a.o, a.T, a.H, a.K, a.V, a.scale, flags, a.chunk ?? KDA_CHUNK_CPU]);
    } else {
      this.call('kle_kda_prefill_ref', [a.S, a.q, a.k, a.v, a.g, a.beta, a.o, a.T, a.H, a.K, a.V, a.scale, flags]);
    }
  }

  /** KDA forget gate in log space; lowerBound 0 selects the softplus form. x, g: [nTok, H*K]. */
  kdaGate(
    a: { x: F32; A_log: F32; dtBias: F32 | null; g: F32; nTok: number; H: number; K: number; lowerBound: number },
    impl: Impl = 'fast',
  ): void {
    const n = a.nTok * a.H * a.K;
    need('x', a.x, n);
    need('g', a.g, n);
    need('A_log', a.A_log, a.H);
    if (a.dtBias) need('dtBias', a.dtBias, a.H * a.K);
    this.call(impl === 'fast' ? 'kle_kda_gate' : 'kle_kda_gate_ref', [
      a.x, a.A_log, a.dtBias, a.g, a.nTok, a.H, a.K, a.lowerBound,
    ]);
  }

  // ------------------------------------------------------------------ MLA

  /** Absorbed decode of one query over the latent cache, online softmax. */
  mlaDecode(a: MlaDecodeArgs, impl: Impl = 'fast'): void {
    checkMla(a, a.L);
    this.call(impl === 'fast' ? 'kle_mla_decode' : 'kle_mla_decode_ref', [
      a.q, a.cache, a.L, a.H, a.D, a.Dv, a.scale, a.out, a.lse ?? null,
    ]);
  }

  /**
   * {@link mlaDecode} that also folds the attention each row got into `score` [L] (the bounded
   * cache's row scores: score = decay * score + mean over heads of the row's softmax weight; the
   * query's own row L - 1 starts fresh).
   */
  mlaDecodeScored(a: Omit<MlaDecodeArgs, 'lse'> & { score: Float32Array; decay: number }, impl: Impl = 'fast'): void {
    checkMla(a, a.L);
    if (!(a.L >= 1 && a.score.length >= a.L)) throw new RangeError('mlaDecodeScored: need L >= 1 and score of L floats');
    if (!(a.decay >= 0 && a.decay <= 1)) throw new RangeError('mlaDecodeScored: decay must be in [0, 1]');
    this.call(impl === 'fast' ? 'kle_mla_decode_scored' : 'kle_mla_decode_scored_ref', [
      a.q, a.cache, a.L, a.H, a.D, a.Dv, a.scale, a.out, a.score, a.decay,
    ]);
  }

  /** Cache rows [j0, j1) only: a split of a long context, to be combined by {@link mlaMerge}. */
  mlaDecodePartial(a: Omit<MlaDecodeArgs, 'L'> & { j0: number; j1: number }): void {
    if (!(a.j0 >= 0 && a.j1 >= a.j0)) throw new RangeError('mlaDecodePartial: need 0 <= j0 <= j1');
    checkMla({ ...a, L: a.j1 }, a.j1);
    this.call('kle_mla_decode_partial', [a.q, a.cache, a.j0, a.j1, a.H, a.D, a.Dv, a.scale, a.out, a.lse ?? null]);
  }

  /** Merges n split results: outs [n, H, Dv], lses [n, H] -> out [H, Dv], lse [H]. */
  mlaMerge(a: { outs: F32; lses: F32; n: number; H: number; Dv: number; out: F32; lse?: F32 | null }): void {
    need('outs', a.outs, a.n * a.H * a.Dv);
    need('lses', a.lses, a.n * a.H);
    need('out', a.out, a.H * a.Dv);
    if (a.lse) need('lse', a.lse, a.H);
    this.call('kle_mla_merge', [a.outs, a.lses, a.n, a.H, a.Dv, a.out, a.lse ?? null]);
  }

  /** Causal prefill: q [T, H, D] at cache rows L0..L0+T-1 (already written); out [T, H, Dv]. */
  mlaPrefill(
    a: { q: F32; cache: F32; L0: number; T: number; H: number; D: number; Dv: number; scale: number; out: F32 },
    impl: Impl = 'fast',
  ): void {
    need('q', a.q, a.T * a.H * a.D);
    need('cache', a.cache, (a.L0 + a.T) * a.D);
    need('out', a.out, a.T * a.H * a.Dv);
    this.call(impl === 'fast' ? 'kle_mla_prefill' : 'kle_mla_prefill_ref', [
      a.q, a.cache, a.L0, a.T, a.H, a.D, a.Dv, a.scale, a.out,
    ]);
  }

  /** q_lat[h, 0:Dv] = W[h]^T x[h] with W [H, R, Dv], x [H, R]; q_lat rows are ldq apart. */
  mlaAbsorbQ(a: { W: F32; x: F32; qLat: F32; H: number; R: number; Dv: number; ldq: number }, impl: Impl = 'fast'): void {
    need('W', a.W, a.H * a.R * a.Dv);
    need('x', a.x, a.H * a.R);
    need('qLat', a.qLat, (a.H - 1) * a.ldq + a.Dv);
    this.call(impl === 'fast' ? 'kle_mla_absorb_q' : 'kle_mla_absorb_q_ref', [a.W, a.x, a.qLat, a.H, a.R, a.Dv, a.ldq]);
  }

  /** y[h] = W[h] o[h] with W [H, R, Dv], o [H, Dv] -> y [H, R]. */
  mlaUpV(a: { W: F32; o: F32; y: F32; H: number; R: number; Dv: number }, impl: Impl = 'fast'): void {
    need('W', a.W, a.H * a.R * a.Dv);
    need('o', a.o, a.H * a.Dv);
    need('y', a.y, a.H * a.R);
    this.call(impl === 'fast' ? 'kle_mla_up_v' : 'kle_mla_up_v_ref', [a.W, a.o, a.y, a.H, a.R, a.Dv]);
  }

  // ------------------------------------------------------------------ matmul

  /** Bytes of one weight row of `nIn` elements, or -1 when nIn does not fit the format. */
  rowBytes(fmt: WeightFormatName, nIn: number): number {
    return this.backend.call('kle_row_bytes', [WeightFormat[fmt], nIn]);
  }

  /**
   * Y[T, nOut] = X[T, nIn] W^T, W [nOut, nIn] in format fmt (raw bytes for 16-bit/quantized).
   * 'fast' runs q8_0 and q4_0 with int8 activations and integer dots (kle_matmul_q8); 'ref' is
   * the exact product with the dequantized weights; 'q8-ref' the integer algorithm in scalar code.
   */
  matmul(
    a: { fmt: WeightFormatName; W: F32 | Uint8Array | Uint16Array; X: F32; Y: F32; T: number; nOut: number; nIn: number },
    impl: Impl | 'q8-ref' = 'fast',
  ): void {
    const rb = this.rowBytes(a.fmt, a.nIn);
    if (rb < 0) throw new KernelError(`matmul(${a.fmt}) with nIn=${a.nIn}`, -1);
    need('W (bytes)', { length: a.W.byteLength }, rb * a.nOut);
    need('X', a.X, a.T * a.nIn);
    need('Y', a.Y, a.T * a.nOut);
    if (impl === 'q8-ref' && !['q8_0', 'q4_0', 'q5_0', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'].includes(a.fmt)) throw new KernelError(`matmul(${a.fmt}): q8-ref is for q8_0, q4_0, q5_0, q5_1 and the K-quants q2_k to q6_k`, -1);
    this.call(impl === 'fast' ? 'kle_matmul' : impl === 'ref' ? 'kle_matmul_ref' : 'kle_matmul_q8_ref', [WeightFormat[a.fmt], asBytes(a.W), a.X, a.Y, a.T, a.nOut, a.nIn]);
  }

  /** Encodes one row of floats in fmt (quantized formats: n a multiple of 32). */
  quantize(fmt: WeightFormatName, src: F32): Uint8Array {
    const rb = this.rowBytes(fmt, src.length);
    if (rb < 0) throw new KernelError(`quantize(${fmt}) of ${src.length} values`, -1);
    const out = new Uint8Array(rb);
    this.call('kle_quantize', [WeightFormat[fmt], src, out, src.length]);
    return out;
  }

  /** Decodes n values of fmt back to float: exactly what {@link matmul} multiplies with. */
  dequantize(fmt: WeightFormatName, src: Uint8Array, n: number): F32 {
    const rb = this.rowBytes(fmt, n);
    if (rb < 0) throw new KernelError(`dequantize(${fmt}) of ${n} values`, -1);
    need('src (bytes)', src, rb);
    const out = new Float32Array(n);
    this.call('kle_dequantize', [WeightFormat[fmt], src, out, n]);
    return out;
  }

  // ------------------------------------------------------------------ small ops

  rmsnorm(a: { x: F32; w: F32; y: F32; rows: number; D: number; eps: number }, impl: Impl = 'fast'): void {
    need('x', a.x, a.rows * a.D);
    need('y', a.y, a.rows * a.D);
    need('w', a.w, a.D);
    this.call(impl === 'fast' ? 'kle_rmsnorm' : 'kle_rmsnorm_ref', [a.x, a.w, a.y, a.rows, a.D, a.eps]);
  }

  /** rmsnorm(x) * w * sigmoid(gate), per row of D. */
  rmsnormGated(a: { x: F32; gate: F32; w: F32; y: F32; rows: number; D: number; eps: number }, impl: Impl = 'fast'): void {
    need('x', a.x, a.rows * a.D);
    need('gate', a.gate, a.rows * a.D);
    need('y', a.y, a.rows * a.D);
    need('w', a.w, a.D);
    this.call(impl === 'fast' ? 'kle_rmsnorm_gated' : 'kle_rmsnorm_gated_ref', [a.x, a.gate, a.w, a.y, a.rows, a.D, a.eps]);
  }

  /** In place: x <- x / sqrt(sum x^2 + eps) per row. */
  l2norm(a: { x: F32; rows: number; D: number; eps: number }, impl: Impl = 'fast'): void {
    need('x', a.x, a.rows * a.D);
    this.call(impl === 'fast' ? 'kle_l2norm' : 'kle_l2norm_ref', [a.x, a.rows, a.D, a.eps]);
  }

  /** Causal depthwise conv (+SiLU): x, y [T, C]; w [W, C] tap-major; state [W-1, C] rolled. */
  convShort(a: { x: F32; w: F32; state: F32; y: F32; T: number; C: number; W: number; silu: boolean }, impl: Impl = 'fast'): void {
    need('x', a.x, a.T * a.C);
    need('y', a.y, a.T * a.C);
    need('w', a.w, a.W * a.C);
    need('state', a.state, (a.W - 1) * a.C);
    this.call(impl === 'fast' ? 'kle_conv_short' : 'kle_conv_short_ref', [a.x, a.w, a.state, a.y, a.T, a.C, a.W, a.silu ? 1 : 0]);
  }

  /** out = silu(gate) * up */
  swiglu(a: { gate: F32; up: F32; out: F32 }, impl: Impl = 'fast'): void {
    const n = a.out.length;
    need('gate', a.gate, n);
    need('up', a.up, n);
    this.call(impl === 'fast' ? 'kle_swiglu' : 'kle_swiglu_ref', [a.gate, a.up, a.out, n]);
  }

  sigmoid(a: { x: F32; y: F32 }, impl: Impl = 'fast'): void {
    need('x', a.x, a.y.length);
    this.call(impl === 'fast' ? 'kle_sigmoid' : 'kle_sigmoid_ref', [a.x, a.y, a.y.length]);
  }

  // ------------------------------------------------------------------ MoE

  /** Top-k experts of one token: indices and weights (see kle_moe_route in kle.h). */
  moeRoute(a: {
    logits: F32;
    bias?: F32 | null;
    topk: number;
    nGroup?: number;
    topkGroup?: number;
    act: 'softmax' | 'sigmoid';
    renormalize: boolean;
    scale: number;
  }): { idx: Int32Array; weights: F32 } {
    const E = a.logits.length;
    if (a.bias) need('bias', a.bias, E);
    const idx = new Int32Array(a.topk);
    const weights = new Float32Array(a.topk);
    this.call('kle_moe_route', [
      a.logits, a.bias ?? null, E, a.topk, a.nGroup ?? 1, a.topkGroup ?? 1,
      a.act === 'softmax' ? 0 : 1, a.renormalize ? 1 : 0, a.scale, idx, weights,
    ]);
    return { idx, weights };
  }

  /** Sum of n floats: the read-bandwidth probe of the benchmarks. */
  probeRead(x: F32): number {
    return this.backend.call('kle_probe_read', [x, x.length]);
  }
}

function need(name: string, a: { length: number }, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${name}: invalid shape (needs ${n} elements)`);
  if (a.length < n) throw new RangeError(`${name}: has ${a.length} elements, the shape needs ${n}`);
}

function checkKda(a: KdaArgs, T: number): void {
  for (const [k, v] of Object.entries({ T, H: a.H, K: a.K, V: a.V })) {
    if (!Number.isInteger(v) || v < (k === 'T' ? 0 : 1)) throw new RangeError(`kda: ${k}=${v} is not a valid size`);
  }
  need('S', a.S, a.H * a.K * a.V);
  need('q', a.q, T * a.H * a.K);
  need('k', a.k, T * a.H * a.K);
  need('g', a.g, T * a.H * a.K);
  need('v', a.v, T * a.H * a.V);
  need('o', a.o, T * a.H * a.V);
  need('beta', a.beta, T * a.H);
}

function checkMla(a: MlaDecodeArgs, L: number): void {
  need('q', a.q, a.H * a.D);
  need('cache', a.cache, L * a.D);
  need('out', a.out, a.H * a.Dv);
  if (a.lse) need('lse', a.lse, a.H);
}

function asBytes(w: F32 | Uint8Array | Uint16Array): Uint8Array {
  return w instanceof Uint8Array ? w : new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
}
