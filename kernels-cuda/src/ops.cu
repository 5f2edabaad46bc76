// ops.cu: the engine's small kernels (see ops.cuh). Plain f32 CUDA-core code: on the decode
// path these are matvecs and elementwise passes bound by the bytes they move; the prefill GEMM
// is a 64 x 64 register-tiled kernel (no cuBLAS: the build machine's toolkit has none, and the
// addon then needs only the CUDA runtime).
#include <math.h>
#include <stdlib.h>

#include "ops.cuh"
#include "../include/kle_cuda.h"

namespace kle_ops {

static int blocks_for(long n, int per) { return (int)((n + per - 1) / per); }

bool env_on(const char *name) {
  const char *e = getenv(name);
  return !(e && e[0] == '0' && !e[1]);
}

bool pdl_enabled() { return env_on("KLE_CUDA_PDL"); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// the sum of every thread's s, by the whole block (every thread gets it)
__device__ float block_sum(float s) {
  __shared__ float red[32];
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  return red[0];
}

// sum of x[i]^2 over i < n, by the whole block (every thread gets it)
__device__ float block_sumsq(const float *__restrict__ x, int n) {
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i] * x[i];
  return block_sum(s);
}

// ------------------------------------------------------------------ matmul
// one warp per output row; up to 4 tokens share each weight load
template <int TT>
__global__ void matvec_kernel(const float *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y, int N, int Kd, int vec) {
  // a kernel launched after this one with programmatic dependent launch (the KDA layer step) may
  // start now and stream what it does not take from here (its state) beside these loads; it
  // still waits for all of Y before reading it
  cudaTriggerProgrammaticLaunchCompletion();
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const float *w = W + (size_t)row * Kd;
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; t++) acc[t] = 0.f;
  if (vec) {
    const float4 *w4 = reinterpret_cast<const float4 *>(w);
    for (int i = lane; i < Kd / 4; i += 32) {
      const float4 a = w4[i];
#pragma unroll
      for (int t = 0; t < TT; t++) {
        const float4 b = reinterpret_cast<const float4 *>(X + (size_t)t * Kd)[i];
        acc[t] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      }
    }
  } else {
    for (int i = lane; i < Kd; i += 32)
#pragma unroll
      for (int t = 0; t < TT; t++) acc[t] += w[i] * X[(size_t)t * Kd + i];
  }
#pragma unroll
  for (int t = 0; t < TT; t++) {
    const float s = warp_sum(acc[t]);
    if (lane == 0) Y[(size_t)t * N + row] = s;
  }
}

#define BM 64
#define BN 64
#define BK 16
// C[T, N] = X[T, Kd] W[N, Kd]^T: 256 threads, each a 4 x 4 block of C, tiles through shared memory
__global__ void __launch_bounds__(256) gemm_nt_kernel(const float *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y,
                                                      int T, int N, int Kd) {
  __shared__ float As[BK][BM + 4], Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < Kd; k0 += BK) {
    for (int i = tid; i < BM * BK; i += 256) {
      const int r = i / BK, kk = i % BK, k = k0 + kk;
      As[kk][r] = (m0 + r < T && k < Kd) ? X[(size_t)(m0 + r) * Kd + k] : 0.f;
      Bs[kk][r] = (n0 + r < N && k < Kd) ? W[(size_t)(n0 + r) * Kd + k] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        a[i] = As[kk][ty * 4 + i];
        b[i] = Bs[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int m = m0 + ty * 4 + i;
    if (m >= T) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int n = n0 + tx * 4 + j;
      if (n < N) Y[(size_t)m * N + n] = acc[i][j];
    }
  }
}

