// kda_step.cu: the KDA decode step on NVIDIA GPUs (docs/model.md, section 2).
//
// The step is bandwidth-bound: each head's K x V state is read once and written once. One pass
// over the state yields both reductions the step needs, with the decay folded in:
//   a_j = sum_k exp(g_k) S_kj k_k,   b_j = sum_k exp(g_k) S_kj q_k
//   u_j = v_j - a_j;   S'_kj = exp(g_k) S_kj + beta k_k u_j;   o_j = scale (b_j + beta u_j (k.q))
// and the new values are written from registers (each thread holds K/KW of them, so nothing is
// read twice). Loads and stores are coalesced across the warp (consecutive columns); q, k and
// exp(g) sit in shared memory.
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <math.h>

#include "../include/kle_cuda.h"
#include "tc.cuh"

namespace cg = cooperative_groups;


using kle_tc::overlap_launch;

// Sums |q|^2, |k|^2 and k.q partials over the block's KW warps (this thread: lane of warp w; red:
// [3][KW] scratch; ends with a barrier).
template <int KW>
__device__ __forceinline__ void kda_token_sums(float pq, float pk, float pqk, int lane, int w, float (*red)[KW], float &tq, float &tk,
                                               float &kq) {
  for (int off = 16; off; off >>= 1) {
    pq += __shfl_xor_sync(0xffffffffu, pq, off);
    pk += __shfl_xor_sync(0xffffffffu, pk, off);
    pqk += __shfl_xor_sync(0xffffffffu, pqk, off);
  }
  if (lane == 0) {
    red[0][w] = pq;
    red[1][w] = pk;
    red[2][w] = pqk;
  }
  __syncthreads();
  tq = tk = kq = 0.f;
#pragma unroll
  for (int i = 0; i < KW; i++) {
    tq += red[0][i];
    tk += red[1][i];
    kq += red[2][i];
  }
}

// Stages one token's q, k and exp(g) of one head in shared memory and returns |q|^2, |k|^2 and
// k.q summed over the block.
template <int K, int KW>
__device__ __forceinline__ void kda_stage_token(const float *__restrict__ qh, const float *__restrict__ kh, const float *__restrict__ gh,
                                                float *sq, float *sk, float *se, float (*red)[KW], float &tq, float &tk, float &kq) {
  const int tid = threadIdx.y * 32 + threadIdx.x;
  float pq = 0.f, pk = 0.f, pqk = 0.f;
  for (int i = tid; i < K; i += 32 * KW) {
    const float a = qh[i], b = kh[i];
    sq[i] = a;
    sk[i] = b;
    se[i] = __expf(gh[i]);
    pq += a * a;
    pk += b * b;
    pqk += a * b;
  }
  kda_token_sums<KW>(pq, pk, pqk, threadIdx.x, threadIdx.y, red, tq, tk, kq);
}

// Decays this thread's R state values in place (rows w*R ..) and returns a = sum_k S_kj k_k and
// bq = sum_k S_kj q_k of the decayed state for this column, summed over the block's KW warps
// (ra, rb: [KW][32] scratch; contains a block barrier).
template <int R, int KW>
__device__ __forceinline__ void kda_decay_reduce(float (&s)[R], const float *se, const float *sk, const float *sq,
                                                 float (*ra)[32], float (*rb)[32], float &a, float &bq) {
  const int lane = threadIdx.x, w = threadIdx.y;
  float pa = 0.f, pb = 0.f;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int i = w * R + r;
    s[r] *= se[i];
    pa += s[r] * sk[i];
    pb += s[r] * sq[i];
  }
  ra[w][lane] = pa;
  rb[w][lane] = pb;
  __syncthreads();
  a = 0.f;
  bq = 0.f;
#pragma unroll
  for (int i = 0; i < KW; i++) {
    a += ra[i][lane];
    bq += rb[i][lane];
  }
}

