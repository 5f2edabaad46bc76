// gemm16.cu: matmuls over 16-bit weights (BF16, F16) kept in the precision of the file, with f32
// activations and f32 results (ops.cuh).
//
// Decode (a few tokens) is a matvec bound by the weight bytes: 16-byte streaming loads (8 weights
// each, not kept in L1). One token: a warp per weight row on the CUDA cores. Two to eight tokens
// (a batched step) of BF16 weights: on tensor cores, the tokens as mma's columns (gemv_tc_kernel).
//
// Prefill multiplies on tensor cores: mma.sync m16n8k16 with BF16 operands and f32 accumulation.
// The f32 activations are split into two BF16 terms, x = hi + lo with hi = bf16(x) and
// lo = bf16(x - hi), and each product is w*hi + w*lo: the weight is exact in BF16, and the split
// leaves at most 2^-17 of |x| behind, so the result stays at f32 accuracy (the CPU engine's,
// within the parity test's bound) where plain BF16 activations would give 2^-9. Fragment layouts
// (PTX ISA, m16n8k16 .bf16), g = lane / 4, t = lane % 4; each register holds two k-neighbours:
//   A 16x16 row-major: a0 (g, 2t)  a1 (g+8, 2t)  a2 (g, 2t+8)  a3 (g+8, 2t+8)
//   B 16x8 (k by n):   b0 (k=2t, n=g)  b1 (k=2t+8, n=g)
//   C 16x8:            c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
// F16 weights take a CUDA-core tiled GEMM instead (f16 activations would overflow where f32 and
// BF16 do not).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "ops.cuh"
#include "tc.cuh"
#include "wstream.cuh"

namespace kle_ops {

using kle_tc::mma_bf16;
using kle_tc::sm_count;
namespace cg = cooperative_groups;

namespace {

// 16-bit weights to f32: BF16 is f32's top half; F16 goes through the hardware conversion
__device__ __forceinline__ float w16(uint16_t h, int is_bf16) {
  return is_bf16 ? __uint_as_float((uint32_t)h << 16) : __half2float(__ushort_as_half(h));
}
// eight weights from one 16-byte load
__device__ __forceinline__ void unpack8(uint4 u, int is_bf16, float (&w)[8]) {
  const uint32_t p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    if (is_bf16) {
      w[2 * i] = __uint_as_float(p[i] << 16);
      w[2 * i + 1] = __uint_as_float(p[i] & 0xffff0000u);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&p[i]));
      w[2 * i] = f.x;
      w[2 * i + 1] = f.y;
    }
  }
}

// one warp per row w of W [N, Kd]: y[t] = w . x[t] for the first nt <= TT tokens (the others
// stay 0 and nothing of theirs is read); vec: 16-byte rows (Kd % 8 == 0)
template <int TT>
__device__ __forceinline__ void row_dot16(const uint16_t *__restrict__ w, const float *__restrict__ X, size_t x_stride, int nt, int Kd,
                                          int is_bf16, int vec, int lane, float (&acc)[TT]) {
#pragma unroll
  for (int t = 0; t < TT; t++) acc[t] = 0.f;
  if (vec) {
    const uint4 *w8 = reinterpret_cast<const uint4 *>(w);
#pragma unroll 4
    for (int i = lane; i < Kd / 8; i += 32) {
      float wf[8];
      unpack8(ld_stream(w8 + i), is_bf16, wf);
#pragma unroll
      for (int t = 0; t < TT; t++) {
        if (t >= nt) break;
        const float4 a = reinterpret_cast<const float4 *>(X + t * x_stride)[2 * i];
        const float4 b = reinterpret_cast<const float4 *>(X + t * x_stride)[2 * i + 1];
        acc[t] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
      }
    }
  } else {
    for (int i = lane; i < Kd; i += 32) {
      const float wi = w16(w[i], is_bf16);
#pragma unroll
      for (int t = 0; t < TT; t++)
        if (t < nt) acc[t] += wi * X[t * x_stride + i];
    }
  }
#pragma unroll
  for (int t = 0; t < TT; t++) acc[t] = warp_sum(acc[t]);
}

// A warp's share of a row: w . x over the 16-byte weight chunks i = i0 + lane, i0 + lane + 32, ...
// < i1 (8 weights and 8 activations each), this lane's partial sum
__device__ __forceinline__ float dot16_span(const uint4 *__restrict__ w8, const float4 *__restrict__ x4, int i0, int i1, int lane, int is_bf16) {
  float acc = 0.f;
#pragma unroll 4
  for (int i = i0 + lane; i < i1; i += 32) {
    float wf[8];
    unpack8(ld_stream(w8 + i), is_bf16, wf);
    const float4 a = x4[2 * i], b = x4[2 * i + 1];
    acc += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
  }
  return acc;
}

// Two rows' dots at once, their loads in flight together: d0 += w0 . x0, d1 += w1 . x1 over the
// 16-byte weight chunks i = lane, lane + 32, ... < n8 (8 weights and 8 activations each; SAME_X:
// x1 is x0, loaded once). The experts' gate/up and down kernels.
template <bool SAME_X, int UNROLL>
__device__ __forceinline__ void dot2_rows16(const uint4 *__restrict__ w0, const uint4 *__restrict__ w1, const float4 *__restrict__ x0,
                                            const float4 *__restrict__ x1, int n8, int lane, int is_bf16, float &d0, float &d1) {
#pragma unroll UNROLL
  for (int i = lane; i < n8; i += 32) {
    const uint4 u0 = ld_stream(w0 + i), u1 = ld_stream(w1 + i);
    float f0[8], f1[8];
    unpack8(u0, is_bf16, f0);
    unpack8(u1, is_bf16, f1);
    const float4 a0 = x0[2 * i], b0 = x0[2 * i + 1];
    const float4 a1 = SAME_X ? a0 : x1[2 * i], b1 = SAME_X ? b0 : x1[2 * i + 1];
    d0 += f0[0] * a0.x + f0[1] * a0.y + f0[2] * a0.z + f0[3] * a0.w + f0[4] * b0.x + f0[5] * b0.y + f0[6] * b0.z + f0[7] * b0.w;
    d1 += f1[0] * a1.x + f1[1] * a1.y + f1[2] * a1.z + f1[3] * a1.w + f1[4] * b1.x + f1[5] * b1.y + f1[6] * b1.z + f1[7] * b1.w;
  }
}

template <int TT>
__global__ void __launch_bounds__(256) gemv16_kernel(const uint16_t *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y,
                                                     int nt, int N, int Kd, int is_bf16, int vec) {
  // a programmatic dependent launch after this one (the KDA layer step) may start now
  pdl_trigger();
  const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  prefetch_l2(W + (size_t)row * Kd, 2 * (size_t)Kd, lane);  // the weights, while the kernel before finishes
  pdl_wait();
  float acc[TT];
  row_dot16<TT>(W + (size_t)row * Kd, X, (size_t)Kd, nt, Kd, is_bf16, vec, lane, acc);
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < TT; t++)
      if (t < nt) Y[(size_t)t * N + row] = acc[t];
}

// Few rows (N < 4096, one token): 4 warps share a row, each a quarter of its columns, so that
// a row's loads are all in flight at once (a warp alone walked a 2304-column row in 3 dependent
// rounds: 8.7 us for a 128-row matrix that 3 TB/s reads in 0.2)
__global__ void __launch_bounds__(256) gemv16_split_kernel(const uint16_t *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y,
                                                           int N, int Kd, int is_bf16) {
  pdl_trigger();
  __shared__ float part[8];
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, row = blockIdx.x * 2 + wid / 4, q = wid % 4;
  const int n8 = Kd / 8, per = (n8 + 3) / 4, i0 = q * per, i1 = min(n8, i0 + per);
  const uint4 *w8 = reinterpret_cast<const uint4 *>(W + (size_t)row * Kd);
  if (row < N && i1 > i0) prefetch_l2(w8 + i0, 16 * (size_t)(i1 - i0), lane);
  pdl_wait();
  float acc = row < N ? dot16_span(w8, reinterpret_cast<const float4 *>(X), i0, i1, lane, is_bf16) : 0.f;
  acc = warp_sum(acc);
  if (lane == 0) part[wid] = acc;
  __syncthreads();
  if (threadIdx.x % 128 == 0 && row < N) {
    const int w0 = wid;  // the row's first warp
    Y[row] = part[w0] + part[w0 + 1] + part[w0 + 2] + part[w0 + 3];
  }
}