// a matrix of few rows (the MoE router, 256 x 2304) over up to 8 tokens a block: SPLIT warps per
// (row, 8 tokens), each a 1 / SPLIT share of the row, so a 512-token batch has 64 times the
// blocks the 64 x 64 tiles give it (32 for the router; at 64 tokens, 4 blocks took 380 us) and
// one token or a batched decode step's 8 four times the warps of one a row (32 blocks: 34.8 us
// for 2.4 MB at 8 streams of the 48B model, a warp walking its row in 18 dependent rounds)
template <int SPLIT>
__global__ void __launch_bounds__(256) matvec8_kernel(const float *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y, int T,
                                                      int N, int Kd) {
  // as matvec_kernel: a programmatic dependent launch after this one may start now
  cudaTriggerProgrammaticLaunchCompletion();
  __shared__ float part[8][8];
  const int wid = threadIdx.x / 32, lane = threadIdx.x % 32, q = wid % SPLIT;
  const int row = blockIdx.x * (8 / SPLIT) + wid / SPLIT, t0 = blockIdx.y * 8, nt = min(8, T - t0);
  const int n4 = Kd / 4, per = (n4 + SPLIT - 1) / SPLIT, i0 = q * per, i1 = min(n4, i0 + per);
  float acc[8] = {};
  if (row < N) {
    const float4 *w4 = reinterpret_cast<const float4 *>(W + (size_t)row * Kd);
    for (int i = i0 + lane; i < i1; i += 32) {
      const float4 a = w4[i];
#pragma unroll
      for (int t = 0; t < 8; t++) {
        if (t >= nt) break;
        const float4 b = reinterpret_cast<const float4 *>(X + (size_t)(t0 + t) * Kd)[i];
        acc[t] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 8; t++)
    if (t < nt) acc[t] = warp_sum(acc[t]);  // nt is the block's: every lane takes the same branch
  if (SPLIT == 1) {
    if (row < N && lane < nt) {
      float v = acc[0];
#pragma unroll
      for (int t = 1; t < 8; t++)
        if (lane == t) v = acc[t];
      Y[(size_t)(t0 + lane) * N + row] = v;
    }
    return;
  }
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < 8; t++)
      if (t < nt) part[wid][t] = acc[t];
  __syncthreads();
  // the row's first warp adds the shares in order: one result whatever the warps' timing
  if (q == 0 && row < N && lane < nt) {
    float v = part[wid][lane];
    for (int j = 1; j < SPLIT; j++) v += part[wid + j][lane];
    Y[(size_t)(t0 + lane) * N + row] = v;
  }
}

// matmul as sgemm: X [T, Kd] times W [N, Kd] read along Kd
static sgemm_args matmul_args(const float *W, const float *X, float *Y, int T, int N, int Kd) {
  return sgemm_args{X, Kd, 0, W, 1, Kd, 0, Y, N, 0, T, N, Kd, 1};
}
// from 64 tokens (the router at 32: matvec8 10.5 us, sgemm 11.2; at 64: 18.2 vs 12.2)
constexpr int SGEMM_T = 64;
static bool matmul_sgemm(const sgemm_args &a) { return a.M >= SGEMM_T && sgemm_enabled() && sgemm_fits(a); }

long matmul_ws_floats(int T, int N, int Kd) {
  // no pointers yet: sgemm_fits takes null ones as aligned, so the shape alone decides
  const sgemm_args a = matmul_args(nullptr, nullptr, nullptr, T, N, Kd);
  return matmul_sgemm(a) ? sgemm_ws_floats(a) : 0;
}

void matmul(const float *W, const float *X, float *Y, int T, int N, int Kd, cudaStream_t st, float *ws, long ws_floats) {
  const sgemm_args ga = matmul_args(W, X, Y, T, N, Kd);
  if (matmul_sgemm(ga)) {
    sgemm(ga, ws, ws_floats, st);
    return;
  }
  // where the 64 x 64 tiles would leave most of the card idle
  // several tokens, or one over a row long enough to share (N < 2048: 4 warps a row)
  if ((T > 1 || (N < 2048 && Kd >= 512)) && blocks_for(N, BN) * blocks_for(T, BM) < 64 && (Kd & 3) == 0 &&
      (((uintptr_t)W | (uintptr_t)X) & 15) == 0) {
    // a warp a row while that makes two waves of blocks; else 4 warps share each row
    if ((long)blocks_for(N, 8) * blocks_for(T, 8) >= 2L * kle_tc::sm_count())
      matvec8_kernel<1><<<dim3(blocks_for(N, 8), blocks_for(T, 8)), 256, 0, st>>>(W, X, Y, T, N, Kd);
    else
      matvec8_kernel<4><<<dim3(blocks_for(N, 2), blocks_for(T, 8)), 256, 0, st>>>(W, X, Y, T, N, Kd);
    return;
  }
  if (T <= 4) {
    const int grid = blocks_for(N, 8);
    // float4 loads when every row of W and X starts on 16 bytes
    const int vec = (Kd & 3) == 0 && (((uintptr_t)W | (uintptr_t)X) & 15) == 0;
    switch (T) {
    case 1: matvec_kernel<1><<<grid, 256, 0, st>>>(W, X, Y, N, Kd, vec); break;
    case 2: matvec_kernel<2><<<grid, 256, 0, st>>>(W, X, Y, N, Kd, vec); break;
    case 3: matvec_kernel<3><<<grid, 256, 0, st>>>(W, X, Y, N, Kd, vec); break;
    default: matvec_kernel<4><<<grid, 256, 0, st>>>(W, X, Y, N, Kd, vec); break;
    }
    return;
  }
  gemm_nt_kernel<<<dim3(blocks_for(N, BN), blocks_for(T, BM)), 256, 0, st>>>(W, X, Y, T, N, Kd);
}

// ------------------------------------------------------------------ elementwise and norms
__global__ void embed_kernel(const float *__restrict__ table, const int32_t *__restrict__ tok, float *__restrict__ x, int D) {
  const float *src = table + (size_t)tok[blockIdx.x] * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) x[(size_t)blockIdx.x * D + i] = src[i];
}
void embed(const float *table, const int32_t *tok, float *x, int T, int D, cudaStream_t st) {
  embed_kernel<<<T, 128, 0, st>>>(table, tok, x, D);
}

__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ gate, const float *__restrict__ w,
                               float *__restrict__ y, int D, float eps) {
  const float *xr = x + (size_t)blockIdx.x * D;
  const float inv = 1.0f / sqrtf(block_sumsq(xr, D) / (float)D + eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float v = xr[i] * inv * w[i];
    if (gate) v *= 1.0f / (1.0f + expf(-gate[(size_t)blockIdx.x * D + i]));
    y[(size_t)blockIdx.x * D + i] = v;
  }
}

