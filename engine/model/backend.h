/*
 * backend.h: the table of operations the forward pass is written against (not public).
 *
 * The model (forward.c, layers.c) is described once; a backend supplies its memory and these
 * operations. The CPU backend (backend_cpu.c: wasm and native) calls the kernels of kle.h; the
 * CUDA backend (kernels-cuda/src/backend_cuda.cu) launches the CUDA kernels on the model's
 * stream. A build links exactly one of them, found through kle_backend_get().
 *
 * Every pointer an operation takes (activations, weights' data, states, caches) is in the
 * backend's memory, except where an argument is documented as host memory. Operations check
 * nothing the forward pass has not already checked: shapes come from a validated config.
 */
#ifndef KLE_BACKEND_H
#define KLE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../include/kle.h"

/* KLE_ENOSYS (kle.h) from an optional operation: it does not run this shape, the forward pass
 * takes the general path. */

typedef struct kle_tensor kle_tensor;
typedef struct kle_backend kle_backend;
/* One model's backend state (a CUDA stream and its workspaces; nothing on the CPU). */
typedef struct kle_backend_ctx kle_backend_ctx;

/* Everything between a KDA layer's projections and its output projection, for one token. */
typedef struct {
  const float *xq, *xk, *xv;       /* projections before the short conv [B, H*K] */
  const float *wq, *wk, *wv;       /* conv taps [W, C] */
  float *tq, *tk, *tv;             /* conv tails [W-1, C], updated */
  const float *graw;               /* forget gate projection [H*Kg] */
  const float *A_log, *dt_bias;    /* [H], [H*Kg] */
  float lower_bound;
  int Kg;                          /* gate values per head: K (KDA) or 1 (one decay per head) */
  const float *braw;               /* beta projection [H] */
  const float *oraw, *onorm;       /* output gate projection [H*V], output norm weight [V] */
  float eps, scale;
  float *S, *o;                    /* state [H, K, V] updated; output [H*V] */
  int H, K, V, W;
} kle_kda_fused_args;

/* kle_session_sample's arguments, checked; the arrays in host memory */
typedef struct {
  float temperature, top_p, log_min_p; /* log_min_p: -INFINITY for none */
  int top_k;                           /* 0: none */
  double rep, freq, pres;              /* repetition (1: none), frequency and presence penalties */
  double u;                            /* the draw, in [0, 1) */
  const int32_t *toks, *counts;        /* [n] the context's distinct tokens, how often each came */
  const double *cbias;                 /* [n] their logit bias (0: none) */
  int n;
  const int32_t *btoks;                /* [nb] other tokens with a logit bias */
  const double *bvals;                 /* [nb] */
  int nb;
} kle_sample_args;

struct kle_backend {
  const char *name;
  /* 1 when the backend's memory is the host's (wasm, native): no copies to read results */
  int host_memory;
  /* tokens per forward batch (the prefill's rows per matmul) */
  int batch;

  /* optional (NULL: every config the engine accepts): 0 for configs its kernels do not run */
  int (*supports)(const int32_t *cfg, const int32_t *layer_kinds);
  kle_backend_ctx *(*open)(void);
  void (*close)(kle_backend_ctx *ctx);

