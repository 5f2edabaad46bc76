/*
 * kle.h: the C API of kimi-linear-edge, shared by every target (wasm, native, CUDA host code).
 *
 * Conventions
 * - All tensors are dense, row-major, float32 unless the name says otherwise.
 * - Every kernel validates its sizes and returns KLE_OK (0) or a negative KLE_E* code; a kernel
 *   that returns an error has written nothing.
 * - Every fast kernel has a plain scalar reference named *_ref with the same signature. The
 *   references define the math; tests compare the two on random inputs and shared vectors.
 * - No global mutable state: scratch memory comes from malloc inside the call and is freed
 *   before it returns.
 */
#ifndef KLE_H
#define KLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KLE_API_VERSION 1

#define KLE_OK 0
#define KLE_EINVAL (-1) /* a size, stride or flag is out of range */
#define KLE_ENOMEM (-2) /* scratch allocation failed */

/* Largest head dimension the kernels accept (K and V of KDA, D of MLA). */
#define KLE_MAX_HEAD_DIM 1024

/* ---------------------------------------------------------------- runtime */
int kle_api_version(void);
/* 1 when this build was compiled with 128-bit SIMD, 0 for the scalar build. */
int kle_simd_enabled(void);
void *kle_alloc(size_t bytes);
void kle_free(void *p);

/* ---------------------------------------------------------------- KDA (docs/model.md, section 2) */
/* q and k are L2-normalized per head inside the kernel (eps 1e-6) when this flag is set. */
#define KLE_KDA_L2NORM_QK 1
/*
 * Chunk lengths of the chunked prefill: any multiple of 16 up to KLE_KDA_CHUNK (64, the
 * spec's). The state terms cost 3*K*V per token whatever the length; the intra-chunk terms
 * cost about chunk*(K+V) per token, so without matrix units (CPU, wasm) shorter is faster:
 * KLE_KDA_CHUNK_CPU is what bench/kernels measured best here and what 0 selects.
 */
#define KLE_KDA_CHUNK 64
#define KLE_KDA_CHUNK_CPU 16

/*
 * One decode step for H heads. Per head h:
 *   S <- Diag(exp g) S;  u = v - S^T k;  S <- S + beta k u^T;  o = S^T (scale q)
 * S: [H,K,V] updated in place; q, k, g: [H,K]; v, o: [H,V]; beta: [H] (already sigmoid-ed).
 * K and V must be multiples of 4 and at most KLE_MAX_HEAD_DIM.
 */
int kle_kda_step(float *S, const float *q, const float *k, const float *v, const float *g,
                 const float *beta, float *o, int H, int K, int V, float scale, int flags);
int kle_kda_step_ref(float *S, const float *q, const float *k, const float *v, const float *g,
                     const float *beta, float *o, int H, int K, int V, float scale, int flags);

/*
 * T tokens of one sequence: the same result as T calls of kle_kda_step, computed chunkwise
 * (chunk tokens per chunk, 0 for KLE_KDA_CHUNK_CPU; any T including a ragged tail); one pass
 * over the state per chunk. q, k, g: [T,H,K];
 * v, o: [T,H,V]; beta: [T,H]; S: [H,K,V] holds the initial state and receives the final one.
 * kle_kda_prefill_ref is the step reference looped over the tokens.
 */
int kle_kda_chunk(float *S, const float *q, const float *k, const float *v, const float *g,
                  const float *beta, float *o, int T, int H, int K, int V, float scale, int flags,
                  int chunk);
int kle_kda_prefill_ref(float *S, const float *q, const float *k, const float *v, const float *g,
                        const float *beta, float *o, int T, int H, int K, int V, float scale,
                        int flags);

/*
 * KDA forget gate, log space (<= 0), for n_tok rows of H*K channels:
 *   lower_bound == 0:  g = -exp(A_log[h]) * softplus(x + dt_bias)
 *   lower_bound <  0:  g = lower_bound * sigmoid(exp(A_log[h]) * (x + dt_bias))
 * x, g: [n_tok, H*K]; A_log: [H]; dt_bias: [H*K] (may be NULL for zero).
 */