// Rows of D % 4 == 0 floats (16-byte aligned) of at most NV float4 a thread: every load of a row
// goes out at once and the values stay in registers between the sum and the scaling. The loops
// above wait on their loads in turn: one 2304-wide row took 7.3 us (ncu, H200), 54 of them a 48B
// decode step.
template <int NV>
__global__ void rmsnorm4_kernel(const float *__restrict__ x, const float *__restrict__ gate, const float *__restrict__ w,
                                float *__restrict__ y, int D, float eps) {
  pdl_wait();
  pdl_trigger();
  const int n4 = D / 4;
  const size_t r4 = (size_t)blockIdx.x * n4;
  const float4 *xr = reinterpret_cast<const float4 *>(x) + r4, *w4 = reinterpret_cast<const float4 *>(w);
  const float4 *gr = gate ? reinterpret_cast<const float4 *>(gate) + r4 : nullptr;
  float4 v[NV], wv[NV], gv[NV];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < n4) {
      v[j] = xr[i];
      wv[j] = w4[i];
      if (gr) gv[j] = gr[i];
      s += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    }
  }
  const float inv = 1.0f / sqrtf(block_sum(s) / (float)D + eps);
  float4 *yr = reinterpret_cast<float4 *>(y) + r4;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= n4) continue;
    float4 o = make_float4(v[j].x * inv * wv[j].x, v[j].y * inv * wv[j].y, v[j].z * inv * wv[j].z, v[j].w * inv * wv[j].w);
    if (gr) {
      o.x *= 1.0f / (1.0f + expf(-gv[j].x));
      o.y *= 1.0f / (1.0f + expf(-gv[j].y));
      o.z *= 1.0f / (1.0f + expf(-gv[j].z));
      o.w *= 1.0f / (1.0f + expf(-gv[j].w));
    }
    yr[i] = o;
  }
}

// threads for a row of D, and whether the float4 kernels take it (at most 4 float4 a thread)
static int norm_threads(int D) { return D >= 1024 ? 256 : D >= 256 ? 128 : 64; }
static bool norm4_ok(int D, const void *a, const void *b, const void *c, const void *d) {
  return D % 4 == 0 && D / 4 <= 4 * norm_threads(D) && ((((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) == 0);
}

void rmsnorm(const float *x, const float *gate, const float *w, float *y, int rows, int D, float eps, cudaStream_t st) {
  const int th = norm_threads(D);
  if (norm4_ok(D, x, gate, w, y))
    launch_pdl(rmsnorm4_kernel<4>, rows, th, 0, st, x, gate, w, y, D, eps);
  else
    rmsnorm_kernel<<<rows, th, 0, st>>>(x, gate, w, y, D, eps);
}

// x += y, then h = rmsnorm(x) * w, per row of D: the residual add and the next block's norm in one
// pass (each was a launch of its own, 2 x 27 a 48B decode step)
__global__ void add_rmsnorm_kernel(float *__restrict__ x, const float *__restrict__ y, const float *__restrict__ w, float *__restrict__ h,
                                   int D, float eps) {
  float *xr = x + (size_t)blockIdx.x * D;
  const float *yr = y + (size_t)blockIdx.x * D;
  float s = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = xr[i] + yr[i];
    xr[i] = v;
    s += v * v;
  }
  const float inv = 1.0f / sqrtf(block_sum(s) / (float)D + eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) h[(size_t)blockIdx.x * D + i] = xr[i] * inv * w[i];
}
// as rmsnorm4_kernel: the row's loads at once, the sums kept in registers
template <int NV>
__global__ void add_rmsnorm4_kernel(float *__restrict__ x, const float *__restrict__ y, const float *__restrict__ w, float *__restrict__ h,
                                    int D, float eps) {
  pdl_wait();
  pdl_trigger();
  const int n4 = D / 4;
  const size_t r4 = (size_t)blockIdx.x * n4;
  float4 *xr = reinterpret_cast<float4 *>(x) + r4;
  const float4 *yr = reinterpret_cast<const float4 *>(y) + r4, *w4 = reinterpret_cast<const float4 *>(w);
  float4 v[NV], wv[NV];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < n4) {
      const float4 a = xr[i], b = yr[i];
      wv[j] = w4[i];
      v[j] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
      s += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    }
  }
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < n4) xr[i] = v[j];
  }
  const float inv = 1.0f / sqrtf(block_sum(s) / (float)D + eps);
  float4 *hr = reinterpret_cast<float4 *>(h) + r4;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < n4) hr[i] = make_float4(v[j].x * inv * wv[j].x, v[j].y * inv * wv[j].y, v[j].z * inv * wv[j].z, v[j].w * inv * wv[j].w);
  }
}
void add_rmsnorm(float *x, const float *y, const float *w, float *h, int rows, int D, float eps, cudaStream_t st) {
  const int th = norm_threads(D);
  if (norm4_ok(D, x, y, w, h))
    launch_pdl(add_rmsnorm4_kernel<4>, rows, th, 0, st, x, y, w, h, D, eps);
  else
    add_rmsnorm_kernel<<<rows, th, 0, st>>>(x, y, w, h, D, eps);
}

__global__ void add_kernel(float *x, const float *y, long n) {
  pdl_wait();
  pdl_trigger();
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}
void add(float *x, const float *y, long n, cudaStream_t st) { launch_pdl(add_kernel, blocks_for(n, 256), 256, 0, st, x, y, n); }

