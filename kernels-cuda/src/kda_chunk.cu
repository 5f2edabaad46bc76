// kda_chunk.cu: chunked KDA prefill on NVIDIA GPUs (docs/model.md, section 2, "Chunked prefill").
//
// Token-by-token prefill (kda_step.cu's kle_cuda_kda_recurrent) has one sequential step per token
// and only H * V/32 blocks of parallel work. The chunk form moves almost everything off that
// sequential path:
//   prep (every chunk and head in parallel): the Gram matrices inside the chunk, the WY/UT solve
//        (I + diag(beta) tril(K D K^T, -1))^-1 applied to [beta kp | beta v], and the decayed
//        query and key rows the state needs: everything that does not depend on the state;
//   scan (sequential over chunks, parallel over heads and 32-column tiles of the state): per
//        chunk, d = U - W S;  o = qp S + tril(QK) d;  S <- diag(plast) S + ks^T d:
//        three small matrix products with the state tile resident in shared memory, while the
//        next chunk's operands stream in with cp.async.
// Everything is f32 (prep on CUDA cores, the scan's products as 3xTF32 on tensor cores), so the
// result matches the recurrence to float32 rounding (the shared vectors' 1e-5 bar) rather than
// to TF32's 1e-3.
//
// Decays are never inverted (spec: "compute differences, never exp(G_i) alone"), with one
// guarded exception below. With gl the cumulative sum of g inside each 16-token sub-chunk and Tl
// the sub-chunk totals, every decay between two tokens of a chunk is exp of a sum of terms that
// are each <= 0:
//   same sub-chunk:             exp(gl_i - gl_j)      (pairwise, or exp(gl_i) exp(-gl_j): prep)
//   sub-chunk a < b:            exp(gl_i) * exp(sum_{a<m<b} Tl_m) * exp(Tl_a - gl_j)
//   chunk start -> token i:     exp(gl_i) * exp(sum_{m<b} Tl_m)
//   token j -> chunk end:       exp(Tl_a - gl_j) * exp(sum_{m>a} Tl_m)
// so nothing overflows however strong the decay, and the cumulative sums stay short (16 terms),
// which keeps their rounding at the recurrence's level.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "../include/kle_cuda.h"
#include "tc.cuh"

using namespace kle_tc;


