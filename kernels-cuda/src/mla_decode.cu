// mla_decode.cu: absorbed MLA decode over a latent cache, split across the context.
//
// Each block takes a contiguous span of cache rows for every head at once, so a row is read from
// HBM once for all heads: rows come through shared memory in tiles of TJ, the block computes the
// H x TJ scores, keeps a running max and sum per head, and accumulates the value part (the first
// Dv columns of the same rows) into per-thread registers. A second kernel merges the spans with
// their log-sum-exps. f32 on CUDA cores; with 32 heads the scores cost 2 H D flops per row, so
// this is compute-bound on Hopper well below the copy bandwidth (tensor cores would be next).
#include <cuda_runtime.h>
#include <math.h>

#include "../include/kle_cuda.h"

#define KLE_OK 0
#define KLE_EINVAL (-1)
#define TJ 16
#define THREADS 256
#define MAXD 640

static int splits_for(int L) {
  int s = (L + 255) / 256;
  return s < 528 ? s : 528;  // 4 blocks per SM on a 132-SM card
}

extern "C" long kle_cuda_mla_workspace_bytes(int L, int H, int Dv) {
  return (long)splits_for(L) * H * (Dv + 1) * 4;
}

// Both partial kernels share the staging and the per-head online-softmax bookkeeping; only the
// score and value micro-tiling differs between them.

// stage q (pre-scaled) into padded rows and reset each head's running max and sum
__device__ __forceinline__ void mla_stage_q(const float *__restrict__ q, float scale, int H, int D, float *sq, float *smax,
                                            float *ssum) {
  const int tid = threadIdx.x, DS = D + 1;
  for (int i = tid; i < H * D; i += THREADS) sq[(i / D) * DS + i % D] = q[i] * scale;
  if (tid < H) {
    smax[tid] = -INFINITY;
    ssum[tid] = 0.f;
  }
}

// copy nj cache rows starting at row jt into padded shared rows
__device__ __forceinline__ void mla_load_tile(const float *__restrict__ cache, int jt, int nj, int D, float *sc) {
  const int DS = D + 1;
  for (int i = threadIdx.x; i < nj * D; i += THREADS) sc[(i / D) * DS + i % D] = cache[(size_t)jt * D + i];
}

// threads 0..H-1: fold this tile's scores (row stride T, nj valid) into the running max and sum,
// turn them into unnormalized probabilities and leave the rescale factor for the accumulators
__device__ __forceinline__ void mla_softmax_tile(float *ss, int T, int nj, int H, float *smax, float *ssum, float *sfac) {
  const int h = threadIdx.x;
  if (h >= H) return;
  float m = smax[h];
  for (int j = 0; j < nj; j++) m = fmaxf(m, ss[h * T + j]);
  const float f = smax[h] == -INFINITY ? 0.f : __expf(smax[h] - m);
  float sum = ssum[h] * f;
  for (int j = 0; j < T; j++) {
    const float e = j < nj ? __expf(ss[h * T + j] - m) : 0.f;
    ss[h * T + j] = e;
    sum += e;
  }
  smax[h] = m;
  ssum[h] = sum;
  sfac[h] = f;
}

// threads 0..H-1: this span's log-sum-exp per head (-inf for an empty span)
__device__ __forceinline__ void mla_store_lse(const float *smax, const float *ssum, int H, float *plse) {
  const int h = threadIdx.x;
  if (h < H) plse[blockIdx.x * H + h] = ssum[h] > 0.f ? smax[h] + logf(ssum[h]) : -INFINITY;
}

