// mla_decode.cu: absorbed MLA attention over a latent cache on tensor cores (docs/model.md,
// section 3), split across the context: the decode, and (through kle_cuda_mla_attend) the causal
// prefill.
//
// The rows of the product are (query, head) pairs, 32 to a group: a decode at 32 heads is one
// group, a prefill batch many (with 4 heads a group holds 8 queries), each row masked at its
// own causal end. A block takes one group and a contiguous span of cache rows, so each row is read
// once for the group's 32: tiles of 32 rows stream into shared memory with cp.async (with a BF16
// cache two tiles in flight while a third is used); the block computes the 32 x 32 scores, folds them into a
// running max and sum per row, and accumulates P V (the first Dv columns of the same cache rows)
// in registers. A decode runs one block per SM; a second kernel merges the spans with their
// log-sum-exps (lse_merge.cuh).
//
// Both products run on tensor cores in 3xTF32 (tc.cuh), so results keep f32 accuracy. A BF16
// cache (the engine's default on the GPU) streams half the bytes into tiles of half the size and
// multiplies in BF16 (m16n8k16): its values are exact operands, and the f32 side (the query, the
// probabilities) goes in as a BF16 high part and remainder, two products for what 2xTF32 did in
// four (worst 4.0e-6 relative against float64 over the same BF16 values, bench/mla_decode.py). With 32
// heads a cache row costs 2 H (D + Dv) flops for its 4 D bytes, about 30 flops a byte: f32 CUDA
// cores cap that far below the memory's rate (README, 'Layouts measured'), while TF32 mma has
// room to spare even at three products per multiply.
//
// Scores: S^T [32 cache rows x 32 query rows, "heads" below] = C [rows x D] Q^T, split along D
// across the 8 warps (warp w takes k-steps w, w+8, ...), so each warp keeps its slice of the
// (pre-scaled) query in registers for the whole span and reads every cached element from shared
// memory exactly once; the eight partial sums meet in shared memory. Within a k-step the physical
// columns are permuted (fragment column t -> 2t, t+4 -> 2t+1, the same for Q and C), which lets a
// thread fetch its two columns with one 8-byte load. Values: O [32 heads x Dv] += P [heads x 32
// rows] V, split along Dv across the warps. Rows are DS = D rounded to 32, + 8 floats apart: both
// fragment patterns (8-byte loads of rows g at columns 2t; 4-byte loads of rows t at columns g)
// then hit 32 distinct banks.
#include <cuda_runtime.h>
#include <stdlib.h>
#include <math.h>

#include "../include/kle_cuda.h"
#include "lse_merge.cuh"
#include "mla_tc.cuh"
#include "tc.cuh"

using namespace kle_tc;


namespace {

constexpr int TJ = 32;       // cache rows per tile
constexpr int NWARP = 8;     // warps per block
constexpr int THREADS = NWARP * 32;
constexpr int MAXKS = 10;    // k-steps of 8 per warp: D <= 640
constexpr int MAXK16 = 5;    // k-steps of 16 per warp (the BF16 products)
constexpr int RS16 = TJ + 8; // BF16 P rows ([head][row] halves); 20g + t distinct banks
constexpr int MAXVT = 8;     // 8-wide value tiles per warp: Dv <= 512
constexpr int RS = TJ + 4;   // partial-score and P rows ([head][row]); 4g + t / 8t + g distinct banks

// spans of at least min_rows rows, at most 528 of them
int splits_for(int L, int min_rows = 256) {
  const int s = (L + min_rows - 1) / min_rows;
  return s < 528 ? s : 528;
}

// A decode (one group) at a short context: 256-row spans left most SMs idle (4K rows: 16 blocks,
// about 46 us a layer at 48B); 64-row ones give every SM a block up to 8K rows.
// KLE_CUDA_MLA_MIN_SPAN=256 restores the old cut (a benchmark's before/after in one run).
int decode_min_rows() {
  const char *e = getenv("KLE_CUDA_MLA_MIN_SPAN");
  const int v = e ? atoi(e) : 0;
  return v >= TJ && v % TJ == 0 ? v : 2 * TJ;
}

__host__ __device__ constexpr int row_stride(int D) { return ((D + 31) & ~31) + 8; }

// tiles of cache rows in shared memory: with a BF16 cache two in flight while a third is used
// (its tiles are half the size), with f32 one and one
__host__ __device__ constexpr int tile_buffers(size_t elem) { return elem == 2 ? 3 : 2; }

// tile_buffers tiles of cache rows (elem bytes each value), then the float arrays
size_t smem_bytes(int D, size_t elem) {
  return elem * tile_buffers(elem) * TJ * row_stride(D) + sizeof(float) * ((size_t)NWARP * 32 * RS + 2 * 32 * RS + 2 * 32);
}

// How the work is cut: groups of 32 (query, head) rows, n spans of the context each, one block
// per SM (the kernel's 121-196 KB of shared memory allow no second). A lone group (a decode)
// takes a span per SM. More groups take the n whose whole waves of blocks walk the fewest tiles,
// counting a block's set-up as two tiles, the fewer spans on a tie (less to merge, and with one
// none): "enough spans for two waves" had 32 sequences of 4K in 288 blocks, three waves of 15
// tiles where 128 blocks of 32 do it in one, and 256 sequences in two spans each that one span
// covers in the same waves. Spans are at least 256 rows (a lone group's 64).
struct Plan {
  int groups, slots, n, span;
};

// gsz: rows a group takes (a batched step's groups each hold one sequence's heads)
Plan plan_for(int L, int T, int H, int nsm, int gsz = 32) {
  Plan p;
  const long R = (long)T * H;
  p.groups = (int)((R + gsz - 1) / gsz);
  p.slots = R < gsz ? (int)R : gsz;
  const int most = splits_for(L, p.groups == 1 ? decode_min_rows() : 256);
  if (p.groups == 1) {
    p.n = most < nsm ? most : nsm;
  } else {
    long best = -1;
    p.n = 1;
    for (int n = 1; n <= most; n++) {
      const long waves = ((long)p.groups * n + nsm - 1) / nsm, tiles = ((L + n - 1) / n + TJ - 1) / TJ;
      const long cost = waves * (tiles + 2);
      if (best < 0 || cost < best) best = cost, p.n = n;
    }
  }
  p.span = ((L + p.n - 1) / p.n + TJ - 1) / TJ * TJ;
  return p;
}

// the parts' outputs, then their log-sum-exps
long plan_bytes(const Plan &p, int Dv) { return (long)p.groups * p.n * p.slots * (Dv + 1) * 4; }

}  // namespace

