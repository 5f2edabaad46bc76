/*
 * kda.c: Kimi Delta Attention (docs/model.md, section 2). The recurrence (decode step), its chunkwise form (prefill), and
 * the forget gate. docs/model.md is the math; the *_ref functions follow it literally.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kle.h"
#include "simd.h"

#define L2_EPS 1e-6f

static float inv_l2(const float *x, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; i++) s += x[i] * x[i];
  return 1.0f / sqrtf(s + L2_EPS);
}

static int kda_dims_ok(int H, int K, int V) {
  return H > 0 && K > 0 && V > 0 && K % 4 == 0 && V % 4 == 0 && K <= KLE_MAX_HEAD_DIM &&
         V <= KLE_MAX_HEAD_DIM;
}

/* ------------------------------------------------------------------ reference step */

int kle_kda_step_ref(float *S, const float *q, const float *k, const float *v, const float *g,
                     const float *beta, float *o, int H, int K, int V, float scale, int flags) {
  if (!kda_dims_ok(H, K, V)) return KLE_EINVAL;
  float *u = malloc(sizeof(float) * (size_t)V);
  if (!u) return KLE_ENOMEM;
  for (int h = 0; h < H; h++) {
    float *Sh = S + (size_t)h * K * V;
    const float *qh = q + (size_t)h * K, *kh = k + (size_t)h * K, *gh = g + (size_t)h * K;
    const float *vh = v + (size_t)h * V;
    float *oh = o + (size_t)h * V;
    float qs = scale, ks = 1.0f;
    if (flags & KLE_KDA_L2NORM_QK) {
      qs *= inv_l2(qh, K);
      ks = inv_l2(kh, K);
    }
    for (int i = 0; i < K; i++) {
      float e = expf(gh[i]);
      for (int j = 0; j < V; j++) Sh[i * V + j] *= e;
    }
    for (int j = 0; j < V; j++) {
      float acc = 0.0f;
      for (int i = 0; i < K; i++) acc += Sh[i * V + j] * (kh[i] * ks);
      u[j] = vh[j] - acc;
    }
    for (int i = 0; i < K; i++)
      for (int j = 0; j < V; j++) Sh[i * V + j] += beta[h] * (kh[i] * ks) * u[j];
    for (int j = 0; j < V; j++) {
      float acc = 0.0f;
      for (int i = 0; i < K; i++) acc += Sh[i * V + j] * (qh[i] * qs);
      oh[j] = acc;
    }
  }
  free(u);
  return KLE_OK;
}

int kle_kda_prefill_ref(float *S, const float *q, const float *k, const float *v, const float *g,
                        const float *beta, float *o, int T, int H, int K, int V, float scale,
                        int flags) {
  if (T < 0 || !kda_dims_ok(H, K, V)) return KLE_EINVAL;
  for (int t = 0; t < T; t++) {
    size_t qk = (size_t)t * H * K, vo = (size_t)t * H * V;
    int rc = kle_kda_step_ref(S, q + qk, k + qk, v + vo, g + qk, beta + (size_t)t * H, o + vo, H,
                              K, V, scale, flags);
    if (rc) return rc;
  }
  return KLE_OK;
}

/* ------------------------------------------------------------------ fast step */

/*
 * One head. With q' = qs*q, k' = ks*k, e = exp(g) and Sd = Diag(e) S:
 *   u = v - Sd^T k',  S <- Sd + beta k' u^T,  o = Sd^T q' + beta (k'.q') u
 * which is the spec's order rewritten so that each 16-column stripe of S is read once to get
 * Sd^T k' and Sd^T q' and then rewritten while it is still in L1; u lives in registers.
 */