namespace {

constexpr int C = 64;    // chunk
constexpr int SUB = 16;  // sub-chunk
constexpr int NSUB = C / SUB;
constexpr int NT = 256;  // scan threads
constexpr int VT = 32;   // state columns per scan block

// floats of one (chunk, head) record in the workspace
__host__ __device__ constexpr long rec_floats(int K, int V) { return 3L * K * C + (long)C * V + (long)C * C + K; }

// where each operand sits inside a record
struct Rec {
  float *Wt;   // [K][C]  W transposed: W = T diag(beta) kp, T = (I + A)^-1
  float *Qt;   // [K][C]  qp transposed: q * scale * decay from the chunk start
  float *Ks;   // [K][C]  ks transposed: k * decay to the chunk end
  float *U;    // [C][V]  T diag(beta) v
  float *QKt;  // [C][C]  QK transposed, zero above the diagonal
  float *Pl;   // [K]     decay over the whole chunk
  __device__ Rec(float *base, int K, int V)
      : Wt(base), Qt(base + K * C), Ks(base + 2 * K * C), U(base + 3 * K * C), QKt(base + 3 * K * C + C * V),
        Pl(base + 3 * K * C + C * V + C * C) {}
};

// ------------------------------------------------------------------ prep
//
// One block per (chunk, head), two blocks per SM (the kernel is latency-bound: the second block's
// warps fill the first's barriers). Rows of q, k, g sit transposed in shared memory
// ([channel][token]), so that a thread's 4 tokens or 4 columns are one 16-byte load. The Gram
// matrices are computed into registers, 4 x 4 tiles, one warp per pair of sub-chunks, and land
// after a barrier in the arrays of the q and g rows, which are dead by then: that is what keeps
// the block at 113 KB.
//
// The diagonal 16 x 16 blocks need exp(gl_i - gl_j) for j <= i. While every sub-chunk's total
// decay is at most exp(-SAFE) per channel, exp(gl_i) and exp(-gl_j) = exp(Tl - gl_j) exp(-Tl)
// are finite, normal floats, so the block is a product of rows like the others (the factors use
// expf, not __expf, whose error grows with |x|). A stronger decay anywhere in the chunk takes
// the pairwise path: one exp per pair and channel.
constexpr int NTP = 256;      // prep threads
constexpr float SAFE = 80.f;  // exp(80) and exp(-80) are finite and normal in f32
static_assert(NTP == NSUB * SUB * 4 && NTP % C == 0, "the pairwise path gives each thread one (row, 4 columns) task");

// rows of the transposed arrays: K channels, but at least C, since sA and sQKt reuse them
__host__ __device__ constexpr int prep_rows(int K) { return K > C ? K : C; }
__host__ __device__ constexpr long prep_floats(int K) {
  return 3L * prep_rows(K) * C + 16 + (long)C * SUB + (4L * NSUB + 3) * K + 3L * C;
}

// Sub-chunks (b, a) of Gram pair `pair`: 0..5 below the diagonal, packed 4 bits each
// ((1,0) (2,1) (3,2) adjacent; (2,0) (3,1) one sub-chunk between; (3,0) two), 6..9 the diagonal
// blocks 0..3.
__device__ __forceinline__ void gram_pair(int pair, int &b, int &a) {
  b = pair < 6 ? (0x332321 >> (4 * pair)) & 15 : pair - 6;
  a = pair < 6 ? (0x010210 >> (4 * pair)) & 15 : pair - 6;
}

// A 4 x 4 tile of the Gram pair `pair` (gram_pair). Lanes: 8 row groups (4 of k rows, 4 of q rows) x 4 column groups.
template <int K>
__device__ __forceinline__ void gram_tile(int pair, int lane, const float *sK, const float *sQ, const float *sG,
                                         const float *sEmid, const float *sEinv, float (&acc)[4][4]) {
  int b, a;
  gram_pair(pair, b, a);
  // a per-channel factor on the right rows: the decay of the sub-chunks between b and a, or on the
  // diagonal exp(-Tl), turning Rk into k exp(-gl)
  const float *fac = pair >= 3 && pair < 6 ? sEmid + (pair - 3) * K : pair >= 6 ? sEinv + a * K : nullptr;
  const int rgp = lane >> 2, cgp = lane & 3;
  const float *L = (rgp >= 4 ? sQ : sK) + b * SUB + 4 * (rgp & 3), *R = sG + a * SUB + 4 * cgp;
#pragma unroll
  for (int y = 0; y < 4; y++)
#pragma unroll
    for (int x = 0; x < 4; x++) acc[y][x] = 0.f;
#pragma unroll 4
  for (int c = 0; c < K; c++) {
    const float4 l = *(const float4 *)(L + c * C);
    float4 r = *(const float4 *)(R + c * C);
    if (fac) {
      const float em = fac[c];
      r.x *= em;
      r.y *= em;
      r.z *= em;
      r.w *= em;
    }
    const float la[4] = {l.x, l.y, l.z, l.w}, ra[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int y = 0; y < 4; y++)
#pragma unroll
      for (int x = 0; x < 4; x++) acc[y][x] += la[y] * ra[x];
  }
}

// the tile into sA (k rows, times beta, row-major, strictly lower) or sQKt (q rows, transposed,
// lower with the diagonal)
__device__ __forceinline__ void gram_store(int pair, int lane, const float (&acc)[4][4], const float *sB, float *sA, float *sQKt) {
  int b, a;
  gram_pair(pair, b, a);
  const int rgp = lane >> 2, cgp = lane & 3;
  const int i0 = b * SUB + 4 * (rgp & 3), j0 = a * SUB + 4 * cgp;
  if (rgp < 4) {
#pragma unroll
    for (int y = 0; y < 4; y++) {
      const int i = i0 + y;
      const float bi = sB[i];
      float o4[4];
#pragma unroll
      for (int x = 0; x < 4; x++) o4[x] = a < b || j0 + x < i ? bi * acc[y][x] : 0.f;
      *(float4 *)(sA + i * C + j0) = make_float4(o4[0], o4[1], o4[2], o4[3]);
    }
  } else {
#pragma unroll
    for (int x = 0; x < 4; x++) {
      float o4[4];
#pragma unroll
      for (int y = 0; y < 4; y++) o4[y] = a < b || j0 + x <= i0 + y ? acc[y][x] : 0.f;
      *(float4 *)(sQKt + (j0 + x) * C + i0) = make_float4(o4[0], o4[1], o4[2], o4[3]);
    }
  }
}

template <int K>
__global__ void __launch_bounds__(NTP, 2) kda_chunk_prep(const float *__restrict__ q, const float *__restrict__ k,
                                                        const float *__restrict__ v, const float *__restrict__ g,
                                                        const float *__restrict__ beta, float *__restrict__ ws, int T, int H,
                                                        int V, float scale, int l2norm) {
  constexpr int KT = prep_rows(K) * C, NG = NTP / C;
  extern __shared__ __align__(16) float smem[];
  float *sK = smem;          // k; then Lk = k exp(gl); then the solved rows of W (one per channel)
  float *sQ = sK + KT + 16;  // q; then Lq = q scale exp(gl); then sQKt (16 floats: q rows 16 banks off k's)
  float *sG = sQ + KT;       // g; then gl; then Rk = k exp(Tl - gl); then sA
  float *sA = sG;            // [C][C] beta_i k_i D_ij k_j, strictly lower, row-major
  float *sQKt = sQ;          // [C][C] q_i D_ij k_j transposed ([j][i]), zero where j > i
  float *sTbb = sG + KT;     // [C][SUB] inverse of each diagonal block of I + A
  float *sPart = sTbb;       // [2][NG][C] partial sums of squares, before sTbb is made
  float *sTl = sTbb + C * SUB, *sEpre = sTl + NSUB * K, *sEsuf = sEpre + NSUB * K, *sEmid = sEsuf + NSUB * K;
  float *sEinv = sEmid + 3 * K;  // [NSUB][K] exp(-Tl): only where no sub-chunk decays past exp(-SAFE)
  float *sNk = sEinv + NSUB * K, *sNq = sNk + C, *sB = sNq + C;
  const int n = blockIdx.x, h = blockIdx.y, t0 = n * C;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int cn = min(C, T - t0);  // tokens in this chunk; rows past it are zero (no effect)
  Rec rec(ws + ((size_t)n * H + h) * rec_floats(K, V), K, V);

  // load, transposed: each thread keeps one token and walks channel quads. All of a thread's loads
  // are issued before the first is used (a loop that consumed each quad as it came paid one
  // memory latency per trip); a token past the end reads the chunk's first row and is zeroed.
  {
    constexpr int NQ = K / (4 * NG);  // channel quads a thread loads of each array
    const int i = tid % C, grp = tid / C;
    const bool live = i < cn;
    const size_t base = ((size_t)(t0 + (live ? i : 0)) * H + h) * K;
    float4 kv[NQ], qv[NQ], gv[NQ];
#pragma unroll
    for (int j = 0; j < NQ; j++) {
      const int c = 4 * grp + 4 * NG * j;
      kv[j] = *(const float4 *)(k + base + c);
      qv[j] = *(const float4 *)(q + base + c);
      gv[j] = *(const float4 *)(g + base + c);
    }
    float pk = 0.f, pq = 0.f;
#pragma unroll
    for (int j = 0; j < NQ; j++) {
      const int c = 4 * grp + 4 * NG * j;
      const float ka[4] = {live ? kv[j].x : 0.f, live ? kv[j].y : 0.f, live ? kv[j].z : 0.f, live ? kv[j].w : 0.f};
      const float qa[4] = {live ? qv[j].x : 0.f, live ? qv[j].y : 0.f, live ? qv[j].z : 0.f, live ? qv[j].w : 0.f};
      const float ga[4] = {live ? gv[j].x : 0.f, live ? gv[j].y : 0.f, live ? gv[j].z : 0.f, live ? gv[j].w : 0.f};
#pragma unroll
      for (int x = 0; x < 4; x++) {
        pk += ka[x] * ka[x];
        pq += qa[x] * qa[x];
        sK[(c + x) * C + i] = ka[x];
        sQ[(c + x) * C + i] = qa[x];
        sG[(c + x) * C + i] = ga[x];
      }
    }
    sPart[grp * C + i] = pk;
    sPart[(NG + grp) * C + i] = pq;
    if (grp == 0) sB[i] = live ? beta[(size_t)(t0 + i) * H + h] : 0.f;
  }
  __syncthreads();
  if (tid < C) {
    float a = 0.f, b = 0.f;
#pragma unroll
    for (int x = 0; x < NG; x++) {
      a += sPart[x * C + tid];
      b += sPart[(NG + x) * C + tid];
    }
    sNk[tid] = l2norm ? rsqrtf(a + 1e-6f) : 1.f;
    sNq[tid] = scale * (l2norm ? rsqrtf(b + 1e-6f) : 1.f);
  }
  // cumulative sums inside each sub-chunk (a shuffle scan over 16 lanes), and the totals
  for (int task = w; task < 2 * K; task += NTP / 32) {
    const int c = task >> 1, i = (task & 1) * 32 + lane;
    float x = sG[c * C + i];
#pragma unroll
    for (int off = 1; off < SUB; off <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, x, off);
      if ((lane & (SUB - 1)) >= off) x += y;
    }
    sG[c * C + i] = x;
    if ((lane & (SUB - 1)) == SUB - 1) sTl[(i / SUB) * K + c] = x;
  }
  __syncthreads();
  bool strong = false;
  for (int c = tid; c < K; c += NTP) {
    float tl[NSUB], acc = 0.f;
#pragma unroll
    for (int a = 0; a < NSUB; a++) {
      tl[a] = sTl[a * K + c];
      strong |= tl[a] < -SAFE;
    }
#pragma unroll
    for (int a = 0; a < NSUB; a++) {
      sEpre[a * K + c] = __expf(acc);
      acc += tl[a];
    }
    rec.Pl[c] = __expf(acc);
    acc = 0.f;
#pragma unroll
    for (int a = NSUB - 1; a >= 0; a--) {
      sEsuf[a * K + c] = __expf(acc);
      acc += tl[a];
    }
    // the decay between two sub-chunks with others between them: (0,2), (1,3), (0,3)
    sEmid[0 * K + c] = __expf(tl[1]);
    sEmid[1 * K + c] = __expf(tl[2]);
    sEmid[2 * K + c] = __expf(tl[1] + tl[2]);
#pragma unroll
    for (int a = 0; a < NSUB; a++) sEinv[a * K + c] = tl[a] < -SAFE ? 0.f : expf(-tl[a]);
  }
  const bool pairwise = __syncthreads_or(strong);