// CPL consecutive floats at p (vector loads where CPL allows; p aligned to them)
template <int CPL>
__device__ __forceinline__ void load_cols(float (&d)[CPL], const float *__restrict__ p) {
  if constexpr (CPL % 4 == 0) {
#pragma unroll
    for (int i = 0; i < CPL / 4; i++) {
      const float4 t = reinterpret_cast<const float4 *>(p)[i];
      d[4 * i] = t.x, d[4 * i + 1] = t.y, d[4 * i + 2] = t.z, d[4 * i + 3] = t.w;
    }
  } else if constexpr (CPL == 2) {
    const float2 t = *reinterpret_cast<const float2 *>(p);
    d[0] = t.x, d[1] = t.y;
  } else {
#pragma unroll
    for (int i = 0; i < CPL; i++) d[i] = p[i];
  }
}
template <int CPL>
__device__ __forceinline__ void store_cols(float *__restrict__ p, const float (&d)[CPL]) {
  if constexpr (CPL % 4 == 0) {
#pragma unroll
    for (int i = 0; i < CPL / 4; i++) reinterpret_cast<float4 *>(p)[i] = make_float4(d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]);
  } else if constexpr (CPL == 2) {
    *reinterpret_cast<float2 *>(p) = make_float2(d[0], d[1]);
  } else {
#pragma unroll
    for (int i = 0; i < CPL; i++) p[i] = d[i];
  }
}

// Decays this thread's R rows (row0 ..) of CPL columns in place and returns their shares of
// a = sum_k S_kj k_k and bq = sum_k S_kj q_k for each column.
template <int R, int CPL>
__device__ __forceinline__ void rows_decay_partials(float (&d)[R][CPL], int row0, const float *se, const float *sk, const float *sq,
                                                    float (&pa)[CPL], float (&pb)[CPL]) {
#pragma unroll
  for (int c = 0; c < CPL; c++) pa[c] = pb[c] = 0.f;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float e = se[row0 + r], kk = sk[row0 + r], qq = sq[row0 + r];
#pragma unroll
    for (int c = 0; c < CPL; c++) {
      d[r][c] *= e;
      pa[c] += d[r][c] * kk;
      pb[c] += d[r][c] * qq;
    }
  }
}

// out = sum over the KW warps' partials part[i][c0 ..] (shared memory, rows of VT floats)
template <int KW, int CPL, int VT>
__device__ __forceinline__ void sum_cols(const float (*part)[VT], int c0, float (&out)[CPL]) {
  float x[CPL];
#pragma unroll
  for (int c = 0; c < CPL; c++) out[c] = 0.f;
#pragma unroll
  for (int i = 0; i < KW; i++) {
    load_cols<CPL>(x, &part[i][c0]);
#pragma unroll
    for (int c = 0; c < CPL; c++) out[c] += x[c];
  }
}

// The delta rule's update of this thread's rows: u_j = v_j - a_j nk (a = sum_k S_kj k_k over the
// unnormalized k), S'_kj = d_kj + beta u_j nk k_k, written back to Sh (row r at Sh + r * V);
// returns u for the output.
template <int R, int CPL>
__device__ __forceinline__ void rows_update_store(const float (&d)[R][CPL], int row0, const float *sk, const float (&vv)[CPL],
                                                  const float (&av)[CPL], float nk, float bt, float (&u)[CPL], float *Sh, int V) {
  float wk[CPL];
#pragma unroll
  for (int c = 0; c < CPL; c++) {
    u[c] = vv[c] - av[c] * nk;
    wk[c] = bt * u[c] * nk;
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float kk = sk[row0 + r];
    float x[CPL];
#pragma unroll
    for (int c = 0; c < CPL; c++) x[c] = d[r][c] + wk[c] * kk;
    store_cols<CPL>(Sh + (size_t)(row0 + r) * V, x);
  }
}

