// kda_step.cu: the KDA decode step on NVIDIA GPUs.
//
// The step is bandwidth-bound: each head's K x V state is read once and written once. One pass
// over the state yields both reductions the step needs, with the decay folded in:
//   a_j = sum_k exp(g_k) S_kj k_k,   b_j = sum_k exp(g_k) S_kj q_k
//   u_j = v_j - a_j;   S'_kj = exp(g_k) S_kj + beta k_k u_j;   o_j = scale (b_j + beta u_j (k.q))
// and the new values are written from registers (each thread holds K/KW of them, so nothing is
// read twice). Loads and stores are coalesced across the warp (consecutive columns); q, k and
// exp(g) sit in shared memory.
#include <cuda_runtime.h>
#include <math.h>

#include "../include/kle_cuda.h"

#define KLE_OK 0
#define KLE_EINVAL (-1)

// Stages one token's q, k and exp(g) of one head in shared memory and returns |q|^2, |k|^2 and
// k.q summed over the block (red: [3][KW] scratch; ends with a block barrier).
template <int K, int KW>
__device__ __forceinline__ void kda_stage_token(const float *__restrict__ qh, const float *__restrict__ kh, const float *__restrict__ gh,
                                                float *sq, float *sk, float *se, float (*red)[KW], float &tq, float &tk, float &kq) {
  const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
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
