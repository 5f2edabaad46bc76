// sample.cu: drawing a token where the logits are (kle_session_sample on the CUDA backend), so
// that the 163,840 logits of a step never cross to the host. The same choice as the runtime's
// sampler (as/sampler.ts): penalties and bias patched into a copy, then temperature, top-k
// (keep l > cv and the first ct tokens equal to cv, in index order), top-p (the smallest set by
// (logit descending, index ascending) whose mass reaches p of the total), min-p, and the draw
// walking the kept tokens in index order.
//
// One draw is 64 blocks in a cooperative launch, each a contiguous 64th of the logits, meeting at
// grid barriers: one block (the first version) took 0.4-0.7 ms a sampled draw and 3.1 ms for top-p
// over flat logits (bench/gpu-sampling.ts, H200), most of it 32 bisection passes over every token
// on one SM. The cuts are found by radix selection instead:
// top-k's cut and top-p's crossing are both "the largest key k whose weight at or above it reaches
// a target" over the logits' order-preserving keys (a count for top-k, probability mass for
// top-p), found 11 bits at a time from histograms of the keys: three passes. The histograms add
// integers (counts, and masses as 2^-40 fixed point, exact under any order of the atomics), and
// every floating-point sum runs in one order, so a seed gives the same token on every run.
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "ops.cuh"

namespace cg = cooperative_groups;
typedef unsigned long long u64;