// Block: one head's 32-column tile; KW warps split the K rows (lane = column), so a head's
// state is covered by V/32 blocks of KW*32 threads and every thread walks only K/KW rows:
// enough blocks and short dependency chains even at batch 1.
template <int K, int KW>
__global__ void __launch_bounds__(32 * KW) kda_step_kernel(float *__restrict__ S, const float *__restrict__ q, const float *__restrict__ k,
                                           const float *__restrict__ v, const float *__restrict__ g, const float *__restrict__ beta,
                                           float *__restrict__ o, int V, float scale, int l2norm) {
  constexpr int R = K / KW;  // rows per warp
  const int bh = blockIdx.x;
  const int lane = threadIdx.x, w = threadIdx.y;
  const int col = blockIdx.y * 32 + lane;
  __shared__ float sq[K], sk[K], se[K], ra[KW][32], rb[KW][32], red[3][KW];
  // The state loads go first, before the token's: they are the step's long pole and need nothing
  // from the kernel before (which, launched with KLE_CUDA_KDA_OVERLAP, may still be running).
  float *Sh = S + (size_t)bh * K * V + col;
  const bool live = col < V;
  float d[R];  // this thread's R decayed state values, kept for the write-back
#pragma unroll
  for (int r = 0; r < R; r++) d[r] = live ? Sh[(size_t)(w * R + r) * V] : 0.f;
  cudaGridDependencySynchronize();  // q, k, v, g, beta: the kernel before may have written them
  float tq, tk, kq;
  kda_stage_token<K, KW>(q + (size_t)bh * K, k + (size_t)bh * K, g + (size_t)bh * K, sq, sk, se, red, tq, tk, kq);
  const float nq = l2norm ? rsqrtf(tq + 1e-6f) : 1.f, nk = l2norm ? rsqrtf(tk + 1e-6f) : 1.f;
  float a, bq;
  kda_decay_reduce<R, KW>(d, se, sk, sq, ra, rb, a, bq);
  if (!live) return;
  a *= nk;
  bq *= nq;
  kq *= nk * nq;
  const float bt = beta[bh];
  const float u = v[(size_t)bh * V + col] - a;
  const float wk = bt * u * nk;
#pragma unroll
  for (int r = 0; r < R; r++) Sh[(size_t)(w * R + r) * V] = d[r] + wk * sk[w * R + r];
  if (w == 0) o[(size_t)bh * V + col] = scale * (bq + bt * u * kq);
}

// Block: one head's tile of 32 CPL columns, each lane CPL consecutive columns (at CPL = 4 a warp
// reads and writes whole 512-byte rows of a 128-wide state), 4 warps splitting the K rows: for
// batches, where blocks are plenty. Whole rows beat the 32-column tiles above (whose rows four
// blocks read in pieces), and about 16 warps of long row streams an SM beat fewer or more:
// kernels-cuda/README.md, 'Layouts measured'.
template <int K, int CPL>
__global__ void __launch_bounds__(128) kda_step_rows_kernel(float *__restrict__ S, const float *__restrict__ q, const float *__restrict__ k,
                                                            const float *__restrict__ v, const float *__restrict__ g,
                                                            const float *__restrict__ beta, float *__restrict__ o, int V, float scale,
                                                            int l2norm) {
  constexpr int KW = 4, R = K / KW, VT = 32 * CPL;
  const int nt = V / VT, bh = blockIdx.x / nt;
  const int lane = threadIdx.x, w = threadIdx.y;
  const int col = (blockIdx.x % nt) * VT + CPL * lane;
  __shared__ float sq[K], sk[K], se[K], red[3][KW];
  __shared__ __align__(16) float ra[KW][VT], rb[KW][VT];
  float *Sh = S + (size_t)bh * K * V + col;
  float d[R][CPL];
#pragma unroll
  for (int r = 0; r < R; r++) load_cols<CPL>(d[r], Sh + (size_t)(w * R + r) * V);
  cudaGridDependencySynchronize();
  float tq, tk, kq;
  kda_stage_token<K, KW>(q + (size_t)bh * K, k + (size_t)bh * K, g + (size_t)bh * K, sq, sk, se, red, tq, tk, kq);
  const float nq = l2norm ? rsqrtf(tq + 1e-6f) : 1.f, nk = l2norm ? rsqrtf(tk + 1e-6f) : 1.f;
  float pa[CPL], pb[CPL];
  rows_decay_partials<R, CPL>(d, w * R, se, sk, sq, pa, pb);
  store_cols<CPL>(&ra[w][CPL * lane], pa);
  store_cols<CPL>(&rb[w][CPL * lane], pb);
  __syncthreads();
  float av[CPL], bv[CPL], vv[CPL], u[CPL];
  sum_cols<KW, CPL, VT>(ra, CPL * lane, av);
  load_cols<CPL>(vv, v + (size_t)bh * V + col);
  kq *= nk * nq;
  const float bt = beta[bh];
  rows_update_store<R, CPL>(d, w * R, sk, vv, av, nk, bt, u, Sh, V);
  if (w == 0) {
    sum_cols<KW, CPL, VT>(rb, CPL * lane, bv);
#pragma unroll
    for (int c = 0; c < CPL; c++) bv[c] = scale * (bv[c] * nq + bt * u[c] * kq);
    store_cols<CPL>(o + (size_t)bh * V + col, bv);
  }
}