int kle_kda_gate(const float *x, const float *A_log, const float *dt_bias, float *g, int n_tok,
                 int H, int K, float lower_bound);
int kle_kda_gate_ref(const float *x, const float *A_log, const float *dt_bias, float *g,
                     int n_tok, int H, int K, float lower_bound);

/* ---------------------------------------------------------------- MLA (docs/model.md, section 3) */
/*
 * Absorbed MLA decode for one query token over a latent cache.
 *   q:     [H, D]   absorbed query (W_uk^T q_nope, then the rope part if any), D = Dv + rope dim
 *   cache: [L, D]   one latent row per cached token (compressed kv, then the rope key part)
 *   out:   [H, Dv]  softmax(scale * q . cache_j) weighted sum of cache_j[0:Dv]
 *   lse:   [H]      optional (may be NULL): log-sum-exp of the scaled scores, for merging splits
 * Rows [j0, j1) only, with kle_mla_decode_partial; kle_mla_merge combines n splits.
 */
int kle_mla_decode(const float *q, const float *cache, int L, int H, int D, int Dv, float scale,
                   float *out, float *lse);
int kle_mla_decode_ref(const float *q, const float *cache, int L, int H, int D, int Dv,
                       float scale, float *out, float *lse);
int kle_mla_decode_partial(const float *q, const float *cache, int j0, int j1, int H, int D,
                           int Dv, float scale, float *out, float *lse);
/*
 * kle_mla_decode (L >= 1) that also keeps each row's attention score for the bounded cache
 * (docs/kv-budget.md): score[j] = decay * score[j] + (1/H) sum_h p_hj for j < L - 1, where p_hj
 * is head h's softmax weight on row j; row L - 1, the query's own, starts at (1/H) sum_h p_h.
 * decay in [0, 1]. The scores come from the attention's own logits, not a second pass.
 */
int kle_mla_decode_scored(const float *q, const float *cache, int L, int H, int D, int Dv,
                          float scale, float *out, float *score, float decay);
int kle_mla_decode_scored_ref(const float *q, const float *cache, int L, int H, int D, int Dv,
                              float scale, float *out, float *score, float decay);
/* outs: [n, H, Dv], lses: [n, H]  ->  out: [H, Dv], lse: [H] (may be NULL) */
int kle_mla_merge(const float *outs, const float *lses, int n, int H, int Dv, float *out,
                  float *lse);
/*
 * Causal prefill: T queries q [T, H, D] whose tokens sit at cache rows L0 .. L0+T-1 (already
 * written); query i attends to rows 0 .. L0+i. out: [T, H, Dv].
 */
int kle_mla_prefill(const float *q, const float *cache, int L0, int T, int H, int D, int Dv,
                    float scale, float *out);
int kle_mla_prefill_ref(const float *q, const float *cache, int L0, int T, int H, int D, int Dv,
                        float scale, float *out);
/*
 * Per-head weight absorption and value up-projection, W: [H, R, Dv] (R = qk_nope or v_head dim):
 *   absorb:  q_lat[h] = W[h]^T x[h]   x: [H, R]  -> q_lat: [H, Dv] written with row stride ldq
 *   up:      y[h]     = W[h]   o[h]   o: [H, Dv] -> y: [H, R]
 */
int kle_mla_absorb_q(const float *W, const float *x, float *q_lat, int H, int R, int Dv, int ldq);
int kle_mla_absorb_q_ref(const float *W, const float *x, float *q_lat, int H, int R, int Dv,
                         int ldq);
int kle_mla_up_v(const float *W, const float *o, float *y, int H, int R, int Dv);
int kle_mla_up_v_ref(const float *W, const float *o, float *y, int H, int R, int Dv);