__global__ void sigmoid_kernel(const float *x, float *y, long n) {
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 1.0f / (1.0f + expf(-x[i]));
}
void sigmoid(const float *x, float *y, long n, cudaStream_t st) { sigmoid_kernel<<<blocks_for(n, 256), 256, 0, st>>>(x, y, n); }

// one grid row per destination: src's run y to dst.p[y], 16 bytes a thread and step
__global__ void copy_rows_kernel(copy_rows_set dst, const uint4 *__restrict__ src, long n16) {
  uint4 *d = reinterpret_cast<uint4 *>(dst.p[blockIdx.y]);
  const uint4 *s = src + (size_t)blockIdx.y * n16;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += (long)gridDim.x * blockDim.x) d[i] = s[i];
}
bool copy_rows(int n, void *const *dst, const void *src, size_t each, cudaStream_t st) {
  if (each % 16 || (uintptr_t)src % 16) return false;
  for (int i = 0; i < n; i++)
    if ((uintptr_t)dst[i] % 16) return false;
  const long n16 = (long)(each / 16);
  for (int i0 = 0; i0 < n; i0 += COPY_ROWS_MAX) {
    copy_rows_set set;
    const int rows = n - i0 < COPY_ROWS_MAX ? n - i0 : COPY_ROWS_MAX;
    for (int i = 0; i < rows; i++) set.p[i] = dst[i0 + i];
    // a few blocks a row: 256 rows of Kimi's logits are 256 x 8 blocks, each 20 steps of 4 KB
    copy_rows_kernel<<<dim3(blocks_for(n16, 256) < 8 ? blocks_for(n16, 256) : 8, rows), 256, 0, st>>>(set, reinterpret_cast<const uint4 *>(src) + (size_t)i0 * n16, n16);
  }
  return true;
}

__global__ void swiglu_kernel(const float *gate, const float *up, float *out, long n) {
  pdl_wait();
  pdl_trigger();
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}
void swiglu(const float *gate, const float *up, float *out, long n, cudaStream_t st) {
  launch_pdl(swiglu_kernel, blocks_for(n, 256), 256, 0, st, gate, up, out, n);
}

// one thread per channel walks the tokens with the window in registers (W <= 16)
__global__ void conv_short_kernel(const float *__restrict__ x, const float *__restrict__ wT, float *__restrict__ tail,
                                  float *__restrict__ y, int T, int C, int W) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float win[16], wc[16];
  for (int i = 0; i < W; i++) wc[i] = wT[(size_t)i * C + c];
  for (int i = 0; i < W - 1; i++) win[i] = tail[(size_t)i * C + c];
  for (int t = 0; t < T; t++) {
    win[W - 1] = x[(size_t)t * C + c];
    float acc = 0.f;
    for (int i = 0; i < W; i++) acc += wc[i] * win[i];
    y[(size_t)t * C + c] = acc / (1.0f + expf(-acc));
    for (int i = 0; i < W - 1; i++) win[i] = win[i + 1];
  }
  for (int i = 0; i < W - 1; i++) tail[(size_t)i * C + c] = win[i];
}
void conv_short(const float *x, const float *wT, float *tail, float *y, int T, int C, int W, cudaStream_t st) {
  conv_short_kernel<<<blocks_for(C, 128), 128, 0, st>>>(x, wT, tail, y, T, C, W);
}

__global__ void kda_gate_kernel(const float *__restrict__ x, const float *__restrict__ A_log, const float *__restrict__ dt_bias,
                                float *__restrict__ g, long n, int H, int K, int Kg, float lb) {
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int c = (int)(i % ((long)H * K)), h = c / K;
  // with one decay per head (Kg == 1) every channel of the head reads the head's one input
  const int ci = Kg == K ? c : h;
  const float a = expf(A_log[h]), z = x[i / ((long)H * K) * H * Kg + ci] + (dt_bias ? dt_bias[ci] : 0.f);
  g[i] = lb == 0.f ? -a * (z > 20.f ? z : log1pf(expf(z))) : lb * (1.0f / (1.0f + expf(-a * z)));
}
void kda_gate(const float *x, const float *A_log, const float *dt_bias, float *g, int T, int H, int K, int Kg, float lower_bound,
              cudaStream_t st) {
  const long n = (long)T * H * K;
  kda_gate_kernel<<<blocks_for(n, 256), 256, 0, st>>>(x, A_log, dt_bias, g, n, H, K, Kg, lower_bound);
}

// ------------------------------------------------------------------ MoE
// one block per token, ROUTE_THREADS threads over its E <= 1024 experts: the scores in
// parallel, each group's top-2 sum by a thread per group, then each of the top-k choices as a
// warp-wide argmax (ties to the lowest index, as kle_moe_route's scan: first of the largest). A
// single thread scanning 256 experts 8 times took 127 us a layer on the H200, a third of a
// 48B decode step; 256 threads with block barriers 13 us; one warp needs no barrier but its own.
#define ROUTE_THREADS 32

