// sample.cu: drawing a token where the logits are (kle_session_sample on the CUDA backend), so
// that the 163,840 logits of a step never cross to the host. The same choice as the runtime's
// sampler (as/sampler.ts): penalties and bias patched into a copy, then temperature, top-k
// (keep l > cv and the first ct tokens equal to cv, in index order), top-p (the smallest set by
// (logit descending, index ascending) whose mass reaches p of the total), min-p, and the draw
// walking the kept tokens in index order. One block of 1024 threads per stream, every sum in a
// fixed order, so a seed gives the same token on every run.
//
// How the cuts are found: the k-th largest logit and top-p's crossing are both "the largest key
// k whose weight at or above it reaches a target" over the logits' order-preserving keys (count
// for top-k, probability mass for top-p), found by bisection on the key: 32 block reductions.
// Top-p first gathers the only tokens that can reach the crossing: those below a logit whose
// exp is under c each hold less than V c, so with c = (1 - p) total / (2 V) the rest hold more
// than p of the mass (as/sampler.ts's bound).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "ops.cuh"

namespace {

constexpr int NT = 1024;  // threads: 32 warps, so the second level of a reduction is one warp

__device__ __forceinline__ uint32_t key_of(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float unkey(uint32_t k) { return __uint_as_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k); }

// Reductions and scans with one association order on every run: down-shuffles to lane 0, warp
// totals through shared memory, the result broadcast from one place (a butterfly would leave
// lanes with sums associated differently, and threads that then disagree about a cut).
template <class T>
struct Shared {
  T w[32];
  T out;
};
template <class T, class Op>
__device__ T block_reduce(T v, Op op, Shared<T> &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();  // the previous use of sh is over
  if (lane == 0) sh.w[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = sh.w[lane];
    for (int o = 16; o; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0) sh.out = v;
  }
  __syncthreads();
  return sh.out;
}
// exclusive prefix of v over threads in order; *total gets the sum
template <class T>
__device__ T block_scan(T v, T *total, Shared<T> &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T u = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += u;
  }
  __syncthreads();
  if (lane == 31) sh.w[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    T x = sh.w[lane];
    for (int o = 1; o < 32; o <<= 1) {
      const T u = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += u;
    }
    sh.w[lane] = x;  // inclusive over warps
    if (lane == 31) sh.out = x;
  }
  __syncthreads();
  const T before = warp ? sh.w[warp - 1] : T(0);
  *total = sh.out;
  return before + inc - v;
}

struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Sum {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MinI {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxI {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

struct Smem {
  Shared<float> f;
  Shared<double> d;
  Shared<int> i;
};

// the largest key k with weight(key >= k) >= target; weight(k) is a block-uniform reduction
template <class W>
__device__ uint32_t bisect(double target, W weight) {
  uint64_t lo = 0, hi = 1ull << 32;  // weight(lo) >= target, weight(hi) < target
  while (hi - lo > 1) {
    const uint64_t mid = (lo + hi) >> 1;
    if (weight((uint32_t)mid) >= target) lo = mid;
    else hi = mid;
  }
  return (uint32_t)lo;
}

// Penalties and bias on a copy (as/sampler.ts penalize): the bias tokens, then the context's,
// each rounded to float once; the two lists name distinct tokens.
__global__ void patch_kernel(float *w, int V, const int32_t *btoks, const double *bvals, int nb, const int32_t *toks,
                             const int32_t *counts, const double *cbias, int n, double rep, double freq, double pres) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < nb) {
    const int t = btoks[i];
    if (t >= 0 && t < V) w[t] = (float)((double)w[t] + bvals[i]);
  } else if (i < nb + n) {
    const int j = i - nb, t = toks[j], c = counts[j];
    if (t < 0 || t >= V) return;
    double l = (double)w[t] + cbias[j];
    if (c > 0) {
      if (rep != 1) l = l > 0 ? l / rep : l * rep;
      l -= freq * c + pres;
    }
    w[t] = (float)l;
  }
}

__global__ void __launch_bounds__(NT) sample_kernel(const float *__restrict__ L, int V, float *__restrict__ E,
                                                    int32_t *__restrict__ list, kle_ops::SampleParams p, int32_t *out) {
  __shared__ Smem sh;
  const int tid = threadIdx.x;
  float m = -INFINITY;
  for (int i = tid; i < V; i += NT) m = fmaxf(m, L[i]);
  m = block_reduce(m, Max(), sh.f);
  if (p.T == 0) {  // greedy: the first of the largest
    int first = V;
    for (int i = tid; i < V; i += NT)
      if (L[i] == m) {
        first = i;
        break;
      }
    first = block_reduce(first, MinI(), sh.i);
    if (tid == 0) *out = first < V ? first : 0;
    return;
  }
  // top-k: keep l > cv and the first ct tokens equal to cv
  float cv = -INFINITY;
  int ct = V;
  if (p.top_k > 0 && p.top_k < V) {
    const uint32_t k = bisect((double)p.top_k, [&](uint32_t kk) {
      int c = 0;
      for (int i = tid; i < V; i += NT) c += key_of(L[i]) >= kk;
      return (double)block_reduce(c, Sum(), sh.i);
    });
    cv = unkey(k);
    int above = 0;
    for (int i = tid; i < V; i += NT) above += L[i] > cv;
    ct = p.top_k - block_reduce(above, Sum(), sh.i);
  }
  const bool wantP = p.top_p < 1.f;
  const float invT = 1.f / p.T;
  const float mp = p.log_min_p > -INFINITY ? m + p.T * p.log_min_p : -INFINITY;
  // the exp pass over contiguous chunks, so that ties are ranked in index order; min-p applies
  // here unless top-p needs the mass it removes
  const int C = (V + NT - 1) / NT, i0 = min(V, tid * C), i1 = min(V, i0 + C);
  int ties = 0;
  if (cv > -INFINITY)
    for (int i = i0; i < i1; i++) ties += L[i] == cv;
  int tieTotal;
  int rank = block_scan(ties, &tieTotal, sh.i);
  const float lo = wantP ? -INFINITY : mp;
  double part = 0;
  for (int i = i0; i < i1; i++) {
    const float l = L[i];
    const bool keep = (l > cv || (l == cv && rank++ < ct)) && l >= lo;
    const float e = keep ? expf((l - m) * invT) : 0.f;
    E[i] = e;
    part += e;
  }
  const double total = block_reduce(part, Sum(), sh.d);

  // the draw's domain: every token, or top-p's gathered list
  const int32_t *dom = nullptr;
  int n = V;
  float pv = -INFINITY;
  int pt = V;
  if (wantP) {
    const double target = (double)p.top_p * total;
    double M = 0;
    for (int pass = 0; pass < 2; pass++) {
      const float lc = pass ? -INFINITY : (float)(m + (double)p.T * log((1.0 - p.top_p) * total / (2.0 * V)));
      int cnt = 0;
      for (int i = i0; i < i1; i++) cnt += L[i] >= lc && E[i] > 0;
      int at = block_scan(cnt, &n, sh.i);
      double s = 0;
      for (int i = i0; i < i1; i++)
        if (L[i] >= lc && E[i] > 0) {
          list[at++] = i;
          s += E[i];
        }
      M = block_reduce(s, Sum(), sh.d);
      if (M >= target) break;
    }
    dom = list;
    __syncthreads();  // the list is written
    if (M >= target) {
      const uint32_t k = bisect(target, [&](uint32_t kk) {
        double s = 0;
        for (int j = tid; j < n; j += NT)
          if (key_of(L[list[j]]) >= kk) s += E[list[j]];
        return block_reduce(s, Sum(), sh.d);
      });
      pv = unkey(k);
      double above = 0;
      int tiesP = 0;
      for (int j = tid; j < n; j += NT) {
        const float l = L[list[j]];
        if (l > pv) above += E[list[j]];
        tiesP += l == pv;
      }
      above = block_reduce(above, Sum(), sh.d);
      tiesP = block_reduce(tiesP, Sum(), sh.i);
      // the ties (one exp value) join in index order until the mass reaches the target
      __syncthreads();  // every thread has read the last reduction's result
      if (tid == 0) {
        const double e = expf((pv - m) * invT);
        double acc = above;
        int c = 0;
        while (c < tiesP) {
          c++;
          acc += e;
          if (acc >= target) break;
        }
        sh.i.out = c;
      }
      __syncthreads();
      pt = sh.i.out;
    }  // else rounding left the crossing past every token: all are kept
  }
  // the kept tokens, in index order, over contiguous chunks of the domain
  const int D = n, Cd = (D + NT - 1) / NT, j0 = min(D, tid * Cd), j1 = min(D, j0 + Cd);
  int tiesD = 0;
  if (wantP)
    for (int j = j0; j < j1; j++) tiesD += L[dom[j]] == pv;
  int tieAll;
  int r0 = block_scan(tiesD, &tieAll, sh.i);
  auto kept = [&](int i, int &r) {
    const float l = L[i];
    if (!(E[i] > 0)) return false;
    if (!wantP) return true;
    const bool in = l > pv || (l == pv && r++ < pt);
    return in && l >= mp;
  };
  double s = 0;
  int last = -1;
  {
    int r = r0;
    for (int j = j0; j < j1; j++) {
      const int i = dom ? dom[j] : j;
      if (kept(i, r)) {
        s += E[i];
        last = i;
      }
    }
  }
  double sum;
  const double before = block_scan(s, &sum, sh.d);
  const double u = p.u * sum;
  int pick = V;
  if (before <= u && s > 0) {
    double rr = u - before;
    int r = r0;
    for (int j = j0; j < j1; j++) {
      const int i = dom ? dom[j] : j;
      if (!kept(i, r)) continue;
      rr -= E[i];
      if (rr < 0) {
        pick = i;
        break;
      }
    }
  }
  pick = block_reduce(pick, MinI(), sh.i);
  last = block_reduce(last, MaxI(), sh.i);
  if (tid == 0) *out = pick < V ? pick : last >= 0 ? last : 0;
}

}  // namespace

namespace kle_ops {

size_t sample_scratch_bytes(int V) { return (size_t)V * 4 * 3 + 256; }

void sample(const float *logits, int V, const SampleParams &p, const SamplePatch &patch, void *scratch, int32_t *out,
            cudaStream_t st) {
  float *work = (float *)scratch, *E = work + V;
  int32_t *list = (int32_t *)(E + V);
  const float *src = logits;
  if (patch.n + patch.nb > 0) {
    cudaMemcpyAsync(work, logits, sizeof(float) * V, cudaMemcpyDeviceToDevice, st);
    const int k = patch.n + patch.nb;
    patch_kernel<<<(k + 255) / 256, 256, 0, st>>>(work, V, patch.btoks, patch.bvals, patch.nb, patch.toks, patch.counts,
                                                  patch.cbias, patch.n, patch.rep, patch.freq, patch.pres);
    src = work;
  }
  sample_kernel<<<1, NT, 0, st>>>(src, V, E, list, p, out);
}

}  // namespace kle_ops