  // the pairwise path: diagonal blocks from the raw rows, one (row, 4 columns) task a thread,
  // kept in registers until sA and sQKt exist
  float pk4[4] = {0.f, 0.f, 0.f, 0.f}, pq4[4] = {0.f, 0.f, 0.f, 0.f};
  const int pb = tid / (SUB * 4), pi = pb * SUB + (tid / 4) % SUB, pj0 = pb * SUB + 4 * (tid % 4);
  if (pairwise && pj0 <= pi) {
    for (int c = 0; c < K; c++) {
      const float gi = sG[c * C + pi], ki = sK[c * C + pi], qi = sQ[c * C + pi];
      const float4 gj = *(const float4 *)(sG + c * C + pj0), kj = *(const float4 *)(sK + c * C + pj0);
      const float ga[4] = {gj.x, gj.y, gj.z, gj.w}, ka[4] = {kj.x, kj.y, kj.z, kj.w};
#pragma unroll
      for (int x = 0; x < 4; x++) {
        const float e = pj0 + x <= pi ? __expf(gi - ga[x]) * ka[x] : 0.f;
        pk4[x] += ki * e;
        pq4[x] += qi * e;
      }
    }
  }
  if (pairwise) __syncthreads();  // the raw rows are read before the factors replace them

  // factors, in place: Lk = k exp(gl), Lq = q exp(gl), Rk = k exp(Tl - gl); and straight from
  // them qp^T and ks^T (each row of tokens contiguous) into the record
  for (int e = tid; e < K * C; e += NTP) {
    const int c = e / C, i = e % C, sub = (i / SUB) * K + c;
    const float gl = sG[e], kk = sK[e] * sNk[i], eg = expf(gl);
    const float lq = sQ[e] * (sNq[i] * eg), rk = kk * expf(sTl[sub] - gl);
    sK[e] = kk * eg;
    sQ[e] = lq;
    sG[e] = rk;
    rec.Qt[e] = lq * sEpre[sub];
    rec.Ks[e] = rk * sEsuf[sub];
  }
  __syncthreads();

