// gemm_q8.cu: matmuls over Q8_0 weights kept 8-bit on the device (ops.cuh's q8 layout), with f32
// activations and f32 results: half the bytes and half the device memory of BF16.
//
// The layout. A GGUF Q8_0 block is 34 bytes (an F16 scale, then 32 int8), which no 16-byte load
// lines up with; the device copy splits a matrix's blocks into its n int8 quants in row-major
// order, then its n / 32 F16 scales in the same order. Value (r, k) = d[(r Kd + k) / 32] q[r Kd + k].
//
// The products are the exact ones of those values with f32 activations (the CPU engine's f32
// reference, not its int8 path): decode (up to 8 tokens) on the CUDA cores, a warp taking two
// rows, a lane 16 quants of each per load, each 16 activations it loads serving both rows; a
// quant becomes a float exactly by a byte permute and a subtraction (0x4B000000 | (q + 128) is
// 2^23 + q + 128 as a float), each half-block's sum multiplied by its scale once. More tokens
// multiply on tensor cores as gemm16.cu's GEMM does (m16n8k16, BF16 operands, f32 accumulation,
// activations as a BF16 high part and remainder), an int8 quant being exact in BF16: a k-slice of
// 32 is one block, so each slice's product goes into fresh accumulators that are then added
// scaled by the rows' block scales. Weights and activations go through registers into two stages
// of shared memory (the quants widened to BF16 on the way).
//
// Tried and not kept: the CPU engine's arithmetic (activations quantized per block of 32 in each
// block's shared memory, dp4a, int8 tensor cores): the quantization before the first weight load
// cost more than the dp4a saved (48B batch-1 step 5.40 ms profiled against 4.90 for this one),
// and a code that rounds the other way under another summation order moved random models'
// logits by 1e-2 between prefill and decode, where these agree to 1e-5. Four chunks a lane in
// flight instead of two: 3.08-3.14 against 3.02-3.03 ms a batch-1 step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "ops.cuh"
#include "tc.cuh"
#include "wstream.cuh"

namespace kle_ops {

using kle_tc::mma_bf16;

namespace {

__device__ __forceinline__ float f16f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// the four int8 of w as exact floats: byte j of w ^ 0x80808080 is q_j + 128
__device__ __forceinline__ void unpack4_q8(uint32_t w, float *f) {
  const uint32_t u = w ^ 0x80808080u;
#pragma unroll
  for (int j = 0; j < 4; j++) f[j] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u + j)) - 8388736.0f;
}

// 16 activations x[0..15]: four 16-byte loads, or one at a time where x is not 16-byte aligned
__device__ __forceinline__ void load16(const float *x, bool vec, float (&v)[16]) {
  if (vec) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const float4 a = reinterpret_cast<const float4 *>(x)[j];
      v[4 * j] = a.x, v[4 * j + 1] = a.y, v[4 * j + 2] = a.z, v[4 * j + 3] = a.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 16; j++) v[j] = x[j];
  }
}

// sum of 16 quants (one 16-byte load) times 16 activations
__device__ __forceinline__ float dot16_q8(uint4 u, const float (&x)[16]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float f[4];
    unpack4_q8(w[i], f);
    s += f[0] * x[4 * i] + f[1] * x[4 * i + 1] + f[2] * x[4 * i + 2] + f[3] * x[4 * i + 3];
  }
  return s;
}

// A matrix's row r: its quants (16-byte chunks) and block scales
struct q8row {
  const uint4 *q;
  const uint16_t *d;
};
__device__ __forceinline__ q8row q8_row(const void *W, int N, int Kd, int r) {
  const int8_t *q = static_cast<const int8_t *>(W);
  return {reinterpret_cast<const uint4 *>(q + (size_t)r * Kd), reinterpret_cast<const uint16_t *>(q + (size_t)N * Kd) + (size_t)r * (Kd / 32)};
}