// (value, index) of the larger, ties to the lower index; index -1 is nothing
__device__ __forceinline__ void arg_better(float &v, int &i, float v2, int i2) {
  if (i2 >= 0 && (i < 0 || v2 > v || (v2 == v && i2 < i))) v = v2, i = i2;
}

__device__ float block_reduce(float v, bool is_max, float *red) {
  for (int o = 16; o; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, u) : v + u;
  }
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = red[0];
  for (int k = 1; k < ROUTE_THREADS / 32; k++) r = is_max ? fmaxf(r, red[k]) : r + red[k];
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(ROUTE_THREADS) moe_route_kernel(const float *__restrict__ logits, const float *__restrict__ bias, int E,
                                                                  int topk, int n_group, int topk_group, int act, int renorm, float scale,
                                                                  int32_t *__restrict__ idx, float *__restrict__ w) {
  pdl_wait();
  pdl_trigger();
  __shared__ float s[1024], choice[1024], gscore[1024], red[ROUTE_THREADS / 32];
  __shared__ int pick[64];
  __shared__ unsigned char elig[1024], gsel[1024];
  const int t = blockIdx.x, tid = threadIdx.x, lane = tid % 32;
  const float *lg = logits + (size_t)t * E;
  // The logits and the bias into shared memory, 8 loads a lane in flight at a time: loop by loop
  // each load waited on the one before (11.4 us a 48B layer's routing, ncu, most of it there).
  // A lane keeps to its own experts e = lane + 32 j until the barrier below.
  for (int e0 = 0; e0 < E; e0 += 8 * ROUTE_THREADS) {
    float lv[8], bv[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const int e = e0 + tid + j * ROUTE_THREADS;
      lv[j] = e < E ? lg[e] : 0.f;
      bv[j] = bias && e < E ? bias[e] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const int e = e0 + tid + j * ROUTE_THREADS;
      if (e < E) s[e] = lv[j], choice[e] = bv[j];
    }
  }
  if (act == 0) {
    float m = -INFINITY;
    for (int e = tid; e < E; e += ROUTE_THREADS) m = fmaxf(m, s[e]);
    m = block_reduce(m, true, red);
    float sum = 0.f;
    for (int e = tid; e < E; e += ROUTE_THREADS) sum += s[e] = expf(s[e] - m);
    sum = block_reduce(sum, false, red);
    for (int e = tid; e < E; e += ROUTE_THREADS) s[e] /= sum;
  } else {
    for (int e = tid; e < E; e += ROUTE_THREADS) s[e] = 1.0f / (1.0f + expf(-s[e]));
  }
  for (int e = tid; e < E; e += ROUTE_THREADS) choice[e] = s[e] + choice[e];  // a missing bias is a zero bias
  __syncthreads();
  // The group limit only where it excludes a group: with one group (Kimi's) lane 0 walked all E
  // scores in a dependent chain for nothing.
  if (n_group > 1 && topk_group < n_group) {
    const int per = E / n_group;
    for (int gi = tid; gi < n_group; gi += ROUTE_THREADS) {
      float a = -INFINITY, b = -INFINITY;
      for (int i = 0; i < per; i++) {
        const float c = choice[gi * per + i];
        if (c > a) {
          b = a;
          a = c;
        } else if (c > b) {
          b = c;
        }
      }
      gscore[gi] = per > 1 ? a + b : a;  // as kle_moe_route: a missing bias is a zero bias
      gsel[gi] = 0;
    }
    __syncthreads();
    if (tid == 0)
      for (int r = 0; r < topk_group; r++) {
        int best = -1;
        for (int gi = 0; gi < n_group; gi++)
          if (!gsel[gi] && (best < 0 || gscore[gi] > gscore[best])) best = gi;
        gsel[best] = 1;
      }
    __syncthreads();
    for (int e = tid; e < E; e += ROUTE_THREADS) elig[e] = gsel[e / per];
  } else {
    for (int e = tid; e < E; e += ROUTE_THREADS) elig[e] = 1;
  }
  __syncthreads();
  // A round's pick is the warp's best of the lanes' bests (larger value, ties to the lower index:
  // one answer whatever the order). Up to 8 experts a lane (E <= 256, Kimi's), each lane holds its
  // own sorted in registers and the winner shifts to its next; above that, the winner's lane
  // looks at its experts again in shared memory.
  if (E <= 8 * ROUTE_THREADS) {
    float v[8];
    int id[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const int e = lane + j * ROUTE_THREADS;
      const bool ok = e < E && elig[e];
      v[j] = ok ? choice[e] : 0.f;
      id[j] = ok ? e : -1;
    }
    // Batcher's 19 comparators for 8 values, best first
    const int net[19][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4}, {1, 5}, {2, 6}, {3, 7}, {0, 1}, {2, 3},
                            {4, 5}, {6, 7}, {2, 4}, {3, 5}, {1, 4}, {3, 6}, {1, 2}, {3, 4}, {5, 6}};
#pragma unroll
    for (int c = 0; c < 19; c++) {
      const int x = net[c][0], y = net[c][1];
      float bv2 = v[x];
      int bi2 = id[x];
      arg_better(bv2, bi2, v[y], id[y]);
      if (bi2 != id[x]) {  // y is the better: swap
        const float tv = v[x];
        const int ti = id[x];
        v[x] = v[y], id[x] = id[y], v[y] = tv, id[y] = ti;
      }
    }
    for (int r = 0; r < topk; r++) {
      float bv = v[0];
      int bi = id[0];
      for (int o = 16; o; o >>= 1) arg_better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
      if (lane == 0) pick[r] = bi;
      if (bi >= 0 && id[0] == bi) {
#pragma unroll
        for (int j = 0; j < 7; j++) v[j] = v[j + 1], id[j] = id[j + 1];
        id[7] = -1;
      }
    }
  } else {
    float bv = 0.f;
    int bi = -1;
    for (int e = lane; e < E; e += ROUTE_THREADS)
      if (elig[e]) arg_better(bv, bi, choice[e], e);
    for (int r = 0; r < topk; r++) {
      float v = bv;
      int i = bi;
      for (int o = 16; o; o >>= 1) arg_better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
      if (lane == 0) pick[r] = i;
      if (i >= 0 && i % ROUTE_THREADS == lane) {
        elig[i] = 0;
        bv = 0.f;
        bi = -1;
        for (int e = lane; e < E; e += ROUTE_THREADS)
          if (elig[e]) arg_better(bv, bi, choice[e], e);
      }
    }
  }
  __syncthreads();
  if (topk <= ROUTE_THREADS) {  // lane r writes choice r; the total summed in r order as below
    const int pr = lane < topk ? pick[lane] : 0;
    const float sv = lane < topk ? s[pr] : 0.f;
    float total = 0.f;
    for (int r = 0; r < topk; r++) total += __shfl_sync(0xffffffffu, sv, r);
    if (lane < topk) {
      idx[(size_t)t * topk + lane] = pr;
      w[(size_t)t * topk + lane] = (renorm ? sv / (total + 1e-20f) : sv) * scale;
    }
  } else if (tid == 0) {
    float total = 0.f;
    for (int r = 0; r < topk; r++) total += s[pick[r]];
    for (int r = 0; r < topk; r++) {
      idx[(size_t)t * topk + r] = pick[r];
      w[(size_t)t * topk + r] = (renorm ? s[pick[r]] / (total + 1e-20f) : s[pick[r]]) * scale;
    }
  }
}
void moe_route(const float *logits, const float *bias, int T, int E, int topk, int n_group, int topk_group, int act,
               int renorm, float scale, int32_t *idx, float *w, cudaStream_t st) {
  launch_pdl(moe_route_kernel, T, ROUTE_THREADS, 0, st, logits, bias, E, topk, n_group, topk_group, act, renorm, scale, idx, w);
}