static void kda_step_head(float *Sh, const float *qh, const float *kh, const float *vh,
                          const float *gh, float bh, float *oh, int K, int V, float qs, float ks) {
  float e[KLE_MAX_HEAD_DIM], ek[KLE_MAX_HEAD_DIM], eq[KLE_MAX_HEAD_DIM], bk[KLE_MAX_HEAD_DIM];
  float kq = 0.0f;
  int i = 0;
  for (; i + 4 <= K; i += 4) {
    v4f ev = vexp(vload(gh + i));
    v4f kv = vload(kh + i) * vsplat(ks), qv = vload(qh + i) * vsplat(qs);
    vstore(e + i, ev);
    vstore(ek + i, ev * kv);
    vstore(eq + i, ev * qv);
    vstore(bk + i, vsplat(bh) * kv);
    kq += vsum(kv * qv);
  }
  float bkq = bh * kq;
  int j = 0;
  for (; j + 16 <= V; j += 16) {
    v4f ak0 = vsplat(0), ak1 = vsplat(0), ak2 = vsplat(0), ak3 = vsplat(0);
    v4f aq0 = vsplat(0), aq1 = vsplat(0), aq2 = vsplat(0), aq3 = vsplat(0);
    for (i = 0; i < K; i++) {
      const float *r = Sh + (size_t)i * V + j;
      v4f s0 = vload(r), s1 = vload(r + 4), s2 = vload(r + 8), s3 = vload(r + 12);
      v4f a = vsplat(ek[i]), b = vsplat(eq[i]);
      ak0 += s0 * a; ak1 += s1 * a; ak2 += s2 * a; ak3 += s3 * a;
      aq0 += s0 * b; aq1 += s1 * b; aq2 += s2 * b; aq3 += s3 * b;
    }
    v4f u0 = vload(vh + j) - ak0, u1 = vload(vh + j + 4) - ak1;
    v4f u2 = vload(vh + j + 8) - ak2, u3 = vload(vh + j + 12) - ak3;
    v4f c = vsplat(bkq);
    vstore(oh + j, aq0 + c * u0);
    vstore(oh + j + 4, aq1 + c * u1);
    vstore(oh + j + 8, aq2 + c * u2);
    vstore(oh + j + 12, aq3 + c * u3);
    for (i = 0; i < K; i++) {
      float *r = Sh + (size_t)i * V + j;
      v4f a = vsplat(e[i]), b = vsplat(bk[i]);
      vstore(r, vload(r) * a + b * u0);
      vstore(r + 4, vload(r + 4) * a + b * u1);
      vstore(r + 8, vload(r + 8) * a + b * u2);
      vstore(r + 12, vload(r + 12) * a + b * u3);
    }
  }
  for (; j < V; j += 4) { /* stripes of 4 when V is not a multiple of 16 */
    v4f ak = vsplat(0), aq = vsplat(0);
    for (i = 0; i < K; i++) {
      v4f s = vload(Sh + (size_t)i * V + j);
      ak += s * vsplat(ek[i]);
      aq += s * vsplat(eq[i]);
    }
    v4f u = vload(vh + j) - ak;
    vstore(oh + j, aq + vsplat(bkq) * u);
    for (i = 0; i < K; i++) {
      float *r = Sh + (size_t)i * V + j;
      vstore(r, vload(r) * vsplat(e[i]) + vsplat(bk[i]) * u);
    }
  }
}

int kle_kda_step(float *S, const float *q, const float *k, const float *v, const float *g,
                 const float *beta, float *o, int H, int K, int V, float scale, int flags) {
  if (!kda_dims_ok(H, K, V)) return KLE_EINVAL;
  for (int h = 0; h < H; h++) {
    const float *qh = q + (size_t)h * K, *kh = k + (size_t)h * K;
    float qs = scale, ks = 1.0f;
    if (flags & KLE_KDA_L2NORM_QK) {
      qs *= inv_l2(qh, K);
      ks = inv_l2(kh, K);
    }
    kda_step_head(S + (size_t)h * K * V, qh, kh, v + (size_t)h * V, g + (size_t)h * K, beta[h],
                  o + (size_t)h * V, K, V, qs, ks);
  }
  return KLE_OK;
}

/* ------------------------------------------------------------------ chunked prefill */

/*
 * One register block of C[M,N] = diag(rs) C + A B: R rows x NV vectors of 4 columns. R and NV
 * are constants at every call site, so the loops unroll and the accumulators live in registers.
 */
