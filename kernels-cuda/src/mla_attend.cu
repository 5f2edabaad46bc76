// mla_attend.cu: causal attention of T absorbed queries over a latent cache, any head count and
// any latent width up to 640 (kle_mla_prefill's math; T = 1 is the decode). The context is split
// into spans so that short prompts with few heads still fill the GPU: one warp owns one
// (query, head, span), keeps its query in registers (lane i holds columns i, i + 32, ...), walks
// the span four rows at a time (four interleaved warp reductions hide the shuffle latency),
// and keeps an online softmax; a second kernel merges the spans by their log-sum-exps.
// Rows are read by every (query, head) warp that covers them, from L2 after the first: the
// shape-specialized kle_cuda_mla_decode reads each row once for all heads instead.
#include <cuda_runtime.h>
#include <math.h>

#include "../include/kle_cuda.h"
#include "lse_merge.cuh"
#include "mla_tc.cuh"

#define QREG 20  // 640 / 32
#define VREG 16  // 512 / 32
#define WARPS 8

// spans per (query, head): enough warps for a full card, spans of at least 64 rows
static int attend_spans(int L, int T, int H) {
  const long warps = (long)T * H;
  long s = (16384 + warps - 1) / warps;
  const long max_by_len = (L + 63) / 64;
  if (s > max_by_len) s = max_by_len;
  return s < 1 ? 1 : (int)s;
}

static long warp_workspace_bytes(int L, int T, int H, int Dv) {
  if (L <= 0 || T <= 0 || H <= 0 || Dv <= 0) return 0;
  return (long)attend_spans(L, T, H) * T * H * (Dv + 1) * 4;
}

// enough for either kernel: which one runs depends on D, which this does not take
extern "C" long kle_cuda_mla_attend_workspace_bytes(int L, int T, int H, int Dv) {
  const long w = warp_workspace_bytes(L, T, H, Dv), t = Dv % 64 == 0 ? kle_mla::tc_workspace_bytes(L, T, H, Dv) : 0;
  return w > t ? w : t;
}

__global__ void __launch_bounds__(32 * WARPS) mla_attend_partial(const float *__restrict__ q, const float *__restrict__ cache,
                                                                 int L0, int T, int H, int D, int Dv, float scale, int span,
                                                                 int S, float *__restrict__ opart, float *__restrict__ lpart,
                                                                 float *__restrict__ logits) {
  const long wid = (long)blockIdx.x * WARPS + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (wid >= (long)T * H * S) return;
  const int s = (int)(wid % S), th = (int)(wid / S), t = th / H;
  const int j0 = s * span, end = L0 + t + 1, j1 = min(j0 + span, end);
  float *op = opart + (size_t)wid * Dv;
  if (j0 >= j1) {  // this span lies past the query's causal end
    for (int i = lane; i < Dv; i += 32) op[i] = 0.f;
    if (lane == 0) lpart[wid] = -INFINITY;
    return;
  }
  float qr[QREG], acc[VREG];
  const float *qh = q + (size_t)th * D;
#pragma unroll
  for (int i = 0; i < QREG; i++) qr[i] = lane + 32 * i < D ? qh[lane + 32 * i] * scale : 0.f;
#pragma unroll
  for (int i = 0; i < VREG; i++) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int j = j0; j < j1; j += 4) {
    const int nr = min(4, j1 - j);
    float d[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 4; r++) {
      if (r >= nr) break;
      const float *row = cache + (size_t)(j + r) * D;
#pragma unroll
      for (int i = 0; i < QREG; i++)
        if (lane + 32 * i < D) d[r] += qr[i] * row[lane + 32 * i];
    }
#pragma unroll
    for (int o = 16; o; o >>= 1)
#pragma unroll
      for (int r = 0; r < 4; r++) d[r] += __shfl_xor_sync(0xffffffffu, d[r], o);
    // the scaled scores, for the bounded cache's row scores (the query holds the scale)
    if (logits && lane < nr) logits[(size_t)th * (L0 + T) + j + lane] = lane == 0 ? d[0] : lane == 1 ? d[1] : lane == 2 ? d[2] : d[3];
    float mn = m;
#pragma unroll
    for (int r = 0; r < 4; r++)
      if (r < nr) mn = fmaxf(mn, d[r]);
    const float f = m == -INFINITY ? 0.f : __expf(m - mn);
    float p[4];
#pragma unroll
    for (int r = 0; r < 4; r++) p[r] = r < nr ? __expf(d[r] - mn) : 0.f;
    l = l * f + p[0] + p[1] + p[2] + p[3];
    m = mn;
#pragma unroll
    for (int i = 0; i < VREG; i++) {
      if (lane + 32 * i >= Dv) break;
      float a = acc[i] * f;
#pragma unroll
      for (int r = 0; r < 4; r++)
        if (r < nr) a += p[r] * cache[(size_t)(j + r) * D + lane + 32 * i];
      acc[i] = a;
    }
  }
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < VREG; i++)
    if (lane + 32 * i < Dv) op[lane + 32 * i] = acc[i] * inv;
  if (lane == 0) lpart[wid] = m + logf(l);
}

// one block per (query, head): weights exp(lse_s - lse) over the spans; lse: NULL or [T, H]
__global__ void mla_attend_merge(const float *__restrict__ opart, const float *__restrict__ lpart, int S, int Dv,
                                 float *__restrict__ out, float *__restrict__ lse) {
  const size_t th = blockIdx.x;
  kle_merge::merge_row(lpart + th * S, 1, opart + th * S * Dv, Dv, S, Dv, 0, 32, out + th * Dv, lse ? lse + th : nullptr);
}