/* ---------------------------------------------------------------- matvec / matmul */
/* Weight formats, in GGUF's block layouts where quantized. */
#define KLE_W_F32 0
#define KLE_W_BF16 1
#define KLE_W_F16 2
#define KLE_W_Q8_0 3 /* blocks of 32: f16 scale + 32 x int8                       (34 bytes) */
#define KLE_W_Q4_0 4 /* blocks of 32: f16 scale + 16 bytes of nibbles, value q-8   (18 bytes) */
#define KLE_QK 32    /* elements per quantized block */
/* GGUF's K-quants (llama.cpp's layouts), super-blocks of 256 (Q4_K and Q6_K also written, by
 * kle_quantize). Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins for 8 groups of
 * 32, 128 bytes of nibbles; value d * scale * q - dmin * min (144 bytes). Q6_K: 128 bytes of low
 * nibbles, 64 of high 2-bit pairs, 16 int8 scales for groups of 16, f16 d; value
 * d * scale * (q - 32) (210 bytes). */
#define KLE_W_Q4_K 5
#define KLE_W_Q6_K 6
#define KLE_QK_K 256
/* The 5-bit formats llama.cpp's K-quant mixes fall back to for rows that are not a multiple of 256
 * (read only, multiplied after decoding). Q5_0: f16 d, 4 bytes of fifth bits, 16 bytes of
 * nibbles; value d * (q - 16) (22 bytes). Q5_1: f16 d, f16 m, the same bits; value d * q + m (24). */
#define KLE_W_Q5_0 7
#define KLE_W_Q5_1 8
/* Q5_K: Q4_K with a fifth bit per value (32 bytes of high bits before the nibbles; 176 bytes) */
#define KLE_W_Q5_K 9
/* The low-bit K-quants (read only), 16 groups of 16 a super-block. Q2_K: 16 bytes of 4-bit scales
 * and mins, 64 bytes of 2-bit values, f16 d, f16 dmin; value d * scale * q - dmin * min (84 bytes).
 * Q3_K: 32 bytes of high bits, 64 of low bit pairs, 12 bytes of 6-bit scales, f16 d; value
 * d * (scale - 32) * (q - 4), the high bit giving q's 4 (110 bytes). */
#define KLE_W_Q2_K 10
#define KLE_W_Q3_K 11

/* Bytes of one weight row of n_in elements in format fmt (-1 if n_in does not fit the format). */
long kle_row_bytes(int fmt, int n_in);
/*
 * Y[T, n_out] = X[T, n_in] * W^T, W [n_out, n_in] in format fmt (PyTorch Linear layout).
 * T == 1 is the decode matvec. Quantized formats need n_in to be a multiple of 32.
 */
int kle_matmul(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in);
int kle_matmul_ref(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in);
/*
 * Q8_0, Q4_0, Q5_0, Q5_1 and Q2_K-Q6_K with integer dot products (what kle_matmul runs for them, see
 * kle_matmul_int8): the activations quantized per block of 32 as Q8_0 does weights (d = amax /
 * 127; for the K-quants one d per super-block of 256, as llama.cpp's Q8_K), each block's dot an
 * exact int32 sum times both scales, so each output is within sum over blocks of d_x / 2 * sum |w|
 * of the float64 product with the dequantized weights. _ref:
 * the same integers in plain scalar code (the SIMD versions differ in the order of the float
 * sums only).
 */
int kle_matmul_q8(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in);
int kle_matmul_q8_ref(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in);
/*
 * 1 when kle_matmul multiplies fmt's weights for T tokens by int8 activations (kle_matmul_q8),
 * 0 when it decodes them to f32: Q8_0 and Q4_0 always; Q5_0, Q5_1 and Q2_K-Q6_K natively, and in wasm for
 * fewer than 4 tokens (wasm SIMD's 16-bit dots lose to its f32 tiles in prefill there: a
 * 105M Q4_K_M prefill 428 -> 305 tokens/s, while decode gains 58 -> 79).
 */
int kle_matmul_int8(int fmt, int T);
/* The same two with the rows of Y ldy >= n_out floats apart: a slice of a wider output (threads
 * split a matmul by weight rows and each writes its columns of Y). */