// rows jt .. jt + TJ - 1 (those < j1; the rest zero-filled, so no NaN reaches the mma) into sc:
// warp w takes rows w, w + 8, ..., its lanes 16-byte pieces along the row (4 f32 or 8 BF16 values)
template <class CT>
__device__ __forceinline__ void load_tile(const CT *__restrict__ cache, int jt, int j1, int D, int DS, CT *sc) {
  constexpr int PER = 16 / sizeof(CT);
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = w; r < TJ; r += NWARP) {
    const bool ok = jt + r < j1;
    const CT *src = ok ? cache + (size_t)(jt + r) * D : cache;
    for (int c = lane * PER; c < D; c += 32 * PER) cp_async16_zfill(sc + r * DS + c, ok ? src + c : cache, ok);
  }
  cp_async_commit();
}

// The same for a tile whose TJ rows all lie before j1 (every tile of a span but its last): the
// generic loop above cost about 240 instructions a warp a tile at 48B's shape (per-row selects,
// 64-bit address arithmetic, a branch a piece), a third of the kernel's instructions at 1M rows
// (Nsight Compute); here a warp's four rows are fixed offsets from one pointer, DC known at
// compile time folding them into the copies' immediates.
template <int DC, class CT>
__device__ __forceinline__ void load_full_tile(const CT *__restrict__ cache, int jt, int Drt, int DS, CT *sc) {
  constexpr int PER = 16 / sizeof(CT);
  const int D = DC ? DC : Drt, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const CT *src = cache + ((size_t)jt + w) * D + lane * PER;
  CT *dst = sc + w * DS + lane * PER;
#pragma unroll
  for (int i = 0; i < TJ / NWARP; i++)
#pragma unroll
    for (int c = 0; c < (DC ? DC : 8 * NWARP * MAXKS); c += 32 * PER)
      if (c + lane * PER < D) cp_async16(reinterpret_cast<float *>(dst + i * NWARP * DS + c), reinterpret_cast<const float *>(src + (size_t)i * NWARP * D + c));
  cp_async_commit();
}

// an f32 tile's values (a BF16 tile's go to the mma as they lie)
__device__ __forceinline__ float2 ld2(const float *p) { return *reinterpret_cast<const float2 *>(p); }
__device__ __forceinline__ float ld1(const float *p) { return *p; }

// DC, HC, DVC: the shape when known at compile time (Kimi-Linear's 32 heads, 512 + 64 latent: every
// shared address a constant offset, no tile predicates), 0 for any other
//
// Rows: the T queries' heads flattened (row r = query r / Hq, head r % Hq), `slots` to a group
// (32, or fewer when that is all), one group per blockIdx.y; row r sees cache rows below
// L0 + r / Hq + 1 (causal; a decode has T = 1, L0 = L - 1). Partial results of block (x, y) go to
// part y * gridDim.x + x, `slots` rows each. Lengths read on the device (dev): a captured decode
// step's at dev.len; a batched step's query b has its own cache dev.caches[b * KLE_CUDA_ROW_SLOTS]
// holding dev.lens[b] + 1 rows, its heads in groups of their own. Either way the spans are cut
// from the length read, gridDim.x of them.
struct DevLen {
  const int32_t *len;
  const void *const *caches;
  const int32_t *lens;
};