// one warp per (pair, output row)
__global__ void expert_matvec_kernel(const float *const *__restrict__ Wtab, int which, const int32_t *__restrict__ idx,
                                     const float *__restrict__ X, int x_div, float *__restrict__ Y, int N, int Kd) {
  const int p = blockIdx.y, row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const float *w = Wtab[(size_t)idx[p] * 3 + which] + (size_t)row * Kd, *x = X + (size_t)(p / x_div) * Kd;
  float acc = 0.f;
  for (int i = lane; i < Kd; i += 32) acc += w[i] * x[i];
  acc = warp_sum(acc);
  if (lane == 0) Y[(size_t)p * N + row] = acc;
}
void expert_matvec(const float *const *Wtab, int which, const int32_t *idx, const float *X, int x_div, float *Y, int P,
                   int N, int Kd, cudaStream_t st) {
  expert_matvec_kernel<<<dim3(blocks_for(N, 8), P), 256, 0, st>>>(Wtab, which, idx, X, x_div, Y, N, Kd);
}

__global__ void moe_combine_kernel(const float *__restrict__ Yp, const float *__restrict__ w, float *__restrict__ y, int K, int D,
                                   int accumulate) {
  const int t = blockIdx.x;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = accumulate ? y[(size_t)t * D + d] : 0.f;
    for (int k = 0; k < K; k++) acc += w[(size_t)t * K + k] * Yp[((size_t)t * K + k) * D + d];
    y[(size_t)t * D + d] = acc;
  }
}
void moe_combine(const float *Yp, const float *w, float *y, int T, int K, int D, int accumulate, cudaStream_t st) {
  moe_combine_kernel<<<T, 128, 0, st>>>(Yp, w, y, K, D, accumulate);
}