// A few tokens (nt <= 8) through a BF16 matrix on tensor cores: Y[t, n] = W[n] . X[t]. One warp
// takes 16 rows, the tokens are mma's 8 columns, and the weights go from memory straight into A
// fragments with no shared memory: a lane loads 16 bytes (8 k-neighbours) of each of its two
// rows per 32-wide window, and since a dot product does not care in what order its k run, those
// 8 values fill the lane's four k slots of two m16n8k16 products (slots 2t, 2t+1, 2t+8, 2t+9 of
// the first get window columns 8t .. 8t+3, of the second 8t+4 .. 8t+7), with the activations
// loaded in the same order (a float4 each). The CUDA-core kernel above multiplied every weight by
// 8 tokens' f32 activations read from L1 for each row, 16 bytes of activations for every 2 bytes
// of weights: a 4096 x 2304 matrix over 8 tokens took 28.6 us where its bytes take 4.8.
// ks warps share a row tile (each a contiguous span of windows; their sums added in order
// through shared memory) so that a matrix of few rows still has enough loads in flight.
// LO as gemm_bf16_tc_kernel's: f32 activations as a BF16 high part and remainder (two products),
// or rounded to BF16 (one).
template <bool LO>
__global__ void __launch_bounds__(256) gemv_tc_kernel(const uint16_t *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y,
                                                      int nt, int N, int Kd, int ks) {
  pdl_trigger();
  __shared__ float part[8][32][4];
  const int wid = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int r0 = (blockIdx.x * (8 / ks) + wid / ks) * 16, q = wid % ks;
  const int nwin = Kd / 32, per = (nwin + ks - 1) / ks, w0 = min(nwin, q * per), w1 = min(nwin, w0 + per);
  const bool ok0 = r0 + g < N, ok1 = r0 + g + 8 < N, xon = g < nt;
  const uint4 *wa = reinterpret_cast<const uint4 *>(W + (size_t)(ok0 ? r0 + g : 0) * Kd) + t4;
  const uint4 *wb = reinterpret_cast<const uint4 *>(W + (size_t)(ok1 ? r0 + g + 8 : 0) * Kd) + t4;
  // the first loads of this warp's 16 rows into L2 while the kernel before finishes (its whole
  // span, at the LM head 16 rows of 4.6 KB a warp, pushed the rows out of L2 before their use:
  // 355 us for what the bytes take in 195)
  if (r0 < N && w1 > w0) {
    const int lines = min(2, (int)(((size_t)(w1 - w0) * 64 + 127) / 128));
    for (int i = lane; i < 16 * lines; i += 32) {
      const int r = r0 + i / lines;
      if (r < N) prefetch_line(reinterpret_cast<const char *>(W + (size_t)r * Kd + (size_t)w0 * 32) + (size_t)(i % lines) * 128);
    }
  }
  pdl_wait();
  const float4 *xa = reinterpret_cast<const float4 *>(X + (size_t)(xon ? g : 0) * Kd) + 2 * t4;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  constexpr int U = 4;  // windows whose loads are in flight together (8 measured the same)
  for (int w = w0; w < w1; w += U) {
    uint4 ua[U], ub[U];
    float4 x0[U], x1[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const bool in = w + u < w1;
      ua[u] = in && ok0 ? ld_stream(wa + (size_t)(w + u) * 4) : make_uint4(0, 0, 0, 0);
      ub[u] = in && ok1 ? ld_stream(wb + (size_t)(w + u) * 4) : make_uint4(0, 0, 0, 0);
      x0[u] = in && xon ? xa[(size_t)(w + u) * 8] : make_float4(0.f, 0.f, 0.f, 0.f);
      x1[u] = in && xon ? xa[(size_t)(w + u) * 8 + 1] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const uint32_t a0[4] = {ua[u].x, ub[u].x, ua[u].y, ub[u].y}, a1[4] = {ua[u].z, ub[u].z, ua[u].w, ub[u].w};
      if constexpr (LO) {
        uint32_t h0, l0, h1, l1, h2, l2, h3, l3;
        kle_tc::split_bf16_pair(x0[u].x, x0[u].y, h0, l0);
        kle_tc::split_bf16_pair(x0[u].z, x0[u].w, h1, l1);
        kle_tc::split_bf16_pair(x1[u].x, x1[u].y, h2, l2);
        kle_tc::split_bf16_pair(x1[u].z, x1[u].w, h3, l3);
        mma_bf16(c, a0, l0, l1);  // the small terms first, as the GEMM
        mma_bf16(c, a1, l2, l3);
        mma_bf16(c, a0, h0, h1);
        mma_bf16(c, a1, h2, h3);
      } else {
        mma_bf16(c, a0, kle_tc::bf16_pair(x0[u].x, x0[u].y), kle_tc::bf16_pair(x0[u].z, x0[u].w));
        mma_bf16(c, a1, kle_tc::bf16_pair(x1[u].x, x1[u].y), kle_tc::bf16_pair(x1[u].z, x1[u].w));
      }
    }
  }
  // c: rows g (c0, c1) and g + 8 (c2, c3), tokens 2 t4 and 2 t4 + 1
  if (ks > 1) {
#pragma unroll
    for (int i = 0; i < 4; i++) part[wid][lane][i] = c[i];
    __syncthreads();
    if (q) return;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float v = part[wid][lane][i];
      for (int j = 1; j < ks; j++) v += part[wid + j][lane][i];
      c[i] = v;
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int row = r0 + g + (i / 2) * 8, t = 2 * t4 + (i % 2);
    if (row < N && t < nt) Y[(size_t)t * N + row] = c[i];
  }
}

// warps a row tile for gemv_tc_kernel: the fewest (1, 2, 4, 8) that give the card about 16 warps
// an SM, each with at least two windows
int gemv_tc_split(int N, int Kd) {
  const long tiles = blocks_for(N, 16), want = 16L * (sm_count() > 0 ? sm_count() : 132);
  int ks = 1;
  while (ks < 8 && tiles * ks < want && Kd / 32 / (2 * ks) >= 2) ks *= 2;
  return ks;
}