int kle_matmul_ld(int fmt, const void *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in);
int kle_matmul_q8_ld(int fmt, const void *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in);
/* Encode n floats (a multiple of 32 for quantized formats, 256 for Q4_K and Q6_K) into fmt; dst
 * gets kle_row_bytes(fmt,n). KLE_EINVAL for Q2_K, Q3_K, Q5_K, Q5_0 and Q5_1, which are read only. */
int kle_quantize(int fmt, const float *src, void *dst, int n);
/* Decode back to float (the value the matmul kernels use). */
int kle_dequantize(int fmt, const void *src, float *dst, int n);

/* ---------------------------------------------------------------- small ops */
/* y = x / sqrt(mean(x^2) + eps) * w, over n_rows rows of length D (y may alias x). */
int kle_rmsnorm(const float *x, const float *w, float *y, int n_rows, int D, float eps);
int kle_rmsnorm_ref(const float *x, const float *w, float *y, int n_rows, int D, float eps);
/* y = rmsnorm(x) * w * sigmoid(gate): the KDA output norm, gate [n_rows, D]. */
int kle_rmsnorm_gated(const float *x, const float *gate, const float *w, float *y, int n_rows,
                      int D, float eps);
int kle_rmsnorm_gated_ref(const float *x, const float *gate, const float *w, float *y,
                          int n_rows, int D, float eps);
/* x <- x / sqrt(sum(x^2) + eps), per row. */
int kle_l2norm(float *x, int n_rows, int D, float eps);
int kle_l2norm_ref(float *x, int n_rows, int D, float eps);
/*
 * Causal depthwise conv over T tokens of C channels, kernel width W, followed by SiLU when
 * silu != 0. w: [W, C] (tap-major, so channels are contiguous); state: [W-1, C] holds the last
 * W-1 inputs before x (oldest first) and is updated to the last W-1 inputs after x.
 */
int kle_conv_short(const float *x, const float *w, float *state, float *y, int T, int C, int W,
                   int silu);
int kle_conv_short_ref(const float *x, const float *w, float *state, float *y, int T, int C,
                       int W, int silu);
/* out = silu(gate) * up, n elements. */
int kle_swiglu(const float *gate, const float *up, float *out, int n);
int kle_swiglu_ref(const float *gate, const float *up, float *out, int n);
/* y = sigmoid(x), n elements (y may alias x). */
int kle_sigmoid(const float *x, float *y, int n);
int kle_sigmoid_ref(const float *x, float *y, int n);

/* ---------------------------------------------------------------- MoE routing (docs/model.md, section 4) */
#define KLE_ROUTE_SOFTMAX 0
#define KLE_ROUTE_SIGMOID 1
/*
 * Top-k routing of one token over E experts (DeepSeek-V3 style, as Kimi uses it):
 *   s = act(logits); choice = s + bias (bias may be NULL);
 *   experts fall into n_group equal groups; a group scores the sum of its top-2 choice values
 *   (a NULL bias is a zero bias); only the best topk_group groups stay eligible;
 *   idx = top-k of choice among eligible experts (ties: lower index); w = s[idx];
 *   if renorm: w /= sum(w); w *= scale.
 */
int kle_moe_route(const float *logits, const float *bias, int E, int topk, int n_group,
                  int topk_group, int act, int renorm, float scale, int32_t *idx, float *w);

/* ---------------------------------------------------------------- memory */
/*
 * An address in the engine's memory: a handle or a buffer the engine owns. Hosts that share the
 * engine's memory (wasm) read and write it directly; the native addon goes through these two.
 */
typedef uintptr_t kle_addr;
int kle_mem_write(kle_addr dst, const uint8_t *src, size_t n);
int kle_mem_read(kle_addr src, uint8_t *dst, size_t n);

/* ---------------------------------------------------------------- engine: the hybrid model (docs/model.md) */
/*
 * The Kimi Linear forward pass (KimiLinearForCausalLM): embedding; per layer RMSNorm -> KDA or
 * MLA -> residual, RMSNorm -> dense SwiGLU MLP or MoE -> residual; final RMSNorm; LM head.
 * The host builds a model in three steps: kle_model_create(config), then for every tensor
 * kle_model_tensor() (which checks the shape against the config and returns where to put the
 * bytes), then kle_model_finalize().
 */
