/*
 * kda.c: Kimi Delta Attention. The recurrence (decode step), its chunkwise form (prefill), and
 * the forget gate. spec/kda.md is the math; the *_ref functions follow it literally.
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
 * C[M,N] += A[M,Kd] B[Kd,N], all row-major with leading dimensions; N a multiple of 4.
 * Register block: 4 rows x 8 columns (8 accumulators), so each B load feeds 4 rows.
 */
static void mm_acc(int M, int N, int Kd, const float *A, int lda, const float *B, int ldb,
                   float *Cm, int ldc) {
  int i = 0;
  for (; i + 4 <= M; i += 4) {
    const float *a0 = A + (size_t)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    float *c0 = Cm + (size_t)i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
    int j = 0;
    for (; j + 8 <= N; j += 8) {
      v4f x00 = vload(c0 + j), x01 = vload(c0 + j + 4), x10 = vload(c1 + j), x11 = vload(c1 + j + 4);
      v4f x20 = vload(c2 + j), x21 = vload(c2 + j + 4), x30 = vload(c3 + j), x31 = vload(c3 + j + 4);
      for (int p = 0; p < Kd; p++) {
        const float *b = B + (size_t)p * ldb + j;
        v4f b0 = vload(b), b1 = vload(b + 4);
        v4f s;
        s = vsplat(a0[p]); x00 += s * b0; x01 += s * b1;
        s = vsplat(a1[p]); x10 += s * b0; x11 += s * b1;
        s = vsplat(a2[p]); x20 += s * b0; x21 += s * b1;
        s = vsplat(a3[p]); x30 += s * b0; x31 += s * b1;
      }
      vstore(c0 + j, x00); vstore(c0 + j + 4, x01); vstore(c1 + j, x10); vstore(c1 + j + 4, x11);
      vstore(c2 + j, x20); vstore(c2 + j + 4, x21); vstore(c3 + j, x30); vstore(c3 + j + 4, x31);
    }
    for (; j < N; j += 4) {
      v4f x0 = vload(c0 + j), x1 = vload(c1 + j), x2 = vload(c2 + j), x3 = vload(c3 + j);
      for (int p = 0; p < Kd; p++) {
        v4f b0 = vload(B + (size_t)p * ldb + j);
        x0 += vsplat(a0[p]) * b0; x1 += vsplat(a1[p]) * b0;
        x2 += vsplat(a2[p]) * b0; x3 += vsplat(a3[p]) * b0;
      }
      vstore(c0 + j, x0); vstore(c1 + j, x1); vstore(c2 + j, x2); vstore(c3 + j, x3);
    }
  }
  for (; i < M; i++) {
    const float *a0 = A + (size_t)i * lda;
    float *c0 = Cm + (size_t)i * ldc;
    for (int j = 0; j < N; j += 4) {
      v4f x0 = vload(c0 + j);
      for (int p = 0; p < Kd; p++) x0 += vsplat(a0[p]) * vload(B + (size_t)p * ldb + j);
      vstore(c0 + j, x0);
    }
  }
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

/* Scratch of one head-chunk; sizes in floats, C = KLE_KDA_CHUNK. */
typedef struct {
  float *eg;    /* [C,K] exp(g) */
  float *kp;    /* [C,K] k_i * prod_{s<=i} eg_s          (decay from chunk start, inclusive) */
  float *qp;    /* [C,K] q_i * prod_{s<=i} eg_s */
  float *ksT;   /* [K,C] k_j * prod_{s>j} eg_s, transposed (decay to chunk end) */
  float *run;   /* [C,K] k_j * prod_{j<s<=i} eg_s while row i is processed */
  float *A;     /* [C,C] strictly lower: -beta_i k_i^T (G_i/G_j) k_j */
  float *QK;    /* [C,C] lower incl. diagonal: q_i^T (G_i/G_j) k_j */
  float *d;     /* [C,V] the corrected values (delta rule updates) of the chunk */
  float *plast; /* [K] prod of eg over the whole chunk */
  float *kn;    /* [C] per-token k scale, [C] per-token q scale */
} chunk_work;

/*
 * One chunk of c tokens for one head: the WY/UT form of spec/kda.md, with every decay ratio
 * G_i/G_j formed as a running product of per-token exp(g) instead of exp(G_i - G_j). The
 * product never leaves (0, 1], so no reference point or sub-chunking is needed however
 * strong the decay, and it avoids the cancellation in G_i - G_j when G is large.
 */
static void kda_chunk_head(float *Sh, const float *q, const float *k, const float *v,
                           const float *g, const float *beta, float *o, int c, int H, int K,
                           int V, float scale, int flags, chunk_work *w) {
  const int C = KLE_KDA_CHUNK;
  const size_t sq = (size_t)H * K, sv = (size_t)H * V; /* token strides */
  float *ksc = w->kn, *qsc = w->kn + C;
  for (int i = 0; i < c; i++) {
    const float *qi = q + i * sq, *ki = k + i * sq;
    qsc[i] = scale;
    ksc[i] = 1.0f;
    if (flags & KLE_KDA_L2NORM_QK) {
      qsc[i] *= inv_l2(qi, K);
      ksc[i] = inv_l2(ki, K);
    }
  }
  /* eg, inclusive prefix products into kp/qp */
  for (int i = 0; i < c; i++) {
    const float *gi = g + i * sq, *qi = q + i * sq, *ki = k + i * sq;
    float *egi = w->eg + (size_t)i * K, *kpi = w->kp + (size_t)i * K, *qpi = w->qp + (size_t)i * K;
    const float *prev = i ? w->run : NULL; /* run row 0 holds the running prefix product */
    for (int p = 0; p < K; p += 4) {
      v4f e = vexp(vload(gi + p));
      vstore(egi + p, e);
      v4f P = prev ? vload(prev + p) * e : e;
      vstore(w->run + p, P);
      if (i == c - 1) vstore(w->plast + p, P);
      vstore(kpi + p, P * vload(ki + p) * vsplat(ksc[i]));
      vstore(qpi + p, P * vload(qi + p) * vsplat(qsc[i]));
    }
  }
  /* suffix products: ksT[:, j] = k_j * prod_{s>j} eg_s */
  for (int p = 0; p < K; p += 4) vstore(w->run + p, vsplat(1.0f));
  for (int j = c - 1; j >= 0; j--) {
    const float *kj = k + j * sq;
    for (int p = 0; p < K; p++) w->ksT[(size_t)p * C + j] = w->run[p] * kj[p] * ksc[j];
    const float *egj = w->eg + (size_t)j * K;
    for (int p = 0; p < K; p += 4) vstore(w->run + p, vload(w->run + p) * vload(egj + p));
  }
  /* Gram matrices through running decayed keys */
  for (int i = 0; i < c; i++) {
    const float *egi = w->eg + (size_t)i * K, *qi = q + i * sq, *ki = k + i * sq;
    float *Ai = w->A + (size_t)i * C, *QKi = w->QK + (size_t)i * C;
    float mb = -beta[(size_t)i * H] * ksc[i];
    for (int j = 0; j < i; j++) {
      float *rj = w->run + (size_t)j * K;
      v4f a0 = vsplat(0), a1 = vsplat(0);
      for (int p = 0; p < K; p += 4) {
        v4f r = vload(rj + p) * vload(egi + p);
        vstore(rj + p, r);
        a0 += r * vload(ki + p);
        a1 += r * vload(qi + p);
      }
      Ai[j] = mb * vsum(a0);
      QKi[j] = qsc[i] * vsum(a1);
    }
    float *ri = w->run + (size_t)i * K;
    for (int p = 0; p < K; p += 4) vstore(ri + p, vload(ki + p) * vsplat(ksc[i]));
    QKi[i] = qsc[i] * ksc[i] * dot(qi, ki, K);
  }
  /* d = beta (v - kp S): the part of each update that the entering state explains */
  memset(w->d, 0, sizeof(float) * (size_t)c * V);
  mm_acc(c, V, K, w->kp, K, Sh, V, w->d, V);
  for (int i = 0; i < c; i++) {
    float *di = w->d + (size_t)i * V;
    const float *vi = v + i * sv;
    v4f b = vsplat(beta[(size_t)i * H]);
    for (int p = 0; p < V; p += 4) vstore(di + p, b * (vload(vi + p) - vload(di + p)));
  }
  /* forward substitution: d_i += sum_{j<i} A_ij d_j, i.e. d = (I - A)^-1 rhs */
  for (int i = 1; i < c; i++) {
    float *di = w->d + (size_t)i * V;
    const float *Ai = w->A + (size_t)i * C;
    for (int p = 0; p < V; p += 4) {
      v4f acc = vload(di + p);
      for (int j = 0; j < i; j++) acc += vsplat(Ai[j]) * vload(w->d + (size_t)j * V + p);
      vstore(di + p, acc);
    }
  }
  /* o = qp S + tril(QK) d; QK's upper triangle is zero (set once per call) */
  for (int i = 0; i < c; i++) memset(o + i * sv, 0, sizeof(float) * (size_t)V);
  mm_acc(c, V, K, w->qp, K, Sh, V, o, (int)sv);
  mm_acc(c, V, c, w->QK, C, w->d, V, o, (int)sv);
  /* S <- diag(plast) S + ksT d */
  for (int p = 0; p < K; p++) {
    float *r = Sh + (size_t)p * V;
    v4f f = vsplat(w->plast[p]);
    for (int jv = 0; jv < V; jv += 4) vstore(r + jv, vload(r + jv) * f);
  }
  mm_acc(K, V, c, w->ksT, C, w->d, V, Sh, V);
}

int kle_kda_chunk(float *S, const float *q, const float *k, const float *v, const float *g,
                  const float *beta, float *o, int T, int H, int K, int V, float scale,
                  int flags) {
  if (T < 0 || !kda_dims_ok(H, K, V)) return KLE_EINVAL;
  if (T == 0) return KLE_OK;
  const size_t C = KLE_KDA_CHUNK;
  size_t n = 4 * C * K + (size_t)K * C + 2 * C * C + C * V + K + 2 * C;
  float *buf = calloc(n, sizeof(float));
  if (!buf) return KLE_ENOMEM;
  chunk_work w;
  float *p = buf;
  w.eg = p; p += C * K;
  w.kp = p; p += C * K;
  w.qp = p; p += C * K;
  w.ksT = p; p += (size_t)K * C;
  w.run = p; p += C * K;
  w.A = p; p += C * C;
  w.QK = p; p += C * C;
  w.d = p; p += C * V;
  w.plast = p; p += K;
  w.kn = p;
  for (int h = 0; h < H; h++) {
    float *Sh = S + (size_t)h * K * V;
    for (int t0 = 0; t0 < T; t0 += (int)C) {
      int c = T - t0 < (int)C ? T - t0 : (int)C;
      size_t qk = ((size_t)t0 * H + h) * K, vo = ((size_t)t0 * H + h) * V;
      kda_chunk_head(Sh, q + qk, k + qk, v + vo, g + qk, beta + (size_t)t0 * H + h, o + vo, c, H,
                     K, V, scale, flags, &w);
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
  if (lower_bound == 0.0f || K % 4) /* softplus needs log1p: the scalar path is the fast one */
    return kle_kda_gate_ref(x, A_log, dt_bias, g, n_tok, H, K, lower_bound);
  for (int t = 0; t < n_tok; t++)
    for (int h = 0; h < H; h++) {
      v4f a = vsplat(expf(A_log[h])), lb = vsplat(lower_bound);
      for (int i = 0; i < K; i += 4) {
        size_t c = (size_t)h * K + i, at = (size_t)t * H * K + c;
        v4f z = vload(x + at);
        if (dt_bias) z += vload(dt_bias + c);
        vstore(g + at, lb * vsigmoid(a * z));
      }
    }
  return KLE_OK;
}