// BP (a BF16 cache only): BF16-rounded inputs, the query and the probabilities rounded to BF16, one
// product each (kle_model_precision's BF16, FlashMLA's arithmetic): half the tensor-core work of
// the two-term split. The row sums then add the rounded probabilities, so the weights the values
// see still sum to one.
template <int DC, int HC, int DVC, class CT, bool BP = false>
__global__ void __launch_bounds__(THREADS, 1) mla_partial(const float *__restrict__ q, const CT *__restrict__ cache, int L0,
                                                         int Hq, int R, int Drt, int Dvrt, float scale, int span, int slots,
                                                         float *__restrict__ pout, float *__restrict__ plse,
                                                         float *__restrict__ logits, int ldl, DevLen dev) {
  int qb = 0;  // the query of the block's first row, which the causal ends count from
  if (dev.caches) {
    qb = (int)blockIdx.y * slots / Hq;
    cache = (const CT *)dev.caches[(size_t)qb * KLE_CUDA_ROW_SLOTS];
    L0 = dev.lens[qb];
  } else if (dev.len) {
    L0 = *dev.len;
  }
  if (dev.caches || dev.len) span = ((L0 + 1 + (int)gridDim.x - 1) / (int)gridDim.x + TJ - 1) / TJ * TJ;
  extern __shared__ __align__(16) float smem[];
  // a BF16 cache: its values are mma operands as they are, the f32 side split in two BF16 terms
  constexpr bool BF = sizeof(CT) == 2;
  static_assert(BF || !BP, "BF16-rounded inputs over a BF16 cache");
  constexpr int NB = tile_buffers(sizeof(CT));  // as smem_bytes reserved them
  CT *sm = reinterpret_cast<CT *>(smem);
  const int r0 = slots * blockIdx.y;
  // the fast shape has 32 heads a query: then a group is one query's heads
  const int D = DC ? DC : Drt, H = HC ? HC : min(slots, R - r0), Dv = DVC ? DVC : Dvrt, HQ = HC ? HC : Hq;
  q += (size_t)r0 * D;
  const size_t part = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
  const int DS = row_stride(D);
  // sm: NB tiles of TJ rows (DS values each), then:
  float *sp = reinterpret_cast<float *>(sm + NB * TJ * DS);  // [warp][head][RS] partial scores
  float *sph = sp + NWARP * 32 * RS;  // [head][RS] probabilities, TF32 high part
  float *spl = sph + 32 * RS;         // and remainder
  float *sfac = spl + 32 * RS;        // [32] this tile's rescale of each head's accumulators
  float *ssum = sfac + 32;            // [32] each head's final sum (sfac then holds its max)
  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  // the group's last row sees the most rows
  const int j0 = blockIdx.x * span, j1 = min(L0 + (r0 + H - 1) / HQ - qb + 1, j0 + span);
  const int ntile = j1 > j0 ? (j1 - j0 + TJ - 1) / TJ : 0;
  const int nks = D / 8, nk16 = (D + 15) / 16, ntq = (H + 7) / 8, nmo = (H + 15) / 16, nvt = Dv / 64;
  // tile k of the span lives in buffer k % NB; past the last tile an empty group keeps the count
  auto buf = [&](int k) { return sm + (k % NB) * TJ * DS; };
  auto fetch = [&](int k) {
    if (k < ntile && j0 + (k + 1) * TJ <= j1)
      load_full_tile<DC>(cache, j0 + k * TJ, D, DS, buf(k));
    else if (k < ntile)
      load_tile(cache, j0 + k * TJ, j1, D, DS, buf(k));
    else
      cp_async_commit();
  };
  if (ntile > 0)
    for (int k = 0; k < NB; k++) fetch(k);

  // this warp's query slice: head 8 nt + g, columns 8 ks + 2t and + 1 of k-step ks = w + 8 i
  float qr[BF ? 1 : MAXKS][4][2];
  // with a BF16 cache, 16-wide k-steps ks = w + 8 i as B fragments: columns 16 ks + 2t, + 1 and
  // + 8, + 9 of head 8 nt + g, high parts then remainders (zero past D, a half step when D % 16)
  uint32_t qf[BF ? MAXK16 : 1][4][4];
  if constexpr (BF) {
#pragma unroll
    for (int i = 0; i < MAXK16; i++)
#pragma unroll
      for (int nt = 0; nt < 4; nt++) {
        const int ks = w + NWARP * i, h = 8 * nt + g, c = 16 * ks + 2 * t;
        const bool ok = ks < nk16 && h < H, up = ok && c + 8 < D;
        const float *qh = q + (size_t)h * D + c;
        const float a0 = ok ? qh[0] * scale : 0.f, a1 = ok ? qh[1] * scale : 0.f;
        const float b0 = up ? qh[8] * scale : 0.f, b1 = up ? qh[9] * scale : 0.f;
        if constexpr (BP) {
          qf[i][nt][0] = bf16_pair(a0, a1);
          qf[i][nt][1] = bf16_pair(b0, b1);
        } else {
          split_bf16_pair(a0, a1, qf[i][nt][0], qf[i][nt][2]);
          split_bf16_pair(b0, b1, qf[i][nt][1], qf[i][nt][3]);
        }
      }
  } else {
#pragma unroll
    for (int i = 0; i < MAXKS; i++)
#pragma unroll
      for (int nt = 0; nt < 4; nt++) {
        const int ks = w + NWARP * i, h = 8 * nt + g;
        const bool ok = ks < nks && h < H;
        qr[i][nt][0] = ok ? q[h * D + 8 * ks + 2 * t] * scale : 0.f;
        qr[i][nt][1] = ok ? q[h * D + 8 * ks + 2 * t + 1] * scale : 0.f;
      }
  }
  float oacc[2][MAXVT][4];
#pragma unroll
  for (int m = 0; m < 2; m++)
#pragma unroll
    for (int n = 0; n < MAXVT; n++)
#pragma unroll
      for (int r = 0; r < 4; r++) oacc[m][n][r] = 0.f;
  // softmax bookkeeping: 8 threads a head, 4 rows each; the running max and sum live in registers
  const int sh = tid >> 3, sr = (tid & 7) * 4;
  const int jend = sh < H ? min(j1, L0 + (r0 + sh) / HQ - qb + 1) : j1;  // this row's causal end
  float run_max = -INFINITY, run_sum = 0.f;
  // whether this thread's head took a new maximum in the last softmax: after the first tiles of a
  // span the maxima rarely move, and a tile where none did leaves the accumulators as they are (a
  // factor of exactly 1) instead of 64 multiplies a thread
  bool moved = false;

  // partial scores of tile sc over this warp's k-steps; each 3xTF32 pass covers the eight
  // independent accumulators before the next
  auto scores = [&](const CT *sc) {
    float sacc[2][4][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
      for (int n = 0; n < 4; n++)
#pragma unroll
        for (int r = 0; r < 4; r++) sacc[m][n][r] = 0.f;
    if constexpr (BF) {
      // the cache's values are the A fragments as they lie (pairs along a row); two passes,
      // the query's remainders first, over the eight independent accumulators each
#pragma unroll
      for (int i = 0; i < MAXK16; i++) {
        const int ks = w + NWARP * i;
        if (ks < nk16) {
          uint32_t a[2][4];
          const bool up = 16 * ks + 8 < D;
#pragma unroll
          for (int m = 0; m < 2; m++) {
            const CT *r = sc + (16 * m + g) * DS + 16 * ks + 2 * t;
            a[m][0] = *reinterpret_cast<const uint32_t *>(r);
            a[m][1] = *reinterpret_cast<const uint32_t *>(r + 8 * DS);
            a[m][2] = up ? *reinterpret_cast<const uint32_t *>(r + 8) : 0u;
            a[m][3] = up ? *reinterpret_cast<const uint32_t *>(r + 8 * DS + 8) : 0u;
          }
#pragma unroll
          for (int p = BP ? 0 : 2; p >= 0; p -= 2)
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
              if (nt < ntq)
#pragma unroll
                for (int m = 0; m < 2; m++) mma_bf16(sacc[m][nt], a[m], qf[i][nt][p], qf[i][nt][p + 1]);
        }
      }
    } else {
#pragma unroll
    for (int i = 0; i < MAXKS; i++) {
      const int ks = w + NWARP * i;
      if (ks < nks) {
        uint32_t ah[2][4], al[2][4], bh[4][2], bl[4][2];
#pragma unroll
        for (int m = 0; m < 2; m++) {
          const float2 x0 = ld2(sc + (16 * m + g) * DS + 8 * ks + 2 * t);
          const float2 x1 = ld2(sc + (16 * m + g + 8) * DS + 8 * ks + 2 * t);
          split_tf32(x0.x, ah[m][0], al[m][0]);
          split_tf32(x1.x, ah[m][1], al[m][1]);
          split_tf32(x0.y, ah[m][2], al[m][2]);
          split_tf32(x1.y, ah[m][3], al[m][3]);
        }
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
          split_tf32_nohoist(qr[i][nt][0], bh[nt][0], bl[nt][0]);
          split_tf32_nohoist(qr[i][nt][1], bh[nt][1], bl[nt][1]);
        }
#pragma unroll
        for (int p = 0; p < 3; p++)
#pragma unroll
          for (int nt = 0; nt < 4; nt++)
            if (nt < ntq)
#pragma unroll
              for (int m = 0; m < 2; m++) mma_3xtf32_pass(p, sacc[m][nt], ah[m], al[m], bh[nt], bl[nt]);
      }
    }
    }
    float *dst = sp + w * 32 * RS;
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
      for (int nt = 0; nt < 4; nt++) {
        const int r = 16 * m + g, h = 8 * nt + 2 * t;
        dst[h * RS + r] = sacc[m][nt][0];
        dst[(h + 1) * RS + r] = sacc[m][nt][1];
        dst[h * RS + r + 8] = sacc[m][nt][2];
        dst[(h + 1) * RS + r + 8] = sacc[m][nt][3];
      }
  };
  // sum the partials of the tile at row jt, fold it into the running max and sum, write P split
  // for the mma and the tile's rescale factors
  auto softmax = [&](int jt) {
    float4 s = *reinterpret_cast<const float4 *>(sp + sh * RS + sr);
#pragma unroll
    for (int v = 1; v < NWARP; v++) {
      const float4 x = *reinterpret_cast<const float4 *>(sp + v * 32 * RS + sh * RS + sr);
      s.x += x.x;
      s.y += x.y;
      s.z += x.z;
      s.w += x.w;
    }
    const int nv = jend - jt - sr;  // valid rows among this thread's four
    float e[4] = {s.x, s.y, s.z, s.w};
    // the scaled scores themselves, for the bounded cache's row scores (kle_cuda_mla_attend_scored)
    if (logits && sh < H) {
      float *lr = logits + (size_t)(r0 + sh) * ldl + jt + sr;
#pragma unroll
      for (int r = 0; r < 4; r++)
        if (r < nv) lr[r] = e[r];
    }
    float m = -INFINITY;
#pragma unroll
    for (int r = 0; r < 4; r++)
      if (r < nv) m = fmaxf(m, e[r]);
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
    // -inf while none of this head's rows has come (causal), and then p = 0 and f = 0
    const float mn = fmaxf(run_max, m);
    const float f = run_max == -INFINITY ? 0.f : __expf(run_max - mn);
    moved = mn != run_max;
    float part = 0.f;
    float ph[4], pl[4];
    uint32_t bh[4], bl[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const float p = r < nv ? __expf(e[r] - mn) : 0.f;
      uint32_t hi, lo;
      if constexpr (BP) {
        bh[r] = __bfloat16_as_ushort(__float2bfloat16_rn(p));
        part += __uint_as_float(bh[r] << 16);
      } else if constexpr (BF) {
        part += p;
        split_bf16_bits(p, bh[r], bl[r]);
      } else {
        part += p;
        split_tf32(p, hi, lo);
        ph[r] = __uint_as_float(hi);
        pl[r] = __uint_as_float(lo);
      }
    }
    part += __shfl_xor_sync(0xffffffffu, part, 1);
    part += __shfl_xor_sync(0xffffffffu, part, 2);
    part += __shfl_xor_sync(0xffffffffu, part, 4);
    run_sum = run_sum * f + part;
    run_max = mn;
    if constexpr (BF) {  // BF16 halves, RS16 apart, in the same space
      *reinterpret_cast<uint2 *>(reinterpret_cast<uint16_t *>(sph) + sh * RS16 + sr) = make_uint2(bh[0] | bh[1] << 16, bh[2] | bh[3] << 16);
      if constexpr (!BP)
        *reinterpret_cast<uint2 *>(reinterpret_cast<uint16_t *>(spl) + sh * RS16 + sr) = make_uint2(bl[0] | bl[1] << 16, bl[2] | bl[3] << 16);
    } else {
      *reinterpret_cast<float4 *>(sph + sh * RS + sr) = make_float4(ph[0], ph[1], ph[2], ph[3]);
      *reinterpret_cast<float4 *>(spl + sh * RS + sr) = make_float4(pl[0], pl[1], pl[2], pl[3]);
    }
    if ((tid & 7) == 0) sfac[sh] = f;
  };
  // O += P V over this warp's Dv / 8 columns of tile sc
  auto pv = [&](const CT *sc, bool rescale) {
    const int d0 = w * (Dv / NWARP);
    if (rescale)
#pragma unroll
    for (int m = 0; m < 2; m++) {
      const float f0 = sfac[16 * m + g], f1 = sfac[16 * m + g + 8];
#pragma unroll
      for (int n = 0; n < MAXVT; n++) {
        oacc[m][n][0] *= f0;
        oacc[m][n][1] *= f0;
        oacc[m][n][2] *= f1;
        oacc[m][n][3] *= f1;
      }
    }
    if constexpr (BF) {
      // P's halves as A fragments, the cache's value columns as B fragments by ldmatrix.trans
      // (two 8-column tiles of 16 rows a load), the remainders' pass first
      const uint16_t *p16[2] = {reinterpret_cast<const uint16_t *>(sph), reinterpret_cast<const uint16_t *>(spl)};
      const int lr = (lane >> 3 & 1) * 8 + (lane & 7), lc = (lane >> 4) * 8;  // this lane's row of the four matrices
#pragma unroll
      for (int ks = 0; ks < TJ / 16; ks++) {
        uint32_t a[2][2][4];
#pragma unroll
        for (int hl = 0; hl < (BP ? 1 : 2); hl++)
#pragma unroll
          for (int m = 0; m < 2; m++) {
            const uint16_t *pr = p16[hl] + (16 * m + g) * RS16 + 16 * ks + 2 * t;
            a[hl][m][0] = *reinterpret_cast<const uint32_t *>(pr);
            a[hl][m][1] = *reinterpret_cast<const uint32_t *>(pr + 8 * RS16);
            a[hl][m][2] = *reinterpret_cast<const uint32_t *>(pr + 8);
            a[hl][m][3] = *reinterpret_cast<const uint32_t *>(pr + 8 * RS16 + 8);
          }
#pragma unroll
        for (int n = 0; n < MAXVT; n += 2) {
          if (n >= nvt) break;  // the last pair may be a single tile (the second's columns are read, not used)
          const int n2 = n + 1 < nvt ? 2 : 1;
          uint32_t b[4];
          ldmatrix_x4_trans(b, sc + (16 * ks + lr) * DS + d0 + 8 * n + lc);
#pragma unroll
          for (int hl = BP ? 0 : 1; hl >= 0; hl--)
#pragma unroll
            for (int u = 0; u < 2; u++)
#pragma unroll
              for (int m = 0; m < 2; m++)
                if (u < n2 && m < nmo) mma_bf16(oacc[m][n + u], a[hl][m], b[2 * u], b[2 * u + 1]);
        }
      }
    } else {
#pragma unroll
    for (int ks = 0; ks < TJ / 8; ks++) {
      uint32_t ah[2][4], al[2][4];
#pragma unroll
      for (int m = 0; m < 2; m++) {
        const int h = 16 * m + g, r = 8 * ks + t;
        ah[m][0] = __float_as_uint(sph[h * RS + r]);
        ah[m][1] = __float_as_uint(sph[(h + 8) * RS + r]);
        ah[m][2] = __float_as_uint(sph[h * RS + r + 4]);
        ah[m][3] = __float_as_uint(sph[(h + 8) * RS + r + 4]);
        al[m][0] = __float_as_uint(spl[h * RS + r]);
        al[m][1] = __float_as_uint(spl[(h + 8) * RS + r]);
        al[m][2] = __float_as_uint(spl[h * RS + r + 4]);
        al[m][3] = __float_as_uint(spl[(h + 8) * RS + r + 4]);
      }
#pragma unroll
      for (int n = 0; n < MAXVT; n += 2) {
        if (n >= nvt) break;  // the last pair may be a single tile
        const int n2 = n + 1 < nvt ? 2 : 1;
        uint32_t bh[2][2], bl[2][2];
#pragma unroll
        for (int u = 0; u < 2; u++) {
          const CT *v = sc + (8 * ks + t) * DS + d0 + 8 * (n + u) + g;
          split_tf32(u < n2 ? ld1(v) : 0.f, bh[u][0], bl[u][0]);
          split_tf32(u < n2 ? ld1(v + 4 * DS) : 0.f, bh[u][1], bl[u][1]);
        }
#pragma unroll
        for (int p = 0; p < 3; p++)
#pragma unroll
          for (int u = 0; u < 2; u++)
#pragma unroll
            for (int m = 0; m < 2; m++)
              if (u < n2 && m < nmo) mma_3xtf32_pass(p, oacc[m][n + u], ah[m], al[m], bh[u], bl[u]);
      }
    }
    }
  };

  // Software-pipelined: between two barriers each warp multiplies P V for tile it and the scores
  // of tile it + 1 (independent products, so the tensor cores see both warps' work at once and a
  // warp with fewer score k-steps goes straight on), then the partial scores of it + 1 fold into
  // the softmax. Two barriers a tile instead of three; with a BF16 cache three tiles of rows are
  // in shared memory (P V's, the scores', one in flight), an f32 cache's two.
  if (ntile > 0) {
    cp_async_wait<NB - 1>();
    __syncthreads();
    scores(buf(0));
    __syncthreads();
    softmax(j0);
  }
  for (int it = 0; it < ntile; it++) {
    const bool more = it + 1 < ntile;
    cp_async_wait<NB - 2>();
    // tile it + 1 has landed; P and the factors of tile it are written
    const bool rescale = __syncthreads_or(moved);
    pv(buf(it), rescale);
    if (more) scores(buf(it + 1));
    __syncthreads();  // the partial scores of it + 1 are complete; every warp is done with tile it and P
    fetch(it + NB);   // into tile it's buffer
    if (more) softmax(j0 + (it + 1) * TJ);
  }


  // every warp has read the last tile's factors from sfac before it takes the maxima
  __syncthreads();
  if ((tid & 7) == 0) {
    ssum[sh] = run_sum;
    sfac[sh] = run_max;
  }
  __syncthreads();
  if (tid < H) plse[part * slots + tid] = ssum[tid] > 0.f ? sfac[tid] + logf(ssum[tid]) : -INFINITY;
  const int d0 = w * (Dv / NWARP);
#pragma unroll
  for (int m = 0; m < 2; m++)
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int h = 16 * m + g + 8 * hh;
      if (h >= H) continue;
      const float inv = ssum[h] > 0.f ? 1.f / ssum[h] : 0.f;
      float *dst = pout + (part * slots + h) * Dv + d0 + 2 * t;
#pragma unroll
      for (int n = 0; n < MAXVT; n++)
        if (n < nvt) *reinterpret_cast<float2 *>(dst + 8 * n) = make_float2(oacc[m][n][2 * hh] * inv, oacc[m][n][2 * hh + 1] * inv);
    }
}