typedef struct kle_model kle_model;
typedef struct kle_session kle_session;

/*
 * Integer config, in this order (then one KLE_LAYER_* per layer). KDA_GATE_PER_HEAD 1 gives the
 * linear-attention layers one decay per head (Gated DeltaNet's gate: f_b and dt_bias of H rows)
 * instead of one per channel (KDA's, 0). KV_IMPORTANCE 1: every MLA layer has a learned token
 * importance head (KLE_T_MLA_KV_IMPORTANCE) for the bounded cache's KLE_KV_LEARNED policy.
 */
enum {
  KLE_CFG_VOCAB, KLE_CFG_HIDDEN, KLE_CFG_LAYERS, KLE_CFG_INTER,
  KLE_CFG_KDA_HEADS, KLE_CFG_KDA_HEAD_DIM, KLE_CFG_CONV, KLE_CFG_KDA_GATE_PER_HEAD,
  KLE_CFG_MLA_HEADS, KLE_CFG_QK_NOPE, KLE_CFG_QK_ROPE, KLE_CFG_V_HEAD, KLE_CFG_KV_RANK,
  KLE_CFG_EXPERTS, KLE_CFG_EXPERTS_PER_TOK, KLE_CFG_SHARED_EXPERTS, KLE_CFG_MOE_INTER,
  KLE_CFG_FIRST_DENSE, KLE_CFG_MOE_FREQ, KLE_CFG_N_GROUP, KLE_CFG_TOPK_GROUP,
  KLE_CFG_ROUTER_ACT, KLE_CFG_RENORM, KLE_CFG_TIED, KLE_CFG_KV_IMPORTANCE,
  KLE_CFG_N_INTS
};
/* Float config, in this order. GATE_LOWER_BOUND 0 selects the softplus gate (kle_kda_gate). */
enum { KLE_CFGF_RMS_EPS, KLE_CFGF_ROUTED_SCALE, KLE_CFGF_GATE_LOWER_BOUND, KLE_CFGF_N };
#define KLE_LAYER_KDA 0
#define KLE_LAYER_MLA 1

/* Tensor roles. Shapes are [rows, cols] as in HF's nn.Linear ([out, in]). */
enum {
  KLE_T_TOK_EMBD, KLE_T_OUT_NORM, KLE_T_LM_HEAD,
  KLE_T_ATTN_NORM, KLE_T_FFN_NORM,
  KLE_T_KDA_Q, KLE_T_KDA_K, KLE_T_KDA_V, KLE_T_KDA_CONV_Q, KLE_T_KDA_CONV_K, KLE_T_KDA_CONV_V,
  KLE_T_KDA_F_A, KLE_T_KDA_F_B, KLE_T_KDA_A_LOG, KLE_T_KDA_DT_BIAS, KLE_T_KDA_BETA,
  KLE_T_KDA_G_A, KLE_T_KDA_G_B, KLE_T_KDA_O_NORM, KLE_T_KDA_O,
  KLE_T_MLA_Q, KLE_T_MLA_KV_A, KLE_T_MLA_KV_NORM, KLE_T_MLA_KV_B, KLE_T_MLA_O,
  KLE_T_FFN_GATE, KLE_T_FFN_UP, KLE_T_FFN_DOWN,
  KLE_T_MOE_ROUTER, KLE_T_MOE_BIAS, KLE_T_EXP_GATE, KLE_T_EXP_UP, KLE_T_EXP_DOWN,
  KLE_T_SHEXP_GATE, KLE_T_SHEXP_UP, KLE_T_SHEXP_DOWN,
  /* [1, hidden] f32 per MLA layer when KLE_CFG_KV_IMPORTANCE: a token's importance is its dot with
   * the layer's normalized input (docs/kv-budget.md) */
  KLE_T_MLA_KV_IMPORTANCE,
  KLE_T_COUNT
};
/* kle_model_tensor_expect results */
#define KLE_TENSOR_UNUSED 0
#define KLE_TENSOR_REQUIRED 1
#define KLE_TENSOR_OPTIONAL 2
/* Errors of the engine beyond the kernels' */
#define KLE_EMISSING (-3) /* finalize: a required tensor was never given */
#define KLE_EFORMAT (-4)  /* a session blob is malformed or from another model */
#define KLE_EDEVICE (-5)  /* a device call failed (CUDA: launch, allocation, copy) */
#define KLE_ENOSYS (-6)   /* this backend does not do it (kle_session_sample on the CPU) */