extern "C" int kle_cuda_kda_step(float *S, const float *q, const float *k, const float *v, const float *g,
                                 const float *beta, float *o, int B, int H, int K, int V, float scale, int flags,
                                 void *stream) {
  if (B <= 0 || H <= 0 || V <= 0 || V % 32 || (K != 64 && K != 128) || (flags & ~(KLE_KDA_L2NORM_QK | KLE_CUDA_KDA_OVERLAP)))
    return KLE_EINVAL;
  // few blocks (small batch): 8 warps a block, so each thread's chain of rows is shorter and
  // the latency of one step drops; many blocks: 4 warps, fewer threads doing the q/k set-up
  const bool wide = (long)B * H * (V / 32) < 4L * 132;
  void (*kern)(float *, const float *, const float *, const float *, const float *, const float *, float *, int, float, int) =
      K == 128 ? (wide ? kda_step_kernel<128, 8> : kda_step_kernel<128, 4>) : (wide ? kda_step_kernel<64, 8> : kda_step_kernel<64, 4>);
  cudaLaunchAttribute attr[1];
  if (!wide && V % 128 == 0) {
    // up to about 4 waves of 128-column blocks (batch <= 32 at 32 heads), 64-column ones
    const bool half = (long)B * H * (V / 128) < 8L * 132;
    void (*rk)(float *, const float *, const float *, const float *, const float *, const float *, float *, int, float, int) =
        K == 128 ? (half ? kda_step_rows_kernel<128, 2> : kda_step_rows_kernel<128, 4>)
                 : (half ? kda_step_rows_kernel<64, 2> : kda_step_rows_kernel<64, 4>);
    const cudaLaunchConfig_t rc = overlap_launch(dim3(B * H * (V / (half ? 64 : 128))), dim3(32, 4), stream, flags & KLE_CUDA_KDA_OVERLAP, attr);
    const cudaError_t e = cudaLaunchKernelEx(&rc, rk, S, q, k, v, g, beta, o, V, scale, flags & KLE_KDA_L2NORM_QK);
    return e == cudaSuccess && cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
  }
  const cudaLaunchConfig_t cfg = overlap_launch(dim3(B * H, V / 32), dim3(32, wide ? 8 : 4), stream, flags & KLE_CUDA_KDA_OVERLAP, attr);
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kern, S, q, k, v, g, beta, o, V, scale, flags & KLE_KDA_L2NORM_QK);
  return e == cudaSuccess && cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}

// One channel's short conv for one sequence: the window (W-1 tail rows and the new x) and the
// weights are loaded into registers first, so that every load of the layer step is in flight at
// once; WM bounds W at compile time.
template <int WM>
struct ConvChannel {
  float x, tail[WM - 1], w[WM];
  // the weights and the tail: this layer's own, which the kernel before does not write
  __device__ __forceinline__ void load_window(const float *__restrict__ ws, const float *__restrict__ ts, int b, int c, int C, int W) {
    const float *tb = ts + (size_t)b * (W - 1) * C + c;
#pragma unroll
    for (int i = 0; i < WM; i++) w[i] = i < W ? ws[(size_t)i * C + c] : 0.f;
#pragma unroll
    for (int i = 0; i < WM - 1; i++) tail[i] = i < W - 1 ? tb[(size_t)i * C] : 0.f;
  }
  // the token's projection, which it may have just written
  __device__ __forceinline__ void load_x(const float *__restrict__ xs, int b, int c, int C) { x = xs[(size_t)b * C + c]; }
  // silu(sum_i w[i] x_{t-W+1+i})
  __device__ __forceinline__ float silu_conv(int W) const {
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < WM; i++)  // constant indices only: the arrays stay in registers
      acc += i < W - 1 ? w[i] * tail[i < WM - 1 ? i : 0] : i == W - 1 ? w[i] * x : 0.f;
    return acc / (1.0f + __expf(-acc));
  }
  // the tail shifted by one token, written after every block of the cluster has read it
  __device__ __forceinline__ void store_tail(float *__restrict__ ts, int b, int c, int C, int W) const {
    float *tb = ts + (size_t)b * (W - 1) * C + c;
#pragma unroll
    for (int i = 0; i < WM - 1; i++)
      if (i < W - 1) tb[(size_t)i * C] = i + 1 < W - 1 ? tail[i + 1] : x;
  }
};

