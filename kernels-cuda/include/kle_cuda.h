/*
 * kle_cuda.h: the CUDA kernels of kimi-linear-edge. Same math and layouts as engine/include/kle.h,
 * with a batch dimension and device pointers; every function launches on the given stream and
 * returns KLE_OK or a KLE_E* code (kle.h's), having launched nothing on error.
 */
#ifndef KLE_CUDA_H
#define KLE_CUDA_H

#include "../../engine/include/kle.h" /* status codes (KLE_OK, KLE_EINVAL, KLE_EDEVICE), KDA flags */

#ifdef __cplusplus
extern "C" {
#endif

/*
 * KDA decode flag: launch as a programmatic dependent launch, so the kernel starts while the one
 * before it in the stream finishes and streams the state (and the layer step its conv windows)
 * in meanwhile; what it reads first must not be written by that kernel (in the engine it is the
 * layer's last projection, which writes only the inputs read after the wait). Hopper and newer.
 */
#define KLE_CUDA_KDA_OVERLAP 2

/*
 * Y[T, N] = X[T, Kd] W^T with W [N, Kd] (nn.Linear's layout), f32: the engine's projections (a
 * matvec kernel for T <= 4, which lets a KLE_CUDA_KDA_OVERLAP launch after it start at once; a
 * tiled GEMM above).
 */
int kle_cuda_matmul(const float *W, const float *X, float *Y, int T, int N, int Kd, void *stream);

/*
 * KDA decode step for B sequences of H heads (kle_kda_step with a batch):
 *   S <- Diag(exp g) S;  u = v - S^T k;  S <- S + beta k u^T;  o = S^T (scale q)
 * S: [B,H,K,V] f32 in place; q, k, g: [B,H,K]; v, o: [B,H,V]; beta: [B,H]. flags as kle.h
 * (KLE_KDA_L2NORM_QK = 1: q and k L2-normalized in the kernel, eps 1e-6), | KLE_CUDA_KDA_OVERLAP. K must be 64 or 128;
 * V a multiple of 32.
 */
int kle_cuda_kda_step(float *S, const float *q, const float *k, const float *v, const float *g,
                      const float *beta, float *o, int B, int H, int K, int V, float scale,
                      int flags, void *stream);

/*
 * A whole KDA layer's decode step after its projections, in one kernel, for B sequences of one
 * token (the engine's kda_layer at T = 1 from the projections to the output norm):
 *   q, k, v = silu(causal conv over the tail and x*) (tails [B, W-1, C] updated);
 *   q, k L2-normalized (eps 1e-6); g = -exp(A_log) softplus(graw + dt_bias), or with
 *   lower_bound != 0: lower_bound sigmoid(exp(A_log) (graw + dt_bias)); beta = sigmoid(braw);
 *   the step of kle_cuda_kda_step; o = rmsnorm(o, onorm, eps) * sigmoid(oraw), per head.
 * xq, xk, graw: [B, H*K]; xv, oraw, o: [B, H*V]; braw: [B, H]; conv weights [W, C] (C = H*K, or
 * H*V for v); A_log [H]; dt_bias [H*K] or NULL; onorm [V]; S [B, H, K, V].
 * K must be 64 or 128, V a multiple of 32 and at most 256, W between 1 and 16.
 * rows (not NULL: the sequences of a batched step, each its own session's): sequence b's tails
 * and state are rows[5 b + 0..2] ([W-1, C] each) and rows[5 b + 3] ([H, K, V]), and tq, tk, tv, S
 * are not read.
 */
typedef struct {
  const float *xq, *xk, *xv;    /* projections before the short conv */
  const float *wq, *wk, *wv;    /* conv weights [W, C] */
  float *tq, *tk, *tv;          /* conv tails [B, W-1, C] */
  const float *graw, *A_log, *dt_bias;
  float lower_bound;
  const float *braw;
  const float *oraw, *onorm;
  float eps;
  float *S, *o;
  int flags; /* 0 or KLE_CUDA_KDA_OVERLAP */
  void *const *rows;
} kle_cuda_kda_layer_args;
#define KLE_CUDA_ROW_SLOTS 5
int kle_cuda_kda_layer_step(const kle_cuda_kda_layer_args *args, int B, int H, int K, int V, int W,
                            float scale, void *stream);

/*
 * T tokens of one sequence through the KDA recurrence, token by token with the state held on
 * chip from the first to the last (kle_kda_prefill_ref's math): S [H,K,V] in place; q, k, g:
 * [T,H,K]; v, o: [T,H,V]; beta: [T,H]. K must be 32, 64 or 128; V a multiple of 32.
 */
int kle_cuda_kda_recurrent(float *S, const float *q, const float *k, const float *v, const float *g,
                           const float *beta, float *o, int T, int H, int K, int V, float scale,
                           int flags, void *stream);

/*
 * The same T tokens computed chunkwise (docs/model.md's chunk form, 64-token chunks, any T
 * including a ragged tail): every chunk's intra-chunk work in parallel, then one sequential pass
 * over the chunks per state tile. Same arguments and result as kle_cuda_kda_recurrent, plus a
 * workspace of kle_cuda_kda_chunk_workspace_bytes(T, H, K, V) bytes of device memory, 16-byte
 * aligned (about 2.3 KB per token and head at K = V = 128). K must be 32, 64 or 128; V a
 * multiple of 32, at most 1024.
 */
long kle_cuda_kda_chunk_workspace_bytes(int T, int H, int K, int V);
int kle_cuda_kda_chunk(float *S, const float *q, const float *k, const float *v, const float *g,
                       const float *beta, float *o, int T, int H, int K, int V, float scale,
                       int flags, void *workspace, long workspace_bytes, void *stream);

/*
 * The MLA functions' cache_bf16 argument: KLE_CUDA_CACHE_BF16 for a BF16 cache (0: f32), with
 * KLE_CUDA_BF16_ROUNDED the tensor-core products over it take the query and the probabilities
 * rounded to BF16, one product each (FlashMLA's arithmetic, half the work); without it they keep
 * f32 accuracy against the cache's values. An f32 cache always multiplies in 3xTF32.
 */
#define KLE_CUDA_CACHE_BF16 1
#define KLE_CUDA_BF16_ROUNDED 2

/*
 * Causal attention of T absorbed queries over a latent cache (kle_mla_prefill's math; T = 1 is
 * a decode): q [T, H, D], cache [L0 + T, D] with the queries' own rows already written, query i
 * attends to rows 0 .. L0 + i; out [T, H, Dv]. Any H; D <= 640, Dv <= min(D, 512). With D a
 * multiple of 8 and Dv of 64 it runs kle_cuda_mla_decode's tensor-core kernel over every
 * (query, head) row, else a kernel of one warp per (query, head, span) on the CUDA cores. The
 * cache is f32, or BF16 (cache_bf16 above: its values' bits as uint16_t; tensor-core shapes only).
 * workspace: kle_cuda_mla_attend_workspace_bytes(L0 + T, T, H, Dv) bytes of device memory.
 */
long kle_cuda_mla_attend_workspace_bytes(int L, int T, int H, int Dv);
int kle_cuda_mla_attend(const float *q, const void *cache, int cache_bf16, int L0, int T, int H, int D,
                        int Dv, float scale, float *out, void *workspace, long workspace_bytes,
                        void *stream);

/*
 * kle_cuda_mla_attend that also folds each query's attention into the rows' scores, as
 * kle_mla_decode_scored does for one query (the bounded cache, docs/kv-budget.md): score [L0 + T]
 * device memory, query t's own row L0 + t starting fresh. The attention kernel (the tensor-core
 * one where the shapes allow, else the CUDA-core one) writes its scaled scores to the workspace
 * and a small kernel folds them once the log-sum-exps are known: no second pass over the cache.
 * workspace: kle_cuda_mla_attend_scored_workspace_bytes(L0 + T, T, H, Dv) bytes.
 */
long kle_cuda_mla_attend_scored_workspace_bytes(int L, int T, int H, int Dv);
int kle_cuda_mla_attend_scored(const float *q, const void *cache, int cache_bf16, int L0, int T, int H,
                               int D, int Dv, float scale, float *out, float *score, float decay,
                               void *workspace, long workspace_bytes, void *stream);

/*
 * One decode query (q [H, D]) over a cache whose length L - 1 (the rows before the query's own)
 * is read from device memory at *len when the kernels run, at most cap rows: what a CUDA graph
 * of the decode step replays at every length. Tensor-core shapes only (KLE_ENOSYS otherwise);
 * cache f32 or BF16 (cache_bf16 above). workspace: kle_cuda_mla_step_workspace_bytes(cap, H, Dv).
 */
long kle_cuda_mla_step_workspace_bytes(int cap, int H, int Dv);
int kle_cuda_mla_step(const float *q, const void *cache, int cache_bf16, const int32_t *len, int cap, int H, int D,
                      int Dv, float scale, float *out, void *workspace, long workspace_bytes, void *stream);

/*
 * A batched decode step's attention: query b (q [B, H, D]) over its own cache, caches[b *
 * KLE_CUDA_ROW_SLOTS] (device memory, as the table kle_cuda_kda_layer_args.rows is), whose
 * lens[b] + 1 rows (device memory) include the query's own; maxlen is the largest lens[b] + 1.
 * Sequences of any lengths in one launch (and one merge). Tensor-core shapes with H <= 32 or a
 * multiple of 32 (KLE_ENOSYS otherwise). workspace: kle_cuda_mla_rows_workspace_bytes bytes (0:
 * a shape it does not run).
 */
long kle_cuda_mla_rows_workspace_bytes(int maxlen, int B, int H, int D, int Dv);
int kle_cuda_mla_rows(const float *q, void *const *caches, const int32_t *lens, int maxlen, int cache_bf16, int B, int H,
                      int D, int Dv, float scale, float *out, void *workspace, long workspace_bytes, void *stream);

/*
 * Absorbed MLA decode for one query token over a latent cache, split across the context
 * (kle_mla_decode with split-KV): q [H, D] (absorbed query: W_uk^T q_nope, then the rope part),
 * cache [L, D] f32, out [H, Dv] = softmax(scale q c^T) c[:, :Dv]; lse [H] may be NULL.
 * D <= 640 and a multiple of 8, Dv <= min(D, 512) and a multiple of 64, any H. q, cache and
 * workspace 16-byte aligned.
 * workspace: kle_cuda_mla_workspace_bytes(L, H, Dv) bytes of device memory.
 */
long kle_cuda_mla_workspace_bytes(int L, int H, int Dv);
int kle_cuda_mla_decode(const float *q, const float *cache, int L, int H, int D, int Dv, float scale,
                        float *out, float *lse, void *workspace, void *stream);

#ifdef __cplusplus
}
#endif
#endif