/* NULL when the config is inconsistent (the host validates first and names the key). */
kle_model *kle_model_create(const int32_t *cfg, int n_cfg, const float *cfgf, int n_cfgf);
void kle_model_free(kle_model *m);
/*
 * What the config expects of (role, layer, expert): KLE_TENSOR_* and, in out[0..2], rows, cols
 * and 1 if the tensor may be stored in any KLE_W_* format (matmul weights) or 0 if f32 only.
 */
int kle_model_tensor_expect(kle_model *m, int role, int layer, int expert, int32_t *out);
/*
 * Allocates the tensor (role, layer, expert) in format fmt with shape [rows, cols] and returns
 * the address where the host writes its kle_row_bytes(fmt, cols) * rows bytes; 0 if the shape,
 * format or role does not fit the config, or memory ran out. Conv weights are given as
 * [channels, kernel] (HF's layout without the middle 1).
 */
kle_addr kle_model_tensor(kle_model *m, int role, int layer, int expert, int fmt, int rows,
                          int cols);
/*
 * The host has written all of the tensor's bytes: a backend with memory of its own (a GPU) takes
 * it now and the host's copy is freed, so a checkpoint larger than the host's memory streams
 * through it. Tensors weights are derived from stay until finalize. Optional; KLE_OK where there
 * is nothing to move, KLE_EINVAL for a tensor never allocated.
 */
int kle_model_tensor_ready(kle_model *m, int role, int layer, int expert);
/* Checks every required tensor is there and prepares derived weights; KLE_EMISSING if not. */
int kle_model_finalize(kle_model *m);
/* Bytes the model's tensors occupy in engine memory. */
long kle_model_bytes(kle_model *m);
/*
 * Threads the model's CPU operations use (native builds; a matmul splits by weight rows, with the
 * same result to the bit): sets them when n > 0 (at most 256), returns the number in force. The
 * default is the cores this process may use; wasm and the GPU run 1 here.
 */
int kle_model_threads(kle_model *m, int n);
/*
 * The arithmetic of the model's tensor-core products (mode 0: none set, the mode in force is
 * returned). KLE_PRECISION_F32, every backend's default: f32 accuracy, the GPU's products taking
 * f32 activations as a BF16 high part and remainder. KLE_PRECISION_BF16 (the GPU only; KLE_ENOSYS
 * elsewhere): activations, MLA queries and attention probabilities rounded to BF16, one product
 * each, as vLLM and FlashMLA run a BF16 model: half the work of prefill's matmuls, batched
 * steps' and the MLA attention over a BF16 cache. Matvecs of a few tokens are unchanged.
 */
#define KLE_PRECISION_F32 1
#define KLE_PRECISION_BF16 2
int kle_model_precision(kle_model *m, int mode);
/*
 * The wasm threads build (kle-simd-mt.wasm: atomics, one shared memory) has no threads of its own:
 * after kle_model_threads(m, n) the host starts n - 1, each an instance of the same module on the
 * same memory (Web Workers; worker_threads in Node), each given its own stack, and each calls
 * kle_thread_serve(pool), which runs the model's work until the pool is replaced or the model
 * freed. kle_model_thread_pool returns the pool and writes how many threads to start now (they are
 * reserved: start exactly that many; starts NULL: the pool alone, nothing reserved); 0 and no pool
 * in builds whose threads are their own (native) or that have none. Until they arrive, the work
 * runs on the threads already there.
 */