  /* memory: zeroed allocations; copies in and out; NULL on failure */
  void *(*alloc)(kle_backend_ctx *ctx, size_t bytes);
  void (*release)(kle_backend_ctx *ctx, void *p);
  /* optional (NULL: alloc): memory for a weight, uninitialized, freed with the model (release on
   * it does nothing); a GPU packs weights instead of rounding each up to its allocation unit */
  void *(*alloc_weight)(kle_backend_ctx *ctx, size_t bytes);
  int (*upload)(kle_backend_ctx *ctx, void *dst, const void *host_src, size_t n);
  int (*download)(kle_backend_ctx *ctx, void *host_dst, const void *src, size_t n);
  int (*copy)(kle_backend_ctx *ctx, void *dst, const void *src, size_t n);
  /* optional (NULL: copy, n times): src's n consecutive runs of `each` bytes to dst[0..n-1] in
   * one operation (a batched step's logits to its sessions: 256 copies cost a GPU 1.2 ms) */
  int (*copy_n)(kle_backend_ctx *ctx, int n, void *const *dst, const void *src, size_t each);
  /* waits for every operation launched so far; KLE_OK or the first failure's code */
  int (*sync)(kle_backend_ctx *ctx);
  /* optional (NULL: one thread): sets the threads its operations use when n > 0; returns them */
  int (*threads)(kle_backend_ctx *ctx, int n);
  /* optional (NULL: KLE_PRECISION_F32 only): sets the products' precision when mode > 0
   * (kle_model_precision); returns the mode in force */
  int (*precision)(kle_backend_ctx *ctx, int mode);
  /* optional (NULL: none): the pool whose threads the host starts (kle_model_thread_pool), and
   * how many it must start now (starts NULL: the pool alone) */
  void *(*host_threads)(kle_backend_ctx *ctx, int *starts);
  /* optional (NULL: host memory, bounded by what the host allocates): free and total bytes */
  int (*mem_info)(kle_backend_ctx *ctx, uint64_t *free_bytes, uint64_t *total_bytes);
  /*
   * n elements at dst (its memory) set to kle_synth_value(stream, i, offset, scale) (synth.h),
   * stored as fmt: KLE_W_F32, KLE_W_BF16 or KLE_W_Q8_0 (n a multiple of 32: each 32 values in
   * order quantized as kle_quantize does, laid out as place keeps a Q8_0 weight). A synthetic
   * model's weights are made where they live.
   */
  int (*synth)(kle_backend_ctx *ctx, void *dst, int fmt, uint64_t n, uint64_t stream, float offset, float scale);

  /*
   * Moves a weight the host wrote (t->data in host memory, any KLE_W_* format) to where the
   * operations read it, in a format they compute with; updates t. The CPU keeps it as it is.
   */
  int (*place)(kle_backend_ctx *ctx, kle_tensor *t);
  /* A layer's E experts (gate, up, down each) as the handle moe_experts takes. */
  int (*experts_table)(kle_backend_ctx *ctx, const kle_tensor *experts, int E, void **handle);
  void (*experts_table_free)(kle_backend_ctx *ctx, void *handle);