// CUDA-core tiles for F16 weights and shapes the tensor-core kernel does not take
#define CBM 64
#define CBN 64
#define CBK 16
__global__ void __launch_bounds__(256) gemm16_cc_kernel(const uint16_t *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y,
                                                        int T, int N, int Kd, int is_bf16) {
  __shared__ float As[CBK][CBM + 4], Bs[CBK][CBN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * CBM, n0 = blockIdx.x * CBN;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < Kd; k0 += CBK) {
    for (int i = tid; i < CBM * CBK; i += 256) {
      const int r = i / CBK, kk = i % CBK, k = k0 + kk;
      As[kk][r] = (m0 + r < T && k < Kd) ? X[(size_t)(m0 + r) * Kd + k] : 0.f;
      Bs[kk][r] = (n0 + r < N && k < Kd) ? w16(W[(size_t)(n0 + r) * Kd + k], is_bf16) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < CBK; kk++) {
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

// ---------------------------------------------------------------- tensor cores (BF16)

// x as bf16 hi + lo, hi rounded to nearest (its error is then at most half a bf16 step)
__device__ __forceinline__ void split_bf16(float x, uint16_t &hi, uint16_t &lo) {
  uint32_t h, l;
  kle_tc::split_bf16_bits(x, h, l);
  hi = (uint16_t)h;
  lo = (uint16_t)l;
}

// Y[T, N] = X[T, Kd] W[N, Kd]^T; Kd % TBK == 0. 256 threads, 2 x 4 warps of 32 x 32 over a
// 64 x 128 tile, two stages: while the warps multiply one k-slice, the next slice's weights come
// in by cp.async and its activations into registers, split into BF16 terms as they are stored.
// (The first version, 128 threads on 64 x 64 with a load, wait, multiply, wait loop, ran a
// 4096 x 2304 matrix over 64 tokens at 6.7 TFLOP/s, waiting on every k-slice's loads.)
//
// Grouped (a batch's MoE pairs, moe_group's offs and order): blockIdx.z is the expert e, its
// tile's rows are e's pairs, X's row of pair p is p / x_div and Y's is p, W is e's `which` matrix;
// the rows a thread loads are looked up once. Blocks past an expert's pairs return at once.
// With map (moe_group's tile map), blockIdx.y is the y-th row tile of all the experts' and map
// says whose: a batched step's 256 streams give about 8 pairs an expert, one 16-row tile each,
// where a grid of every expert's largest possible count of tiles (16) left 15 in 16 blocks with
// nothing to do. which == GATE_UP: the tile's first 64 weight rows are the gate's, the other 64 the
// up matrix's same rows, and Y gets silu(gate) * up (the SwiGLU of ops.cu, in the epilogue).
constexpr int GATE_UP = MOE_GATE_UP;
struct tc_group {
  const uint16_t *const *Wtab;
  const int32_t *offs, *order, *map;
  int which, x_div;
};

//
// Split along Kd (not grouped; part not NULL): blockIdx.z takes k-slices z kper .. z kper + kper - 1
// and writes its partial product to part + z T N, which splitk_sum adds in order of z. A few
// tokens over a matrix of few 128-row tiles leave most SMs idle otherwise (32 tokens through a
// 4096 x 2304 matrix: 32 blocks, 69 us for what the memory reads in 5).
//
// TM, the tile's rows: TBM (64), or 16 (1 x 8 warps of 16 x 16) for experts of a few pairs each,
// whose 64-row tiles are mostly padding (256 streams at 48B: 8 pairs an expert, 2.2 ms a layer).
// WS, the weight slices in flight, and BK, their width: a 16-row tile does little arithmetic per
// slice, so the kernel is the weights' latency and wants more bytes in the air than two 32-wide
// stages give (four 32-wide or two 64-wide fit 48 KB of static shared memory at 16 rows; 64-row
// tiles keep two 32-wide). X stays double-buffered.
//
// LO: the activations' remainder term as well (f32 accuracy); without it, the activations
// rounded to BF16 and one product per multiply (kle_model_precision's BF16: half the tensor-core
// work, the rounding of x vLLM's BF16 models have).
template <bool GROUPED, int TM = TBM, int WS = (TM == 16 ? 4 : 2), int BK = TBK, bool LO = true>
__global__ void __launch_bounds__(256) gemm_bf16_tc_kernel(const uint16_t *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y,
                                                           int T, int N, int Kd, tc_group grp, int kper, float *__restrict__ part) {
  static_assert(TM == 64 || TM == 16, "tiles of 64 or 16 rows");
  static_assert(WS >= 2 && WS <= 4, "two to four weight stages");
  static_assert(BK == 32 || BK == 64, "k-slices of 32 or 64");
  constexpr int WM = TM / 32 > 0 ? TM / 32 : 1;  // warps along the rows
  constexpr int MI = TM / (16 * WM);              // 16-row fragments a warp
  constexpr int NW = 8 / WM;                      // warps along the columns
  constexpr int NI = TBN / (8 * NW);              // 8-column fragments a warp
  constexpr int XV = TM * BK / 4;                // float4 of a k-slice of X
  constexpr int XJ = (XV + 255) / 256;            // ... a thread
  // dynamic (tc_smem_bytes): three 64-wide weight stages of a 64-row tile pass the 48 KB of static memory
  extern __shared__ __align__(16) uint16_t tc_smem[];
  auto Xh = reinterpret_cast<uint16_t (*)[TM][BK + TPAD]>(tc_smem);
  auto Xl = reinterpret_cast<uint16_t (*)[LO ? TM : 1][BK + TPAD]>(tc_smem + 2 * TM * (BK + TPAD));
  auto Ws = reinterpret_cast<uint16_t (*)[TBN][BK + TPAD]>(tc_smem + (2 * TM + (LO ? 2 * TM : 1)) * (BK + TPAD));
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int n0 = blockIdx.x * TBN, wm = (warp / NW) * (16 * MI), wn = (warp % NW) * (8 * NI);
  int m0 = blockIdx.y * TM, base = 0;
  const uint16_t *Wup = nullptr;  // GATE_UP's second matrix
  const bool gate_up = GROUPED && grp.which == GATE_UP;
  if (GROUPED) {
    int e = blockIdx.z;
    if (grp.map) {
      const int v = grp.map[blockIdx.y];
      if (v < 0) return;  // past the last expert's tiles
      e = v & 0xffff;
      m0 = (v >> 16) * TM;
    }
    base = grp.offs[e];
    T = grp.offs[e + 1] - base;  // this expert's pairs
    if (m0 >= T) return;
    W = grp.Wtab[(size_t)e * 3 + (gate_up ? 0 : grp.which)];
    if (gate_up) Wup = grp.Wtab[(size_t)e * 3 + 1];
  }
  // the X rows this thread loads (XJ float4 a slice), fixed for the whole k loop
  const float *xrow[XJ];
#pragma unroll
  for (int j = 0; j < XJ; j++) {
    const int r = (tid + j * 256) / (BK / 4);
    const int m = tid + j * 256 < XV && m0 + r < T ? m0 + r : -1;
    xrow[j] = m < 0 ? nullptr : X + (size_t)(GROUPED ? grp.order[base + m] / grp.x_div : m) * Kd;
  }
  const int kb = GROUPED || !part ? 0 : blockIdx.z * kper;  // the first k-slice of this block
  const int nk = GROUPED || !part ? Kd / BK : min(Kd / BK - kb, kper);
  if (!GROUPED && part) Y = part + (size_t)blockIdx.z * T * N;
  float acc[MI][NI][4] = {};
  float4 xr[XJ];  // this thread's float4 of the next X slice: rows r = i / 8, columns (i % 8) * 4
  auto load_w = [&](int k, int s) {
#pragma unroll
    for (int j = 0; j < TBN * BK / 8 / 256; j++) {
      const int i = tid + j * 256, r = i / (BK / 8), c = (i % (BK / 8)) * 8;
      // GATE_UP: rows r and r + 64 are the gate's and the up matrix's row n0 / 2 + r
      const int row = gate_up ? n0 / 2 + r % 64 : n0 + r;
      const bool ok = row < N;
      const uint16_t *src = gate_up && r >= 64 ? Wup : W;
      kle_tc::cp_async16_zfill(&Ws[s][r][c], src + (size_t)(ok ? row : 0) * Kd + (kb + k) * BK + c, ok);
    }
    kle_tc::cp_async_commit();
  };
  auto load_x = [&](int k) {
#pragma unroll
    for (int j = 0; j < XJ; j++) {
      const int c = ((tid + j * 256) % (BK / 4)) * 4;
      xr[j] = xrow[j] ? *reinterpret_cast<const float4 *>(xrow[j] + (kb + k) * BK + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  auto store_x = [&](int s) {
#pragma unroll
    for (int j = 0; j < XJ; j++) {
      const int i = tid + j * 256, r = i / (BK / 4), c = (i % (BK / 4)) * 4;
      if (i >= XV) break;
      const float f[4] = {xr[j].x, xr[j].y, xr[j].z, xr[j].w};
#pragma unroll
      for (int q = 0; q < 4; q++) {
        if constexpr (LO) split_bf16(f[q], Xh[s][r][c + q], Xl[s][r][c + q]);
        else Xh[s][r][c + q] = __bfloat16_as_ushort(__float2bfloat16_rn(f[q]));
      }
    }
  };
  // slices 0 .. WS - 2 in flight; one commit group a slice (empty past the end), so waiting
  // until WS - 2 groups are pending means slice k has landed
#pragma unroll
  for (int j = 0; j < WS - 1; j++) {
    if (j < nk) load_w(j, j);
    else kle_tc::cp_async_commit();
  }
  load_x(0);
  store_x(0);
  for (int k = 0; k < nk; k++) {
    const int s = k & 1, sw = k % WS;
    kle_tc::cp_async_wait<WS - 2>();
    // every warp is past slice k - 1: its weight stage and the other X stage are free
    __syncthreads();
    if (k + WS - 1 < nk) load_w(k + WS - 1, (k + WS - 1) % WS);
    else kle_tc::cp_async_commit();
    if (k + 1 < nk) load_x(k + 1);
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t ah[MI][4], al[MI][4], b[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; mi++) {
        const int r = wm + mi * 16 + g;
        ah[mi][0] = *reinterpret_cast<const uint32_t *>(&Xh[s][r][kk + 2 * t4]);
        ah[mi][1] = *reinterpret_cast<const uint32_t *>(&Xh[s][r + 8][kk + 2 * t4]);
        ah[mi][2] = *reinterpret_cast<const uint32_t *>(&Xh[s][r][kk + 2 * t4 + 8]);
        ah[mi][3] = *reinterpret_cast<const uint32_t *>(&Xh[s][r + 8][kk + 2 * t4 + 8]);
        if constexpr (LO) {
          al[mi][0] = *reinterpret_cast<const uint32_t *>(&Xl[s][r][kk + 2 * t4]);
          al[mi][1] = *reinterpret_cast<const uint32_t *>(&Xl[s][r + 8][kk + 2 * t4]);
          al[mi][2] = *reinterpret_cast<const uint32_t *>(&Xl[s][r][kk + 2 * t4 + 8]);
          al[mi][3] = *reinterpret_cast<const uint32_t *>(&Xl[s][r + 8][kk + 2 * t4 + 8]);
        }
      }
#pragma unroll
      for (int ni = 0; ni < NI; ni++) {
        const int n = wn + ni * 8 + g;
        b[ni][0] = *reinterpret_cast<const uint32_t *>(&Ws[sw][n][kk + 2 * t4]);
        b[ni][1] = *reinterpret_cast<const uint32_t *>(&Ws[sw][n][kk + 2 * t4 + 8]);
      }
      // the small terms first, into accumulators that do not depend on each other back to back
      if constexpr (LO)
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
          for (int ni = 0; ni < NI; ni++) mma_bf16(acc[mi][ni], al[mi], b[ni][0], b[ni][1]);
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++) mma_bf16(acc[mi][ni], ah[mi], b[ni][0], b[ni][1]);
    }
    if (k + 1 < nk) store_x(s ^ 1);  // stage s ^ 1 was last read in slice k - 1: every warp is past it
  }
  kle_tc::cp_async_wait<0>();  // nothing left in flight into a block that ends
  if (gate_up) {
    // the up products through shared memory to the threads holding the same rows' gate products
    __syncthreads();  // every warp is done with the stages
    auto ups = reinterpret_cast<float (*)[64 + 4]>(tc_smem);
    kle_tc::each_c_pair<MI, NI>(lane, [&](int mi, int ni, int h, int r, int c) {
      const int ml = wm + r, nl = wn + c;
      if (nl >= 64) ups[ml][nl - 64] = acc[mi][ni][2 * h], ups[ml][nl - 63] = acc[mi][ni][2 * h + 1];
    });
    __syncthreads();
    kle_tc::each_c_pair<MI, NI>(lane, [&](int mi, int ni, int h, int r, int c) {
      const int ml = wm + r, nl = wn + c, m = m0 + ml, n = n0 / 2 + nl;
      if (nl >= 64 || m >= T) return;
      float *yr = Y + (size_t)grp.order[base + m] * N;
#pragma unroll
      for (int q = 0; q < 2; q++) {
        const float gv = acc[mi][ni][2 * h + q];
        if (n + q < N) yr[n + q] = gv / (1.0f + expf(-gv)) * ups[ml][nl + q];
      }
    });
    return;
  }
  kle_tc::store_c_tile<MI, NI, GROUPED>(lane, acc, Y, N, T, m0 + wm, n0 + wn, grp.order, base);
}

// gemm_bf16_tc_kernel's shared memory: X's two stages (and its remainders' with LO), WS of W
template <int TM, int WS, int BK, bool LO>
constexpr size_t tc_smem_bytes() {
  return sizeof(uint16_t) * (size_t)(BK + TPAD) * (2 * TM + (LO ? 2 * TM : 1) + WS * TBN);
}

template <bool GROUPED, int TM, int WS, int BK, bool LO>
void launch_tc(dim3 grid, cudaStream_t st, const uint16_t *W, const float *X, float *Y, int T, int N, int Kd, tc_group grp, int kper,
               float *part) {
  constexpr size_t smem = tc_smem_bytes<TM, WS, BK, LO>();
  static_assert(sizeof(float) * TM * (64 + 4) <= smem, "GATE_UP's up products fit the stages");
  auto kern = gemm_bf16_tc_kernel<GROUPED, TM, WS, BK, LO>;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  kern<<<grid, 256, smem, st>>>(W, X, Y, T, N, Kd, grp, kper, part);
}

// A batched step's matmul of 128 tokens or more in BF16 precision, both operands BF16 on
// cp.async and ldmatrix. gemm_bf16_tc_kernel's 32 x 32 warp tiles read three shared-memory bytes
// for every mma's worth of operands and ran at 110-165 TFLOP/s whether the activations came
// through registers or by cp.async as f32 (rounded as each warp read them: measured, not kept),
// so here the activations are rounded to BF16 once, before the product (x_to_bf16_kernel, into
// the matmul's workspace), and the block is 128 x 128 with 8 warps of 64 x 32: per 16-wide k-step
// a warp loads 4 + 2 fragments by ldmatrix for 16 mma. Three 64-wide stages: 108 KB of shared
// memory, two blocks an SM. (f32-accurate products stay on gemm_bf16_tc_kernel: a variant with
// the remainder term as a second tile, 162 KB and one block an SM, lost on the split shapes,
// 56.1 -> 58.8 us for 4096 x 2304 over 256 tokens, and won only on the LM head, 1,796 -> 1,299.)
constexpr int XM = 128, XK = 64, XST = 3, XS = XK + TPAD;  // tile rows, slice width, stages, row stride (halves)
constexpr size_t X16_SMEM = sizeof(uint16_t) * (size_t)XST * XS * (XM + TBN);

// X rounded to BF16, n4 float4s
__global__ void x_to_bf16_kernel(const float4 *__restrict__ X, uint2 *__restrict__ xh, long n4) {
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 v = X[i];
  xh[i] = make_uint2(kle_tc::bf16_pair(v.x, v.y), kle_tc::bf16_pair(v.z, v.w));
}

// The weights of one launch: up to MV_MAX matrices of one width, each with its own BF16
// activations and results; column tiles tile0[e] .. tile0[e + 1] - 1 of the grid are entry e's.
// A split product (gridDim.z > 1) either writes entry e's partial to part + z T Ntot + T coff[e]
// (splitk_sum_set_kernel adds them) or, part NULL, is one cluster along z whose blocks add their tiles
// through distributed shared memory.
struct x16_set {
  const uint16_t *W[MV_MAX];
  const uint16_t *X[MV_MAX];
  float *Y[MV_MAX];
  int N[MV_MAX], tile0[MV_MAX + 1], coff[MV_MAX];
  int n;
};
constexpr int XRS = TBN + 8;  // a partial tile's row stride (floats): a warp's float2 stores in two wavefronts
static_assert((size_t)XM * XRS * sizeof(float) <= X16_SMEM, "the partial tile reuses the stages");

// Y_e[T, N_e] = Xh_e[T, Kd] W_e[N_e, Kd]^T; Kd % XK == 0, rows 16-byte aligned. Split z takes
// k-slices z nkt / S .. (z + 1) nkt / S - 1 of nkt = Kd / XK.
__global__ void __launch_bounds__(256) gemm_x16_kernel(const x16_set set, int T, int Kd, float *__restrict__ part, long Ntot) {
  extern __shared__ __align__(16) uint16_t x16_smem[];
  auto As = reinterpret_cast<uint16_t (*)[XM][XS]>(x16_smem);
  auto Ws = reinterpret_cast<uint16_t (*)[TBN][XS]>(x16_smem + (size_t)XST * XM * XS);
  int e = 0;
  while (e + 1 < set.n && (int)blockIdx.x >= set.tile0[e + 1]) e++;
  const uint16_t *__restrict__ W = set.W[e];
  const uint16_t *__restrict__ Xh = set.X[e];
  float *Y = set.Y[e];
  const int N = set.N[e];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int n0 = ((int)blockIdx.x - set.tile0[e]) * TBN, m0 = blockIdx.y * XM, wm = (warp / 4) * 64, wn = (warp % 4) * 32;
  const int S = gridDim.z, nkt = Kd / XK, kb = (int)((long)blockIdx.z * nkt / S), nk = (int)((long)(blockIdx.z + 1) * nkt / S) - kb;
  if (part) Y = part + (size_t)blockIdx.z * T * Ntot + (size_t)T * set.coff[e];
  // a thread's 16-byte pieces of a stage: rows tid / 8 + 32 j, columns (tid % 8) * 8, of both tiles
  const int lr0 = tid / 8, lc = (tid % 8) * 8;
  auto load = [&](int k, int s) {
    const size_t col = (size_t)(kb + k) * XK + lc;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int r = lr0 + 32 * j;
      const bool xok = m0 + r < T, wok = n0 + r < N;
      kle_tc::cp_async16_zfill(&As[s][r][lc], Xh + (size_t)(xok ? m0 + r : 0) * Kd + col, xok);
      kle_tc::cp_async16_zfill(&Ws[s][r][lc], W + (size_t)(wok ? n0 + r : 0) * Kd + col, wok);
    }
    kle_tc::cp_async_commit();
  };
  float acc[4][4][4] = {};
#pragma unroll
  for (int j = 0; j < XST - 1; j++) {
    if (j < nk) load(j, j);
    else kle_tc::cp_async_commit();
  }
  // ldmatrix rows: A (m16 x k16) lanes 0-15 rows 0-15 at k, 16-31 the same rows at k + 8;
  // W lanes 0-7 / 8-15 the first 8 weight rows at k / k + 8, 16-31 the next 8
  const int ar = lane % 16, ak = (lane / 16) * 8, br = (lane / 16) * 8 + lane % 8, bk = ((lane / 8) % 2) * 8;
  for (int k = 0; k < nk; k++) {
    const int s = k % XST;
    kle_tc::cp_async_wait<XST - 2>();
    __syncthreads();  // slice k landed for every thread; every warp is past slice k - 1's stage
    if (k + XST - 1 < nk) load(k + XST - 1, (k + XST - 1) % XST);
    else kle_tc::cp_async_commit();
#pragma unroll
    for (int kk = 0; kk < XK; kk += 16) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; mi++) kle_tc::ldmatrix_x4(a[mi], &As[s][wm + mi * 16 + ar][kk + ak]);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        uint32_t r4[4];
        kle_tc::ldmatrix_x4(r4, &Ws[s][wn + np * 16 + br][kk + bk]);
        b[2 * np][0] = r4[0], b[2 * np][1] = r4[1], b[2 * np + 1][0] = r4[2], b[2 * np + 1][1] = r4[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) mma_bf16(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  }
  kle_tc::cp_async_wait<0>();
  if (S > 1 && !part) {
    // the cluster's split: each block leaves its tile in its own shared memory, then block r adds
    // rows r XM / S .. of every block's, in order of z (the same sum whichever block makes it)
    __syncthreads();  // every warp is done with the stages
    float *red = reinterpret_cast<float *>(x16_smem);
    kle_tc::each_c_pair<4, 4>(lane, [&](int mi, int ni, int h, int r, int c) {
      *reinterpret_cast<float2 *>(red + (wm + r) * XRS + wn + c) = make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
    });
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every block's tile is in place
    const int r = (int)cluster.block_rank(), rows0 = r * XM / S, rows1 = (r + 1) * XM / S;
    for (int i = rows0 * (TBN / 4) + tid; i < rows1 * (TBN / 4); i += 256) {
      const int row = i / (TBN / 4), c = (i % (TBN / 4)) * 4, m = m0 + row, n = n0 + c;
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int z = 0; z < S; z++) {
        const float4 v = *reinterpret_cast<const float4 *>(cluster.map_shared_rank(red, z) + row * XRS + c);
        a.x += v.x, a.y += v.y, a.z += v.z, a.w += v.w;
      }
      if (m >= T) continue;
      float *yr = Y + (size_t)m * N;
      if (n + 3 < N && !(N & 3)) *reinterpret_cast<float4 *>(yr + n) = a;
      else {
        const float v4[4] = {a.x, a.y, a.z, a.w};
        for (int q = 0; q < 4; q++)
          if (n + q < N) yr[n + q] = v4[q];
      }
    }
    cluster.sync();  // no block leaves while another still reads its tile
    return;
  }
#pragma unroll
  for (int mi = 0; mi < 4; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int m = m0 + wm + mi * 16 + g + h * 8, n = n0 + wn + ni * 8 + 2 * t4;
        if (m >= T) continue;
        float *yr = Y + (size_t)m * N;
        if (n + 1 < N && !(N & 1)) *reinterpret_cast<float2 *>(yr + n) = make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
        else {
          if (n < N) yr[n] = acc[mi][ni][2 * h];
          if (n + 1 < N) yr[n + 1] = acc[mi][ni][2 * h + 1];
        }
      }
}

// the entries' partials, S of them, added in order of z into each entry's result
__global__ void splitk_sum_set_kernel(const float *__restrict__ part, int S, long n, const x16_set set, int T) {
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int e = 0;
  while (e + 1 < set.n && i >= (long)T * set.coff[e + 1]) e++;
  float a = part[i];
  for (int z = 1; z < S; z++) a += part[(size_t)z * n + i];
  set.Y[e][i - (long)T * set.coff[e]] = a;
}

__global__ void splitk_sum_kernel(const float *__restrict__ part, int S, long n, float *__restrict__ Y) {
  const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float a = part[i];
  for (int z = 1; z < S; z++) a += part[(size_t)z * n + i];
  Y[i] = a;
}

__global__ void embed16_kernel(const uint16_t *__restrict__ table, const int32_t *__restrict__ tok, float *__restrict__ x, int D, int is_bf16) {
  const uint16_t *src = table + (size_t)tok[blockIdx.x] * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) x[(size_t)blockIdx.x * D + i] = w16(src[i], is_bf16);
}

// (token, choice) p: Y[p] = expert idx[p]'s `which` matrix times X[p / x_div]
template <int TT>
__global__ void __launch_bounds__(256) expert_gemv16_kernel(const uint16_t *const *__restrict__ Wtab, int which, const int32_t *__restrict__ idx,
                                                            const float *__restrict__ X, int x_div, float *__restrict__ Y, int N, int Kd,
                                                            int is_bf16, int vec) {
  const int p = blockIdx.y, row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const uint16_t *w = Wtab[(size_t)idx[p] * 3 + which] + (size_t)row * Kd;
  float acc[TT];
  row_dot16<TT>(w, X + (size_t)(p / x_div) * Kd, 0, 1, Kd, is_bf16, vec, lane, acc);
  if (lane == 0) Y[(size_t)p * N + row] = acc[0];
}

// (token, choice) p, row r < MI: G[p, r] = silu(gate_e[r] . x) * (up_e[r] . x), e = idx[p]: both
// rows' loads in flight together and the SwiGLU folded in (three launches were one each). Pairs
// p >= Pr (sg not NULL) are token p - Pr's shared expert, gate sg and up su.
__global__ void __launch_bounds__(256) expert_gate_up16_kernel(const uint16_t *const *__restrict__ Wtab, const int32_t *__restrict__ idx,
                                                               const float *__restrict__ X, int x_div, float *__restrict__ G, int N, int Kd,
                                                               int is_bf16, int vec, int Pr, const uint16_t *__restrict__ sg,
                                                               const uint16_t *__restrict__ su) {
  pdl_wait();  // which experts: the routing just made them
  pdl_trigger();
  const int p = blockIdx.y, row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const bool sh = p >= Pr;
  const uint16_t *gw = sh ? sg : Wtab[(size_t)idx[p] * 3], *uw = sh ? su : Wtab[(size_t)idx[p] * 3 + 1];
  const float *x = X + (size_t)(sh ? p - Pr : p / x_div) * Kd;
  float g[1], u[1];
  if (vec) {  // one loop over both rows: their loads go out together (row after row: 26.6 us a 48B layer, 60% of the bandwidth)
    const uint4 *g8 = reinterpret_cast<const uint4 *>(gw + (size_t)row * Kd), *u8 = reinterpret_cast<const uint4 *>(uw + (size_t)row * Kd);
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float ga = 0.f, ua = 0.f;
    dot2_rows16<true, 3>(g8, u8, x4, x4, Kd / 8, lane, is_bf16, ga, ua);
    g[0] = warp_sum(ga);
    u[0] = warp_sum(ua);
  } else {
    row_dot16<1>(gw + (size_t)row * Kd, x, 0, 1, Kd, is_bf16, vec, lane, g);
    row_dot16<1>(uw + (size_t)row * Kd, x, 0, 1, Kd, is_bf16, vec, lane, u);
  }
  if (lane == 0) G[(size_t)p * N + row] = g[0] / (1.0f + expf(-g[0])) * u[0];
}

// y[t, row] = sum_k w[t, k] (down_e[row] . G[t * K + k]), e = idx[t, k]: the down matvec and
// moe_combine's weighted sum in one launch (they were 14.7 + 11.7 us a 48B layer at batch 1, ncu).
// DOWN_SPLIT warps share a row, each two pairs' loads in flight together (a warp a row and all
// its pairs in turn: 18.3 us); each pair's dot goes through shared memory and one thread sums
// them in k order as moe_combine did, so the result has the same bits. With sd (not NULL) a
// token's shared expert is pair K, its down matrix sd and its input G[(T * K + t)], added last
// with weight 1 (as the separate down product and add did).
#define DOWN_SPLIT 4
__global__ void __launch_bounds__(256) expert_down_combine16_kernel(const uint16_t *const *__restrict__ Wtab, const int32_t *__restrict__ idx,
                                                                    const float *__restrict__ G, const float *__restrict__ w,
                                                                    float *__restrict__ y, int K, int N, int Kd, int is_bf16,
                                                                    const uint16_t *__restrict__ sd) {
  pdl_wait();  // which experts: the routing just made them
  pdl_trigger();
  __shared__ float dots[8 / DOWN_SPLIT][65];  // K <= 64 (kle_moe_route), and the shared expert
  const int t = blockIdx.y, wid = threadIdx.x / 32, lane = threadIdx.x % 32, r = wid / DOWN_SPLIT, q = wid % DOWN_SPLIT;
  const int row = blockIdx.x * (8 / DOWN_SPLIT) + r, Kp = K + (sd != nullptr);
  // pair k's down row and input: a routed expert's, or (k == K) the shared one's
  auto wrow = [&](int k) {
    return reinterpret_cast<const uint4 *>((k < K ? Wtab[(size_t)idx[(size_t)t * K + k] * 3 + 2] : sd) + (size_t)row * Kd);
  };
  auto xrow = [&](int k) {
    return reinterpret_cast<const float4 *>(G + (k < K ? (size_t)t * K + k : (size_t)gridDim.y * K + t) * Kd);
  };
  if (row < N) {
    for (int k0 = q; k0 < Kp; k0 += 2 * DOWN_SPLIT) {
      const int k1 = k0 + DOWN_SPLIT < Kp ? k0 + DOWN_SPLIT : k0;  // k1 == k0: one pair left
      const uint4 *w0 = wrow(k0), *w1 = wrow(k1);
      const float4 *x0 = xrow(k0), *x1 = xrow(k1);
      float d0 = 0.f, d1 = 0.f;
      dot2_rows16<false, 4>(w0, w1, x0, x1, Kd / 8, lane, is_bf16, d0, d1);
      d0 = warp_sum(d0);
      d1 = warp_sum(d1);
      if (lane == 0) {
        dots[r][k0] = d0;
        if (k1 != k0) dots[r][k1] = d1;
      }
    }
  }
  __syncthreads();
  if (q == 0 && lane == 0 && row < N) {
    float acc = 0.f;
    for (int k = 0; k < K; k++) acc += w[(size_t)t * K + k] * dots[r][k];
    if (sd) acc += dots[r][K];
    y[(size_t)t * N + row] = acc;
  }
}

// ---------------------------------------------------------------- experts at one token, inputs in registers
// At one token the two kernels above lose time around their bytes (Nsight Compute, 48B at batch 1,
// base clocks: gate/up 29-31 us for 85 MB, down 24-25 us for 42.5 MB): the down kernel's blocks
// wait while one warp of four takes the ninth pair, the grids end in partial waves, and each
// warp has a few loads in flight. Here a warp loads its pair's input once into registers (lane
// chunks c = lane + 32 j, j < NJ: row_dot16's chunk order, so each lane's sum and the shuffle tree
// are the same and so are the results), issues every load of a row (gate/up) or of four rows
// (down) before the first use, and streams rows against the input; the grid is one wave of
// resident blocks with the rows dealt out evenly. Down 24-25 -> 17.5-18.2 us, gate/up about the
// same (29.0-31.7); the step 2.89-2.95 -> 2.73-2.81 ms. A warp's rows run one after another, so
// with many of them (a batched step: 72 rows a warp at 8 streams) these lose (8 streams 10.3 ->
// 11.1 ms) and the kernels above serve: SEQ_ROWS bounds a warp's rows.
// Measured and not kept: the compiler's own schedule of the loads (gate/up 37-39 us), gate/up's
// inputs read from L1 to fit more warps (31-33 us), two down rows at once (18.2-18.4 us).
constexpr int SEQ_ROWS = 16;

// this lane's inputs: x chunks lane + 32 j (8 floats each), zero past n8 chunks
template <int NJ>
__device__ __forceinline__ void load_x_res(const float *__restrict__ x, int n8, int lane, float4 (&xa)[NJ], float4 (&xb)[NJ]) {
  const float4 *x4 = reinterpret_cast<const float4 *>(x);
#pragma unroll
  for (int j = 0; j < NJ; j++) {
    const int c = lane + 32 * j;
    xa[j] = c < n8 ? x4[2 * c] : make_float4(0.f, 0.f, 0.f, 0.f);
    xb[j] = c < n8 ? x4[2 * c + 1] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
}
__device__ __forceinline__ float dot8(const float (&f)[8], float4 a, float4 b) {
  return f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
}

// pairs p < Pr: G[p, row] = silu(gate_e[row] . x) * (up_e[row] . x), e = idx[p], x = X[p / x_div];
// p >= Pr: token p - Pr's shared expert (sg, su). Warp w takes items (p * N + row) w * per ..
// (w + 1) * per - 1, reloading x where p changes.
template <int NJ>
__global__ void __launch_bounds__(256) expert_gate_up16_res_kernel(const uint16_t *const *__restrict__ Wtab, const int32_t *__restrict__ idx,
                                                                   const float *__restrict__ X, int x_div, float *__restrict__ G, int N,
                                                                   int Kd, int is_bf16, int Pr, const uint16_t *__restrict__ sg,
                                                                   const uint16_t *__restrict__ su, int items, int per) {
  pdl_wait();  // which experts: the routing just made them
  pdl_trigger();
  const int lane = threadIdx.x % 32, n8 = Kd / 8;
  const int i0 = (blockIdx.x * 8 + threadIdx.x / 32) * per, i1 = min(items, i0 + per);
  float4 xa[NJ], xb[NJ];
  const uint4 *gm = nullptr, *um = nullptr;
  int cur = -1;
  for (int i = i0; i < i1; i++) {
    const int p = i / N, row = i - p * N;
    if (p != cur) {
      cur = p;
      const bool sh = p >= Pr;
      gm = reinterpret_cast<const uint4 *>(sh ? sg : Wtab[(size_t)idx[p] * 3]);
      um = reinterpret_cast<const uint4 *>(sh ? su : Wtab[(size_t)idx[p] * 3 + 1]);
      load_x_res<NJ>(X + (size_t)(sh ? p - Pr : p / x_div) * Kd, n8, lane, xa, xb);
    }
    const uint4 *g8 = gm + (size_t)row * n8, *u8 = um + (size_t)row * n8;
    uint4 wg[NJ], wu[NJ];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      const int c = min(lane + 32 * j, n8 - 1);  // in bounds; past n8 its product is dropped below
      wg[j] = ld_stream(g8 + c);
      wu[j] = ld_stream(u8 + c);
    }
    float ga = 0.f, ua = 0.f;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      if (lane + 32 * j < n8) {
        float f0[8], f1[8];
        unpack8(wg[j], is_bf16, f0);
        unpack8(wu[j], is_bf16, f1);
        ga += dot8(f0, xa[j], xb[j]);
        ua += dot8(f1, xa[j], xb[j]);
      }
    }
    // both sums in one tree: lanes 0-15 end with the gate's, 16-31 with the up's (6 shuffles, not 10)
    float v = lane & 16 ? ua : ga;
    v += __shfl_xor_sync(0xffffffffu, lane & 16 ? ga : ua, 16);
    for (int o = 8; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const float u = __shfl_sync(0xffffffffu, v, 16);
    if (lane == 0) G[(size_t)p * N + row] = v / (1.0f + expf(-v)) * u;
  }
}

// y[t, row] = sum_k w[t, k] (down_e[row] . G[t * K + k]) (+ the shared expert's, pair K, last):
// expert_down_combine16_kernel's result. A block takes rows r0 .. r0 + rpb - 1 of the T x N
// outputs (N and rpb multiples of 4, so four rows share a token) for every pair: warp k pair k
// (and k + warps ...), four rows' loads in flight at once; the dots meet in shared memory and one
// thread a row sums them in k order.
template <int NJ>
__global__ void __launch_bounds__(512) expert_down16_res_kernel(const uint16_t *const *__restrict__ Wtab, const int32_t *__restrict__ idx,
                                                                const float *__restrict__ G, const float *__restrict__ w, float *__restrict__ y,
                                                                int T, int K, int N, int Kd, int is_bf16, const uint16_t *__restrict__ sd,
                                                                int rpb) {
  pdl_wait();  // which experts: the routing just made them
  pdl_trigger();
  extern __shared__ float dots[];  // [rpb][Kp]
  const int lane = threadIdx.x % 32, nw = blockDim.x / 32, n8 = Kd / 8, Kp = K + (sd != nullptr);
  const long r0 = (long)blockIdx.x * rpb, r1 = min((long)T * N, r0 + rpb);
  for (int k = threadIdx.x / 32; k < Kp; k += nw) {
    float4 xa[NJ], xb[NJ];
    int cur = -1;
    for (long i = r0; i < r1; i += 4) {
      const int t = (int)(i / N), row = (int)(i - (long)t * N);
      if (t != cur) {
        cur = t;
        load_x_res<NJ>(G + (k < K ? (size_t)t * K + k : (size_t)T * K + t) * Kd, n8, lane, xa, xb);
      }
      const uint4 *w8 = reinterpret_cast<const uint4 *>(k < K ? Wtab[(size_t)idx[(size_t)t * K + k] * 3 + 2] : sd) + (size_t)row * n8;
      uint4 u[NJ][4];
#pragma unroll
      for (int j = 0; j < NJ; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) u[j][q] = ld_stream(w8 + (size_t)q * n8 + min(lane + 32 * j, n8 - 1));
      float d[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < NJ; j++)
        if (lane + 32 * j < n8)
#pragma unroll
          for (int q = 0; q < 4; q++) {
            float f[8];
            unpack8(u[j][q], is_bf16, f);
            d[q] += dot8(f, xa[j], xb[j]);
          }
      // four sums in one tree (8 shuffles, not 20): after xor 16 and 8 lane l holds row
      // 2 (l >> 4 & 1) + (l >> 3 & 1), the rest of the tree as warp_sum's
      const bool hi = lane & 16, mid = lane & 8;
      float a0 = hi ? d[2] : d[0], a1 = hi ? d[3] : d[1];
      a0 += __shfl_xor_sync(0xffffffffu, hi ? d[0] : d[2], 16);
      a1 += __shfl_xor_sync(0xffffffffu, hi ? d[1] : d[3], 16);
      float v = mid ? a1 : a0;
      v += __shfl_xor_sync(0xffffffffu, mid ? a0 : a1, 8);
      for (int o = 4; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if ((lane & 7) == 0) dots[(size_t)(i - r0 + (lane >> 3)) * Kp + k] = v;
    }
  }
  __syncthreads();
  for (long i = r0 + threadIdx.x; i < r1; i += blockDim.x) {
    const int t = (int)(i / N);
    const float *dr = dots + (size_t)(i - r0) * Kp;
    float acc = 0.f;
    for (int k = 0; k < K; k++) acc += w[(size_t)t * K + k] * dr[k];
    if (sd) acc += dr[K];
    y[i] = acc;
  }
}

// ---------------------------------------------------------------- several matvecs, one launch
// One token's products with up to MV_MAX weights (16-bit or f32; each with its own input and
// output) in blocks of 8 / SPLIT rows, entry after entry; SPLIT warps share a row when the rows
// are too few to fill the card a warp each (as gemv16_split_kernel). A decode step made each of a
// layer's projections a launch of its own, each paying a launch, a ramp and a tail (a 4096 x 2304
// BF16 matvec: 8.4 us against 4.8 for its bytes, ncu).
template <int SPLIT>
__global__ void __launch_bounds__(256) gemv_multi_kernel(mv_set s) {
  pdl_trigger();  // as gemv16_kernel: a KDA step may come next
  __shared__ float part[8];
  mv_entry e = s.e[0];
#pragma unroll
  for (int j = 1; j < MV_MAX; j++)  // unrolled: the entries stay in the parameter bank, no local copy
    if (j < s.n && (int)blockIdx.x >= s.e[j].block0) e = s.e[j];
  const int wid = threadIdx.x / 32, lane = threadIdx.x % 32, q = wid % SPLIT;
  const int row = ((int)blockIdx.x - e.block0) * (8 / SPLIT) + wid / SPLIT;
  const bool live = row < e.N;
  const int f32 = e.fmt == MV_F32, nv = e.Kd / (f32 ? 4 : 8), per = (nv + SPLIT - 1) / SPLIT, i0 = q * per, i1 = min(nv, i0 + per);
  if (live && i1 > i0)  // this warp's weights, while the kernel before finishes
    prefetch_l2(static_cast<const char *>(e.W) + ((size_t)row * e.Kd + (size_t)i0 * (f32 ? 4 : 8)) * (f32 ? 4 : 2), 16 * (size_t)(i1 - i0), lane);
  pdl_wait();
  float acc = 0.f;
  if (live) {
    const float4 *x4 = reinterpret_cast<const float4 *>(e.X);
    if (f32) {
      const float4 *w4 = reinterpret_cast<const float4 *>(static_cast<const float *>(e.W) + (size_t)row * e.Kd);
#pragma unroll 4
      for (int i = i0 + lane; i < i1; i += 32) {
        const float4 wv = w4[i], xv = x4[i];
        acc += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
      }
    } else {
      acc = dot16_span(reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(e.W) + (size_t)row * e.Kd), x4, i0, i1, lane, e.fmt == MV_BF16);
    }
    acc = warp_sum(acc);
  }
  if (SPLIT == 1) {
    if (live && lane == 0) e.Y[row] = acc;
    return;
  }
  if (lane == 0) part[wid] = acc;
  __syncthreads();
  if (q == 0 && lane == 0 && live) {
    float v = part[wid];
    for (int j = 1; j < SPLIT; j++) v += part[wid + j];
    e.Y[row] = v;
  }
}

// ---------------------------------------------------------------- experts grouped (batches)
// The (token, choice) pairs of a batch by expert: offs [E + 1], order [P] the pairs of expert e at
// order[offs[e] .. offs[e + 1]). One block; the order within an expert is the atomics', which
// changes nothing: each pair's result is computed alone, in its own slot.
__global__ void __launch_bounds__(1024) moe_group_kernel(const int32_t *__restrict__ idx, int P, int E, int32_t *__restrict__ offs,
                                                         int32_t *__restrict__ order, int tm, int32_t *__restrict__ map, int map_n) {
  __shared__ int cnt[1024], pos[1024], tile[1025];
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < P; p += blockDim.x) atomicAdd(&cnt[idx[p]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int acc = 0, tiles = 0;
    for (int e = 0; e < E; e++) pos[e] = acc, offs[e] = acc, acc += cnt[e], tile[e] = tiles, tiles += map ? (cnt[e] + tm - 1) / tm : 0;
    offs[E] = acc;
    tile[E] = tiles;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < P; p += blockDim.x) order[atomicAdd(&pos[idx[p]], 1)] = p;
  if (!map) return;
  // tile t of expert e's: e in the low half, t in the high (map_n bounds both below 2^15)
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    for (int t = tile[e]; t < tile[e + 1]; t++) map[t] = e | (t - tile[e]) << 16;
  for (int t = tile[E] + threadIdx.x; t < map_n; t += blockDim.x) map[t] = -1;
}

#define GROUP 8
// F16 experts (no tensor-core path here): block (8 rows, expert e), each warp one row of e's
// `which` matrix for e's pairs GROUP at a time, so a row is read once per GROUP pairs.
// Y[p] = W_e . X[p / x_div].
__global__ void __launch_bounds__(256) grouped16_kernel(const uint16_t *const *__restrict__ Wtab, int which, const int32_t *__restrict__ offs,
                                                        const int32_t *__restrict__ order, const float *__restrict__ X, int x_div,
                                                        float *__restrict__ Y, int N, int Kd, int is_bf16) {
  const int e = blockIdx.y, row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = offs[e], n1 = offs[e + 1];
  if (n0 == n1 || row >= N) return;
  const uint4 *wa = reinterpret_cast<const uint4 *>(Wtab[(size_t)e * 3 + which] + (size_t)row * Kd);
  for (int g0 = n0; g0 < n1; g0 += GROUP) {
    const int nt = min(GROUP, n1 - g0);
    const float4 *xs[GROUP];
    float a[GROUP];
#pragma unroll
    for (int t = 0; t < GROUP; t++) {
      xs[t] = reinterpret_cast<const float4 *>(X + (size_t)(order[g0 + (t < nt ? t : 0)] / x_div) * Kd);
      a[t] = 0.f;
    }
    for (int i = lane; i < Kd / 8; i += 32) {
      float wf[8];
      unpack8(ld_stream(wa + i), is_bf16, wf);
#pragma unroll
      for (int t = 0; t < GROUP; t++) {
        if (t >= nt) break;
        const float4 x0 = xs[t][2 * i], x1 = xs[t][2 * i + 1];
        a[t] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w + wf[4] * x1.x + wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
      }
    }
#pragma unroll
    for (int t = 0; t < GROUP; t++) {
      if (t >= nt) break;
      const float v = warp_sum(a[t]);
      if (lane == 0) Y[(size_t)order[g0 + t] * N + row] = v;
    }
  }
}

}  // namespace