kle_addr kle_model_thread_pool(kle_model *m, int32_t *starts);
int kle_thread_serve(kle_addr pool);
/* threads serving the pool now, besides the caller's (0 for none) */
int kle_thread_serving(kle_addr pool);
/*
 * A synthetic model (benchmarks at full size without a checkpoint): every required tensor gets
 * seeded random values made where it lives (a GPU's matrices in device memory; src/weights/
 * synthetic.ts's scales), matrices stored as fmt (KLE_W_F32, KLE_W_BF16 or KLE_W_Q8_0, each 32
 * values quantized as kle_quantize does: KLE_EINVAL if a matrix's rows are not whole blocks), then
 * kle_model_finalize as after a load. The same seed gives the same values on every backend.
 * KLE_ENOMEM before anything is allocated when kle_model_planned_bytes and 1 GiB for sessions
 * exceed kle_model_device_free.
 */
int kle_model_synthesize(kle_model *m, int seed, int fmt);
/* Bytes of backend memory kle_model_synthesize(m, seed, fmt) would take (derived weights included). */
long kle_model_planned_bytes(kle_model *m, int fmt);
/* Free bytes of the backend's memory (a GPU's); -1 where it is the host's. */
long kle_model_device_free(kle_model *m);

/* A session: KDA states and conv tails, MLA latent caches, position, last logits. */
kle_session *kle_session_create(kle_model *m);
void kle_session_free(kle_session *s);
/*
 * Runs n tokens through the model. One token takes the decode path (KDA step, MLA decode over
 * the cache); more take the prefill path (chunked KDA, causal MLA prefill) in batches of
 * KLE_PREFILL_BATCH. logits: NULL, [vocab] for the last token (all = 0) or [n, vocab] (all = 1).
 * On error the session is unchanged only for KLE_EINVAL (bad token id, n <= 0).
 */
#define KLE_PREFILL_BATCH 64
int kle_session_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all);
/*
 * The last token's logits, [vocab], in engine memory (0 before any token). On a GPU the engine
 * copies them to host memory on this call, not on every forward.
 */
kle_addr kle_session_logits(kle_session *s);
/* 1 when the session has logits (a token was forwarded, or a blob with logits loaded), else 0. */
int kle_session_has_logits(kle_session *s);
/*
 * The MLA caches' format: KLE_W_BF16 by default where the backend keeps them so (CUDA, on
 * tensor-core shapes: half the memory and half the bytes a decode step reads), else KLE_W_F32.
 * KDA states stay f32, and state blobs hold f32 either way (a BF16 cache converts on the way).
 * set: on a fresh session only (nothing forwarded or loaded); KLE_EINVAL for a format the
 * backend does not keep.
 */
int kle_session_kv_format(kle_session *s);
int kle_session_set_kv_format(kle_session *s, int fmt);
/*
 * Draws the next token from the last logits where they are, without copying them to the host,
 * as the runtime's sampler (as/sampler.ts) does: the same penalties and bias, then temperature,
 * top-k, top-p and min-p; the kept tokens drawn in index order with u = u_bits / 2^32.
 * params: temperature (0: greedy), top_p, ln(min_p) (-INFINITY: none), repetition, frequency,
 * presence penalties. toks, counts [n]: the context's distinct tokens and how often each came,
 * cbias [n] their logit bias, and btoks, bvals [nb] other biased tokens (the biases as bytes of
 * doubles). Returns the token, KLE_ENOSYS where the backend leaves sampling to the host (wasm
 * and native: the runtime's sampler reads their logits in place), or an error.
 */
int kle_session_sample(kle_session *s, const float *params, int top_k, const int32_t *toks, const int32_t *counts,
                       const uint8_t *cbias, int n, const int32_t *btoks, const uint8_t *bvals, int nb, int64_t u_bits);