// block (r, y): row r's columns 32 y .. 32 y + 31, from the parts of r's group (plan_for; every
// group but a lone one holds `slots` rows)
__global__ void mla_merge(const float *__restrict__ pout, const float *__restrict__ plse, int n, int slots, int Dv,
                          float *__restrict__ out, float *__restrict__ lse) {
  const int r = blockIdx.x;
  const size_t first = (size_t)(r / slots) * n * slots + r % slots;  // row r % slots of the group's first part
  kle_merge::merge_row(plse + first, slots, pout + first * Dv, (size_t)slots * Dv, n, Dv, 32 * blockIdx.y, 32 * gridDim.y,
                       out + (size_t)r * Dv, lse && blockIdx.y == 0 ? lse + r : nullptr);
}

// warp w of block b: row 8 b + w, as mla_merge's, for a plan with at most 32 spans
__global__ void __launch_bounds__(256) mla_merge_warp(const float *__restrict__ pout, const float *__restrict__ plse, int n, int slots,
                                                      int rows, int Dv, float *__restrict__ out, float *__restrict__ lse) {
  const int r = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (r >= rows) return;
  const size_t first = (size_t)(r / slots) * n * slots + r % slots;
  kle_merge::merge_row_warp(plse + first, slots, pout + first * Dv, (size_t)slots * Dv, n, Dv, out + (size_t)r * Dv,
                            lse ? lse + r : nullptr);
}