// Two rows' dots over chunks i = i0 + lane, + 32, ... < i1 (16 values each) with the activations
// of NT tokens (SAME_X: one input for both rows, else x1 for row 1): this lane's partial sums
template <int NT, bool SAME_X>
__device__ __forceinline__ void dot2_q8(q8row a, q8row b, const float *x0, const float *x1, size_t x_stride, int nt, bool vec, int i0, int i1,
                                        int lane, float (&d0)[NT], float (&d1)[NT]) {
#pragma unroll 2
  for (int i = i0 + lane; i < i1; i += 32) {
    const uint4 ua = ld_stream(a.q + i), ub = ld_stream(b.q + i);
    const float sa = f16f(a.d[i / 2]), sb = f16f(b.d[i / 2]);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      if (t >= nt) break;
      float xa[16];
      load16(x0 + t * x_stride + (size_t)i * 16, vec, xa);
      d0[t] += sa * dot16_q8(ua, xa);
      if (SAME_X) {
        d1[t] += sb * dot16_q8(ub, xa);
      } else {
        float xb[16];
        load16(x1 + t * x_stride + (size_t)i * 16, vec, xb);
        d1[t] += sb * dot16_q8(ub, xb);
      }
    }
  }
}

// Y[t, r] = W[r] . X[t] for nt <= TT tokens: a warp per two rows, ks warps (1, 2, 4, 8) sharing
// them along Kd (a matrix of few rows fills the card so), their sums added in order
template <int TT>
__global__ void __launch_bounds__(256) gemv_q8_kernel(const void *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y, int nt,
                                                      int N, int Kd, int ks, int vec) {
  pdl_trigger();
  __shared__ float part[8][2][TT];
  const int wid = threadIdx.x / 32, lane = threadIdx.x % 32, q = wid % ks;
  const int r0 = 2 * (blockIdx.x * (8 / ks) + wid / ks), n16 = Kd / 16, per = (n16 + ks - 1) / ks, i0 = min(n16, q * per),
            i1 = min(n16, i0 + per);
  const bool ok0 = r0 < N, ok1 = r0 + 1 < N;
  const q8row a = q8_row(W, N, Kd, ok0 ? r0 : 0), b = q8_row(W, N, Kd, ok1 ? r0 + 1 : (ok0 ? r0 : 0));
  if (ok0 && i1 > i0) {  // this warp's weights into L2 while the kernel before finishes
    prefetch_l2(a.q + i0, 16 * (size_t)(i1 - i0), lane);
    if (ok1) prefetch_l2(b.q + i0, 16 * (size_t)(i1 - i0), lane);
  }
  pdl_wait();
  float d0[TT], d1[TT];
#pragma unroll
  for (int t = 0; t < TT; t++) d0[t] = d1[t] = 0.f;
  if (ok0) dot2_q8<TT, true>(a, b, X, X, (size_t)Kd, nt, vec, i0, i1, lane, d0, d1);
#pragma unroll
  for (int t = 0; t < TT; t++) {
    d0[t] = warp_sum(d0[t]);
    d1[t] = warp_sum(d1[t]);
  }
  if (ks > 1) {
    if (lane == 0)
#pragma unroll
      for (int t = 0; t < TT; t++) part[wid][0][t] = d0[t], part[wid][1][t] = d1[t];
    __syncthreads();
    if (q) return;
#pragma unroll
    for (int t = 0; t < TT; t++)
      for (int j = 1; j < ks; j++) d0[t] += part[wid + j][0][t], d1[t] += part[wid + j][1][t];
  }
  if (lane == 0)
#pragma unroll
    for (int t = 0; t < TT; t++) {
      if (t >= nt) break;
      if (ok0) Y[(size_t)t * N + r0] = d0[t];
      if (ok1) Y[(size_t)t * N + r0 + 1] = d1[t];
    }
}

// warps a row pair for gemv_q8_kernel: the fewest (1, 2, 4, 8) that give the card about 16 warps
// an SM, each at least two chunks a lane
int gemv_q8_split(int N, int Kd) {
  const long pairs = blocks_for(N, 2), want = 16L * (kle_tc::sm_count() > 0 ? kle_tc::sm_count() : 132);
  int ks = 1;
  while (ks < 8 && pairs * ks < want && Kd / 16 / (2 * ks) >= 64) ks *= 2;
  return ks;
}