/* Tokens seen so far. */
int kle_session_pos(kle_session *s);
/*
 * One decode step for n sessions of model m at once, a token each (continuous batching): the
 * projections, experts and LM head read their weights once for all n; each session's KDA state
 * and MLA cache are its own (caches of different lengths), and each gets its logits as a
 * kle_session_forward of its token would. sessions: the n handles as 8-byte little-endian
 * addresses, each one of m's live sessions, each once, none with a kv budget; n at most
 * KLE_PREFILL_BATCH (the CPU's batch; 512 on CUDA). KLE_EINVAL before anything runs otherwise.
 */
int kle_model_step_batch(kle_model *m, const uint8_t *sessions, const int32_t *tokens, int n);
/* The most sessions kle_model_step_batch takes at once (the backend's batch of rows). */
int kle_model_batch(kle_model *m);
/*
 * A bounded MLA cache (docs/kv-budget.md). After each forward batch, an MLA layer whose cache
 * holds more than `budget` rows drops rows until it holds `budget`: never the first `sink`
 * tokens, the last `window` tokens or pinned ones, and among the rest those of lowest score
 * (kle_mla_decode_scored's: the attention recent queries paid to the row, decayed by `decay`
 * per query), the oldest first on ties. During a batch a cache holds up to budget +
 * KLE_PREFILL_BATCH rows (the backend's batch). KDA layers are unaffected.
 * budget 0 removes the bound, allowed only while no row was ever dropped. KLE_EINVAL when
 * budget <= sink + window, decay is outside [0, 1], policy is unknown, or the cache already
 * holds more than budget. KLE_KV_RECENT drops the oldest rows past the sink instead (no scores:
 * StreamingLLM's policy, the baseline the attention scores are measured against).
 */
#define KLE_KV_ATTENTION 0
#define KLE_KV_RECENT 1
#define KLE_KV_LEARNED 2 /* a model with KLE_CFG_KV_IMPORTANCE: each row's score is its head's output */
int kle_session_set_kv_budget(kle_session *s, int budget, int sink, int window, float decay, int policy);
/* The bound in force: out [budget (0: none), sink, window, policy], decay [1]. */
int kle_session_kv_settings(kle_session *s, int32_t *out, float *decay);
/*
 * Tokens forwarded while pinning is on (1) are never dropped (a prompt that must stay whole).
 * With a budget, a forward that would pin more than budget - sink - window tokens in all is
 * refused (KLE_EINVAL, session unchanged).
 */
int kle_session_pin(kle_session *s, int on);
/* Rows each MLA cache holds now (the position, without a budget). */
int kle_session_kv_len(kle_session *s);
/*
 * For benchmarks at long context: a fresh session's state as if len tokens had been forwarded
 * (seeded values in its MLA caches' first len rows and in its KDA states; no logits). KLE_EINVAL
 * after any forward or with a budget.
 */
int kle_session_synthesize(kle_session *s, int len, int seed);
/* Bytes of this session's state blob (KDA states, conv tails, MLA caches, logits). */
long kle_session_state_size(kle_session *s);
/* Writes the versioned blob; n must be kle_session_state_size. */
int kle_session_state_save(kle_session *s, uint8_t *dst, long n);
/* Replaces the session's state with a blob; KLE_EFORMAT (session unchanged) if malformed or
 * made by a different model. */
int kle_session_state_load(kle_session *s, const uint8_t *src, long n);
/*
 * Blobs past what one host array holds (4 GiB in Node: a 1M-token context of a few MLA layers)
 * go through engine memory: save into a buffer from kle_buffer_alloc and read it out in parts
 * with kle_mem_read, or write the parts with kle_mem_write and load from the buffer. The same
 * checks and results as the two above.
 */
kle_addr kle_buffer_alloc(size_t n);
void kle_buffer_free(kle_addr p);
int kle_session_state_save_at(kle_session *s, kle_addr dst, long n);
int kle_session_state_load_at(kle_session *s, kle_addr src, long n);

/* ---------------------------------------------------------------- probes */
/* Sums n floats with the widest loads this build has: a read-bandwidth probe. */
float kle_probe_read(const float *x, long n);

#ifdef __cplusplus
}
#endif
#endif /* KLE_H */