namespace kle_mla {

bool tc_fits(int D, int Dv) { return D > 0 && D % 8 == 0 && D <= 8 * NWARP * MAXKS && Dv > 0 && Dv % 64 == 0 && Dv <= D && Dv <= NWARP * 8 * MAXVT; }

long tc_workspace_bytes(int L, int T, int H, int Dv) {
  const int nsm = sm_count();
  if (L <= 0 || T <= 0 || H <= 0 || nsm <= 0) return 0;
  return plan_bytes(plan_for(L, T, H, nsm), Dv);
}

// The partial kernel for the cache's type and the shape over plan p, then the merge of the spans
// (none when each group has one span and its rows can go straight to out; a captured step, whose
// spans depend on the length it reads, always merges)
// bf16: KLE_CUDA_CACHE_BF16 for a BF16 cache, with KLE_CUDA_BF16_ROUNDED for BF16-rounded inputs
static int run_plan(const Plan &p, const float *q, const void *cache, int bf16, int L0, int T, int H, int D, int Dv, float scale,
                    float *out, float *lse, float *logits, int ldl, void *workspace, cudaStream_t st, DevLen dev) {
  if (bf16 & ~(KLE_CUDA_CACHE_BF16 | KLE_CUDA_BF16_ROUNDED)) return KLE_EINVAL;
  float *pout = (float *)workspace, *plse = pout + (size_t)p.groups * p.n * p.slots * Dv;
  const bool direct = p.n == 1 && !dev.len;
  const bool fast = D == 576 && H == 32 && Dv == 512;
  auto launch = [&](auto kern, const auto *c) {
    const size_t smem = smem_bytes(D, sizeof *c);
    if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return false;
    kern<<<dim3(p.n, p.groups), THREADS, smem, st>>>(q, c, L0, H, T * H, D, Dv, scale, p.span, p.slots, direct ? out : pout,
                                                     direct && lse ? lse : plse, logits, ldl, dev);
    return true;
  };
  const uint16_t *cb = (const uint16_t *)cache;
  const float *cf = (const float *)cache;
  const bool bp = bf16 & KLE_CUDA_BF16_ROUNDED;
  const bool ok = !(bf16 & KLE_CUDA_CACHE_BF16)
                      ? (fast ? launch(mla_partial<576, 32, 512, float>, cf) : launch(mla_partial<0, 0, 0, float>, cf))
                  : bp ? (fast ? launch(mla_partial<576, 32, 512, uint16_t, true>, cb) : launch(mla_partial<0, 0, 0, uint16_t, true>, cb))
                       : (fast ? launch(mla_partial<576, 32, 512, uint16_t>, cb) : launch(mla_partial<0, 0, 0, uint16_t>, cb));
  if (!ok) return KLE_EINVAL;
  // a lone group's many spans: a block a row, its warps splitting the spans; many groups' few
  // spans (a batched step, a prompt's queries): a warp a row (Dv % 64 == 0: tc_fits)
  if (!direct && p.groups > 1 && p.n <= 32)
    mla_merge_warp<<<(T * H + 7) / 8, 256, 0, st>>>(pout, plse, p.n, p.slots, T * H, Dv, out, lse);
  else if (!direct)
    mla_merge<<<dim3(T * H, (Dv + 31) / 32), 256, 0, st>>>(pout, plse, p.n, p.slots, Dv, out, lse);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EINVAL;
}

int tc_attend(const float *q, const void *cache, int bf16, int L0, int T, int H, int D, int Dv, float scale, float *out, float *lse,
              void *workspace, long workspace_bytes, void *stream, float *logits) {
  const int nsm = sm_count();
  if (L0 < 0 || T <= 0 || H <= 0 || !tc_fits(D, Dv) || !workspace || nsm <= 0 || (long)T * H > (1L << 30)) return KLE_EINVAL;
  const int L = L0 + T;
  const Plan p = plan_for(L, T, H, nsm);
  if (workspace_bytes < plan_bytes(p, Dv)) return KLE_EINVAL;
  return run_plan(p, q, cache, bf16, L0, T, H, D, Dv, scale, out, lse, logits, L, workspace, (cudaStream_t)stream, DevLen{});
}

}  // namespace kle_mla