  // the Gram tiles: warp w takes pair w, warps 0 and 1 also pairs 8 and 9 (the diagonal blocks 2 and 3)
  float acc0[4][4], acc1[4][4];
  const bool first = w < 6 || !pairwise, second = w < 2 && !pairwise;
  if (first) gram_tile<K>(w, lane, sK, sQ, sG, sEmid, sEinv, acc0);
  if (second) gram_tile<K>(w + 8, lane, sK, sQ, sG, sEmid, sEinv, acc1);
  __syncthreads();  // Lq and Rk are consumed: their arrays take sQKt and sA
  if (first) gram_store(w, lane, acc0, sB, sA, sQKt);
  if (second) gram_store(w + 8, lane, acc1, sB, sA, sQKt);
  if (pairwise) {
    const float nki = sNk[pi], nqi = sNq[pi], bi = sB[pi];
#pragma unroll
    for (int x = 0; x < 4; x++) {
      const int j = pj0 + x;
      sA[pi * C + j] = j < pi ? bi * nki * sNk[j] * pk4[x] : 0.f;
      sQKt[j * C + pi] = j <= pi ? nqi * sNk[j] * pq4[x] : 0.f;
    }
  }
  for (int e = tid; e < C * C; e += NTP) {  // blocks above the diagonal are zero
    const int i = e / C, j = e % C;
    if (j / SUB > i / SUB) {
      sA[i * C + j] = 0.f;
      sQKt[j * C + i] = 0.f;
    }
  }
  __syncthreads();

