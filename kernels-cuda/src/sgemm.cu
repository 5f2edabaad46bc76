// sgemm.cu: the f32 matmuls of a batched step on the CUDA cores. A 16-bit model keeps a few
// matrices in f32 (the MoE router, whose top-k must not move with BF16 rounding; MLA's W_uk and
// W_uv, cut from kv_b_proj per head), and at 256 streams each was a matvec kernel run 32 times
// over: the router (2304 -> 256) 60 us a layer, W_uv 181 us and W_uk 65 us (about 5-15 TFLOP/s,
// each warp walking one output row over a few tokens). Here they are one GEMM with 64 x 64 tiles
// of C, each of 256 threads a 4 x 4 block of it, 16-wide k-slices double-buffered in shared
// memory (the next slice's global loads in registers while the current one is multiplied), and
// two 16-byte shared loads a k for 16 FMAs. The heads of W_uk / W_uv are the batch (blockIdx.z);
// a product of few tiles (the router: 16) is split along k into partial products that a second
// kernel adds in order, so every output is the same whatever the blocks' timing.
//
// Every output is a plain f32 sum over k in order within a split (the CPU engine's products are
// the same sums in another order): no precision is traded for speed here.
#include <cuda_runtime.h>
#include <stdlib.h>

#include "ops.cuh"
#include "wstream.cuh"