int splits_for(int T, int N, int Kd) {
  const int tiles = blocks_for(N, TBN) * blocks_for(T, TBM), nsm = sm_count(), nk = Kd / TBK;
  if (nsm <= 0 || tiles >= nsm) return 1;
  const int s = min(blocks_for(2L * nsm, tiles), nk / 2);
  return s > 1 ? s : 1;
}

void splitk_sum(const float *part, int S, long n, float *Y, cudaStream_t st) {
  splitk_sum_kernel<<<blocks_for(n, 256), 256, 0, st>>>(part, S, n, Y);
}

int moe_tiles(int P, int E, int tm) { return blocks_for(P, tm) + std::min(E, P); }

void moe_group(const int32_t *idx, int P, int E, int32_t *offs, int32_t *order, cudaStream_t st, int tm, int32_t *map) {
  moe_group_kernel<<<1, 1024, 0, st>>>(idx, P, E, offs, order, tm, map, map ? moe_tiles(P, E, tm) : 0);
}

bool grouped_ok(int D, int MI, const float *X) { return D % TBK == 0 && MI % TBK == 0 && ((uintptr_t)X & 15) == 0; }

// Y[p] = W_e X[p / x_div] for each pair p of each expert e, on tensor cores; at most T pairs an
// expert (a token picks an expert once), so T / 64 row tiles cover any expert
void grouped_mm16(int is_bf16, int few, const uint16_t *const *Wtab, int which, const int32_t *offs, const int32_t *order, int E,
                  const float *X, int x_div, float *Y, int T, int N, int Kd, cudaStream_t st, bool round_bf16, const int32_t *map, int P) {
  if (!is_bf16) {  // F16: the CUDA-core kernel, GROUP pairs at a time
    grouped16_kernel<<<dim3(blocks_for(N, 8), E), 256, 0, st>>>(Wtab, which, offs, order, X, x_div, Y, N, Kd, 0);
    return;
  }
  const tc_group grp = {Wtab, offs, order, map, which, x_div};
  // 16-row tiles stream 64-wide k-slices, two in flight (half the barriers and waits of four
  // 32-wide ones, which remain where Kd is not a multiple of 64). GATE_UP: a tile of 64 columns
  // of both matrices. With a map, the grid's rows are the map's tiles.
  const int nx = blocks_for(which == GATE_UP ? 2L * N : N, TBN);
  const dim3 g16(nx, map ? moe_tiles(P, E, 16) : blocks_for(T, 16), map ? 1 : E);
  const dim3 g64(nx, map ? moe_tiles(P, E, TBM) : blocks_for(T, TBM), map ? 1 : E);
  if (few && Kd % 64 == 0)
    round_bf16 ? launch_tc<true, 16, 2, 64, false>(g16, st, nullptr, X, Y, T, N, Kd, grp, 0, nullptr)
               : launch_tc<true, 16, 2, 64, true>(g16, st, nullptr, X, Y, T, N, Kd, grp, 0, nullptr);
  else if (few)
    round_bf16 ? launch_tc<true, 16, 4, 32, false>(g16, st, nullptr, X, Y, T, N, Kd, grp, 0, nullptr)
               : launch_tc<true, 16, 4, 32, true>(g16, st, nullptr, X, Y, T, N, Kd, grp, 0, nullptr);
  else
    round_bf16 ? launch_tc<true, TBM, 2, TBK, false>(g64, st, nullptr, X, Y, T, N, Kd, grp, 0, nullptr)
               : launch_tc<true, TBM, 2, TBK, true>(g64, st, nullptr, X, Y, T, N, Kd, grp, 0, nullptr);
}