// (token, choice) p, row r < N: G[p, r] = silu(gate_e[r] . x) * (up_e[r] . x), e = idx[p], both
// rows in one loop; pairs p >= Pr (sg not NULL) are token p - Pr's shared expert (gate sg, up su).
// Each warp takes one row of both matrices (expert_gate_up16_kernel's shape).
__global__ void __launch_bounds__(256) expert_gate_up_q8_kernel(const void *const *__restrict__ Wtab, const int32_t *__restrict__ idx,
                                                                const float *__restrict__ X, int x_div, float *__restrict__ G, int N, int Kd,
                                                                int vec, int Pr, const void *__restrict__ sg, const void *__restrict__ su) {
  pdl_wait();  // which experts: the routing just made them
  pdl_trigger();
  const int p = blockIdx.y, row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const bool sh = p >= Pr;
  const q8row gw = q8_row(sh ? sg : Wtab[(size_t)idx[p] * 3], N, Kd, row), uw = q8_row(sh ? su : Wtab[(size_t)idx[p] * 3 + 1], N, Kd, row);
  const float *x = X + (size_t)(sh ? p - Pr : p / x_div) * Kd;
  float g[1] = {0.f}, u[1] = {0.f};
  dot2_q8<1, true>(gw, uw, x, x, 0, 1, vec, 0, Kd / 16, lane, g, u);
  g[0] = warp_sum(g[0]);
  u[0] = warp_sum(u[0]);
  if (lane == 0) G[(size_t)p * N + row] = g[0] / (1.0f + expf(-g[0])) * u[0];
}