// block: one span of rows. Register micro-tiles cut shared-memory traffic, which is what bounds
// this kernel: scores as 2 heads x 2 rows per thread, values as 4 heads x 16 dims per thread.
// Specialized for H = 32 (Kimi-Linear); other head counts take the simple kernel below.
__global__ void __launch_bounds__(THREADS) mla_partial32(const float *__restrict__ q, const float *__restrict__ cache, int L,
                                                        int D, int Dv, float scale, int span, float *__restrict__ pout,
                                                        float *__restrict__ plse) {
  constexpr int H = 32, T = 32;
  extern __shared__ float sm[];
  const int DS = D + 1;           // rows padded: rows D apart (a multiple of 32) share a bank
  float *sq = sm;                 // [H][DS]
  float *sc = sq + H * DS;        // [T][DS]
  float *ss = sc + T * DS;        // [H][T] scores, then probabilities
  float *smax = ss + H * T, *ssum = smax + H, *sfac = ssum + H;
  const int tid = threadIdx.x;
  const int j0 = blockIdx.x * span, j1 = min(L, j0 + span);
  mla_stage_q(q, scale, H, D, sq, smax, ssum);
  const int hp = tid / 16, jp = tid % 16;           // scores: heads 2hp, 2hp+1; rows 2jp, 2jp+1
  const int hg = tid / 32, dg = tid % 32;           // values: heads 4hg..4hg+3; dims dg + 32 i
  const int W = Dv / 32;                            // dims per thread (16 at Dv = 512)
  float acc[4][16];
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int i = 0; i < 16; i++) acc[a][i] = 0.f;
  __syncthreads();
  for (int jt = j0; jt < j1; jt += T) {
    const int nj = min(T, j1 - jt);
    mla_load_tile(cache, jt, nj, D, sc);
    __syncthreads();
    {
      const float *a0 = sq + (2 * hp) * DS, *a1 = a0 + DS, *b0 = sc + (2 * jp) * DS, *b1 = b0 + DS;
      float s00 = 0.f, s01 = 0.f, s10 = 0.f, s11 = 0.f;
      for (int d = 0; d < D; d++) {
        const float x0 = a0[d], x1 = a1[d], y0 = b0[d], y1 = b1[d];
        s00 += x0 * y0;
        s01 += x0 * y1;
        s10 += x1 * y0;
        s11 += x1 * y1;
      }
      const int r0 = 2 * jp, r1 = r0 + 1;
      ss[(2 * hp) * T + r0] = r0 < nj ? s00 : -INFINITY;
      ss[(2 * hp) * T + r1] = r1 < nj ? s01 : -INFINITY;
      ss[(2 * hp + 1) * T + r0] = r0 < nj ? s10 : -INFINITY;
      ss[(2 * hp + 1) * T + r1] = r1 < nj ? s11 : -INFINITY;
    }
    __syncthreads();
    mla_softmax_tile(ss, T, nj, H, smax, ssum, sfac);
    __syncthreads();
#pragma unroll
    for (int a = 0; a < 4; a++) {
      const float f = sfac[4 * hg + a];
#pragma unroll
      for (int i = 0; i < 16; i++) acc[a][i] *= f;
    }
    for (int j = 0; j < nj; j++) {
      const float p0 = ss[(4 * hg) * T + j], p1 = ss[(4 * hg + 1) * T + j], p2 = ss[(4 * hg + 2) * T + j], p3 = ss[(4 * hg + 3) * T + j];
      const float *c = sc + j * DS + dg;
#pragma unroll
      for (int i = 0; i < 16; i++)
        if (i < W) {
          const float v = c[32 * i];
          acc[0][i] += p0 * v;
          acc[1][i] += p1 * v;
          acc[2][i] += p2 * v;
          acc[3][i] += p3 * v;
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 4; a++) {
    const int h = 4 * hg + a;
    const float inv = ssum[h] > 0.f ? 1.f / ssum[h] : 0.f;
    float *dst = pout + ((size_t)blockIdx.x * H + h) * Dv + dg;
#pragma unroll
    for (int i = 0; i < 16; i++)
      if (i < W) dst[32 * i] = acc[a][i] * inv;
  }
  mla_store_lse(smax, ssum, H, plse);
}

// block: one span of rows; thread t handles score pairs (h, j) and output slice (h, part)
__global__ void __launch_bounds__(THREADS) mla_partial_any(const float *__restrict__ q, const float *__restrict__ cache, int L, int H,
                                                      int D, int Dv, float scale, int span, float *__restrict__ pout,
                                                      float *__restrict__ plse) {
  extern __shared__ float sm[];
  // rows padded to D + 1 floats: rows D apart (a multiple of 32) would all sit in one bank
  const int DS = D + 1;
  float *sq = sm;                 // [H][DS]
  float *sc = sq + H * DS;        // [TJ][DS]
  float *ss = sc + TJ * DS;       // [H][TJ] scores, then probabilities
  float *smax = ss + H * TJ;      // [H] running max
  float *ssum = smax + H;         // [H] running sum
  float *sfac = ssum + H;         // [H] rescale factor of this tile
  const int tid = threadIdx.x;
  const int j0 = blockIdx.x * span, j1 = min(L, j0 + span);
  mla_stage_q(q, scale, H, D, sq, smax, ssum);
  // output slice: head h = tid / per, dims part, part + per, part + 2 per, ... (interleaved so
  // that a head's threads read consecutive floats)
  const int per = THREADS / H, W = Dv / per;  // H=32: 8 threads a head, 64 dims each
  const int oh = tid / per, od = tid % per;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) acc[i] = 0.f;
  __syncthreads();
  for (int jt = j0; jt < j1; jt += TJ) {
    const int nj = min(TJ, j1 - jt);
    mla_load_tile(cache, jt, nj, D, sc);
    __syncthreads();
    // H*TJ scores, two per thread at H = 32
    for (int p = tid; p < H * TJ; p += THREADS) {
      const int h = p / TJ, j = p % TJ;
      float s = -INFINITY;
      if (j < nj) {
        const float *a = sq + h * DS, *b = sc + j * DS;
        float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
        for (int d = 0; d < D; d += 4) {
          x0 += a[d] * b[d];
          x1 += a[d + 1] * b[d + 1];
          x2 += a[d + 2] * b[d + 2];
          x3 += a[d + 3] * b[d + 3];
        }
        s = (x0 + x1) + (x2 + x3);
      }
      ss[h * TJ + j] = s;
    }
    __syncthreads();
    mla_softmax_tile(ss, TJ, nj, H, smax, ssum, sfac);
    __syncthreads();
    if (oh < H) {
      const float f = sfac[oh];
#pragma unroll
      for (int i = 0; i < 64; i++) acc[i] *= f;
      for (int j = 0; j < nj; j++) {
        const float p = ss[oh * TJ + j];
        const float *c = sc + j * DS + od;
#pragma unroll
        for (int i = 0; i < 64; i++)
          if (i < W) acc[i] += p * c[i * per];
      }
    }
    __syncthreads();
  }
  if (oh < H) {
    const float inv = ssum[oh] > 0.f ? 1.f / ssum[oh] : 0.f;
    float *dst = pout + ((size_t)blockIdx.x * H + oh) * Dv + od;
#pragma unroll
    for (int i = 0; i < 64; i++)
      if (i < W) dst[i * per] = acc[i] * inv;
  }
  mla_store_lse(smax, ssum, H, plse);
}