  // two warps: the inverse of each diagonal block of I + A, one column per thread (forward
  // substitution); the others meanwhile write QK^T
  if (tid < C) {
    const int b = tid / SUB, j = tid % SUB;
    const float *Ab = sA + b * SUB * C + b * SUB;
    float x[SUB];
#pragma unroll
    for (int i = 0; i < SUB; i++) {
      float acc = i == j ? 1.f : 0.f;
#pragma unroll
      for (int m = 0; m < i; m++) acc -= Ab[i * C + m] * x[m];
      x[i] = acc;
    }
#pragma unroll
    for (int i = 0; i < SUB; i++) sTbb[(b * SUB + i) * SUB + j] = x[i];
  } else {
    for (int e = tid - C; e < C * C; e += NTP - C) rec.QKt[e] = sQKt[e];
  }
  __syncthreads();

  // the UT solve, one column of [beta kp | beta v] per thread, 16 rows at a time:
  // y = rhs_b - A[b, <b] x_<b (16 independent sums), then x_b = Tbb y
  for (int col = tid; col < K + V; col += NTP) {
    float x[C];
    const bool isk = col < K;
    if (isk) {
#pragma unroll
      for (int i = 0; i < C; i += 4) {
        const float4 l = *(const float4 *)(sK + col * C + i);
        const float ep = sEpre[(i / SUB) * K + col];
        x[i] = sB[i] * l.x * ep;
        x[i + 1] = sB[i + 1] * l.y * ep;
        x[i + 2] = sB[i + 2] * l.z * ep;
        x[i + 3] = sB[i + 3] * l.w * ep;
      }
    } else {
      // unconditional loads (rows past the end read row 0 and are dropped), so that all 64 are in
      // flight at once: a load under `i < cn` was issued only after the one before it returned
#pragma unroll
      for (int i = 0; i < C; i++) x[i] = v[((size_t)(t0 + (i < cn ? i : 0)) * H + h) * V + (col - K)];
#pragma unroll
      for (int i = 0; i < C; i++) x[i] = i < cn ? sB[i] * x[i] : 0.f;
    }
#pragma unroll
    for (int b = 0; b < NSUB; b++) {
      float y[SUB];
#pragma unroll
      for (int r = 0; r < SUB; r++) y[r] = x[b * SUB + r];
#pragma unroll
      for (int j = 0; j < b * SUB; j += 4)
#pragma unroll
        for (int r = 0; r < SUB; r++) {
          const float4 a = *(const float4 *)(sA + (b * SUB + r) * C + j);
          y[r] = fmaf(-a.x, x[j], y[r]);
          y[r] = fmaf(-a.y, x[j + 1], y[r]);
          y[r] = fmaf(-a.z, x[j + 2], y[r]);
          y[r] = fmaf(-a.w, x[j + 3], y[r]);
        }
#pragma unroll
      for (int r = 0; r < SUB; r++) {
        float s = 0.f;
#pragma unroll
        for (int m = 0; m <= r; m += 4) {
          const float4 t = *(const float4 *)(sTbb + (b * SUB + r) * SUB + m);
          s = fmaf(t.x, y[m], s);
          s = fmaf(t.y, y[m + 1], s);
          s = fmaf(t.z, y[m + 2], s);
          s = fmaf(t.w, y[m + 3], s);
        }
        x[b * SUB + r] = s;
      }
    }
    if (isk) {
#pragma unroll
      for (int i = 0; i < C; i += 4) *(float4 *)(sK + col * C + i) = make_float4(x[i], x[i + 1], x[i + 2], x[i + 3]);
    } else {
#pragma unroll
      for (int i = 0; i < C; i++) rec.U[(size_t)i * V + (col - K)] = x[i];
    }
  }
  __syncthreads();
  for (int e = tid; e < K * C; e += NTP) rec.Wt[e] = sK[e];
}