extern "C" long kle_cuda_mla_workspace_bytes(int L, int H, int Dv) { return kle_mla::tc_workspace_bytes(L, 1, H, Dv); }

// A decode step whose length is read on the device (a CUDA graph replays it at every length):
// the spans are planned for the capacity, each block cuts its span from the length it reads,
// those past the end find no rows, and the merge always runs.
extern "C" long kle_cuda_mla_step_workspace_bytes(int cap, int H, int Dv) { return kle_mla::tc_workspace_bytes(cap, 1, H, Dv); }

extern "C" int kle_cuda_mla_step(const float *q, const void *cache, int cache_bf16, const int32_t *len, int cap, int H, int D,
                                 int Dv, float scale, float *out, void *workspace, long workspace_bytes, void *stream) {
  const int nsm = sm_count();
  if (!kle_mla::tc_fits(D, Dv)) return KLE_ENOSYS;
  if (cap <= 0 || H <= 0 || !len || !workspace || nsm <= 0) return KLE_EINVAL;
  const Plan p = plan_for(cap, 1, H, nsm);
  if (workspace_bytes < plan_bytes(p, Dv)) return KLE_EINVAL;
  return kle_mla::run_plan(p, q, cache, cache_bf16, 0, 1, H, D, Dv, scale, out, nullptr, nullptr, 0, workspace, (cudaStream_t)stream,
                           DevLen{len, nullptr, nullptr});
}