// q and k channel c of one token, for both layer kernels: the two convs and the forget gate,
// staged in shared memory at c; returns the channel's shares of |q|^2, |k|^2 and k.q
template <int WM>
__device__ __forceinline__ void stage_qk_channel(const ConvChannel<WM> &cq, const ConvChannel<WM> &ck, float graw, float dtb, float alog,
                                                 float lower_bound, int W, int c, float *sq, float *sk, float *se, float &pq, float &pk,
                                                 float &pqk) {
  const float qv = cq.silu_conv(W), kv = ck.silu_conv(W), z = graw + dtb;
  const float gv = lower_bound == 0.f ? -alog * (z > 20.f ? z : log1pf(__expf(z))) : lower_bound / (1.0f + __expf(-alog * z));
  sq[c] = qv;
  sk[c] = kv;
  se[c] = __expf(gv);
  pq = qv * qv;
  pk = kv * kv;
  pqk = qv * kv;
}

// Sequence b's conv tails and state: its slice of the batch's arrays, or, in a batched step
// (a.rows), its own session's, whose tails are then addressed as sequence 0
struct SeqState {
  float *tq, *tk, *tv, *S;
  int tb;
  __device__ SeqState(const kle_cuda_kda_layer_args &a, int b, int H, int K, int V) {
    if (a.rows) {
      void *const *p = a.rows + (size_t)b * KLE_CUDA_ROW_SLOTS;
      tq = (float *)p[0], tk = (float *)p[1], tv = (float *)p[2], S = (float *)p[3], tb = 0;
    } else {
      tq = a.tq, tk = a.tk, tv = a.tv, S = a.S + (size_t)b * H * K * V, tb = b;
    }
  }
};

// The whole layer step: a cluster of V/32 blocks per (sequence, head), each block the step
// kernel's 32-column tile. Every block computes the head's conv'd q and k and the gate itself
// (K channels, cheaper than sharing them), its own 32 channels of v, then the recurrence; the
// output RMSNorm over the head's V columns adds the blocks' partials through distributed shared
// memory (each block stores its partial into every block, then one cluster barrier), so the
// normalized, gated output is written once. All global loads are issued before the first
// barrier: at batch 1 the step is a chain of latencies, not of bandwidth.
template <int K, int KW, int WM>
__global__ void __launch_bounds__(32 * KW) kda_layer_step_kernel(kle_cuda_kda_layer_args a, int H, int V, int W, float scale) {
  constexpr int R = K / KW;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
  const int col = blockIdx.y * 32 + lane;  // V % 32 == 0: every column is live
  const int HK = H * K, HV = H * V, cq = h * K + tid, cv = h * V + col;
  __shared__ float sq[K], sk[K], se[K], ra[KW][32], rb[KW][32], red[3][KW], snorm[8];
  cg::cluster_group cluster = cg::this_cluster();
  const SeqState ss(a, b, H, K, V);
  float *Sh = ss.S + (size_t)h * K * V + col;
  float d[R];
#pragma unroll
  for (int r = 0; r < R; r++) d[r] = Sh[(size_t)(w * R + r) * V];
  ConvChannel<WM> cq_, ck_, cv_;
  float graw = 0.f, dtb = 0.f, oraw = 0.f, onorm = 0.f;
  const bool qk = tid < K;  // K <= 32 KW: one q/k channel a thread
  // first what the layer owns (state, conv windows, weights), then, once the kernel before has
  // finished (with KLE_CUDA_KDA_OVERLAP it may still be running until here), the projections
  if (qk) {
    cq_.load_window(a.wq, ss.tq, ss.tb, cq, HK, W);
    ck_.load_window(a.wk, ss.tk, ss.tb, cq, HK, W);
    dtb = a.dt_bias ? a.dt_bias[cq] : 0.f;
  }
  if (w == 0) {
    cv_.load_window(a.wv, ss.tv, ss.tb, cv, HV, W);
    onorm = a.onorm[col];
  }
  const float alog = __expf(a.A_log[h]);
  cudaGridDependencySynchronize();
  if (qk) {
    cq_.load_x(a.xq, b, cq, HK);
    ck_.load_x(a.xk, b, cq, HK);
    graw = a.graw[(size_t)b * HK + cq];
  }
  if (w == 0) {
    cv_.load_x(a.xv, b, cv, HV);
    oraw = a.oraw[(size_t)b * HV + cv];
  }
  const float braw = a.braw[bh];
  float pq = 0.f, pk = 0.f, pqk = 0.f;
  if (qk) stage_qk_channel<WM>(cq_, ck_, graw, dtb, alog, a.lower_bound, W, tid, sq, sk, se, pq, pk, pqk);
  float tq, tk, kq;
  kda_token_sums<KW>(pq, pk, pqk, lane, w, red, tq, tk, kq);
  const float nq = rsqrtf(tq + 1e-6f), nk = rsqrtf(tk + 1e-6f);
  float av, bq;
  kda_decay_reduce<R, KW>(d, se, sk, sq, ra, rb, av, bq);
  av *= nk;
  bq *= nq;
  kq *= nk * nq;
  const float bt = 1.0f / (1.0f + __expf(-braw));
  // every warp needs u for its rows of the state; the v conv sits in warp 0
  __syncthreads();
  if (w == 0) ra[0][lane] = cv_.silu_conv(W);
  __syncthreads();
  const float u = ra[0][lane] - av;
  const float wk = bt * u * nk;
#pragma unroll
  for (int r = 0; r < R; r++) Sh[(size_t)(w * R + r) * V] = d[r] + wk * sk[w * R + r];
  const float ov = scale * (bq + bt * u * kq);
  const unsigned me = cluster.block_rank(), nb = cluster.num_blocks();
  if (w == 0) {
    float ss = ov * ov;
    for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane < (int)nb) cluster.map_shared_rank(snorm, lane)[me] = ss;
  }
  cluster.sync();  // every partial has landed, and every block has read the conv tails
  if (w == 0) {
    float tot = 0.f;
    for (unsigned r = 0; r < nb; r++) tot += snorm[r];
    const float inv = rsqrtf(tot / (float)V + a.eps);
    a.o[(size_t)b * HV + cv] = ov * inv * onorm / (1.0f + __expf(-oraw));
    cv_.store_tail(ss.tv, ss.tb, cv, HV, W);
  }
  if (qk && tid % (int)nb == (int)me) {  // this block's share of the head's q and k tails
    cq_.store_tail(ss.tq, ss.tb, cq, HK, W);
    ck_.store_tail(ss.tk, ss.tb, cq, HK, W);
  }
}