// ------------------------------------------------------------------ scan
//
// The three products of a chunk step run on tensor cores in 3xTF32 (tc.cuh). On CUDA cores the
// step was bound by shared-memory bandwidth (each 16-byte operand load fed 16 FMAs); an mma feeds
// 1024 from 768 bytes.

// rows x cols floats (cols a multiple of 4) from a contiguous source into rows of dst_stride
__device__ __forceinline__ void stage(float *dst, int dst_stride, const float *src, int src_stride, int rows, int cols) {
  for (int e = threadIdx.x * 4; e < rows * cols; e += NT * 4) {
    const int r = e / cols, c = e % cols;
    cp_async16(dst + r * dst_stride + c, src + (size_t)r * src_stride + c);
  }
}

// padded row lengths: fragment loads of 8 rows x 4 columns hit 32 distinct banks
constexpr int WS = C + 8;   // W^T, qp^T, QK^T: [k][row]
constexpr int KS = C + 4;   // ks^T: [k][token]
constexpr int SS = VT + 8;  // S, d, U: [row][column]

// acc[nt] += A (16 rows x 8 k) * B (8 k x 32 columns), 3xTF32. A element (row r, k c) at
// a[c * a_kstride + r * a_rstride]; B element (k c, column n) at b[c * SS + n].
__device__ __forceinline__ void mma_16x32x8(float (&acc)[4][4], const float *a, int a_kstride, int a_rstride, const float *b) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  uint32_t ah[4], al[4];
  split_tf32(a[t * a_kstride + g * a_rstride], ah[0], al[0]);
  split_tf32(a[t * a_kstride + (g + 8) * a_rstride], ah[1], al[1]);
  split_tf32(a[(t + 4) * a_kstride + g * a_rstride], ah[2], al[2]);
  split_tf32(a[(t + 4) * a_kstride + (g + 8) * a_rstride], ah[3], al[3]);
  uint32_t bh[4][2], bl[4][2];
#pragma unroll
  for (int nt = 0; nt < 4; nt++) {
    split_tf32(b[t * SS + nt * 8 + g], bh[nt][0], bl[nt][0]);
    split_tf32(b[(t + 4) * SS + nt * 8 + g], bh[nt][1], bl[nt][1]);
  }
#pragma unroll
  for (int p = 0; p < 3; p++)
#pragma unroll
    for (int nt = 0; nt < 4; nt++) mma_3xtf32_pass(p, acc[nt], ah, al, bh[nt], bl[nt]);
}

