// kda_step.cu: the KDA decode step on NVIDIA GPUs.
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

namespace cg = cooperative_groups;

#define KLE_OK 0
#define KLE_EINVAL (-1)

// Sums |q|^2, |k|^2 and k.q partials over the block (red: [3][KW] scratch; ends with a barrier).
template <int KW>
__device__ __forceinline__ void kda_token_sums(float pq, float pk, float pqk, float (*red)[KW], float &tq, float &tk, float &kq) {
  const int lane = threadIdx.x, w = threadIdx.y;
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
  kda_token_sums<KW>(pq, pk, pqk, red, tq, tk, kq);
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
  float tq, tk, kq;
  kda_stage_token<K, KW>(q + (size_t)bh * K, k + (size_t)bh * K, g + (size_t)bh * K, sq, sk, se, red, tq, tk, kq);
  const float nq = l2norm ? rsqrtf(tq + 1e-6f) : 1.f, nk = l2norm ? rsqrtf(tk + 1e-6f) : 1.f;
  float *Sh = S + (size_t)bh * K * V + col;
  const bool live = col < V;
  float d[R];  // this thread's R decayed state values, kept for the write-back
#pragma unroll
  for (int r = 0; r < R; r++) d[r] = live ? Sh[(size_t)(w * R + r) * V] : 0.f;
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

extern "C" int kle_cuda_kda_step(float *S, const float *q, const float *k, const float *v, const float *g,
                                 const float *beta, float *o, int B, int H, int K, int V, float scale, int flags,
                                 void *stream) {
  if (B <= 0 || H <= 0 || V <= 0 || V % 32 || (K != 64 && K != 128) || (flags & ~1)) return KLE_EINVAL;
  (void)H;
  dim3 grid(B * H, V / 32);
  cudaStream_t st = (cudaStream_t)stream;
  // few blocks (small batch): 8 warps a block, so each thread's chain of rows is shorter and
  // the latency of one step drops; many blocks: 4 warps, fewer threads doing the q/k set-up
  const bool wide = (long)B * H * (V / 32) < 4L * 132;
  if (K == 128 && wide)
    kda_step_kernel<128, 8><<<grid, dim3(32, 8), 0, st>>>(S, q, k, v, g, beta, o, V, scale, flags & 1);
  else if (K == 128)
    kda_step_kernel<128, 4><<<grid, dim3(32, 4), 0, st>>>(S, q, k, v, g, beta, o, V, scale, flags & 1);
  else if (wide)
    kda_step_kernel<64, 8><<<grid, dim3(32, 8), 0, st>>>(S, q, k, v, g, beta, o, V, scale, flags & 1);
  else
    kda_step_kernel<64, 4><<<grid, dim3(32, 4), 0, st>>>(S, q, k, v, g, beta, o, V, scale, flags & 1);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}

// One channel's short conv for one sequence: the window (W-1 tail rows and the new x) and the
// weights are loaded into registers first, so that every load of the layer step is in flight at
// once; WM bounds W at compile time.
template <int WM>
struct ConvChannel {
  float x, tail[WM - 1], w[WM];
  __device__ __forceinline__ void load(const float *__restrict__ xs, const float *__restrict__ ws, const float *__restrict__ ts, int b,
                                       int c, int C, int W) {
    x = xs[(size_t)b * C + c];
    const float *tb = ts + (size_t)b * (W - 1) * C + c;
#pragma unroll
    for (int i = 0; i < WM; i++) w[i] = i < W ? ws[(size_t)i * C + c] : 0.f;
#pragma unroll
    for (int i = 0; i < WM - 1; i++) tail[i] = i < W - 1 ? tb[(size_t)i * C] : 0.f;
  }
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
  float *Sh = a.S + (size_t)bh * K * V + col;
  float d[R];
#pragma unroll
  for (int r = 0; r < R; r++) d[r] = Sh[(size_t)(w * R + r) * V];
  ConvChannel<WM> cq_, ck_, cv_;
  float graw = 0.f, dtb = 0.f, oraw = 0.f, onorm = 0.f;
  const bool qk = tid < K;  // K <= 32 KW: one q/k channel a thread
  if (qk) {
    cq_.load(a.xq, a.wq, a.tq, b, cq, HK, W);
    ck_.load(a.xk, a.wk, a.tk, b, cq, HK, W);
    graw = a.graw[(size_t)b * HK + cq];
    dtb = a.dt_bias ? a.dt_bias[cq] : 0.f;
  }
  if (w == 0) {
    cv_.load(a.xv, a.wv, a.tv, b, cv, HV, W);
    oraw = a.oraw[(size_t)b * HV + cv];
    onorm = a.onorm[col];
  }
  const float alog = __expf(a.A_log[h]), braw = a.braw[bh];
  float pq = 0.f, pk = 0.f, pqk = 0.f;
  if (qk) {
    const float qv = cq_.silu_conv(W), kv = ck_.silu_conv(W), z = graw + dtb;
    const float gv = a.lower_bound == 0.f ? -alog * (z > 20.f ? z : log1pf(__expf(z))) : a.lower_bound / (1.0f + __expf(-alog * z));
    sq[tid] = qv;
    sk[tid] = kv;
    se[tid] = __expf(gv);
    pq = qv * qv;
    pk = kv * kv;
    pqk = qv * kv;
  }
  float tq, tk, kq;
  kda_token_sums<KW>(pq, pk, pqk, red, tq, tk, kq);
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
    cv_.store_tail(a.tv, b, cv, HV, W);
  }
  if (qk && tid % (int)nb == (int)me) {  // this block's share of the head's q and k tails
    cq_.store_tail(a.tq, b, cq, HK, W);
    ck_.store_tail(a.tk, b, cq, HK, W);
  }
}

extern "C" int kle_cuda_kda_layer_step(const kle_cuda_kda_layer_args *args, int B, int H, int K, int V, int W, float scale,
                                       void *stream) {
  if (!args || B <= 0 || H <= 0 || V <= 0 || V % 32 || V > 256 || (K != 64 && K != 128) || W < 1 || W > 16) return KLE_EINVAL;
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = V / 32;
  attr[0].val.clusterDim.z = 1;
  cfg.gridDim = dim3(B * H, V / 32);
  cfg.stream = (cudaStream_t)stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // as the step: 8 warps a block while there are few blocks (short row chains per thread)
  const bool wide = (long)B * H * (V / 32) < 4L * 132, small_w = W <= 4;
  cfg.blockDim = dim3(32, wide ? 8 : 4);
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