// whether the experts' register-resident kernels may serve (KLE_CUDA_EXPERTS_RES=0: never, a
// before/after in one run)
static bool experts_res() {
  static const bool v = env_on("KLE_CUDA_EXPERTS_RES");
  return v;
}

// blocks of `threads` (and `smem` bytes) that the whole card holds at once for kernel k, at least 1
template <typename Kern>
static int resident_blocks(Kern k, int threads, size_t smem) {
  int per = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, k, threads, smem) != cudaSuccess || per < 1) {
    cudaGetLastError();  // not left for the launch checks to find
    per = 1;
  }
  return per * (sm_count() > 0 ? sm_count() : 1);
}

// f(NJ) for the register kernels' input width, NJ chunks of 8 inputs a lane (Kd / 8 / 32 rounded
// up to a width they are compiled for); false, nothing launched, past the widest: wider inputs
// than the registers hold take the L1 kernels
template <class F>
static bool by_width(int Kd, F f) {
  switch (blocks_for(Kd / 8, 32)) {
  case 1: return f(std::integral_constant<int, 1>{});
  case 2: return f(std::integral_constant<int, 2>{});
  case 3: return f(std::integral_constant<int, 3>{});
  case 4: return f(std::integral_constant<int, 4>{});
  case 5: case 6: return f(std::integral_constant<int, 6>{});
  case 7: case 8: case 9: return f(std::integral_constant<int, 9>{});
  default: return false;
  }
}