// group A: W^T and qp^T (needed first); group B: U's column tile, ks^T, QK^T, plast
template <int K>
__device__ __forceinline__ void stage_a(float *sW, float *sQ, const Rec &r) {
  stage(sW, WS, r.Wt, C, K, C);
  stage(sQ, WS, r.Qt, C, K, C);
  cp_async_commit();
}
template <int K>
__device__ __forceinline__ void stage_b(float *sU, float *sKs, float *sQK, float *sPl, const Rec &r, int V, int v0) {
  stage(sU, SS, r.U + v0, V, C, VT);
  stage(sKs, KS, r.Ks, C, K, C);
  stage(sQK, WS, r.QKt, C, C, C);
  stage(sPl, K, r.Pl, K, 1, K);
  cp_async_commit();
}

// One block per (head, 32-column tile of the state); the tile lives in shared memory for the
// whole sequence. Warp w: rows 16w.. of X = [W; qp] S (warps 0-3 the W rows, 4-7 the qp rows,
// which go on to the output), and rows 16w.. of the state in the update (w < K/16).
template <int K>
__global__ void __launch_bounds__(NT) kda_chunk_scan(float *__restrict__ S, const float *__restrict__ ws,
                                                    float *__restrict__ o, int T, int H, int V) {
  extern __shared__ __align__(16) float smem[];
  float *sW = smem, *sQ = sW + K * WS, *sKs = sQ + K * WS, *sU = sKs + K * KS, *sQK = sU + C * SS, *sPl = sQK + C * WS;
  float *sS = sPl + K, *sD = sS + K * SS;
  const int h = blockIdx.x, v0 = blockIdx.y * VT, tid = threadIdx.x, w = tid >> 5;
  const int g = (tid & 31) >> 2, t = tid & 3;
  const int nchunks = (T + C - 1) / C;
  float *Sh = S + (size_t)h * K * V + v0;
  for (int e = tid; e < K * VT; e += NT) sS[(e / VT) * SS + e % VT] = Sh[(size_t)(e / VT) * V + e % VT];
  {
    Rec r0((float *)ws + (size_t)h * rec_floats(K, V), K, V);
    stage_a<K>(sW, sQ, r0);
    stage_b<K>(sU, sKs, sQK, sPl, r0, V, v0);
  }
  for (int n = 0; n < nchunks; n++) {
    const bool more = n + 1 < nchunks;
    Rec rn((float *)ws + ((size_t)(more ? n + 1 : n) * H + h) * rec_floats(K, V), K, V);
    cp_async_wait<1>();  // group A of chunk n; B may still be in flight
    __syncthreads();
    // X = [W; qp] S for this warp's 16 rows, all 32 columns
    float acc[4][4] = {};
    {
      const float *src = (w < 4 ? sW : sQ) + (w & 3) * 16;
#pragma unroll 2
      for (int k0 = 0; k0 < K; k0 += 8) mma_16x32x8(acc, src + k0 * WS, WS, 1, sS + k0 * SS);
    }
    __syncthreads();  // W and qp are consumed: the next chunk's may land
    if (more) stage_a<K>(sW, sQ, rn);
    if (more) cp_async_wait<1>(); else cp_async_wait<0>();  // group B of chunk n
    __syncthreads();
    if (w < 4) {  // d = U - W S
#pragma unroll
      for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const int i = w * 16 + g + 8 * hf, col = nt * 8 + 2 * t;
          const float2 u = *(const float2 *)(sU + i * SS + col);
          *(float2 *)(sD + i * SS + col) = make_float2(u.x - acc[nt][2 * hf], u.y - acc[nt][2 * hf + 1]);
        }
    }
    __syncthreads();
    if (w >= 4) {  // o = qp S + tril(QK) d: QK is zero above the diagonal, so stop at the block's last row
      const int i0 = (w - 4) * 16;
      for (int j0 = 0; j0 < i0 + 16; j0 += 8) mma_16x32x8(acc, sQK + j0 * WS + i0, WS, 1, sD + j0 * SS);
      const int tb = n * C + i0 + g;
#pragma unroll
      for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const int tt = tb + 8 * hf;
          if (tt < T)
            *(float2 *)(o + ((size_t)tt * H + h) * V + v0 + nt * 8 + 2 * t) = make_float2(acc[nt][2 * hf], acc[nt][2 * hf + 1]);
        }
    }
    // S <- diag(plast) S + ks^T d for this warp's 16 state rows
    float sacc[4][4];
    const bool upd = w < K / 16;
    if (upd) {
      const int k0 = w * 16;
#pragma unroll
      for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const int kk = k0 + g + 8 * hf, col = nt * 8 + 2 * t;
          const float pl = sPl[kk];
          const float2 sv = *(const float2 *)(sS + kk * SS + col);
          sacc[nt][2 * hf] = pl * sv.x;
          sacc[nt][2 * hf + 1] = pl * sv.y;
        }