namespace {

constexpr int SB = 256, NW = SB / 32;  // threads a block
constexpr int SG = 64;                 // blocks of one draw
static_assert(SG <= SB, "a block reduces the blocks' partials one a thread");
constexpr int RB = 2048;               // radix bins: 11 + 11 + 10 bits of a key
constexpr double FX = 1099511627776.0;  // 2^40: an exp (at most 1) as an integer mass

__device__ __forceinline__ uint32_t key_of(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float unkey(uint32_t k) { return __uint_as_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k); }
__device__ __forceinline__ u64 fixed(float e) { return __double2ull_rn((double)e * FX); }

// Reductions and scans with one association order on every run: down-shuffles to lane 0, warp
// totals through shared memory, the result broadcast from one place (a butterfly would leave
// lanes with sums associated differently, and threads that then disagree about a cut).
template <class T>
struct Shared {
  T w[32];
  T out;
};
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T id, Shared<T> &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();  // the previous use of sh is over
  if (lane == 0) sh.w[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < NW ? sh.w[lane] : id;
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
    T x = lane < NW ? sh.w[lane] : T(0);
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
  Shared<u64> u;
};

// what the blocks of one draw share (device memory after the logits' copy and the exps),
// zeroed by the draw itself before its first barrier
struct Ctl {
  float bmax[SG];
  int bties[2][SG];    // a block's ties at top-k's cut, then at top-p's
  double bsum[SG];     // a block's kept mass in the draw
  int pick, last;      // atomicMin / atomicMax over the blocks
  unsigned cnt[2][3][RB];  // [top-k, top-p][level][bin]
  u64 mass[3][RB];         // top-p's masses
};
constexpr int PICK_WORD = (int)(offsetof(Ctl, pick) / 4), LAST_WORD = (int)(offsetof(Ctl, last) / 4);

struct Cut {
  uint32_t key;
  bool found;    // false: the target exceeds every element's weight (then every element is kept)
  u64 target;    // the target the cut reached
  u64 above;     // weight of the keys above the cut
  u64 at, atCount;  // weight and number of the elements at the cut
};

struct Radix {
  unsigned cnt[RB];
  u64 mass[RB];
  Cut cut;
  int bin;
};

// The largest key k with weight(key >= k) >= target over the grid's elements that count, 11 bits
// at a time: every block adds its span's histogram to the level's (integers: any order gives the
// same sums), and after the barrier every block scans the same bins to the same cut. elem(i, key,
// w) says whether element i counts, with its key and weight (1 in count mode); target(total)
// gives the target from the total weight.
template <bool MASS, class Elem, class Target>
__device__ Cut radix_cut(cg::grid_group &grid, Elem elem, Target target, int b0, int b1, unsigned (*gcnt)[RB],
                         u64 (*gmass)[RB], Radix &rs, Smem &sh) {
  const int tid = threadIdx.x;
  uint32_t prefix = 0;
  int hi = 32;
  Cut cut = {0, false, 0, 0, 0, 0};
  for (int lv = 0; lv < 3; lv++) {
    const int bits = lv < 2 ? 11 : 10, shift = hi - bits, nb = 1 << bits;
    for (int j = tid; j < nb; j += SB) {
      rs.cnt[j] = 0;
      if (MASS) rs.mass[j] = 0;
    }
    __syncthreads();
    for (int i = b0 + tid; i < b1; i += SB) {
      uint32_t k;
      u64 w;
      if (!elem(i, k, w)) continue;
      if (hi < 32 && (k >> hi) != (prefix >> hi)) continue;
      const int b = (int)((k >> shift) & (uint32_t)(nb - 1));
      atomicAdd(&rs.cnt[b], 1u);
      if (MASS) atomicAdd(&rs.mass[b], w);
    }
    __syncthreads();
    for (int j = tid; j < nb; j += SB)
      if (rs.cnt[j]) {
        atomicAdd(&gcnt[lv][j], rs.cnt[j]);
        if (MASS) atomicAdd(&gmass[lv][j], rs.mass[j]);
      }
    grid.sync();
    // the bins from the top, nb / SB consecutive ones a thread
    const int per = nb / SB, top = nb - 1 - per * tid;
    u64 s = 0;
    for (int q = 0; q < per; q++) s += MASS ? __ldcg(&gmass[lv][top - q]) : (u64)__ldcg(&gcnt[lv][top - q]);
    if (tid == 0) rs.bin = -1;
    u64 tot;
    const u64 before = block_scan(s, &tot, sh.u);
    if (lv == 0) {
      cut.target = target(tot);
      if (tot == 0 || cut.target > tot) return cut;  // nothing to cut: found stays false
    }
    const u64 need = cut.target - cut.above;  // > 0: the keys above the prefix weigh less than the target
    if (before < need && need <= before + s) {
      u64 acc = before;
      for (int q = 0; q < per; q++) {
        const int b = top - q;
        const u64 h = MASS ? __ldcg(&gmass[lv][b]) : (u64)__ldcg(&gcnt[lv][b]);
        if (acc + h >= need) {
          rs.bin = b;
          rs.cut.above = acc;
          rs.cut.at = h;
          rs.cut.atCount = __ldcg(&gcnt[lv][b]);
          break;
        }
        acc += h;
      }
    }
    __syncthreads();
    const int b = rs.bin;
    if (b < 0) return cut;  // rounding in the caller's target: unreachable with integer weights
    cut.above += rs.cut.above;
    cut.at = rs.cut.at;
    cut.atCount = rs.cut.atCount;
    prefix |= (uint32_t)b << shift;
    hi = shift;
    __syncthreads();  // rs is read before the next level rewrites it
  }
  cut.key = prefix;
  cut.found = true;
  return cut;
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

__global__ void __launch_bounds__(SB) sample_kernel(const float *__restrict__ L, int V, float *__restrict__ E,
                                                    Ctl *__restrict__ c, kle_ops::SampleParams p, int32_t *out) {
  cg::grid_group grid = cg::this_grid();
  __shared__ Smem sh;
  __shared__ Radix rs;
  __shared__ double pre_sum[2];
  const int tid = threadIdx.x, g = blockIdx.x;
  // the block's span, and each thread's contiguous chunk of it for the passes in index order
  const int span = (V + SG - 1) / SG, b0 = min(V, g * span), b1 = min(V, b0 + span);
  const int C = (b1 - b0 + SB - 1) / SB, i0 = min(b1, b0 + tid * C), i1 = min(b1, i0 + C);
  {
    uint32_t *w = (uint32_t *)c;
    for (int j = g * SB + tid; j < (int)(sizeof(Ctl) / 4); j += SG * SB)
      w[j] = j == PICK_WORD ? (uint32_t)INT_MAX : j == LAST_WORD ? 0xffffffffu : 0u;
  }
  float m = -INFINITY;
  for (int i = b0 + tid; i < b1; i += SB) m = fmaxf(m, L[i]);
  m = block_reduce(m, Max(), -INFINITY, sh.f);
  if (tid == 0) c->bmax[g] = m;
  grid.sync();
  m = block_reduce(tid < SG ? __ldcg(&c->bmax[tid]) : -INFINITY, Max(), -INFINITY, sh.f);
  if (p.T == 0) {  // greedy: the first of the largest
    int first = V;
    for (int i = b0 + tid; i < b1; i += SB)
      if (L[i] == m) {
        first = i;
        break;
      }
    first = block_reduce(first, MinI(), INT_MAX, sh.i);
    if (tid == 0 && first < V) atomicMin(&c->pick, first);
    grid.sync();
    if (g == 0 && tid == 0) {
      const int pk = __ldcg(&c->pick);
      *out = pk < V ? pk : 0;
    }
    return;
  }
  // top-k: keep l > cv and the first ct tokens equal to cv
  float cv = -INFINITY;
  int ct = V;
  if (p.top_k > 0 && p.top_k < V) {
    const Cut k = radix_cut<false>(
        grid,
        [&](int i, uint32_t &key, u64 &w) {
          key = key_of(L[i]);
          w = 1;
          return true;
        },
        [&](u64) { return (u64)p.top_k; }, b0, b1, c->cnt[0], nullptr, rs, sh);
    cv = unkey(k.key);
    ct = p.top_k - (int)k.above;
  }
  const bool wantP = p.top_p < 1.f;
  const float invT = 1.f / p.T;
  const float mp = p.log_min_p > -INFINITY ? m + p.T * p.log_min_p : -INFINITY;
  // the ties at top-k's cut ranked in index order across the blocks
  int rank = 0;
  if (cv > -INFINITY) {
    int ties = 0, total;
    for (int i = i0; i < i1; i++) ties += L[i] == cv;
    rank = block_scan(ties, &total, sh.i);
    if (tid == 0) c->bties[0][g] = total;
    grid.sync();
    for (int h = 0; h < g; h++) rank += __ldcg(&c->bties[0][h]);
  }
  // the exps; min-p applies here unless top-p needs the mass it removes
  const float lo = wantP ? -INFINITY : mp;
  for (int i = i0; i < i1; i++) {
    const float l = L[i];
    const bool keep = (l > cv || (l == cv && rank++ < ct)) && l >= lo;
    E[i] = keep ? expf((l - m) * invT) : 0.f;
  }
  __syncthreads();  // the block reads its own exps back (each block only its span)
  float pv = -INFINITY;
  int pt = V;
  if (wantP) {
    const Cut k = radix_cut<true>(
        grid,
        [&](int i, uint32_t &key, u64 &w) {
          const float e = E[i];
          if (!(e > 0.f)) return false;
          key = key_of(L[i]);
          w = fixed(e);
          return true;
        },
        [&](u64 tot) {
          const u64 t = (u64)ceil((double)p.top_p * (double)tot);
          return t < 1 ? (u64)1 : t > tot ? tot : t;
        },
        b0, b1, c->cnt[1], c->mass, rs, sh);
    if (k.found) {
      // the ties (one exp, so one mass e each) join in index order until the mass reaches the target
      pv = unkey(k.key);
      const u64 e = k.at / k.atCount, need = k.target - k.above;
      const u64 n = (need + e - 1) / e;
      pt = (int)(n < k.atCount ? n : k.atCount);
    }  // else every token is kept
  }
  // the kept tokens, in index order
  int r0 = 0;
  if (wantP) {
    int ties = 0, total;
    for (int i = i0; i < i1; i++) ties += E[i] > 0.f && L[i] == pv;
    r0 = block_scan(ties, &total, sh.i);
    if (tid == 0) c->bties[1][g] = total;
    grid.sync();
    for (int h = 0; h < g; h++) r0 += __ldcg(&c->bties[1][h]);
  }
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
    for (int i = i0; i < i1; i++)
      if (kept(i, r)) {
        s += E[i];
        last = i;
      }
  }
  double inBlock;
  const double beforeIn = block_scan(s, &inBlock, sh.d);
  last = block_reduce(last, MaxI(), -1, sh.i);
  if (tid == 0) {
    c->bsum[g] = inBlock;
    if (last >= 0) atomicMax(&c->last, last);
  }
  grid.sync();
  if (tid == 0) {  // the blocks' sums in one order, the same in every block
    double pre = 0, sum = 0;
    for (int h = 0; h < SG; h++) {
      const double v = __ldcg(&c->bsum[h]);
      if (h < g) pre += v;
      sum += v;
    }
    pre_sum[0] = pre;
    pre_sum[1] = sum;
  }
  __syncthreads();
  const double before = pre_sum[0] + beforeIn, u = p.u * pre_sum[1];
  int pick = V;
  if (before <= u && s > 0) {
    double rr = u - before;
    int r = r0;
    for (int i = i0; i < i1; i++) {
      if (!kept(i, r)) continue;
      rr -= E[i];
      if (rr < 0) {
        pick = i;
        break;
      }
    }
  }
  pick = block_reduce(pick, MinI(), INT_MAX, sh.i);
  if (tid == 0 && pick < V) atomicMin(&c->pick, pick);
  grid.sync();
  if (g == 0 && tid == 0) {
    const int pk = __ldcg(&c->pick), ls = __ldcg(&c->last);
    *out = pk < V ? pk : ls >= 0 ? ls : 0;
  }
}

}  // namespace