// The whole layer step with one block per (sequence, head): 16 warps split the K rows, each lane
// CPL = V/32 consecutive columns (a warp reads whole rows). Threads below K run q and k channel
// tid's convs, the next V threads v's; the output norm is warp 0's (it holds every column), so
// two block barriers are all the step needs.
template <int K, int CPL, int WM>
__global__ void __launch_bounds__(512) kda_layer_head_kernel(kle_cuda_kda_layer_args a, int H, int W, float scale) {
  constexpr int KW = 16, R = K / KW, V = 32 * CPL;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  // a 1-D block: with w taken from threadIdx.y this kernel was slower (README, 'Layouts measured')
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, tid = threadIdx.x;
  const int HK = H * K, HV = H * V;
  __shared__ float sq[K], sk[K], se[K], sv[V], red[3][KW];
  __shared__ __align__(16) float ra[KW][V], rb[KW][V];
  const SeqState ss(a, b, H, K, V);
  float *Sh = ss.S + (size_t)h * K * V + CPL * lane;
  float d[R][CPL];
#pragma unroll
  for (int r = 0; r < R; r++) load_cols<CPL>(d[r], Sh + (size_t)(w * R + r) * V);
  const bool is_qk = tid < K, is_v = !is_qk && tid < K + V;
  const int cq = h * K + tid, cv = h * V + (tid - K);
  ConvChannel<WM> c1, c2;  // q and k, or v in c1
  float dtb = 0.f, onorm[CPL];
  if (is_qk) {
    c1.load_window(a.wq, ss.tq, ss.tb, cq, HK, W);
    c2.load_window(a.wk, ss.tk, ss.tb, cq, HK, W);
    dtb = a.dt_bias ? a.dt_bias[cq] : 0.f;
  } else if (is_v) {
    c1.load_window(a.wv, ss.tv, ss.tb, cv, HV, W);
  }
  if (w == 0) load_cols<CPL>(onorm, a.onorm + CPL * lane);
  const float alog = __expf(a.A_log[h]);
  cudaGridDependencySynchronize();
  float graw = 0.f, oraw[CPL];
  if (is_qk) {
    c1.load_x(a.xq, b, cq, HK);
    c2.load_x(a.xk, b, cq, HK);
    graw = a.graw[(size_t)b * HK + cq];
  } else if (is_v) {
    c1.load_x(a.xv, b, cv, HV);
  }
  if (w == 0) load_cols<CPL>(oraw, a.oraw + (size_t)b * HV + h * V + CPL * lane);
  const float braw = a.braw[bh];
  float pq = 0.f, pk = 0.f, pqk = 0.f;
  if (is_qk)
    stage_qk_channel<WM>(c1, c2, graw, dtb, alog, a.lower_bound, W, tid, sq, sk, se, pq, pk, pqk);
  else if (is_v)
    sv[tid - K] = c1.silu_conv(W);
  float tq, tk, kq;
  kda_token_sums<KW>(pq, pk, pqk, lane, w, red, tq, tk, kq);
  const float nq = rsqrtf(tq + 1e-6f), nk = rsqrtf(tk + 1e-6f);
  kq *= nk * nq;
  float pa[CPL], pb[CPL];
  rows_decay_partials<R, CPL>(d, w * R, se, sk, sq, pa, pb);
  store_cols<CPL>(&ra[w][CPL * lane], pa);
  store_cols<CPL>(&rb[w][CPL * lane], pb);
  __syncthreads();
  float av[CPL], vv[CPL], u[CPL];
  sum_cols<KW, CPL, V>(ra, CPL * lane, av);
  load_cols<CPL>(vv, &sv[CPL * lane]);
  const float bt = 1.0f / (1.0f + __expf(-braw));
  rows_update_store<R, CPL>(d, w * R, sk, vv, av, nk, bt, u, Sh, V);
  if (w == 0) {
    float ov[CPL], ss = 0.f;
    sum_cols<KW, CPL, V>(rb, CPL * lane, ov);
#pragma unroll
    for (int c = 0; c < CPL; c++) {
      ov[c] = scale * (ov[c] * nq + bt * u[c] * kq);
      ss += ov[c] * ov[c];
    }
    for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float inv = rsqrtf(ss / (float)V + a.eps);
#pragma unroll
    for (int c = 0; c < CPL; c++) ov[c] = ov[c] * inv * onorm[c] / (1.0f + __expf(-oraw[c]));
    store_cols<CPL>(a.o + (size_t)b * HV + h * V + CPL * lane, ov);
  }
  if (is_qk) {
    c1.store_tail(ss.tq, ss.tb, cq, HK, W);
    c2.store_tail(ss.tk, ss.tb, cq, HK, W);
  } else if (is_v) {
    c1.store_tail(ss.tv, ss.tb, cv, HV, W);
  }
}