// a gate/up launch over items = pairs x N rows, one wave of resident blocks, rows dealt evenly;
// false (nothing launched) where a warp would take more than SEQ_ROWS
template <int NJ>
static bool gate_up_res(int is_bf16, const uint16_t *const *Wtab, const int32_t *idx, const float *X, int x_div, float *G, int P, int N,
                        int Kd, cudaStream_t st, int Ts, const uint16_t *sg, const uint16_t *su) {
  static const int warps = 8 * resident_blocks(expert_gate_up16_res_kernel<NJ>, 256, 0);
  const int items = (P + Ts) * N, per = blocks_for(items, warps);
  if (per > SEQ_ROWS) return false;
  launch_pdl(expert_gate_up16_res_kernel<NJ>, blocks_for(blocks_for(items, per), 8), 256, 0, st, Wtab, idx, X, x_div, G, N, Kd, is_bf16, P, sg,
             su, items, per);
  return true;
}

void expert_gate_up16(int is_bf16, const uint16_t *const *Wtab, const int32_t *idx, const float *X, int x_div, float *G, int P, int N,
                      int Kd, cudaStream_t st, int T, const uint16_t *sg, const uint16_t *su) {
  const int vec = (Kd & 7) == 0 && ((uintptr_t)X & 15) == 0;
  const int Ts = sg ? T : 0;
  if (experts_res() && vec) {
    if (by_width(Kd, [&](auto nj) { return gate_up_res<nj()>(is_bf16, Wtab, idx, X, x_div, G, P, N, Kd, st, Ts, sg, su); })) return;
  }
  launch_pdl(expert_gate_up16_kernel, dim3(blocks_for(N, 8), P + (sg ? T : 0)), 256, 0, st, Wtab, idx, X, x_div, G, N, Kd, is_bf16, vec, P,
             sg, su);
}