// out[h] = sum_s exp(lse_s - lse) out_s, lse = log sum_s exp(lse_s)
__global__ void mla_merge(const float *__restrict__ pout, const float *__restrict__ plse, int n, int H, int Dv,
                          float *__restrict__ out, float *__restrict__ lse) {
  const int h = blockIdx.x;
  float m = -INFINITY;
  for (int s = 0; s < n; s++) m = fmaxf(m, plse[s * H + h]);
  float tot = 0.f;
  for (int s = 0; s < n; s++) tot += plse[s * H + h] == -INFINITY ? 0.f : __expf(plse[s * H + h] - m);
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < n; s++) {
      const float l = plse[s * H + h];
      if (l != -INFINITY) a += __expf(l - m) * pout[((size_t)s * H + h) * Dv + d];
    }
    out[h * Dv + d] = a / tot;
  }
  if (lse && threadIdx.x == 0) lse[h] = m + logf(tot);
}

extern "C" int kle_cuda_mla_decode(const float *q, const float *cache, int L, int H, int D, int Dv, float scale,
                                   float *out, float *lse, void *workspace, void *stream) {
  if (L <= 0 || H <= 0 || H > 32 || H % 8 || D <= 0 || D > MAXD || D % 32 || Dv <= 0 || Dv > D || Dv % 64 ||
      Dv / (THREADS / H) > 64 || !workspace)
    return KLE_EINVAL;
  const int n = splits_for(L), span = (L + n - 1) / n;
  float *pout = (float *)workspace, *plse = pout + (size_t)n * H * Dv;
  cudaStream_t st = (cudaStream_t)stream;
  if (H == 32 && Dv % 32 == 0 && Dv <= 512) {
    const size_t smem = sizeof(float) * ((size_t)64 * (D + 1) + 32 * 32 + 3 * 32);
    if (cudaFuncSetAttribute(mla_partial32, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return KLE_EINVAL;
    mla_partial32<<<n, THREADS, smem, st>>>(q, cache, L, D, Dv, scale, span, pout, plse);
  } else {
    const size_t smem = sizeof(float) * ((size_t)H * (D + 1) + TJ * (D + 1) + H * TJ + 3 * H);
    if (cudaFuncSetAttribute(mla_partial_any, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return KLE_EINVAL;
    mla_partial_any<<<n, THREADS, smem, st>>>(q, cache, L, H, D, Dv, scale, span, pout, plse);
  }
  mla_merge<<<H, 128, 0, st>>>(pout, plse, n, H, Dv, out, lse);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}