template <int K, int WM>
static void (*head_kernel_for(int cpl))(kle_cuda_kda_layer_args, int, int, float) {
  switch (cpl) {
    case 2: return kda_layer_head_kernel<K, 2, WM>;
    case 4: return kda_layer_head_kernel<K, 4, WM>;
    case 8: return kda_layer_head_kernel<K, 8, WM>;
    default: return nullptr;
  }
}

extern "C" int kle_cuda_kda_layer_step(const kle_cuda_kda_layer_args *args, int B, int H, int K, int V, int W, float scale,
                                       void *stream) {
  if (!args || B <= 0 || H <= 0 || V <= 0 || V % 32 || V > 256 || (K != 64 && K != 128) || W < 1 || W > 16 ||
      (args->flags & ~KLE_CUDA_KDA_OVERLAP))
    return KLE_EINVAL;
  // as the step: with few blocks (small batch) a head's tiles spread over a cluster of blocks
  // (short row chains per thread, every SM streaming); with many, one block a head where V/32
  // allows it (no cluster barrier, no conv done twice; README, 'Layouts measured')
  const bool wide = (long)B * H * (V / 32) < 4L * 132, small_w = W <= 4;
  void (*hk)(kle_cuda_kda_layer_args, int, int, float) =
      wide ? nullptr
           : K == 128 ? (small_w ? head_kernel_for<128, 4>(V / 32) : head_kernel_for<128, 16>(V / 32))
                      : (small_w ? head_kernel_for<64, 4>(V / 32) : head_kernel_for<64, 16>(V / 32));
  if (hk) {
    cudaLaunchAttribute at1[1];
    const cudaLaunchConfig_t c1 = overlap_launch(dim3(B * H), dim3(512), stream, args->flags & KLE_CUDA_KDA_OVERLAP, at1);
    const cudaError_t e = cudaLaunchKernelEx(&c1, hk, *args, H, W, scale);
    return e == cudaSuccess && cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
  }
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t cfg = overlap_launch(dim3(B * H, V / 32), dim3(32, wide ? 8 : 4), stream, args->flags & KLE_CUDA_KDA_OVERLAP, attr + 1);
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = V / 32;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs += 1;
  void (*kern)(kle_cuda_kda_layer_args, int, int, int, float) =
      K == 128 ? (wide ? (small_w ? kda_layer_step_kernel<128, 8, 4> : kda_layer_step_kernel<128, 8, 16>)
                       : (small_w ? kda_layer_step_kernel<128, 4, 4> : kda_layer_step_kernel<128, 4, 16>))
               : (wide ? (small_w ? kda_layer_step_kernel<64, 8, 4> : kda_layer_step_kernel<64, 8, 16>)
                       : (small_w ? kda_layer_step_kernel<64, 4, 4> : kda_layer_step_kernel<64, 4, 16>));
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kern, *args, H, V, W, scale);
  return e == cudaSuccess && cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}