// whether batched steps' matmuls take the three-stage 64-wide kernel (KLE_CUDA_GEMM_DEEP=0: the
// two-stage 32-wide one, a before/after in one run)
static bool deep_gemm() {
  static const bool v = [] {
    const char *e = getenv("KLE_CUDA_GEMM_DEEP");
    return !(e && e[0] == '0');
  }();
  return v;
}

// The deep kernel's split of Kd: its 124 registers a thread leave two blocks an SM, so the
// split fills one wave of those (splits_for's two blocks an SM of the 79-register kernel would
// leave the deep one a wave and a half: 384 blocks at 256 tokens x 4096 rows); never more
// splits than splits_for, which sized the workspace
static int deep_splits(int T, int N, int Kd, bool round_bf16) {
  auto res = [](auto kern, size_t smem) {
    cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    return resident_blocks(kern, 256, smem);
  };
  static const int lo = res(gemm_bf16_tc_kernel<false, TBM, 3, 64, true>, tc_smem_bytes<TBM, 3, 64, true>());
  static const int hi = res(gemm_bf16_tc_kernel<false, TBM, 3, 64, false>, tc_smem_bytes<TBM, 3, 64, false>());
  const int tiles = blocks_for(N, TBN) * blocks_for(T, TBM), per = round_bf16 ? hi : lo;
  const int s = min(splits_for(T, N, Kd), per / tiles);
  return s > 1 ? s : 1;
}

// whether batched steps of 128 tokens or more in BF16 precision take gemm_x16_kernel
// (KLE_CUDA_GEMM_X16=0: the deep kernel, a before/after in one run)
static bool x16_gemm() {
  static const bool v = [] {
    const char *e = getenv("KLE_CUDA_GEMM_X16");
    return !(e && e[0] == '0');
  }();
  return v;
}
static bool x16_fits(int T, int N, int Kd) { return T >= XM && N >= 256 && Kd % XK == 0 && x16_gemm(); }

// the most splits along Kd a product adds up inside a cluster of its blocks, more go through
// partials in the workspace and splitk_sum_set_kernel: 2 (KLE_CUDA_X16_CLUSTER=N: up to N, 0
// never; a before/after in one run). Measured on the H200, cluster vs partials (bench/results/
// cuda-matmul-sets-h200.json): in two, MLA's q and kv_a at 256 tokens 42.1 vs 48.5 us, KDA's six
// projections at 128 tokens 42.5 vs 49.1; in four, MLA's at 128 tokens 24.6 vs 32.9 but 4096 x
// 2304 at 256 tokens 35.3 vs 33.7, and a 256-stream step with clusters of up to four (the shared
// expert's down matrix, 2304 x 1024, then in four) 45.16 ms against 43.60-43.75 with two (two
// calls); in seven or eight the cluster lost every time: 2304 x 4096 39.3 vs 34.0, the shared
// expert's gate and up 26.4 vs 24.9, 1024 x 2304 18.5 vs 16.2 (a wide cluster's blocks wait for
// one another and read each other's tiles over the SM-to-SM network).
static int x16_cluster_max() {
  static const int v = [] {
    const char *e = getenv("KLE_CUDA_X16_CLUSTER");
    return e && e[0] >= '0' && e[0] <= '8' && !e[1] ? e[0] - '0' : 2;
  }();
  return v;
}

// Splits along Kd for `tiles` tiles of gemm_x16_kernel (two blocks an SM): none where every SM
// already has a block; else enough to fill the card's two, at most 8 (a portable cluster), each
// at least 4 slices. 4096 x 2304 over 256 tokens: 64 tiles, 4 splits of 9 slices.
static int x16_splits(long tiles, int Kd) {
  const long slots = 2L * (sm_count() > 0 ? sm_count() : 1);
  if (tiles >= slots / 2) return 1;
  const long s = std::min(std::min(8L, slots / tiles), (long)(Kd / XK / 4));
  return s > 1 ? (int)s : 1;
}

// One launch of gemm_x16_kernel for a set of BF16 weights: the tiles, the split, and the
// workspace it takes (each distinct activation matrix once in BF16, then any partials)
struct x16_plan {
  x16_set set;
  int xi[MV_MAX];              // entry i's activations: BF16 copy xi[i]
  const float *src[MV_MAX];    // the distinct activation matrices
  int nx, S, col_tiles;
  bool cluster;
  long Ntot, xh_floats, part_floats;
};

static bool x16_plan_for(const mv_set &s, int T, int Kd, x16_plan &p) {
  if (!x16_gemm() || T < XM || Kd <= 0 || Kd % XK || s.n < 1 || s.n > MV_MAX) return false;
  p = {};
  for (int i = 0; i < s.n; i++) {
    const mv_entry &e = s.e[i];
    if (e.fmt != MV_BF16 || e.Kd != Kd || e.N < 1 || (((uintptr_t)e.W | (uintptr_t)e.X) & 15)) return false;
    p.set.W[i] = static_cast<const uint16_t *>(e.W);
    p.set.Y[i] = e.Y;
    p.set.N[i] = e.N;
    p.set.tile0[i] = p.col_tiles;
    p.set.coff[i] = (int)p.Ntot;
    p.col_tiles += blocks_for(e.N, TBN);
    p.Ntot += e.N;
    int j = 0;
    while (j < p.nx && p.src[j] != e.X) j++;
    if (j == p.nx) p.src[p.nx++] = e.X;
    p.xi[i] = j;
  }
  p.set.tile0[s.n] = p.col_tiles;
  p.set.n = s.n;
  p.S = x16_splits((long)p.col_tiles * blocks_for(T, XM), Kd);
  p.xh_floats = (long)p.nx * T * Kd / 2;  // a multiple of 32: the partials start on 16 bytes
  p.cluster = p.S > 1 && p.S <= x16_cluster_max();
  p.part_floats = p.S > 1 && !p.cluster ? (long)p.S * T * p.Ntot : 0;
  return true;
}