// ------------------------------------------------------------------ MLA projections
// a value as the cache keeps it: f32, or BF16 rounded to nearest even
__device__ __forceinline__ void put_cached(float *p, float v) { *p = v; }
__device__ __forceinline__ void put_cached(uint16_t *p, float v) {
  const uint32_t u = __float_as_uint(v);
  *p = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
template <class CT>
__global__ void mla_cache_write_kernel(const float *__restrict__ kv, const float *__restrict__ w, CT *__restrict__ cache,
                                       const int32_t *__restrict__ len, int L0, int R, int rope, float eps,
                                       void *const *__restrict__ caches) {
  const int Dc = R + rope;
  const float *src = kv + (size_t)blockIdx.x * Dc;
  // a batched step's row t goes to its own cache, at its own length (len[t])
  CT *dst = caches ? (CT *)caches[(size_t)blockIdx.x * KLE_CUDA_ROW_SLOTS] + (size_t)len[blockIdx.x] * Dc
                   : cache + ((size_t)(len ? *len : L0) + blockIdx.x) * Dc;
  const float inv = 1.0f / sqrtf(block_sumsq(src, R) / (float)R + eps);
  for (int i = threadIdx.x; i < Dc; i += blockDim.x) put_cached(dst + i, i < R ? src[i] * inv * w[i] : src[i]);
}
void mla_cache_write(const float *kv, const float *w, void *cache, int bf16, const int32_t *len, int L0, int T, int R, int rope,
                     float eps, cudaStream_t st, void *const *caches) {
  if (bf16)
    mla_cache_write_kernel<<<T, 128, 0, st>>>(kv, w, (uint16_t *)cache, len, L0, R, rope, eps, caches);
  else
    mla_cache_write_kernel<<<T, 128, 0, st>>>(kv, w, (float *)cache, len, L0, R, rope, eps, caches);
}

// block (t, h): q_nope staged in shared memory, one thread per latent column r (any shape)
__global__ void mla_absorb_kernel(const float *__restrict__ W_uk, const float *__restrict__ q, float *__restrict__ qlat, int H,
                                  int nope, int rope, int R) {
  extern __shared__ float sqn[];
  const int t = blockIdx.x, h = blockIdx.y, Dq = nope + rope, Dc = R + rope;
  const float *qh = q + ((size_t)t * H + h) * Dq;
  for (int i = threadIdx.x; i < nope; i += blockDim.x) sqn[i] = qh[i];
  __syncthreads();
  const float *Wh = W_uk + (size_t)h * nope * R;
  float *out = qlat + ((size_t)t * H + h) * Dc;
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    float acc = 0.f;
    for (int n = 0; n < nope; n++) acc += Wh[(size_t)n * R + r] * sqn[n];
    out[r] = acc;
  }
  for (int i = threadIdx.x; i < rope; i += blockDim.x) out[R + i] = qh[nope + i];
}

// The same with more of the card reading W_uk (8 MiB a layer at 48B: one thread a column on 32
// blocks took 121 us): block (TT tokens, h, 128 columns), its 8 warps splitting the nope rows,
// each lane 4 columns by 16-byte loads, the warps' sums added through shared memory. R % 128 ==
// 0, nope <= 1024 / TT. A batch takes TT = 8 tokens a block, each W_uk load serving all of them
// (one token a block read W_uk from L2 once per token: 153 us a layer for 256 streams at 48B);
// each token's sums in the same order either way.
template <int TT>
__global__ void __launch_bounds__(256) mla_absorb_wide_kernel(const float *__restrict__ W_uk, const float *__restrict__ q,
                                                              float *__restrict__ qlat, int T, int H, int nope, int rope, int R) {
  __shared__ float sqn[1024];
  __shared__ float4 part[8][TT][32];
  const int t0 = blockIdx.x * TT, nt = min(TT, T - t0), h = blockIdx.y, c0 = blockIdx.z * 128, lane = threadIdx.x % 32,
            wid = threadIdx.x / 32;
  const int Dq = nope + rope, Dc = R + rope;
  for (int i = threadIdx.x; i < nt * nope; i += blockDim.x) sqn[i] = q[((size_t)(t0 + i / nope) * H + h) * Dq + i % nope];
  __syncthreads();
  const float *Wh = W_uk + (size_t)h * nope * R + c0 + 4 * lane;
  float4 acc[TT];
#pragma unroll
  for (int k = 0; k < TT; k++) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
  for (int n = wid; n < nope; n += 8) {
    const float4 wv = *reinterpret_cast<const float4 *>(Wh + (size_t)n * R);
#pragma unroll
    for (int k = 0; k < TT; k++)
      if (k < nt) {
        const float qv = sqn[k * nope + n];
        acc[k].x += wv.x * qv, acc[k].y += wv.y * qv, acc[k].z += wv.z * qv, acc[k].w += wv.w * qv;
      }
  }
#pragma unroll
  for (int k = 0; k < TT; k++) part[wid][k][lane] = acc[k];
  __syncthreads();
  for (int k = wid; k < nt; k += 8) {  // warp k adds token k's 8 parts
    float4 r = part[0][k][lane];
    for (int j = 1; j < 8; j++) r.x += part[j][k][lane].x, r.y += part[j][k][lane].y, r.z += part[j][k][lane].z, r.w += part[j][k][lane].w;
    *reinterpret_cast<float4 *>(qlat + ((size_t)(t0 + k) * H + h) * Dc + c0 + 4 * lane) = r;
  }
  if (blockIdx.z == 0)
    for (int i = threadIdx.x; i < nt * rope; i += blockDim.x)
      qlat[((size_t)(t0 + i / rope) * H + h) * Dc + R + i % rope] = q[((size_t)(t0 + i / rope) * H + h) * Dq + nope + i % rope];
}

// the rope part of each (token, head) row, as it is
__global__ void mla_rope_copy_kernel(const float *__restrict__ q, float *__restrict__ qlat, int H, int nope, int rope, int R) {
  const int t = blockIdx.x;
  for (int i = threadIdx.x; i < H * rope; i += blockDim.x)
    qlat[((size_t)t * H + i / rope) * (R + rope) + R + i % rope] = q[((size_t)t * H + i / rope) * (nope + rope) + nope + i % rope];
}