// one thread per row: the queries in order fold their attention into the row's score
// (kle_mla_decode_scored's rule; query t's own row L0 + t starts fresh, later rows wait)
__global__ void mla_fold_scores(const float *__restrict__ logits, const float *__restrict__ lse, int L0, int T, int H,
                                float decay, float *__restrict__ score) {
  const int L = L0 + T, j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= L) return;
  float sc = score[j];
  for (int t = j < L0 ? 0 : j - L0; t < T; t++) {
    float p = 0.f;
    for (int h = 0; h < H; h++) p += __expf(logits[((size_t)t * H + h) * L + j] - lse[(size_t)t * H + h]);
    sc = (j == L0 + t ? 0.f : decay * sc) + p / (float)H;
  }
  score[j] = sc;
}

extern "C" int kle_cuda_mla_attend(const float *q, const void *cache_, int cache_bf16, int L0, int T, int H, int D, int Dv,
                                   float scale, float *out, void *workspace, long workspace_bytes, void *stream) {
  if (L0 < 0 || T <= 0 || H <= 0 || D <= 0 || D > 32 * QREG || Dv <= 0 || Dv > D || Dv > 32 * VREG || !workspace)
    return KLE_EINVAL;
  if (kle_mla::tc_fits(D, Dv))
    return kle_mla::tc_attend(q, cache_, cache_bf16, L0, T, H, D, Dv, scale, out, nullptr, workspace, workspace_bytes, stream, nullptr);
  if (cache_bf16 & KLE_CUDA_CACHE_BF16) return KLE_EINVAL;  // the CUDA-core kernel reads f32 rows only
  const float *cache = (const float *)cache_;
  const int L = L0 + T, S = attend_spans(L, T, H);
  if (workspace_bytes < warp_workspace_bytes(L, T, H, Dv)) return KLE_EINVAL;
  const int span = (L + S - 1) / S;
  float *opart = (float *)workspace, *lpart = opart + (size_t)S * T * H * Dv;
  cudaStream_t st = (cudaStream_t)stream;
  const long warps = (long)T * H * S;
  mla_attend_partial<<<(unsigned)((warps + WARPS - 1) / WARPS), 32 * WARPS, 0, st>>>(q, cache, L0, T, H, D, Dv, scale, span, S,
                                                                                    opart, lpart, nullptr);
  mla_attend_merge<<<T * H, 256, 0, st>>>(opart, lpart, S, Dv, out, nullptr);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}

// either kernel's workspace, then the scaled scores [T, H, L] and the log-sum-exps [T, H]
static long attend_workspace_bytes(int L, int T, int H, int Dv, int tc) {
  return tc ? kle_mla::tc_workspace_bytes(L, T, H, Dv) : warp_workspace_bytes(L, T, H, Dv);
}

extern "C" long kle_cuda_mla_attend_scored_workspace_bytes(int L, int T, int H, int Dv) {
  if (L <= 0 || T <= 0 || H <= 0 || Dv <= 0) return 0;
  const long a = attend_workspace_bytes(L, T, H, Dv, 0), b = Dv % 64 == 0 ? attend_workspace_bytes(L, T, H, Dv, 1) : 0;
  return (a > b ? a : b) + ((long)T * H * L + (long)T * H) * 4;
}

extern "C" int kle_cuda_mla_attend_scored(const float *q, const void *cache_, int cache_bf16, int L0, int T, int H, int D,
                                          int Dv, float scale, float *out, float *score, float decay, void *workspace,
                                          long workspace_bytes, void *stream) {
  if (L0 < 0 || T <= 0 || H <= 0 || D <= 0 || D > 32 * QREG || Dv <= 0 || Dv > D || Dv > 32 * VREG || !workspace ||
      !score || !(decay >= 0.f && decay <= 1.f) || ((cache_bf16 & KLE_CUDA_CACHE_BF16) && !kle_mla::tc_fits(D, Dv)))
    return KLE_EINVAL;
  const float *cache = (const float *)cache_;
  const int L = L0 + T, S = attend_spans(L, T, H);
  if (workspace_bytes < kle_cuda_mla_attend_scored_workspace_bytes(L, T, H, Dv)) return KLE_EINVAL;
  const int tc = kle_mla::tc_fits(D, Dv);
  const long kbytes = attend_workspace_bytes(L, T, H, Dv, tc);
  float *logits = (float *)((char *)workspace + kbytes), *lse = logits + (size_t)T * H * L;
  cudaStream_t st = (cudaStream_t)stream;
  // the tensor-core kernel where it runs (it reads each row once for all heads), writing its scores
  if (tc) {
    const int rc = kle_mla::tc_attend(q, cache_, cache_bf16, L0, T, H, D, Dv, scale, out, lse, workspace, kbytes, stream, logits);
    if (rc != KLE_OK) return rc;
    mla_fold_scores<<<(L + 255) / 256, 256, 0, st>>>(logits, lse, L0, T, H, decay, score);
    return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
  }
  const int span = (L + S - 1) / S;
  float *opart = (float *)workspace, *lpart = opart + (size_t)S * T * H * Dv;
  const long warps = (long)T * H * S;
  mla_attend_partial<<<(unsigned)((warps + WARPS - 1) / WARPS), 32 * WARPS, 0, st>>>(q, cache, L0, T, H, D, Dv, scale, span, S,
                                                                                    opart, lpart, logits);
  mla_attend_merge<<<T * H, 256, 0, st>>>(opart, lpart, S, Dv, out, lse);
  mla_fold_scores<<<(L + 255) / 256, 256, 0, st>>>(logits, lse, L0, T, H, decay, score);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}