// A batched step's attention: B queries, each over its own cache (batched_bytes' plan: groups of
// one query's heads, spans planned for the longest, each block cutting its span from its own
// query's length); the shapes the tensor-core kernel takes, with H at most 32 or a multiple of 32.
static bool rows_fit(int H, int D, int Dv) { return kle_mla::tc_fits(D, Dv) && H > 0 && (H <= 32 || H % 32 == 0); }

extern "C" long kle_cuda_mla_rows_workspace_bytes(int maxlen, int B, int H, int D, int Dv) {
  const int nsm = sm_count();
  if (maxlen <= 0 || B <= 0 || !rows_fit(H, D, Dv) || nsm <= 0) return 0;
  return plan_bytes(plan_for(maxlen, B, H, nsm, H < 32 ? H : 32), Dv);
}

extern "C" int kle_cuda_mla_rows(const float *q, void *const *caches, const int32_t *lens, int maxlen, int cache_bf16, int B, int H,
                                 int D, int Dv, float scale, float *out, void *workspace, long workspace_bytes, void *stream) {
  const int nsm = sm_count();
  if (!rows_fit(H, D, Dv)) return KLE_ENOSYS;
  if (maxlen <= 0 || B <= 0 || !caches || !lens || !workspace || nsm <= 0 || (long)B * H > (1L << 30)) return KLE_EINVAL;
  const Plan p = plan_for(maxlen, B, H, nsm, H < 32 ? H : 32);
  if (workspace_bytes < plan_bytes(p, Dv)) return KLE_EINVAL;
  return kle_mla::run_plan(p, q, nullptr, cache_bf16, 0, B, H, D, Dv, scale, out, nullptr, nullptr, 0, workspace, (cudaStream_t)stream,
                           DevLen{nullptr, caches, lens});
}

extern "C" int kle_cuda_mla_decode(const float *q, const float *cache, int L, int H, int D, int Dv, float scale,
                                   float *out, float *lse, void *workspace, void *stream) {
  if (L <= 0) return KLE_EINVAL;
  return kle_mla::tc_attend(q, cache, 0, L - 1, 1, H, D, Dv, scale, out, lse, workspace, kle_cuda_mla_workspace_bytes(L, H, Dv),
                            stream, nullptr);
}