  /* Y[T, w->rows] = X[T, w->cols] W^T */
  int (*matmul)(kle_backend_ctx *ctx, const kle_tensor *w, const float *X, float *Y, int T);
  /*
   * optional (NULL: matmul for each): Y[i][T, w[i]->rows] = X[i][T, w[i]->cols] w[i]^T for
   * i < n <= 8, as one operation: a decode step's projections of one input (on a GPU each was a
   * launch, a ramp and a tail of its own, more than its bytes took). KLE_ENOSYS for sets it does
   * not run: the forward pass then takes matmul for each.
   */
  int (*matmul_n)(kle_backend_ctx *ctx, int n, const kle_tensor *const *w, const float *const *X, float *const *Y, int T);
  /* x[t] = table[tokens[t]] as f32; tokens in host memory, already range-checked; NULL: the one
   * token graph_step wrote to the device */
  int (*embed)(kle_backend_ctx *ctx, const kle_tensor *table, const int32_t *tokens, float *x, int T);
  /* y = rmsnorm(x) * w (* sigmoid(gate) when gate is not NULL) over rows of D; y may be x */
  int (*rmsnorm)(kle_backend_ctx *ctx, const float *x, const float *gate, const float *w, float *y, int rows,
                 int D, float eps);
  int (*add)(kle_backend_ctx *ctx, float *x, const float *y, size_t n);
  /* optional (NULL: add, then rmsnorm): x += y, then h = rmsnorm(x) * w, over rows of D; the
   * residual add and the next block's norm as one operation (one launch on a GPU) */
  int (*add_rmsnorm)(kle_backend_ctx *ctx, float *x, const float *y, const float *w, float *h, int rows, int D, float eps);
  int (*sigmoid)(kle_backend_ctx *ctx, const float *x, float *y, size_t n);
  int (*swiglu)(kle_backend_ctx *ctx, const float *gate, const float *up, float *out, size_t n);
  /* causal depthwise conv + SiLU (kle_conv_short), wT [W, C], tail [W-1, C] updated */
  int (*conv_short)(kle_backend_ctx *ctx, const float *x, const float *wT, float *tail, float *y, int T, int C,
                    int W);
  /*
   * KDA forget gate (kle_kda_gate) from x [T, H*Kg] (dt_bias [H*Kg]) to g [T, H*K]: with Kg == 1
   * a head's one decay is repeated over its K channels. g may be x only when Kg == K.
   */
  int (*kda_gate)(kle_backend_ctx *ctx, const float *x, const float *A_log, const float *dt_bias, float *g, int T,
                  int H, int K, int Kg, float lower_bound);
  /* T tokens of the KDA recurrence with q, k L2-normalized (kle_kda_step / kle_kda_chunk) */
  int (*kda_recur)(kle_backend_ctx *ctx, float *S, const float *q, const float *k, const float *v, const float *g,
                   const float *beta, float *o, int T, int H, int K, int V, float scale);
  /* optional (NULL: none): the fused one-token KDA step; KLE_ENOSYS for shapes it does not run */
  int (*kda_fused_step)(kle_backend_ctx *ctx, const kle_kda_fused_args *a);
  /*
   * optional (NULL: a batched step takes its rows one by one): copies a batched step's table of
   * per-row pointers and lengths (forward.c, KLE_ROW_SLOTS) to memory the operations below read,
   * at *dev, valid until the next call. The rows' sessions are scattered: one table a step
   * instead of one launch a row and layer.
   */
  int (*rows_table)(kle_backend_ctx *ctx, const void *host, size_t bytes, void **dev);
  /*
   * optional: kda_fused_step for the B rows of a batched step, each through its own session's
   * state: a's projections and output hold rows 0..B-1; row b's conv tails and state are
   * rows[b * KLE_ROW_SLOTS + 0..3] (a's own tails and S unused). KLE_ENOSYS as kda_fused_step.
   */
  int (*kda_fused_rows)(kle_backend_ctx *ctx, const kle_kda_fused_args *a, void *const *rows, int B);
  /*
   * optional: an MLA layer of a batched step, row b in its own session's cache rows[b *
   * KLE_ROW_SLOTS] (fmt) holding lens[b] rows: mla_cache_write of kv row b at row lens[b], then
   * mla_attend of qlat row b over those lens[b] + 1 rows into out row b; maxlen, the largest
   * lens[b] + 1, sizes the work. KLE_ENOSYS for shapes it does not run.
   */
  int (*mla_decode_rows)(kle_backend_ctx *ctx, const float *kv, const float *w, const float *qlat, void *const *rows,
                         const int32_t *lens, int maxlen, int fmt, int B, int H, int R, int rope, float eps, float scale,
                         float *out);
  /*
   * optional (NULL: f32 only): 1 when this backend keeps a model of this config's MLA caches in
   * BF16 (kle_session_set_kv_format), which it then does by default
   */
  int (*kv_bf16_ok)(const int32_t *cfg);
  /*
   * MLA: cache rows L0.. = (rmsnorm(kv[:R]) * w, kv[R:R+rope]) for T tokens, stored as fmt
   * (KLE_W_F32 or KLE_W_BF16). L0 < 0 (graph_step's decode, T = 1): the length graph_step wrote
   * to the device, so that one captured step serves every length up to -L0 rows (the caches'
   * capacity, which grows only with a new capture).
   */
  int (*mla_cache_write)(kle_backend_ctx *ctx, const float *kv, const float *w, void *cache, int fmt, int L0, int T, int R,
                         int rope, float eps);
  /* qlat[t, h] = (W_uk[h]^T q[t, h, :nope], q[t, h, nope:]); W_uk [H, nope, R], q [T, H, nope+rope] */
  int (*mla_absorb)(kle_backend_ctx *ctx, const float *W_uk, const float *q, float *qlat, int T, int H, int nope,
                    int rope, int R);
  /*
   * causal attention of T queries at rows L0.. over the cache (kle_mla_decode / kle_mla_prefill);
   * with score (not NULL, [L0 + T]) each query in turn folds its attention into it as
   * kle_mla_decode_scored does, query t's own row L0 + t starting fresh. L0 < 0: as in
   * mla_cache_write (T = 1, no score).
   */
  int (*mla_attend)(kle_backend_ctx *ctx, const float *qlat, const void *cache, int fmt, int L0, int T, int H, int D, int Dv,
                    float scale, float *out, float *score, float decay);
  /* a bounded cache's new rows: info[t] = (pos0 + t) | flag for t < T (kle_session.rowinfo) */
  int (*kv_note_rows)(kle_backend_ctx *ctx, uint32_t *info, int T, uint32_t pos0, uint32_t flag);
  /*
   * optional (NULL: the host chooses, kv_budget.c): a decode step's drop of one row of a layer's
   * M, in kv_budget.c's order (unguarded first, then lowest score, then oldest; guarded: position
   * < sink or >= recent, or pinned), its slot then taking row M - 1 (cache row, score, info)
   */
  int (*kv_drop_one)(kle_backend_ctx *ctx, void *cache, int Dc, int fmt, float *score, uint32_t *info, int M, uint32_t sink,
                     int64_t recent);
  /* y[t, h] = W_uv[h] o[t, h]; W_uv [H, vh, R] */
  int (*mla_up_v)(kle_backend_ctx *ctx, const float *W_uv, const float *o, float *y, int T, int H, int vh, int R);
  /* top-k routing per token (kle_moe_route); idx, w: [T, topk] in backend memory */
  int (*moe_route)(kle_backend_ctx *ctx, const float *logits, const float *bias, int T, int E, int topk, int n_group,
                   int topk_group, int act, int renorm, float scale, int32_t *idx, float *w);
  /*
   * y[t] = sum_k w[t, k] down_e(silu(gate_e h[t]) * up_e h[t]), e = idx[t, k], over the layer's
   * experts; scratch: kle_moe_scratch_floats(T, topk, D, MI) floats.
   */
  int (*moe_experts)(kle_backend_ctx *ctx, const void *experts, const int32_t *idx, const float *w, const float *h,
                     float *y, int T, int topk, int D, int MI, float *scratch);
  /*
   * optional (NULL: moe_experts, then the shared expert as its own SwiGLU MLP and an add):
   * moe_experts with the layer's shared expert added, y[t] += down_s(silu(gate_s h[t]) * up_s
   * h[t]) (gate_s, up_s [SI, D], down_s [D, SI]), in the routed experts' own launches (at batch 1
   * on a GPU the shared expert's product, SwiGLU, down product and add were four more).
   * KLE_ENOSYS for shapes or batches it does not run.
   */
  int (*moe_experts_shared)(kle_backend_ctx *ctx, const void *experts, const kle_tensor *gate_s, const kle_tensor *up_s,
                            const kle_tensor *down_s, const int32_t *idx, const float *w, const float *h, float *y, int T,
                            int topk, int D, int MI, float *scratch);
  /*
   * optional (NULL: the host samples, as/sampler.ts): a token from logits [V] in backend memory,
   * as as/sampler.ts draws it (the same kept set; the draw in index order), into *token (host)
   */
  int (*sample)(kle_backend_ctx *ctx, const float *logits, int V, const kle_sample_args *a, int32_t *token);
  /*
   * optional (NULL: every decode step launched operation by operation): a one-token decode step
   * as a graph. Writes token and L0 (the rows cached) where the operations read them when given
   * NULL tokens and a negative L0, then replays *graph, or captures body(arg), which launches the
   * step that way, into a new one. KLE_ENOSYS when the step cannot be captured (the caller then
   * runs it as usual; the graph remembers, and later calls answer at once). The caller frees
   * *graph (graph_free) whenever the memory the step touches moves.
   */
  int (*graph_step)(kle_backend_ctx *ctx, void **graph, int32_t token, int32_t L0, int (*body)(void *arg), void *arg);
  void (*graph_free)(kle_backend_ctx *ctx, void *graph);
};

/* Scratch floats moe_experts may use: every backend's needs, one formula. */
static inline uint64_t kle_moe_scratch_floats(uint64_t T, uint64_t topk, uint64_t D, uint64_t MI) {
  return T * topk * (2 * MI + 2 * D + 1);
}

/* The backend this build links (backend_cpu.c or kernels-cuda/src/backend_cuda.cu). */
const kle_backend *kle_backend_get(void);

#endif