static void x16_launch(x16_plan &p, int T, int Kd, float *ws, cudaStream_t st) {
  uint16_t *xh = reinterpret_cast<uint16_t *>(ws);
  const long n4 = (long)T * Kd / 4;
  for (int j = 0; j < p.nx; j++)
    x_to_bf16_kernel<<<blocks_for(n4, 256), 256, 0, st>>>(reinterpret_cast<const float4 *>(p.src[j]), reinterpret_cast<uint2 *>(xh + (size_t)j * T * Kd), n4);
  for (int i = 0; i < p.set.n; i++) p.set.X[i] = xh + (size_t)p.xi[i] * T * Kd;
  float *part = p.part_floats ? ws + p.xh_floats : nullptr;
  static const bool sized = cudaFuncSetAttribute(gemm_x16_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)X16_SMEM) == cudaSuccess;
  (void)sized;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.col_tiles, blocks_for(T, XM), p.S);
  cfg.blockDim = dim3(256);
  cfg.dynamicSmemBytes = X16_SMEM;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (p.cluster) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = p.S;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  cudaLaunchKernelEx(&cfg, gemm_x16_kernel, p.set, T, Kd, part, p.Ntot);
  if (part) splitk_sum_set_kernel<<<blocks_for((long)T * p.Ntot, 256), 256, 0, st>>>(part, p.S, (long)T * p.Ntot, p.set, T);
}

// the split's partial products (the deep kernel), or gemm_x16_kernel's room, whichever is more
long matmul16_ws_floats(int T, int N, int Kd) {
  if (T <= 8 || Kd % TBK) return 0;
  const int S = splits_for(T, N, Kd);
  long need = S > 1 ? (long)S * T * N : 0;
  mv_set one = {};
  one.e[0] = {nullptr, nullptr, nullptr, N, Kd, MV_BF16, 0};
  one.n = 1;
  x16_plan p;
  if (x16_fits(T, N, Kd) && x16_plan_for(one, T, Kd, p)) need = std::max(need, p.xh_floats + p.part_floats);
  return need;
}

long matmul16_n_ws_floats(const mv_set &s, int T) {
  x16_plan p;
  return s.n > 0 && x16_plan_for(s, T, s.e[0].Kd, p) ? p.xh_floats + p.part_floats : -1;
}

bool matmul16_n(const mv_set &s, int T, cudaStream_t st, float *ws, long ws_floats) {
  x16_plan p;
  if (s.n < 1 || !x16_plan_for(s, T, s.e[0].Kd, p) || !ws || ws_floats < p.xh_floats + p.part_floats) return false;
  x16_launch(p, T, s.e[0].Kd, ws, st);
  return true;
}

void matmul16(int is_bf16, const uint16_t *W, const float *X, float *Y, int T, int N, int Kd, cudaStream_t st, float *ws, long ws_floats,
              bool round_bf16) {
  const int vec = (Kd & 7) == 0 && (((uintptr_t)W | (uintptr_t)X) & 15) == 0;
  // one token keeps the CUDA-core kernels: on tensor cores 7 of mma's 8 columns would be padding,
  // and the 48B step measured 2.90 -> 3.27 ms with them
  if (T > 1 && T <= 8 && is_bf16 && vec && Kd % 32 == 0) {
    const int ks = gemv_tc_split(N, Kd), grid = blocks_for(blocks_for(N, 16), 8 / ks);
    if (round_bf16) launch_pdl(gemv_tc_kernel<false>, grid, 256, 0, st, W, X, Y, T, N, Kd, ks);
    else launch_pdl(gemv_tc_kernel<true>, grid, 256, 0, st, W, X, Y, T, N, Kd, ks);
    return;
  }
  if (T == 1 && vec && N < 4096 && Kd >= 512) {  // 4096 x 2304 and up fill the card one warp a row
    launch_pdl(gemv16_split_kernel, blocks_for(N, 2), 256, 0, st, W, X, Y, N, Kd, is_bf16);
    return;
  }
  if (T <= 8) {
    const int grid = blocks_for(N, 8);
    switch (T) {
    case 1: launch_pdl(gemv16_kernel<1>, grid, 256, 0, st, W, X, Y, T, N, Kd, is_bf16, vec); break;
    case 2: launch_pdl(gemv16_kernel<2>, grid, 256, 0, st, W, X, Y, T, N, Kd, is_bf16, vec); break;
    case 3: case 4: launch_pdl(gemv16_kernel<4>, grid, 256, 0, st, W, X, Y, T, N, Kd, is_bf16, vec); break;
    default: launch_pdl(gemv16_kernel<8>, grid, 256, 0, st, W, X, Y, T, N, Kd, is_bf16, vec); break;
    }
    return;
  }
  if (is_bf16 && vec && round_bf16 && x16_fits(T, N, Kd)) {
    mv_set one = {};
    one.e[0] = {W, X, Y, N, Kd, MV_BF16, 0};
    one.n = 1;
    if (matmul16_n(one, T, st, ws, ws_floats)) return;
  }
  if (is_bf16 && vec && Kd % TBK == 0) {
    // a batched step's rows (up to 512 tokens): 64-wide k-slices, two in flight (deep_gemm)
    const bool deep = T <= 512 && Kd % 64 == 0 && deep_gemm();
    const int bk = deep ? 64 : TBK, S = deep ? deep_splits(T, N, Kd, round_bf16) : splits_for(T, N, Kd);
    const int kper = S > 1 && ws && ws_floats >= (long)S * T * N ? blocks_for(Kd / bk, S) : 0;
    const int Sz = kper ? blocks_for(Kd / bk, kper) : 1;  // splits that have slices
    const dim3 grid(blocks_for(N, TBN), blocks_for(T, TBM), Sz);
    float *part = kper ? ws : nullptr;
    if (deep && round_bf16) launch_tc<false, TBM, 3, 64, false>(grid, st, W, X, Y, T, N, Kd, tc_group{}, kper, part);
    else if (deep) launch_tc<false, TBM, 3, 64, true>(grid, st, W, X, Y, T, N, Kd, tc_group{}, kper, part);
    else if (round_bf16) launch_tc<false, TBM, 2, TBK, false>(grid, st, W, X, Y, T, N, Kd, tc_group{}, kper, part);
    else launch_tc<false, TBM, 2, TBK, true>(grid, st, W, X, Y, T, N, Kd, tc_group{}, kper, part);
    if (kper) splitk_sum(ws, Sz, (long)T * N, Y, st);
    return;
  }
  gemm16_cc_kernel<<<dim3(blocks_for(N, CBN), blocks_for(T, CBM)), 256, 0, st>>>(W, X, Y, T, N, Kd, is_bf16);
}

void embed16(int is_bf16, const uint16_t *table, const int32_t *tok, float *x, int T, int D, cudaStream_t st) {
  embed16_kernel<<<T, 128, 0, st>>>(table, tok, x, D, is_bf16);
}

void expert_matvec16(int is_bf16, const uint16_t *const *Wtab, int which, const int32_t *idx, const float *X, int x_div, float *Y,
                     int P, int N, int Kd, cudaStream_t st) {
  const int vec = (Kd & 7) == 0 && ((uintptr_t)X & 15) == 0;  // expert rows: cudaMalloc'd, 256-byte aligned
  expert_gemv16_kernel<1><<<dim3(blocks_for(N, 8), P), 256, 0, st>>>(Wtab, which, idx, X, x_div, Y, N, Kd, is_bf16, vec);
}

// a down-and-combine launch: a warp a pair (up to 16, then in turn), about one wave of resident
// blocks, each a multiple of 4 rows, its pairs' dots in shared memory; false (nothing launched)
// where a warp would take more than SEQ_ROWS rows
template <int NJ>
static bool down_res(int is_bf16, const uint16_t *const *Wtab, const int32_t *idx, const float *G, const float *w, float *y, int T, int K,
                     int Kp, int N, int Kd, cudaStream_t st, const uint16_t *sd) {
  // resident blocks by warps a block, asked of the driver once (thread-safe static initialization)
  static const std::array<int, 17> slots = [] {
    std::array<int, 17> r{};
    for (int w = 1; w <= 16; w++) r[w] = resident_blocks(expert_down16_res_kernel<NJ>, 32 * w, 4096);
    return r;
  }();
  const int nw = Kp < 16 ? Kp : 16;
  const long rows = (long)T * N;
  const long rpb = 4 * (long)blocks_for(blocks_for(rows, slots[nw]), 4);
  if (rpb > 2 * SEQ_ROWS || rpb * Kp * 4 > 48 * 1024) return false;  // (the dots within 48 KB of shared memory)
  launch_pdl(expert_down16_res_kernel<NJ>, blocks_for(rows, (int)rpb), 32 * nw, (size_t)rpb * Kp * 4, st, Wtab, idx, G, w, y, T, K, N, Kd,
             is_bf16, sd, (int)rpb);
  return true;
}

void expert_down_combine16(int is_bf16, const uint16_t *const *Wtab, const int32_t *idx, const float *G, const float *w, float *y, int T,
                           int K, int N, int Kd, cudaStream_t st, const uint16_t *sd) {
  const int Kp = K + (sd != nullptr);
  if (experts_res() && N % 4 == 0) {
    // four rows' loads a warp hold at most 4 chunks a lane (128 registers at 4)
    if (by_width(Kd, [&](auto nj) {
          if constexpr (nj() <= 4) return down_res<nj()>(is_bf16, Wtab, idx, G, w, y, T, K, Kp, N, Kd, st, sd);
          else return false;
        }))
      return;
  }
  launch_pdl(expert_down_combine16_kernel, dim3(blocks_for(N, 8 / DOWN_SPLIT), T), 256, 0, st, Wtab, idx, G, w, y, K, N, Kd, is_bf16, sd);
}

bool gemv_multi_ok(const mv_entry &e) {
  const uintptr_t a = (uintptr_t)e.W | (uintptr_t)e.X;
  return e.N > 0 && e.Kd > 0 && (a & 15) == 0 && e.Kd % (e.fmt == MV_F32 ? 4 : 8) == 0;
}

void gemv_multi(mv_set s, cudaStream_t st) {
  long rows = 0;
  for (int i = 0; i < s.n; i++) rows += s.e[i].N;
  // below 4096 rows a warp a row leaves SMs idle (as gemv16_split_kernel's cut; the 48B model's
  // sets are all above it, a small model's below)
  const int split = rows < 4096 ? 4 : 1;
  int blocks = 0;
  for (int i = 0; i < s.n; i++) {
    s.e[i].block0 = blocks;
    blocks += blocks_for(s.e[i].N, 8 / split);
  }
  if (split == 4)
    launch_pdl(gemv_multi_kernel<4>, blocks, 256, 0, st, s);
  else
    launch_pdl(gemv_multi_kernel<1>, blocks, 256, 0, st, s);
}

}  // namespace kle_ops
