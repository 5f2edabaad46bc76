// lse_merge.cuh: merging attention computed over separate spans of the context (mla_decode.cu,
// mla_attend.cu). Span s gives a normalized output row out_s and its log-sum-exp lse_s; the
// whole context's row is sum_s exp(lse_s - lse) out_s with lse = log sum_s exp(lse_s).
//
// Blocks of 32-column groups of one output row. The span weights go to shared memory a chunk at
// a time, and the warps split the spans with several loads in flight each: one thread per column
// walking every span, each recomputing the weights, took a third of the decode's time (README,
// 'Layouts measured').
#ifndef KLE_CUDA_LSE_MERGE_CUH
#define KLE_CUDA_LSE_MERGE_CUH

#include <cuda_runtime.h>
#include <math.h>

namespace kle_merge {

constexpr int CHUNK = 1024;  // span weights held in shared memory at a time

// the block's maximum (op 0) or sum (op 1) of v, for every thread; red holds 32 floats
template <int OP>
__device__ __forceinline__ float block_reduce(float v, float *red) {
#pragma unroll
  for (int o = 16; o; o >>= 1) {
    const float x = __shfl_xor_sync(0xffffffffu, v, o);
    v = OP == 0 ? fmaxf(v, x) : v + x;
  }
  const int w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();  // red may still be read by an earlier reduction
  if ((threadIdx.x & 31) == 0) red[w] = v;
  __syncthreads();
  v = red[0];
  for (int i = 1; i < nw; i++) v = OP == 0 ? fmaxf(v, red[i]) : v + red[i];
  return v;
}

// Row merge: lse_s at lse[s * lse_stride], out_s at part[s * part_stride] (Dv floats); this block
// writes the 32-column groups of out starting at c0, c0 + cstep, ..., and *lse_out when given.
// Lanes take the columns and warps split the spans (four loads in flight each); the warps' sums
// meet in shared memory. Spans with lse -inf (no rows) get weight 0 whatever their part holds.
inline __device__ void merge_row(const float *__restrict__ lse, size_t lse_stride, const float *__restrict__ part,
                                 size_t part_stride, int n, int Dv, int c0, int cstep, float *__restrict__ out,
                                 float *__restrict__ lse_out) {
  __shared__ float wsh[CHUNK];
  __shared__ float red[32];
  __shared__ float wsum[32][33];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float m = -INFINITY;
  for (int s = threadIdx.x; s < n; s += blockDim.x) m = fmaxf(m, lse[s * lse_stride]);
  m = block_reduce<0>(m, red);  // finite: at least one span has rows
  float tot = 0.f;
  for (int s = threadIdx.x; s < n; s += blockDim.x) {
    const float l = lse[s * lse_stride];
    tot += l == -INFINITY ? 0.f : __expf(l - m);
  }
  tot = block_reduce<1>(tot, red);
  for (int cb = c0; cb < Dv; cb += cstep) {
    const int c = cb + lane;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    for (int s0 = 0; s0 < n; s0 += CHUNK) {
      const int nc = n - s0 < CHUNK ? n - s0 : CHUNK;
      __syncthreads();  // the previous chunk's weights and the previous group's sums are read
      for (int s = threadIdx.x; s < nc; s += blockDim.x) {
        const float l = lse[(s0 + s) * lse_stride];
        wsh[s] = l == -INFINITY ? 0.f : __expf(l - m);
      }
      __syncthreads();
      if (c < Dv) {
        const float *p = part + (size_t)s0 * part_stride + c;
        int s = w;
        for (; s + 3 * nw < nc; s += 4 * nw) {
          const float x0 = p[s * part_stride], x1 = p[(s + nw) * part_stride];
          const float x2 = p[(s + 2 * nw) * part_stride], x3 = p[(s + 3 * nw) * part_stride];
          a0 += wsh[s] > 0.f ? wsh[s] * x0 : 0.f;
          a1 += wsh[s + nw] > 0.f ? wsh[s + nw] * x1 : 0.f;
          a2 += wsh[s + 2 * nw] > 0.f ? wsh[s + 2 * nw] * x2 : 0.f;
          a3 += wsh[s + 3 * nw] > 0.f ? wsh[s + 3 * nw] * x3 : 0.f;
        }
        for (; s < nc; s += nw) a0 += wsh[s] > 0.f ? wsh[s] * p[s * part_stride] : 0.f;
      }
    }
    wsum[w][lane] = (a0 + a1) + (a2 + a3);
    __syncthreads();
    if (w == 0 && c < Dv) {
      float t = 0.f;
      for (int i = 0; i < nw; i++) t += wsum[i][lane];
      out[c] = t / tot;
    }
  }
  if (lse_out && threadIdx.x == 0) *lse_out = m + logf(tot);
}

// Row merge by one warp, for few spans (n <= 32) and many rows: a batched step's attention
// (256 sequences of 4K: 8,192 rows in 2 spans each) gave merge_row 131,072 blocks of 256 threads
// with six barriers each for 64 bytes of output a block. Lane s holds span s's log-sum-exp, the
// weights pass by shuffle, and each lane sums its columns (pairs 2 (lane + 32 j), Dv % 64 == 0)
// over the spans in span order, every span's loads of a pair in flight at once.
inline __device__ void merge_row_warp(const float *__restrict__ lse, size_t lse_stride, const float *__restrict__ part,
                                      size_t part_stride, int n, int Dv, float *__restrict__ out, float *__restrict__ lse_out) {
  const int lane = threadIdx.x & 31;
  const float l = lane < n ? lse[lane * lse_stride] : -INFINITY;
  float m = l;
#pragma unroll
  for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float wt = l == -INFINITY ? 0.f : __expf(l - m);
  float tot = wt;
#pragma unroll
  for (int o = 16; o; o >>= 1) tot += __shfl_xor_sync(0xffffffffu, tot, o);
  const float inv = tot > 0.f ? 1.f / tot : 0.f;
  for (int c = 2 * lane; c < Dv; c += 64) {
    float2 acc = make_float2(0.f, 0.f);
    for (int s = 0; s < n; s++) {
      const float ws = __shfl_sync(0xffffffffu, wt, s);
      if (ws > 0.f) {  // a span with no rows may hold anything
        const float2 x = *reinterpret_cast<const float2 *>(part + (size_t)s * part_stride + c);
        acc.x += ws * x.x;
        acc.y += ws * x.y;
      }
    }
    *reinterpret_cast<float2 *>(out + c) = make_float2(acc.x * inv, acc.y * inv);
  }
  if (lse_out && lane == 0) *lse_out = tot > 0.f ? m + logf(tot) : -INFINITY;
}

}  // namespace kle_merge

#endif