namespace kle_ops {

static size_t ctl_offset(int V) { return ((size_t)V * 8 + 255) & ~(size_t)255; }

size_t sample_scratch_bytes(int V) { return ctl_offset(V) + sizeof(Ctl); }

cudaError_t sample(const float *logits, int V, const SampleParams &p, const SamplePatch &patch, void *scratch,
                   int32_t *out, cudaStream_t st) {
  float *work = (float *)scratch, *E = work + V;
  Ctl *ctl = (Ctl *)((char *)scratch + ctl_offset(V));
  const float *src = logits;
  if (patch.n + patch.nb > 0) {
    cudaError_t e = cudaMemcpyAsync(work, logits, sizeof(float) * V, cudaMemcpyDeviceToDevice, st);
    if (e != cudaSuccess) return e;
    const int k = patch.n + patch.nb;
    patch_kernel<<<(k + 255) / 256, 256, 0, st>>>(work, V, patch.btoks, patch.bvals, patch.nb, patch.toks, patch.counts,
                                                  patch.cbias, patch.n, patch.rep, patch.freq, patch.pres);
    src = work;
  }
  // cooperative: the grid's barriers need every block resident at once (64 blocks of 256 threads)
  SampleParams pp = p;
  void *args[] = {(void *)&src, (void *)&V, (void *)&E, (void *)&ctl, (void *)&pp, (void *)&out};
  return cudaLaunchCooperativeKernel((const void *)sample_kernel, dim3(SG), dim3(SB), args, 0, st);
}

}  // namespace kle_ops