#pragma unroll 2
      for (int j0 = 0; j0 < C; j0 += 8) mma_16x32x8(sacc, sKs + k0 * KS + j0, 1, KS, sD + j0 * SS);
    }
    __syncthreads();  // every warp is done with U, ks, QK, plast, d and the old S
    if (upd) {
#pragma unroll
      for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++)
          *(float2 *)(sS + (w * 16 + g + 8 * hf) * SS + nt * 8 + 2 * t) = make_float2(sacc[nt][2 * hf], sacc[nt][2 * hf + 1]);
    }
    if (more) stage_b<K>(sU, sKs, sQK, sPl, rn, V, v0);
  }
  __syncthreads();
  for (int e = tid; e < K * VT; e += NT) Sh[(size_t)(e / VT) * V + e % VT] = sS[(e / VT) * SS + e % VT];
}

size_t prep_smem(int K) { return sizeof(float) * (size_t)prep_floats(K); }
size_t scan_smem(int K) { return sizeof(float) * (2 * (size_t)K * WS + (size_t)K * KS + (size_t)C * SS + (size_t)C * WS + K + (size_t)K * SS + (size_t)C * SS); }

template <int K>
int launch(float *S, const float *q, const float *k, const float *v, const float *g, const float *beta, float *o, int T,
           int H, int V, float scale, int l2norm, float *ws, cudaStream_t st) {
  const size_t ps = prep_smem(K), ss = scan_smem(K);
  // opting in above 48 KB is per kernel and per device; setting it again is cheap
  if (cudaFuncSetAttribute(kda_chunk_prep<K>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ps) != cudaSuccess ||
      cudaFuncSetAttribute(kda_chunk_scan<K>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ss) != cudaSuccess)
    return KLE_EDEVICE;
  const int nchunks = (T + C - 1) / C;
  kda_chunk_prep<K><<<dim3(nchunks, H), NTP, ps, st>>>(q, k, v, g, beta, ws, T, H, V, scale, l2norm);
  kda_chunk_scan<K><<<dim3(H, V / VT), NT, ss, st>>>(S, ws, o, T, H, V);
  return cudaGetLastError() == cudaSuccess ? KLE_OK : KLE_EDEVICE;
}

}  // namespace

extern "C" long kle_cuda_kda_chunk_workspace_bytes(int T, int H, int K, int V) {
  if (T <= 0 || H <= 0 || K <= 0 || V <= 0) return 0;
  return (long)((T + C - 1) / C) * H * rec_floats(K, V) * (long)sizeof(float);
}

extern "C" int kle_cuda_kda_chunk(float *S, const float *q, const float *k, const float *v, const float *g,
                                  const float *beta, float *o, int T, int H, int K, int V, float scale, int flags,
                                  void *workspace, long workspace_bytes, void *stream) {
  if (T <= 0 || H <= 0 || V <= 0 || V % VT || V > 1024 || (K != 32 && K != 64 && K != 128) || (flags & ~1) ||
      !workspace || workspace_bytes < kle_cuda_kda_chunk_workspace_bytes(T, H, K, V) ||
      (((uintptr_t)workspace | (uintptr_t)q | (uintptr_t)k | (uintptr_t)g) & 15))
    return KLE_EINVAL;
  cudaStream_t st = (cudaStream_t)stream;
  float *ws = (float *)workspace;
  const int l2 = flags & 1;
  if (K == 128) return launch<128>(S, q, k, v, g, beta, o, T, H, V, scale, l2, ws, st);
  if (K == 64) return launch<64>(S, q, k, v, g, beta, o, T, H, V, scale, l2, ws, st);
  return launch<32>(S, q, k, v, g, beta, o, T, H, V, scale, l2, ws, st);
}