static inline __attribute__((always_inline)) void mm_block(const int R, const int NV, int Kd,
                                                           const float *A, int lda, const float *B,
                                                           int ldb, float *C, int ldc,
                                                           const float *rs) {
  v4f x[4][3];
  for (int r = 0; r < R; r++) {
    v4f sc = vsplat(rs ? rs[r] : 1.0f);
    for (int v = 0; v < NV; v++) x[r][v] = vload(C + (size_t)r * ldc + 4 * v) * sc;
  }
  for (int p = 0; p < Kd; p++) {
    const float *b = B + (size_t)p * ldb;
    v4f bv[3];
    for (int v = 0; v < NV; v++) bv[v] = vload(b + 4 * v);
    for (int r = 0; r < R; r++) {
      v4f s = vsplat(A[(size_t)r * lda + p]);
      for (int v = 0; v < NV; v++) x[r][v] += s * bv[v];
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < NV; v++) vstore(C + (size_t)r * ldc + 4 * v, x[r][v]);
}

/* every row block over one stripe of NV vectors */
static inline __attribute__((always_inline)) void mm_stripe(const int NV, int M, int Kd,
                                                            const float *A, int lda, const float *B,
                                                            int ldb, float *C, int ldc,
                                                            const float *rs) {
  int i = 0;
  for (; i + 4 <= M; i += 4)
    mm_block(4, NV, Kd, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc, rs ? rs + i : NULL);
  for (; i < M; i++)
    mm_block(1, NV, Kd, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc, rs ? rs + i : NULL);
}

/* Stripe width in vectors: 3 (12 accumulators) natively; 2 in wasm, where V8 keeps one of
 * x64's 16 vector registers as scratch and 12 accumulators would spill. */
#ifdef __wasm__
#define MM_NV 2
#else
#define MM_NV 3
#endif

/*
 * The same blocks as wide as the native build's vectors (16 lanes with AVX-512, 8 with AVX2):
 * the 4-lane ones above used a quarter of an AVX-512 unit, and these products were 30% of a
 * 105M Q4_0 prefill natively (perf). Each output element adds the same products in the same
 * order as the 4-lane block, so the results are the same bits. Up to 4 vectors a stripe with
 * AVX-512's 32 registers (16 accumulators), 3 with AVX2's 16.
 */
#if !defined(__wasm__) && defined(__AVX512F__)
#define MMW 16
#define MMW_NV 4
#elif !defined(__wasm__) && defined(__AVX2__)
#define MMW 8
#define MMW_NV 3
#endif
#ifdef MMW
typedef float vmw __attribute__((vector_size(MMW * 4)));
typedef float vmw_u __attribute__((vector_size(MMW * 4), aligned(4), may_alias));
static inline __attribute__((always_inline)) void mm_block_w(const int R, const int NV, int Kd, const float *A, int lda, const float *B,
                                                             int ldb, float *C, int ldc, const float *rs) {
  vmw x[4][MMW_NV];
  for (int r = 0; r < R; r++) {
    const vmw sc = (vmw){0} + (rs ? rs[r] : 1.0f);
    for (int v = 0; v < NV; v++) x[r][v] = *(const vmw_u *)(C + (size_t)r * ldc + MMW * v) * sc;
  }
  for (int p = 0; p < Kd; p++) {
    const float *b = B + (size_t)p * ldb;
    vmw bv[MMW_NV];
    for (int v = 0; v < NV; v++) bv[v] = *(const vmw_u *)(b + MMW * v);
    for (int r = 0; r < R; r++) {
      const vmw sv = (vmw){0} + A[(size_t)r * lda + p];
      for (int v = 0; v < NV; v++) x[r][v] += sv * bv[v];
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < NV; v++) *(vmw_u *)(C + (size_t)r * ldc + MMW * v) = x[r][v];
}
static inline __attribute__((always_inline)) void mm_stripe_w(const int NV, int M, int Kd, const float *A, int lda, const float *B, int ldb,
                                                              float *C, int ldc, const float *rs) {
  int i = 0;
  for (; i + 4 <= M; i += 4) mm_block_w(4, NV, Kd, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc, rs ? rs + i : NULL);
  for (; i < M; i++) mm_block_w(1, NV, Kd, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc, rs ? rs + i : NULL);
}
#endif

/*
 * C[M,N] = diag(rs) C + A[M,Kd] B[Kd,N] (rs NULL: no scaling), row-major with leading
 * dimensions; N a multiple of 4. Column stripes outside, row blocks inside, so a stripe of B
 * stays in cache while every row block of A passes over it. (Packing stripes contiguously, as
 * BLAS does, measured slower here: the copy costs more than the set conflicts it avoids.)
 */
static void mm_acc_rs(int M, int N, int Kd, const float *A, int lda, const float *B, int ldb,
                      float *Cm, int ldc, const float *rs) {
  int j = 0;
#ifdef MMW
  /* wide stripes while whole wide vectors remain, the 4-lane ones for the rest */
  while (N - j >= MMW) {
    const int nv = (N - j) / MMW < MMW_NV ? (N - j) / MMW : MMW_NV;
    /* constant counts, so that the blocks unroll; the last branch is MMW_NV's */
    if (nv == 1) mm_stripe_w(1, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    else if (nv == 2) mm_stripe_w(2, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    else if (nv == 3) mm_stripe_w(3, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    else mm_stripe_w(MMW_NV, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    j += MMW * nv;
  }
#endif
  while (j < N) {
    int nv = (N - j) / 4 < MM_NV ? (N - j) / 4 : MM_NV;
    if (nv == 3) mm_stripe(3, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    else if (nv == 2) mm_stripe(2, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    else mm_stripe(1, M, Kd, A, lda, B + j, ldb, Cm + j, ldc, rs);
    j += 4 * nv;
  }
}

static void mm_acc(int M, int N, int Kd, const float *A, int lda, const float *B, int ldb,
                   float *Cm, int ldc) {
  mm_acc_rs(M, N, Kd, A, lda, B, ldb, Cm, ldc, NULL);
}

static float dot(const float *a, const float *b, int n) {
  v4f acc0 = vsplat(0), acc1 = vsplat(0);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    acc0 += vload(a + i) * vload(b + i);
    acc1 += vload(a + i + 4) * vload(b + i + 4);
  }
  for (; i < n; i += 4) acc0 += vload(a + i) * vload(b + i);
  return vsum(acc0 + acc1);
}

#define SUB 16 /* sub-chunk: Gram blocks between sub-chunks are matmuls */

/* Scratch of one head-chunk; sizes in floats, C = KLE_KDA_CHUNK. */
typedef struct {
  float *eg;    /* [C,K] exp(g) */
  float *kn;    /* [C,K] k, normalized: the rows every later stage reads contiguously */
  float *qn;    /* [C,K] q * scale, normalized */
  float *kp;    /* [2C,K] rows 0..c-1: kn_i * prod_{s<=i} eg_s (decay from the chunk start),
                 * rows c..2c-1: the same for qn, so that one matmul reads S for both */
  float *lf;    /* [2*SUB,K] left factors of one sub-chunk: kn_i, then qn_i, decayed from its start */
  float *rT;    /* [K,C] right factors, transposed: kn_j decayed up to the current sub-chunk start */
  float *ksT;   /* [K,C] kn_j * prod_{s>j} eg_s, transposed  (decay to the chunk end) */
  float *run;   /* [SUB,K] running decayed keys inside one sub-chunk */
  float *G;     /* [2*SUB,C] raw Gram rows of one sub-chunk */
  float *A;     /* [C,C] strictly lower: -beta_i kn_i^T (G_i/G_j) kn_j */
  float *QK;    /* [C,C] lower incl. diagonal: qn_i^T (G_i/G_j) kn_j */
  float *d;     /* [2C,V] rows 0..c-1: the corrected values (delta rule updates) of the
                 * chunk; rows c..2c-1: qp S, the inter-chunk part of the output */
  float *plast; /* [K] prod of eg over the whole chunk */
  float *vec;   /* [K] running product */
} chunk_work;

/*
 * One chunk of c tokens for one head: the WY/UT form (docs/model.md, section 2). Every decay ratio
 * G_i/G_j is a product of per-token exp(g) factors, each in (0, 1]:
 *  - inside a sub-chunk of 16 tokens, as a running product over the pairs;
 *  - across sub-chunks, split at the last token r before sub-chunk a:
 *      G_i/G_j = (prod_{r<s<=i} eg_s) * (prod_{j<s<=r} eg_s),
 *    so that block of the Gram matrix is a matmul of decayed rows. Both factors stay <= 1, so
 *    no decay is ever inverted and nothing overflows however strong the decay; underflow
 *    only happens where the true product is below float range.
 */
static void kda_chunk_head(float *Sh, const float *q, const float *k, const float *v,
                           const float *g, const float *beta, float *o, int c, int H, int K,
                           int V, float scale, int flags, chunk_work *w) {
  const int C = KLE_KDA_CHUNK;
  const size_t sq = (size_t)H * K, sv = (size_t)H * V; /* token strides */
  /* gather: eg, normalized rows, and prefix-decayed rows */
  for (int p = 0; p < K; p += 4) vstore(w->vec + p, vsplat(1.0f));
  for (int i = 0; i < c; i++) {
    const float *gi = g + i * sq, *qi = q + i * sq, *ki = k + i * sq;
    float qs = scale, ks = 1.0f;
    if (flags & KLE_KDA_L2NORM_QK) {
      qs *= inv_l2(qi, K);
      ks = inv_l2(ki, K);
    }
    float *egi = w->eg + (size_t)i * K, *kni = w->kn + (size_t)i * K, *qni = w->qn + (size_t)i * K;
    float *kpi = w->kp + (size_t)i * K, *qpi = w->kp + (size_t)(c + i) * K;
    for (int p = 0; p < K; p += 4) {
      v4f e = vexp(vload(gi + p)), kv = vload(ki + p) * vsplat(ks), qv = vload(qi + p) * vsplat(qs);
      v4f P = vload(w->vec + p) * e;
      vstore(w->vec + p, P);
      vstore(egi + p, e);
      vstore(kni + p, kv);
      vstore(qni + p, qv);
      vstore(kpi + p, P * kv);
      vstore(qpi + p, P * qv);
    }
  }
  memcpy(w->plast, w->vec, sizeof(float) * (size_t)K);
  /* suffix products: ksT[:, j] = kn_j * prod_{s>j} eg_s */
  for (int p = 0; p < K; p += 4) vstore(w->vec + p, vsplat(1.0f));
  for (int j = c - 1; j >= 0; j--) {
    const float *knj = w->kn + (size_t)j * K, *egj = w->eg + (size_t)j * K;
    for (int p = 0; p < K; p++) w->ksT[(size_t)p * C + j] = w->vec[p] * knj[p];
    for (int p = 0; p < K; p += 4) vstore(w->vec + p, vload(w->vec + p) * vload(egj + p));
  }
  /* Gram matrices, sub-chunk by sub-chunk */
  for (int a0 = 0; a0 < c; a0 += SUB) {
    int na = c - a0 < SUB ? c - a0 : SUB;
    if (a0 > 0) {
      /* right factors: keys before sub-chunk a-1 take its whole decay at once; the keys of
       * sub-chunk a-1 take the decay of the tokens after them inside it */
      for (int p = 0; p < K; p += 4) vstore(w->vec + p, vsplat(1.0f));
      for (int s = a0 - 1; s >= a0 - SUB; s--) {
        const float *egs = w->eg + (size_t)s * K, *kns = w->kn + (size_t)s * K;
        for (int p = 0; p < K; p++) w->rT[(size_t)p * C + s] = w->vec[p] * kns[p];
        for (int p = 0; p < K; p += 4) vstore(w->vec + p, vload(w->vec + p) * vload(egs + p));
      }
      for (int p = 0; p < K; p++) {
        float *r = w->rT + (size_t)p * C;
        v4f f = vsplat(w->vec[p]);
        for (int j = 0; j < a0 - SUB; j += 4) vstore(r + j, vload(r + j) * f);
      }
      /* left factors: keys, then queries, decayed from the sub-chunk start, inclusive */
      for (int p = 0; p < K; p += 4) vstore(w->vec + p, vsplat(1.0f));
      for (int i = 0; i < na; i++) {
        const float *egi = w->eg + (size_t)(a0 + i) * K;
        const float *kni = w->kn + (size_t)(a0 + i) * K, *qni = w->qn + (size_t)(a0 + i) * K;
        for (int p = 0; p < K; p += 4) {
          v4f P = vload(w->vec + p) * vload(egi + p);
          vstore(w->vec + p, P);
          vstore(w->lf + (size_t)i * K + p, P * vload(kni + p));
          vstore(w->lf + (size_t)(SUB + i) * K + p, P * vload(qni + p));
        }
      }
      memset(w->G, 0, sizeof(float) * 2 * SUB * C);
      /* rows [0,na) are k-left, rows [SUB, SUB+na) q-left; columns 0 .. a0-1 */
      mm_acc(SUB + na, a0, K, w->lf, K, w->rT, C, w->G, C);
      for (int i = 0; i < na; i++) {
        float mb = -beta[(size_t)(a0 + i) * H];
        float *Ai = w->A + (size_t)(a0 + i) * C, *QKi = w->QK + (size_t)(a0 + i) * C;
        const float *Gk = w->G + (size_t)i * C, *Gq = w->G + (size_t)(SUB + i) * C;
        for (int j = 0; j < a0; j++) {
          Ai[j] = mb * Gk[j];
          QKi[j] = Gq[j];
        }
      }
    }
    /* the diagonal block: running products over the pairs of the sub-chunk */
    for (int i = 0; i < na; i++) {
      int ai = a0 + i;
      const float *egi = w->eg + (size_t)ai * K, *kni = w->kn + (size_t)ai * K;
      const float *qni = w->qn + (size_t)ai * K;
      float *Ai = w->A + (size_t)ai * C, *QKi = w->QK + (size_t)ai * C;
      float mb = -beta[(size_t)ai * H];
      for (int j = 0; j < i; j++) {
        float *rj = w->run + (size_t)j * K;
        v4f s0 = vsplat(0), s1 = vsplat(0);
        for (int p = 0; p < K; p += 4) {
          v4f r = vload(rj + p) * vload(egi + p);
          vstore(rj + p, r);
          s0 += r * vload(kni + p);
          s1 += r * vload(qni + p);
        }
        Ai[a0 + j] = mb * vsum(s0);
        QKi[a0 + j] = vsum(s1);
      }
      memcpy(w->run + (size_t)i * K, kni, sizeof(float) * (size_t)K);
      QKi[ai] = dot(qni, kni, K);
    }
  }
  /* one pass over S for both sides: [kp; qp] S -> [kp S; qp S] */
  memset(w->d, 0, sizeof(float) * 2 * (size_t)c * V);
  mm_acc(2 * c, V, K, w->kp, K, Sh, V, w->d, V);
  /* d = beta (v - kp S): the part of each update that the entering state explains */
  for (int i = 0; i < c; i++) {
    float *di = w->d + (size_t)i * V;
    const float *vi = v + i * sv;
    v4f b = vsplat(beta[(size_t)i * H]);
    for (int p = 0; p < V; p += 4) vstore(di + p, b * (vload(vi + p) - vload(di + p)));
  }
  /* forward substitution d = (I - A)^-1 rhs, in blocks of 4 rows: the part below the diagonal
   * block is a matmul, the 4x4 diagonal block is solved row by row */
  for (int i0 = 0; i0 < c; i0 += 4) {
    int ni = c - i0 < 4 ? c - i0 : 4;
    if (i0) mm_acc(ni, V, i0, w->A + (size_t)i0 * C, C, w->d, V, w->d + (size_t)i0 * V, V);
    for (int i = i0 + 1; i < i0 + ni; i++) {
      float *di = w->d + (size_t)i * V;
      const float *Ai = w->A + (size_t)i * C;
      for (int j = i0; j < i; j++) {
        v4f a = vsplat(Ai[j]);
        const float *dj = w->d + (size_t)j * V;
        for (int p = 0; p < V; p += 4) vstore(di + p, vload(di + p) + a * vload(dj + p));
      }
    }
  }
  /* o = qp S + tril(QK) d, each block of 4 rows stopping at the diagonal */
  for (int i = 0; i < c; i++) memcpy(o + i * sv, w->d + (size_t)(c + i) * V, sizeof(float) * (size_t)V);
  for (int i0 = 0; i0 < c; i0 += 4) {
    int ni = c - i0 < 4 ? c - i0 : 4;
    mm_acc(ni, V, i0 + ni, w->QK + (size_t)i0 * C, C, w->d, V, o + i0 * sv, (int)sv);
  }
  /* S <- diag(plast) S + ksT d */
  mm_acc_rs(K, V, c, w->ksT, C, w->d, V, Sh, V, w->plast);
}

int kle_kda_chunk(float *S, const float *q, const float *k, const float *v, const float *g,
                  const float *beta, float *o, int T, int H, int K, int V, float scale,
                  int flags, int chunk) {
  if (chunk == 0) chunk = KLE_KDA_CHUNK_CPU;
  if (T < 0 || !kda_dims_ok(H, K, V) || chunk < SUB || chunk > KLE_KDA_CHUNK || chunk % SUB)
    return KLE_EINVAL;
  if (T == 0) return KLE_OK;
  const size_t C = KLE_KDA_CHUNK, Kz = (size_t)K;
  size_t n = 6 * C * Kz + 2 * SUB * Kz + 2 * Kz * C + SUB * Kz + 2 * SUB * C + 2 * C * C +
             2 * C * (size_t)V + 2 * Kz;
  float *buf = calloc(n, sizeof(float));
  if (!buf) return KLE_ENOMEM;
  chunk_work w;
  float *p = buf;
  w.eg = p; p += C * Kz;
  w.kn = p; p += C * Kz;
  w.qn = p; p += C * Kz;
  w.kp = p; p += 2 * C * Kz;
  w.lf = p; p += 2 * SUB * Kz;
  w.rT = p; p += Kz * C;
  w.ksT = p; p += Kz * C;
  w.run = p; p += SUB * Kz;
  w.G = p; p += 2 * SUB * C;
  w.A = p; p += C * C;
  w.QK = p; p += C * C;
  w.d = p; p += 2 * C * (size_t)V;
  w.plast = p; p += Kz;
  w.vec = p;
  /* chunks outside, heads inside: a chunk's rows of every head are adjacent in memory, so the
   * inputs stream once in order; the states (H*K*V floats) are what gets revisited */
  for (int t0 = 0; t0 < T; t0 += chunk) {
    int c = T - t0 < chunk ? T - t0 : chunk;
    for (int h = 0; h < H; h++) {
      size_t qk = ((size_t)t0 * H + h) * K, vo = ((size_t)t0 * H + h) * V;
      kda_chunk_head(S + (size_t)h * K * V, q + qk, k + qk, v + vo, g + qk,
                     beta + (size_t)t0 * H + h, o + vo, c, H, K, V, scale, flags, &w);
    }
  }
  free(buf);
  return KLE_OK;
}

/* ------------------------------------------------------------------ gate */

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

int kle_kda_gate_ref(const float *x, const float *A_log, const float *dt_bias, float *g,
                     int n_tok, int H, int K, float lower_bound) {
  if (n_tok < 0 || H <= 0 || K <= 0 || !(lower_bound <= 0.0f)) return KLE_EINVAL;
  for (int t = 0; t < n_tok; t++)
    for (int h = 0; h < H; h++) {
      float a = expf(A_log[h]);
      for (int i = 0; i < K; i++) {
        size_t c = (size_t)h * K + i, at = (size_t)t * H * K + c;
        float z = x[at] + (dt_bias ? dt_bias[c] : 0.0f);
        g[at] = lower_bound == 0.0f ? -a * softplus(z) : lower_bound * sigmoidf(a * z);
      }
    }
  return KLE_OK;
}

int kle_kda_gate(const float *x, const float *A_log, const float *dt_bias, float *g, int n_tok,
                 int H, int K, float lower_bound) {
  if (n_tok < 0 || H <= 0 || K <= 0 || !(lower_bound <= 0.0f)) return KLE_EINVAL;
  if (K % 4) return kle_kda_gate_ref(x, A_log, dt_bias, g, n_tok, H, K, lower_bound);
  /* the softplus form four lanes at a time too (a log1pf and an expf per value were 5% of a
   * native Q8_0 prefill) */
  const int soft = lower_bound == 0.0f;
  for (int t = 0; t < n_tok; t++)
    for (int h = 0; h < H; h++) {
      v4f a = vsplat(expf(A_log[h])), lb = vsplat(lower_bound);
      for (int i = 0; i < K; i += 4) {
        size_t c = (size_t)h * K + i, at = (size_t)t * H * K + c;
        v4f z = vload(x + at);
        if (dt_bias) z += vload(dt_bias + c);
        vstore(g + at, soft ? -a * vsoftplus(z) : lb * vsigmoid(a * z));
      }
    }
  return KLE_OK;
}