// A batch's heads as one GEMM each (sgemm) from 64 tokens: below, the matvec kernels were as fast
// or faster (kernels-cuda/test/matmul_check.cu on the H200: 32 tokens through W_uv 25.0 us vs
// sgemm's 26.5, 64 tokens 46.6 vs 27.7; W_uk 17.6 vs 17.2 at 64)
constexpr int MLA_SGEMM_T = 64;

void mla_absorb(const float *W_uk, const float *q, float *qlat, int T, int H, int nope, int rope, int R, cudaStream_t st) {
  const long Dq = nope + rope, Dc = R + rope;
  const sgemm_args ga{q, H * Dq, Dq, W_uk, R, 1, (long)nope * R, qlat, H * Dc, Dc, T, R, nope, H};
  if (T >= MLA_SGEMM_T && sgemm_enabled() && sgemm_fits(ga)) {
    sgemm(ga, nullptr, 0, st);
    if (rope > 0) mla_rope_copy_kernel<<<T, 256, 0, st>>>(q, qlat, H, nope, rope, R);
    return;
  }
  // 16-byte rows and outputs: R and the output row (R + rope) multiples of 4, qlat 16-byte aligned
  if (R % 128 == 0 && nope <= 1024 && rope % 4 == 0 && ((uintptr_t)W_uk & 15) == 0 && ((uintptr_t)qlat & 15) == 0) {
    if (T >= 8 && nope <= 1024 / 8)
      mla_absorb_wide_kernel<8><<<dim3((T + 7) / 8, H, R / 128), 256, 0, st>>>(W_uk, q, qlat, T, H, nope, rope, R);
    else
      mla_absorb_wide_kernel<1><<<dim3(T, H, R / 128), 256, 0, st>>>(W_uk, q, qlat, T, H, nope, rope, R);
  } else {
    mla_absorb_kernel<<<dim3(T, H), 128, sizeof(float) * nope, st>>>(W_uk, q, qlat, H, nope, rope, R);
  }
}

// block (TT tokens, h, 8 rows): one warp per output row of W_uv[h], 16-byte loads where R % 128 ==
// 0 (one block a head read its 512 KiB with 8 warps: 35 us a layer at 48B); a batch takes TT = 8
// tokens a block, each row load serving all of them (one a block: 222 us a layer for 256 streams)
template <int TT>
__global__ void mla_up_v_kernel(const float *__restrict__ W_uv, const float *__restrict__ o, float *__restrict__ y, int T, int H, int vh,
                                int R, int vec) {
  const int t0 = blockIdx.x * TT, nt = min(TT, T - t0), h = blockIdx.y, lane = threadIdx.x % 32, row = blockIdx.z * 8 + threadIdx.x / 32;
  if (row >= vh) return;
  const float *wr = W_uv + ((size_t)h * vh + row) * R;
  float acc[TT];
#pragma unroll
  for (int k = 0; k < TT; k++) acc[k] = 0.f;
  if (vec) {
#pragma unroll 4
    for (int i = lane; i < R / 4; i += 32) {
      const float4 a = reinterpret_cast<const float4 *>(wr)[i];
#pragma unroll
      for (int k = 0; k < TT; k++)
        if (k < nt) {
          const float4 b = reinterpret_cast<const float4 *>(o + ((size_t)(t0 + k) * H + h) * R)[i];
          acc[k] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
    }
  } else {
    for (int i = lane; i < R; i += 32)
#pragma unroll
      for (int k = 0; k < TT; k++)
        if (k < nt) acc[k] += wr[i] * o[((size_t)(t0 + k) * H + h) * R + i];
  }
#pragma unroll
  for (int k = 0; k < TT; k++)
    if (k < nt) {
      const float v = warp_sum(acc[k]);
      if (lane == 0) y[((size_t)(t0 + k) * H + h) * vh + row] = v;
    }
}
void mla_up_v(const float *W_uv, const float *o, float *y, int T, int H, int vh, int R, cudaStream_t st) {
  const sgemm_args ga{o, (long)H * R, R, W_uv, 1, R, (long)vh * R, y, (long)H * vh, vh, T, vh, R, H};
  if (T >= MLA_SGEMM_T && sgemm_enabled() && sgemm_fits(ga)) {
    sgemm(ga, nullptr, 0, st);
    return;
  }
  const int vec = R % 4 == 0 && (((uintptr_t)W_uv | (uintptr_t)o) & 15) == 0;
  if (T >= 8)
    mla_up_v_kernel<8><<<dim3((T + 7) / 8, H, (vh + 7) / 8), 256, 0, st>>>(W_uv, o, y, T, H, vh, R, vec);
  else
    mla_up_v_kernel<1><<<dim3(T, H, (vh + 7) / 8), 256, 0, st>>>(W_uv, o, y, T, H, vh, R, vec);
}

}  // namespace kle_ops

extern "C" int kle_cuda_matmul(const float *W, const float *X, float *Y, int T, int N, int Kd, void *stream) {
  if (!W || !X || !Y || T <= 0 || N <= 0 || Kd <= 0) return KLE_EINVAL;
  kle_ops::matmul(W, X, Y, T, N, Kd, (cudaStream_t)stream);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EDEVICE;
}