// y[t, row] = sum_k w[t, k] (down_e[row] . G[t * K + k]), e = idx[t, k], in one launch and
// expert_down_combine16_kernel's order (DOWN_SPLIT warps a row, two pairs a warp at once, one
// thread adding the dots in k order); with sd, the shared expert as pair K, weight 1
constexpr int Q8_DOWN_SPLIT = 4;
__global__ void __launch_bounds__(256) expert_down_combine_q8_kernel(const void *const *__restrict__ Wtab, const int32_t *__restrict__ idx,
                                                                     const float *__restrict__ G, const float *__restrict__ w,
                                                                     float *__restrict__ y, int K, int N, int Kd, const void *__restrict__ sd) {
  pdl_wait();
  pdl_trigger();
  __shared__ float dots[8 / Q8_DOWN_SPLIT][65];  // K <= 64 (kle_moe_route), and the shared expert
  const int t = blockIdx.y, wid = threadIdx.x / 32, lane = threadIdx.x % 32, r = wid / Q8_DOWN_SPLIT, q = wid % Q8_DOWN_SPLIT;
  const int row = blockIdx.x * (8 / Q8_DOWN_SPLIT) + r, Kp = K + (sd != nullptr);
  auto wrow = [&](int k) { return q8_row(k < K ? Wtab[(size_t)idx[(size_t)t * K + k] * 3 + 2] : sd, N, Kd, row); };
  auto xrow = [&](int k) { return G + (k < K ? (size_t)t * K + k : (size_t)gridDim.y * K + t) * Kd; };
  if (row < N) {
    for (int k0 = q; k0 < Kp; k0 += 2 * Q8_DOWN_SPLIT) {
      const int k1 = k0 + Q8_DOWN_SPLIT < Kp ? k0 + Q8_DOWN_SPLIT : k0;  // k1 == k0: one pair left
      float d0[1] = {0.f}, d1[1] = {0.f};
      dot2_q8<1, false>(wrow(k0), wrow(k1), xrow(k0), xrow(k1), 0, 1, true, 0, Kd / 16, lane, d0, d1);
      d0[0] = warp_sum(d0[0]);
      d1[0] = warp_sum(d1[0]);
      if (lane == 0) {
        dots[r][k0] = d0[0];
        if (k1 != k0) dots[r][k1] = d1[0];
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

// (token, choice) p: Y[p] = expert idx[p]'s `which` matrix times X[p / x_div], a warp per two rows
__global__ void __launch_bounds__(256) expert_gemv_q8_kernel(const void *const *__restrict__ Wtab, int which, const int32_t *__restrict__ idx,
                                                             const float *__restrict__ X, int x_div, float *__restrict__ Y, int N, int Kd,
                                                             int vec) {
  const int p = blockIdx.y, r0 = 2 * (blockIdx.x * 8 + threadIdx.x / 32), lane = threadIdx.x % 32;
  if (r0 >= N) return;
  const bool ok1 = r0 + 1 < N;
  const void *W = Wtab[(size_t)idx[p] * 3 + which];
  float d0[1] = {0.f}, d1[1] = {0.f};
  const float *x = X + (size_t)(p / x_div) * Kd;
  dot2_q8<1, true>(q8_row(W, N, Kd, r0), q8_row(W, N, Kd, ok1 ? r0 + 1 : r0), x, x, 0, 1, vec, 0, Kd / 16, lane, d0, d1);
  d0[0] = warp_sum(d0[0]);
  d1[0] = warp_sum(d1[0]);
  if (lane == 0) {
    Y[(size_t)p * N + r0] = d0[0];
    if (ok1) Y[(size_t)p * N + r0 + 1] = d1[0];
  }
}

__global__ void embed_q8_kernel(const void *__restrict__ table, int rows, const int32_t *__restrict__ tok, float *__restrict__ x, int D) {
  const q8row r = q8_row(table, rows, D, tok[blockIdx.x]);
  const int8_t *q = reinterpret_cast<const int8_t *>(r.q);
  for (int i = threadIdx.x; i < D; i += blockDim.x) x[(size_t)blockIdx.x * D + i] = f16f(r.d[i / 32]) * (float)q[i];
}

// ---------------------------------------------------------------- tensor cores
struct q8_group {
  const void *const *Wtab;
  const int32_t *offs, *order;
  int which, x_div;
};

// Y[T, N] = X[T, Kd] W^T on tensor cores, W Q8_0 (Kd % 32 == 0, X 16-byte aligned). 256 threads;
// TM = 64: 2 x 4 warps of 32 x 32 over a 64 x 128 tile; TM = 16 (experts of a few pairs): 1 x 8
// warps of 16 x 16. A thread stages 16 quants of one row (and, every other thread, the row's
// scale) and its share of the activations a slice ahead in registers, then stores them widened to
// BF16 (split into two terms for the activations under LO) into the other stage.
// GROUPED as gemm16.cu's (blockIdx.z the expert, its pairs the rows); part not NULL: split along
// Kd, blockIdx.z taking slices z kper .. z kper + kper - 1 into part + z T N.
template <bool GROUPED, int TM, bool LO>
__global__ void __launch_bounds__(256) gemm_q8_tc_kernel(const void *__restrict__ W, const float *__restrict__ X, float *__restrict__ Y, int T,
                                                         int N, int Kd, q8_group grp, int kper, float *__restrict__ part) {
  static_assert(TM == 64 || TM == 16, "tiles of 64 or 16 rows");
  constexpr int BK = 32;
  constexpr int WM = TM / 32 > 0 ? TM / 32 : 1, MI = TM / (16 * WM), NW = 8 / WM, NI = TBN / (8 * NW);
  constexpr int XV = TM * BK / 4, XJ = (XV + 255) / 256;
  __shared__ __align__(16) uint16_t Xh[2][TM][BK + TPAD], Xl[LO ? 2 : 1][LO ? TM : 1][BK + TPAD], Ws[2][TBN][BK + TPAD];
  __shared__ float Sd[2][TBN];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int n0 = blockIdx.x * TBN, wm = (warp / NW) * (16 * MI), wn = (warp % NW) * (8 * NI);
  int m0 = blockIdx.y * TM, base = 0;
  if (GROUPED) {
    base = grp.offs[blockIdx.z];
    T = grp.offs[blockIdx.z + 1] - base;
    if (m0 >= T) return;
    W = grp.Wtab[(size_t)blockIdx.z * 3 + grp.which];
  }
  const float *xrow[XJ];
#pragma unroll
  for (int j = 0; j < XJ; j++) {
    const int r = (tid + j * 256) / (BK / 4);
    const int m = tid + j * 256 < XV && m0 + r < T ? m0 + r : -1;
    xrow[j] = m < 0 ? nullptr : X + (size_t)(GROUPED ? grp.order[base + m] / grp.x_div : m) * Kd;
  }
  const int kb = GROUPED || !part ? 0 : blockIdx.z * kper;
  const int nk = GROUPED || !part ? Kd / BK : min(Kd / BK - kb, kper);
  if (!GROUPED && part) Y = part + (size_t)blockIdx.z * T * N;
  // this thread's weight row (tid / 2) and half of its 32-quant slice (tid % 2)
  const int wr = tid / 2, wh = tid % 2;
  const bool wok = n0 + wr < N;
  const q8row row = q8_row(W, N, Kd, wok ? n0 + wr : 0);
  uint4 wq;
  uint16_t wd = 0;
  float4 xr[XJ];
  auto load = [&](int k) {
    wq = wok ? ld_stream(row.q + (size_t)(kb + k) * 2 + wh) : make_uint4(0, 0, 0, 0);
    if (wh == 0) wd = wok ? row.d[kb + k] : 0;
#pragma unroll
    for (int j = 0; j < XJ; j++) {
      const int c = ((tid + j * 256) % (BK / 4)) * 4;
      xr[j] = xrow[j] ? *reinterpret_cast<const float4 *>(xrow[j] + (size_t)(kb + k) * BK + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  auto store = [&](int s) {
    const uint32_t w4[4] = {wq.x, wq.y, wq.z, wq.w};
    uint32_t h[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float f[4];
      unpack4_q8(w4[i], f);
      h[2 * i] = kle_tc::bf16_pair(f[0], f[1]);  // exact: |q| <= 128
      h[2 * i + 1] = kle_tc::bf16_pair(f[2], f[3]);
    }
    uint4 *dst = reinterpret_cast<uint4 *>(&Ws[s][wr][16 * wh]);
    dst[0] = make_uint4(h[0], h[1], h[2], h[3]);
    dst[1] = make_uint4(h[4], h[5], h[6], h[7]);
    if (wh == 0) Sd[s][wr] = f16f(wd);
#pragma unroll
    for (int j = 0; j < XJ; j++) {
      const int i = tid + j * 256, r = i / (BK / 4), c = (i % (BK / 4)) * 4;
      if (i >= XV) break;
      const float f[4] = {xr[j].x, xr[j].y, xr[j].z, xr[j].w};
#pragma unroll
      for (int q = 0; q < 4; q++) {
        if constexpr (LO) {
          uint32_t hi, lo;
          kle_tc::split_bf16_bits(f[q], hi, lo);
          Xh[s][r][c + q] = (uint16_t)hi;
          Xl[s][r][c + q] = (uint16_t)lo;
        } else {
          Xh[s][r][c + q] = __bfloat16_as_ushort(__float2bfloat16_rn(f[q]));
        }
      }
    }
  };
  float acc[MI][NI][4] = {};
  if (nk > 0) {
    load(0);
    store(0);
  }
  for (int k = 0; k < nk; k++) {
    const int s = k & 1;
    __syncthreads();  // stage s is written; every warp is past slice k - 1, so stage s ^ 1 is free
    if (k + 1 < nk) load(k + 1);
    float c[MI][NI][4] = {};
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
        b[ni][0] = *reinterpret_cast<const uint32_t *>(&Ws[s][n][kk + 2 * t4]);
        b[ni][1] = *reinterpret_cast<const uint32_t *>(&Ws[s][n][kk + 2 * t4 + 8]);
      }
      if constexpr (LO)
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
          for (int ni = 0; ni < NI; ni++) mma_bf16(c[mi][ni], al[mi], b[ni][0], b[ni][1]);
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++) mma_bf16(c[mi][ni], ah[mi], b[ni][0], b[ni][1]);
    }
    // the slice's block: c's columns 2 t4 and 2 t4 + 1 are weight rows n and n + 1
#pragma unroll
    for (int ni = 0; ni < NI; ni++) {
      const int n = wn + ni * 8 + 2 * t4;
      const float s0 = Sd[s][n], s1 = Sd[s][n + 1];
#pragma unroll
      for (int mi = 0; mi < MI; mi++) {
        acc[mi][ni][0] += s0 * c[mi][ni][0];
        acc[mi][ni][1] += s1 * c[mi][ni][1];
        acc[mi][ni][2] += s0 * c[mi][ni][2];
        acc[mi][ni][3] += s1 * c[mi][ni][3];
      }
    }
    if (k + 1 < nk) store(s ^ 1);  // stage s ^ 1 was last read in slice k - 1
  }
  kle_tc::store_c_tile<MI, NI, GROUPED>(lane, acc, Y, N, T, m0 + wm, n0 + wn, grp.order, base);
}

}  // namespace

void matmul_q8(const void *W, const float *X, float *Y, int T, int N, int Kd, cudaStream_t st, float *ws, long ws_floats, bool round_bf16) {
  const int vec = ((uintptr_t)X & 15) == 0;
  if (T > 8 && vec) {
    const int S = splits_for(T, N, Kd);
    const bool split = S > 1 && ws && ws_floats >= (long)S * T * N;
    const int kper = split ? blocks_for(Kd / 32, S) : 0, Sz = split ? blocks_for(Kd / 32, kper) : 1;
    const dim3 grid(blocks_for(N, TBN), blocks_for(T, TBM), Sz);
    auto run = [&](auto kern) { kern<<<grid, 256, 0, st>>>(W, X, split ? ws : Y, T, N, Kd, q8_group{}, kper, split ? ws : nullptr); };
    round_bf16 ? run(gemm_q8_tc_kernel<false, TBM, false>) : run(gemm_q8_tc_kernel<false, TBM, true>);
    if (split) splitk_sum(ws, Sz, (long)T * N, Y, st);
    return;
  }
  // a few tokens, or (X not aligned) any number eight at a time
  for (int t0 = 0; t0 < T; t0 += 8) {
    const int nt = min(8, T - t0), ks = gemv_q8_split(N, Kd), grid = blocks_for(blocks_for(N, 2), 8 / ks);
    const float *x = X + (size_t)t0 * Kd;
    float *y = Y + (size_t)t0 * N;
    switch (nt) {
    case 1: launch_pdl(gemv_q8_kernel<1>, grid, 256, 0, st, W, x, y, nt, N, Kd, ks, vec); break;
    case 2: launch_pdl(gemv_q8_kernel<2>, grid, 256, 0, st, W, x, y, nt, N, Kd, ks, vec); break;
    case 3: case 4: launch_pdl(gemv_q8_kernel<4>, grid, 256, 0, st, W, x, y, nt, N, Kd, ks, vec); break;
    default: launch_pdl(gemv_q8_kernel<8>, grid, 256, 0, st, W, x, y, nt, N, Kd, ks, vec); break;
    }
  }
}

void embed_q8(const void *table, int rows, const int32_t *tok, float *x, int T, int D, cudaStream_t st) {
  embed_q8_kernel<<<T, 128, 0, st>>>(table, rows, tok, x, D);
}

void expert_gate_up_q8(const void *const *Wtab, const int32_t *idx, const float *X, int x_div, float *G, int P, int N, int Kd, cudaStream_t st,
                       int T, const void *sg, const void *su) {
  const int vec = ((uintptr_t)X & 15) == 0;
  launch_pdl(expert_gate_up_q8_kernel, dim3(blocks_for(N, 8), P + (sg ? T : 0)), 256, 0, st, Wtab, idx, X, x_div, G, N, Kd, vec, P, sg, su);
}

void expert_down_combine_q8(const void *const *Wtab, const int32_t *idx, const float *G, const float *w, float *y, int T, int K, int N, int Kd,
                            cudaStream_t st, const void *sd) {
  launch_pdl(expert_down_combine_q8_kernel, dim3(blocks_for(N, 8 / Q8_DOWN_SPLIT), T), 256, 0, st, Wtab, idx, G, w, y, K, N, Kd, sd);
}

void expert_matvec_q8(const void *const *Wtab, int which, const int32_t *idx, const float *X, int x_div, float *Y, int P, int N, int Kd,
                      cudaStream_t st) {
  const int vec = ((uintptr_t)X & 15) == 0;
  expert_gemv_q8_kernel<<<dim3(blocks_for(N, 16), P), 256, 0, st>>>(Wtab, which, idx, X, x_div, Y, N, Kd, vec);
}

void grouped_mm_q8(int few, const void *const *Wtab, int which, const int32_t *offs, const int32_t *order, int E, const float *X, int x_div,
                   float *Y, int T, int N, int Kd, cudaStream_t st, bool round_bf16) {
  const q8_group grp = {Wtab, offs, order, which, x_div};
  auto run = [&](auto kern, int tm) {
    kern<<<dim3(blocks_for(N, TBN), blocks_for(T, tm), E), 256, 0, st>>>(nullptr, X, Y, T, N, Kd, grp, 0, nullptr);
  };
  if (few) round_bf16 ? run(gemm_q8_tc_kernel<true, 16, false>, 16) : run(gemm_q8_tc_kernel<true, 16, true>, 16);
  else round_bf16 ? run(gemm_q8_tc_kernel<true, TBM, false>, TBM) : run(gemm_q8_tc_kernel<true, TBM, true>, TBM);
}

}  // namespace kle_ops