namespace kle_ops {

namespace {

constexpr int GM = 64, GN = 64, GK = 16, GPAD = 4;

__device__ __forceinline__ float4 ld4(const float *p) { return *reinterpret_cast<const float4 *>(p); }

// B_KC: B is contiguous along k (b_k == 1, an nn.Linear weight read transposed), else along n
// (b_n == 1). S: the splits along k (blockIdx.z = batch index * S + split); S > 1 writes the
// split's partial product to part + blockIdx.z * M * N, rows of N.
template <bool B_KC>
__global__ void __launch_bounds__(256) sgemm_kernel(sgemm_args a, int S, int kper, float *__restrict__ part) {
  __shared__ __align__(16) float As[2][GK][GM + GPAD], Bs[2][GK][GN + GPAD];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * GM, n0 = blockIdx.x * GN, b = blockIdx.z / S, s = blockIdx.z % S;
  const int k0 = s * kper, k1 = min(a.K, k0 + kper);
  // A's loads: row tid / 4 of the tile, k columns (tid % 4) * 4 .. + 3
  const int ar = tid / 4, ac = (tid % 4) * 4;
  const bool aok = m0 + ar < a.M;
  const float *ap = a.A + (size_t)b * a.a_b + (size_t)(aok ? m0 + ar : 0) * a.a_m + ac;
  // B's loads: B_KC as A's (tile column tid / 4, k (tid % 4) * 4); else k row tid / 16, columns (tid % 16) * 4
  const int br = B_KC ? tid / 4 : tid / 16, bc = B_KC ? (tid % 4) * 4 : (tid % 16) * 4;
  const bool bok = B_KC ? n0 + br < a.N : n0 + bc < a.N;  // N % 4 == 0 without B_KC: all four or none
  const float *bp = a.B + (size_t)b * a.b_b + (B_KC ? (size_t)(bok ? n0 + br : 0) * a.b_n + bc : (size_t)br * a.b_k + (bok ? n0 + bc : 0));
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  float4 ra, rb;
  auto gload = [&](int k) {
    ra = aok ? ld4(ap + k) : zero;
    rb = bok ? ld4(bp + (B_KC ? (size_t)k : (size_t)k * a.b_k)) : zero;
  };
  auto sstore = [&](int buf) {
    As[buf][ac][ar] = ra.x, As[buf][ac + 1][ar] = ra.y, As[buf][ac + 2][ar] = ra.z, As[buf][ac + 3][ar] = ra.w;
    if (B_KC) Bs[buf][bc][br] = rb.x, Bs[buf][bc + 1][br] = rb.y, Bs[buf][bc + 2][br] = rb.z, Bs[buf][bc + 3][br] = rb.w;
    else *reinterpret_cast<float4 *>(&Bs[buf][br][bc]) = rb;
  };
  float acc[4][4] = {};
  if (k0 < k1) {
    gload(k0);
    sstore(0);
  }
  __syncthreads();
  for (int k = k0, buf = 0; k < k1; k += GK, buf ^= 1) {
    const bool more = k + GK < k1;
    if (more) gload(k + GK);
#pragma unroll
    for (int kk = 0; kk < GK; kk++) {
      const float4 x = ld4(&As[buf][kk][ty * 4]), y = ld4(&Bs[buf][kk][tx * 4]);
      const float xa[4] = {x.x, x.y, x.z, x.w}, ya[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(xa[i], ya[j], acc[i][j]);
    }
    // the other buffer was last read before the previous iteration's barrier
    if (more) sstore(buf ^ 1);
    __syncthreads();
  }
  const int n = n0 + tx * 4;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int m = m0 + ty * 4 + i;
    if (m >= a.M) continue;
    float *row = S > 1 ? part + (size_t)blockIdx.z * a.M * a.N + (size_t)m * a.N : a.C + (size_t)b * a.c_b + (size_t)m * a.c_m;
#pragma unroll
    for (int j = 0; j < 4; j++)
      if (n + j < a.N) row[n + j] = acc[i][j];
  }
}

// C[b][m][n] = the S partial products of (b, m, n) added in order of the split
__global__ void sgemm_sum_kernel(const float *__restrict__ part, sgemm_args a, int S) {
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x, mn = (long)a.M * a.N;
  if (i >= mn * a.batch) return;
  const long b = i / mn, r = i % mn;
  const float *p = part + (size_t)b * S * mn + r;
  float v = p[0];
  for (int z = 1; z < S; z++) v += p[(size_t)z * mn];
  a.C[(size_t)b * a.c_b + (size_t)(r / a.N) * a.c_m + r % a.N] = v;
}

int splits(const sgemm_args &a) {
  const long tiles = (long)blocks_for(a.M, GM) * blocks_for(a.N, GN) * a.batch;
  const int nsm = kle_tc::sm_count(), slices = a.K / GK;
  if (nsm <= 0 || tiles >= 2L * nsm) return 1;
  // about two blocks an SM, each split at least 8 slices (the pipeline's ramp)
  int s = (int)((2L * nsm + tiles - 1) / tiles);
  if (s > slices / 8) s = slices / 8;
  return s > 1 ? s : 1;
}

bool aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace

// KLE_CUDA_SGEMM=0: the matvec kernels this replaced (a before/after in one run)
bool sgemm_enabled() {
  static const bool v = [] {
    const char *e = getenv("KLE_CUDA_SGEMM");
    return !(e && e[0] == '0');
  }();
  return v;
}

bool sgemm_fits(const sgemm_args &a) {
  if (a.M <= 0 || a.N <= 0 || a.K <= 0 || a.batch <= 0 || a.K % GK) return false;
  if (!aligned(a.A) || !aligned(a.B) || a.a_m % 4 || a.a_b % 4 || a.b_b % 4) return false;
  if (a.b_k == 1) return a.b_n % 4 == 0;
  return a.b_n == 1 && a.b_k % 4 == 0 && a.N % 4 == 0;
}

long sgemm_ws_floats(const sgemm_args &a) {
  const int S = splits(a);
  return S > 1 ? (long)S * a.M * a.N * a.batch : 0;
}

void sgemm(const sgemm_args &a, float *ws, long ws_floats, cudaStream_t st) {
  int S = splits(a);
  if (S > 1 && (!ws || ws_floats < (long)S * a.M * a.N * a.batch)) S = 1;
  const int slices = a.K / GK, per = blocks_for(slices, S);
  S = blocks_for(slices, per);  // splits that have slices
  const dim3 grid(blocks_for(a.N, GN), blocks_for(a.M, GM), a.batch * S);
  if (a.b_k == 1) sgemm_kernel<true><<<grid, 256, 0, st>>>(a, S, per * GK, ws);
  else sgemm_kernel<false><<<grid, 256, 0, st>>>(a, S, per * GK, ws);
  if (S > 1) sgemm_sum_kernel<<<blocks_for((long)a.M * a.N * a.batch, 256), 256, 0, st>>>(ws, a, S);
}

}  // namespace kle_ops
