// ops.cuh: the small kernels the CUDA engine's forward pass launches (matmuls, norms, conv,
// gates, MoE routing and expert matvecs, MLA cache and projection steps). All f32, device
// pointers, launched on the given stream; shapes are checked by the engine before it launches
// (it refuses configs these kernels cannot run when the model is created).
#ifndef KLE_CUDA_OPS_CUH
#define KLE_CUDA_OPS_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "tc.cuh"

namespace kle_ops {

// Programmatic dependent launch (sm_90). A kernel launched by launch_pdl may be scheduled while
// the one before it in the stream is finishing: it must call pdl_wait() before it touches
// anything an earlier kernel writes or reads (what it reads before that must stay constant for
// the whole step: weights), and pdl_trigger() lets the kernel after it be scheduled. A decode
// step is ~370 small kernels; with this each one's launch and ramp (its weights' first loads, as
// L2 prefetches) overlap the tail of the one before. KLE_CUDA_PDL=0 launches them plainly.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
// the 128-byte L2 line at p
__device__ __forceinline__ void prefetch_line(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
// this lane's share (lines lane, lane + 32, ...) of the 128-byte L2 lines of [p, p + bytes)
__device__ __forceinline__ void prefetch_l2(const void *p, size_t bytes, int lane) {
  const char *c = static_cast<const char *>(p);
  for (size_t o = (size_t)lane * 128; o < bytes; o += 32 * 128) prefetch_line(c + o);
}
// whether the switch `name` is on: unset or anything but "0" (the KLE_CUDA_* before/after knobs)
bool env_on(const char *name);
bool pdl_enabled();
template <typename... P, typename... A>
inline void launch_pdl(void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A... args) {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = kle_tc::overlap_launch(grid, block, st, pdl_enabled(), attr);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchKernelEx(&cfg, k, static_cast<P>(args)...);
}

// C[b][m][n] = sum over k of A[b][m][k] B[b][k][n] (sgemm.cu), for b < batch: A at
// A + b a_b + m a_m + k; B at B + b b_b + k b_k + n b_n, contiguous along k (b_k == 1) or n (b_n ==
// 1); C at C + b c_b + m c_m + n.
struct sgemm_args {
  const float *A;
  long a_m, a_b;
  const float *B;
  long b_k, b_n, b_b;
  float *C;
  long c_m, c_b;
  int M, N, K, batch;
};
// the shapes sgemm takes: K % 16 == 0, A and B 16-byte aligned with strides of whole float4s
bool sgemm_fits(const sgemm_args &a);
// device floats the split along k wants (0: none); sgemm runs unsplit with less
long sgemm_ws_floats(const sgemm_args &a);
void sgemm(const sgemm_args &a, float *ws, long ws_floats, cudaStream_t st);
// KLE_CUDA_SGEMM=0 keeps the matvec kernels for f32 weights at any batch
bool sgemm_enabled();

// Y[T, N] = X[T, Kd] W^T, W [N, Kd] (nn.Linear layout). Matvec kernels below 64 tokens, sgemm from there
// (split along Kd where ws holds matmul_ws_floats(T, N, Kd) floats).
void matmul(const float *W, const float *X, float *Y, int T, int N, int Kd, cudaStream_t st, float *ws = nullptr, long ws_floats = 0);
long matmul_ws_floats(int T, int N, int Kd);
// x[t] = table[tok[t]] (rows of D)
void embed(const float *table, const int32_t *tok, float *x, int T, int D, cudaStream_t st);
// y = x / sqrt(mean(x^2) + eps) * w per row of D; gate != NULL multiplies by sigmoid(gate)
void rmsnorm(const float *x, const float *gate, const float *w, float *y, int rows, int D, float eps, cudaStream_t st);
// x += y, then h = rmsnorm(x) * w (rows of D)
void add_rmsnorm(float *x, const float *y, const float *w, float *h, int rows, int D, float eps, cudaStream_t st);
// x += y, n elements
void add(float *x, const float *y, long n, cudaStream_t st);
// y = sigmoid(x) (in place allowed) / out = silu(gate) * up
void sigmoid(const float *x, float *y, long n, cudaStream_t st);
void swiglu(const float *gate, const float *up, float *out, long n, cudaStream_t st);
// causal depthwise conv + SiLU over T tokens, wT [W, C], tail [W-1, C] updated (kle_conv_short)
void conv_short(const float *x, const float *wT, float *tail, float *y, int T, int C, int W, cudaStream_t st);
// KDA forget gate (kle_kda_gate) from x [T, H*Kg] to g [T, H*K]: Kg == 1 repeats a head's one
// decay over its K channels (Gated DeltaNet's gate)
void kda_gate(const float *x, const float *A_log, const float *dt_bias, float *g, int T, int H, int K, int Kg, float lower_bound,
              cudaStream_t st);
// MoE: per token top-k routing (kle_moe_route), E <= 1024
void moe_route(const float *logits, const float *bias, int T, int E, int topk, int n_group, int topk_group, int act,
               int renorm, float scale, int32_t *idx, float *w, cudaStream_t st);
// Y[p] = Wtab[idx[p] * 3 + which] X[p / x_div], p < P: one expert matvec per (token, choice)
void expert_matvec(const float *const *Wtab, int which, const int32_t *idx, const float *X, int x_div, float *Y, int P,
                   int N, int Kd, cudaStream_t st);
// y[t] (+)= sum_k w[t, k] Yp[t * K + k]
void moe_combine(const float *Yp, const float *w, float *y, int T, int K, int D, int accumulate, cudaStream_t st);
// MLA cache rows L0.. (or *len.. when len is not NULL: a captured step's): rmsnorm(kv[:R]) * w,
// then kv[R:R+rope] as is; f32, or BF16 (bf16 = 1). caches (not NULL: a batched step's table,
// kle_cuda_kda_layer_args.rows): row t into caches[t * KLE_CUDA_ROW_SLOTS] at row len[t]
void mla_cache_write(const float *kv, const float *w, void *cache, int bf16, const int32_t *len, int L0, int T, int R, int rope,
                     float eps, cudaStream_t st, void *const *caches = nullptr);
// qlat[t, h] = (W_uk[h]^T q[t, h, :nope], q[t, h, nope:nope+rope]); W_uk [H, nope, R]
void mla_absorb(const float *W_uk, const float *q, float *qlat, int T, int H, int nope, int rope, int R, cudaStream_t st);
// src's n consecutive runs of `each` bytes to dst[i], COPY_ROWS_MAX destinations a launch (their
// pointers travel as the kernel's parameter); false (nothing launched) unless every address and
// `each` are multiples of 16 bytes
constexpr int COPY_ROWS_MAX = 256;
struct copy_rows_set {
  void *p[COPY_ROWS_MAX];
};
bool copy_rows(int n, void *const *dst, const void *src, size_t each, cudaStream_t st);
// y[t, h] = W_uv[h] o[t, h], W_uv [H, vh, R]
void mla_up_v(const float *W_uv, const float *o, float *y, int T, int H, int vh, int R, cudaStream_t st);

// gemm16.cu: the same for 16-bit weights (is_bf16 1: BF16, 0: F16), f32 activations and results;
// ws: matmul16_ws_floats(T, N, Kd) floats of device memory where a few tokens' product is split
// along Kd (without them, or with ws NULL, it is not). round_bf16: the tensor-core products
// (more than 8 tokens, BF16 weights) take the activations rounded to BF16, one product a multiply
// (kle_model_precision); else as a BF16 high part and remainder, f32 accuracy at twice the work.
long matmul16_ws_floats(int T, int N, int Kd);
void matmul16(int is_bf16, const uint16_t *W, const float *X, float *Y, int T, int N, int Kd, cudaStream_t st, float *ws = nullptr,
              long ws_floats = 0, bool round_bf16 = false);
void embed16(int is_bf16, const uint16_t *table, const int32_t *tok, float *x, int T, int D, cudaStream_t st);
// G[p] = silu(gate_e X[p / x_div]) * (up_e X[p / x_div]), e = idx[p], gate and up in one format;
// with sg, su (the shared expert's gate and up, in the same format) also G[P + t] for X[t], t < T
void expert_gate_up16(int is_bf16, const uint16_t *const *Wtab, const int32_t *idx, const float *X, int x_div, float *G, int P, int N,
                      int Kd, cudaStream_t st, int T = 0, const uint16_t *sg = nullptr, const uint16_t *su = nullptr);
// y[t] = sum_k w[t, k] down_e G[t * K + k], e = idx[t, k] (expert_matvec16 of the down matrices then
// moe_combine, in one launch and the same order); Kd % 8 == 0, G 16-byte aligned; with sd (the
// shared expert's down matrix) also + down_s G[T * K + t]
void expert_down_combine16(int is_bf16, const uint16_t *const *Wtab, const int32_t *idx, const float *G, const float *w, float *y, int T,
                           int K, int N, int Kd, cudaStream_t st, const uint16_t *sd = nullptr);
// A batch's (token, choice) pairs grouped by expert (offs [E + 1], order [P]; one launch), then
// Y[p] = W_e X[p / x_div] per expert over its pairs (BF16: the tensor-core GEMM with gathered
// rows, in tiles of 16 rows when `few` pairs an expert (fewer than 16 on average), else 64; F16:
// each row read once per 8 pairs) for T tokens. grouped_ok: the shapes and alignment they need
// (else the per-pair kernels). round_bf16 as matmul16's.
// With map (moe_tiles(P, E, tm) ints; tm 16 where `few`, else 64), moe_group also lists the
// experts' row tiles, and grouped_mm16 given it (and P) launches a block per listed tile instead
// of every expert's largest possible count. which == MOE_GATE_UP (BF16): the gate and up matrices
// at once, Y [P, N] = silu(gate X) * up X.
constexpr int MOE_GATE_UP = -1;
int moe_tiles(int P, int E, int tm);
void moe_group(const int32_t *idx, int P, int E, int32_t *offs, int32_t *order, cudaStream_t st, int tm = 0, int32_t *map = nullptr);
bool grouped_ok(int D, int MI, const float *X);
void grouped_mm16(int is_bf16, int few, const uint16_t *const *Wtab, int which, const int32_t *offs, const int32_t *order, int E,
                  const float *X, int x_div, float *Y, int T, int N, int Kd, cudaStream_t st, bool round_bf16 = false,
                  const int32_t *map = nullptr, int P = 0);
void expert_matvec16(int is_bf16, const uint16_t *const *Wtab, int which, const int32_t *idx, const float *X, int x_div, float *Y,
                     int P, int N, int Kd, cudaStream_t st);

// gemm_q8.cu: the same for Q8_0 weights in the device's q8 layout: a matrix of n = N x Kd values
// (Kd % 32 == 0) as its n int8 quants in row-major order, then its n / 32 F16 block scales in
// the same order (value (r, k) = d[(r Kd + k) / 32] q[r Kd + k]). f32 activations and results;
// up to 8 tokens (or X not 16-byte aligned) on the CUDA cores, more on tensor cores, ws and
// round_bf16 as matmul16's. The expert kernels as their 16-bit namesakes'.
void matmul_q8(const void *W, const float *X, float *Y, int T, int N, int Kd, cudaStream_t st, float *ws = nullptr, long ws_floats = 0,
               bool round_bf16 = false);
void embed_q8(const void *table, int rows, const int32_t *tok, float *x, int T, int D, cudaStream_t st);
void expert_gate_up_q8(const void *const *Wtab, const int32_t *idx, const float *X, int x_div, float *G, int P, int N, int Kd, cudaStream_t st,
                       int T = 0, const void *sg = nullptr, const void *su = nullptr);
void expert_down_combine_q8(const void *const *Wtab, const int32_t *idx, const float *G, const float *w, float *y, int T, int K, int N, int Kd,
                            cudaStream_t st, const void *sd = nullptr);
void expert_matvec_q8(const void *const *Wtab, int which, const int32_t *idx, const float *X, int x_div, float *Y, int P, int N, int Kd,
                      cudaStream_t st);
void grouped_mm_q8(int few, const void *const *Wtab, int which, const int32_t *offs, const int32_t *order, int E, const float *X, int x_div,
                   float *Y, int T, int N, int Kd, cudaStream_t st, bool round_bf16 = false);

// One token's matvecs with up to MV_MAX weights in one launch: Y[N] = W[N, Kd] X[Kd] per entry
// (block0 is set by gemv_multi); gemv_multi_ok: what an entry needs (16-byte aligned W and X, Kd
// a multiple of 8, or of 4 for f32)
enum { MV_F32 = 0, MV_BF16 = 1, MV_F16 = 2, MV_MAX = 8 };
struct mv_entry {
  const void *W;
  const float *X;
  float *Y;
  int N, Kd, fmt, block0;
};
struct mv_set {
  mv_entry e[MV_MAX];
  int n;
};
bool gemv_multi_ok(const mv_entry &e);
void gemv_multi(mv_set s, cudaStream_t st);
// The same set's products over T >= 128 tokens in BF16 precision (the activations rounded to
// BF16; every entry BF16, one Kd, a multiple of 64): one tensor-core launch for all of them, each
// distinct X rounded once (gemm16.cu's gemm_x16_kernel). matmul16_n_ws_floats: the workspace
// floats it takes, -1 where it does not take the set; matmul16_n false: nothing launched (the
// caller makes them one by one).
long matmul16_n_ws_floats(const mv_set &s, int T);
bool matmul16_n(const mv_set &s, int T, cudaStream_t st, float *ws, long ws_floats);

// A token drawn from logits [V] on the device as as/sampler.ts draws it (sample.cu): temperature
// (0: greedy), top-k (0: none), top-p (1: none), ln(min_p) (-inf: none); u in [0, 1)
struct SampleParams {
  float T, top_p, log_min_p;
  int top_k;
  double u;
};
// penalties and bias patched into a copy of the logits first (device arrays; n + nb may be 0)
struct SamplePatch {
  const int32_t *toks, *counts, *btoks;
  const double *cbias, *bvals;
  int n, nb;
  double rep, freq, pres;
};
// scratch bytes sample() needs for V logits
size_t sample_scratch_bytes(int V);
// *out (device) = the token; the launch's error, if any
cudaError_t sample(const float *logits, int V, const SampleParams &p, const SamplePatch &patch, void *scratch,
                   int32_t *out, cudaStream_t st);

}  // namespace kle_ops

#endif