// T tokens of one sequence, token after token, the state held in registers from the first token
// to the last: the same block layout and math as the step, one load and one store of the state
// per call instead of per token. Any K in {32, 64, 128} (the step kernel's tuned shapes are
// 64 and 128), V a multiple of 32. q, k, g: [T, H, K]; v, o: [T, H, V]; beta: [T, H].
template <int K, int KW>
__global__ void __launch_bounds__(32 * KW) kda_recurrent_kernel(float *__restrict__ S, const float *__restrict__ q,
                                                               const float *__restrict__ k, const float *__restrict__ v,
                                                               const float *__restrict__ g, const float *__restrict__ beta,
                                                               float *__restrict__ o, int T, int H, int V, float scale, int l2norm) {
  constexpr int R = K / KW;
  const int h = blockIdx.x, lane = threadIdx.x, w = threadIdx.y;
  const int col = blockIdx.y * 32 + lane;
  __shared__ float sq[K], sk[K], se[K], ra[KW][32], rb[KW][32], red[3][KW];
  float *Sh = S + (size_t)h * K * V + col;
  float s[R];
#pragma unroll
  for (int r = 0; r < R; r++) s[r] = Sh[(size_t)(w * R + r) * V];
  for (int t = 0; t < T; t++) {
    const size_t hk = ((size_t)t * H + h) * K;
    float tq, tk, kq;
    kda_stage_token<K, KW>(q + hk, k + hk, g + hk, sq, sk, se, red, tq, tk, kq);
    const float nq = l2norm ? rsqrtf(tq + 1e-6f) : 1.f, nk = l2norm ? rsqrtf(tk + 1e-6f) : 1.f;
    float a, bq;
    kda_decay_reduce<R, KW>(s, se, sk, sq, ra, rb, a, bq);
    a *= nk;
    bq *= nq;
    kq *= nk * nq;
    const size_t th = (size_t)t * H + h;
    const float bt = beta[th];
    const float u = (col < V ? v[th * V + col] : 0.f) - a;
    const float wk = bt * u * nk;
#pragma unroll
    for (int r = 0; r < R; r++) s[r] += wk * sk[w * R + r];
    if (w == 0 && col < V) o[th * V + col] = scale * (bq + bt * u * kq);
    __syncthreads();  // sq/sk/se/red/ra are refilled by the next token
  }
  if (col < V)
#pragma unroll
    for (int r = 0; r < R; r++) Sh[(size_t)(w * R + r) * V] = s[r];
}

extern "C" int kle_cuda_kda_recurrent(float *S, const float *q, const float *k, const float *v, const float *g,
                                      const float *beta, float *o, int T, int H, int K, int V, float scale, int flags,
                                      void *stream) {
  if (T <= 0 || H <= 0 || V <= 0 || V % 32 || (K != 32 && K != 64 && K != 128) || (flags & ~1)) return KLE_EINVAL;
  dim3 grid(H, V / 32);
  cudaStream_t st = (cudaStream_t)stream;
  if (K == 128)
    kda_recurrent_kernel<128, 4><<<grid, dim3(32, 4), 0, st>>>(S, q, k, v, g, beta, o, T, H, V, scale, flags & 1);
  else if (K == 64)
    kda_recurrent_kernel<64, 4><<<grid, dim3(32, 4), 0, st>>>(S, q, k, v, g, beta, o, T, H, V, scale, flags & 1);
  else
    kda_recurrent_kernel<32, 4><<<grid, dim3(32, 4), 0, st>>>(S, q, k, v, g, beta, o, T, H, V, scale, flags & 1);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}
