/*
 * mla.c: Multi-head Latent Attention over a compressed latent cache, weights absorbed
 * (docs/model.md, section 3). Scores are q_h . cache_j over the whole row (latent + rope part); values are
 * the first Dv entries of each row. Softmax is online (running max) and splits merge by LSE.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kle.h"
#include "simd.h"

static int mla_dims_ok(int H, int D, int Dv) {
  return H > 0 && D > 0 && Dv > 0 && Dv <= D && D % 4 == 0 && Dv % 4 == 0 &&
         D <= KLE_MAX_HEAD_DIM;
}

static int score_args_ok(int L, const float *score, float decay) {
  return L > 0 && score && decay >= 0.0f && decay <= 1.0f;
}

/* ------------------------------------------------------------------ references */

int kle_mla_decode_ref(const float *q, const float *cache, int L, int H, int D, int Dv,
                       float scale, float *out, float *lse) {
  if (L < 0 || !mla_dims_ok(H, D, Dv)) return KLE_EINVAL;
  float *s = malloc(sizeof(float) * (size_t)(L ? L : 1));
  if (!s) return KLE_ENOMEM;
  for (int h = 0; h < H; h++) {
    const float *qh = q + (size_t)h * D;
    float m = -INFINITY;
    for (int j = 0; j < L; j++) {
      float acc = 0.0f;
      for (int d = 0; d < D; d++) acc += qh[d] * cache[(size_t)j * D + d];
      s[j] = acc * scale;
      if (s[j] > m) m = s[j];
    }
    float l = 0.0f;
    for (int j = 0; j < L; j++) {
      s[j] = expf(s[j] - m);
      l += s[j];
    }
    float *oh = out + (size_t)h * Dv;
    for (int d = 0; d < Dv; d++) {
      float acc = 0.0f;
      for (int j = 0; j < L; j++) acc += s[j] * cache[(size_t)j * D + d];
      oh[d] = L ? acc / l : 0.0f;
    }
    if (lse) lse[h] = L ? m + logf(l) : -INFINITY;
  }
  free(s);
  return KLE_OK;
}

int kle_mla_decode_scored_ref(const float *q, const float *cache, int L, int H, int D, int Dv,
                              float scale, float *out, float *score, float decay) {
  if (!score_args_ok(L, score, decay) || !mla_dims_ok(H, D, Dv)) return KLE_EINVAL;
  float *lse = malloc(sizeof(float) * (size_t)H);
  if (!lse) return KLE_ENOMEM;
  int rc = kle_mla_decode_ref(q, cache, L, H, D, Dv, scale, out, lse);
  for (int j = 0; rc == KLE_OK && j < L; j++) {
    float p = 0.0f;
    for (int h = 0; h < H; h++) {
      float acc = 0.0f;
      for (int d = 0; d < D; d++) acc += q[(size_t)h * D + d] * cache[(size_t)j * D + d];
      p += expf(acc * scale - lse[h]);
    }
    score[j] = (j == L - 1 ? 0.0f : decay * score[j]) + p / (float)H;
  }
  free(lse);
  return rc;
}

int kle_mla_prefill_ref(const float *q, const float *cache, int L0, int T, int H, int D, int Dv,
                        float scale, float *out) {
  if (L0 < 0 || T < 0 || !mla_dims_ok(H, D, Dv)) return KLE_EINVAL;
  for (int i = 0; i < T; i++) {
    int rc = kle_mla_decode_ref(q + (size_t)i * H * D, cache, L0 + i + 1, H, D, Dv, scale,
                                out + (size_t)i * H * Dv, NULL);
    if (rc) return rc;
  }
  return KLE_OK;
}

int kle_mla_absorb_q_ref(const float *W, const float *x, float *q_lat, int H, int R, int Dv,
                         int ldq) {
  if (H <= 0 || R <= 0 || Dv <= 0 || ldq < Dv) return KLE_EINVAL;
  for (int h = 0; h < H; h++)
    for (int d = 0; d < Dv; d++) {
      float acc = 0.0f;
      for (int r = 0; r < R; r++) acc += W[((size_t)h * R + r) * Dv + d] * x[(size_t)h * R + r];
      q_lat[(size_t)h * ldq + d] = acc;
    }
  return KLE_OK;
}

int kle_mla_up_v_ref(const float *W, const float *o, float *y, int H, int R, int Dv) {
  if (H <= 0 || R <= 0 || Dv <= 0) return KLE_EINVAL;
  for (int h = 0; h < H; h++)
    for (int r = 0; r < R; r++) {
      float acc = 0.0f;
      for (int d = 0; d < Dv; d++) acc += W[((size_t)h * R + r) * Dv + d] * o[(size_t)h * Dv + d];
      y[(size_t)h * R + r] = acc;
    }
  return KLE_OK;
}

/* ------------------------------------------------------------------ fast decode */

#define MLA_BLOCK 16 /* cache rows per block: 16 x 576 floats = 36 KiB, about L1 */

/*
 * The decode is arithmetic-bound (32 heads over a 576-wide row: about 30 flops per byte read),
 * so the native build runs its inner loops as wide as the machine's vectors: 16 lanes with
 * AVX-512, 8 with AVX2 (simd.h's 4-lane type would use a quarter of an AVX-512 unit). wasm keeps
 * 4. Widths past a row's multiple of W finish in 4-lane steps (D and Dv are multiples of 4).
 */
#if !defined(__wasm__) && defined(__AVX512F__)
#define MLA_W 16
#elif !defined(__wasm__) && defined(__AVX2__)
#define MLA_W 8
#else
#define MLA_W 4
#endif
typedef float vwf __attribute__((vector_size(MLA_W * 4)));
typedef float vwf_u __attribute__((vector_size(MLA_W * 4), aligned(4), may_alias));
static inline vwf wload(const float *p) { return *(const vwf_u *)p; }
static inline void wstore(float *p, vwf x) { *(vwf_u *)p = x; }
static inline vwf wsplat(float x) { return (vwf){0} + x; }
static inline float wsum(vwf x) {
#if MLA_W == 4
  return vsum(x); /* wasm: the 4-lane kernel's order, so its results do not move */
#else
  float t[MLA_W]; /* pairwise halving */
  memcpy(t, &x, sizeof t);
  for (int n = MLA_W / 2; n >= 1; n /= 2)
    for (int i = 0; i < n; i++) t[i] += t[i + n];
  return t[0];
#endif
}

/* q . c over D in the 4 x 2 block's order (wide steps, then 4-lane ones), so a score is the same
 * bits whichever loop computes it: how heads split across threads must not move a logit */
static inline float mla_dot(const float *q, const float *c, int D) {
  vwf w = wsplat(0);
  int d = 0;
  for (; d + MLA_W <= D; d += MLA_W) w += wload(q + d) * wload(c + d);
  v4f x = vsplat(0);
  for (; d < D; d += 4) x += vload(q + d) * vload(c + d);
  return wsum(w) + vsum(x);
}

/*
 * Rows [j0, j1) for all heads. The cache is streamed once: each block of rows is scored
 * against every head and folded into every head's accumulator while it is in cache.
 * acc: [H, Dv] unnormalized; m, l: [H] running max and sum; raw: NULL or [H, j1 - j0], which
 * receives the scaled scores (the bounded cache's eviction score is made from them).
 */
static void mla_span(const float *q, const float *cache, int j0, int j1, int H, int D, int Dv,
                     float scale, float *acc, float *m, float *l, float *raw) {
  float s[MLA_BLOCK * 64];

  for (int h = 0; h < H; h++) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  memset(acc, 0, sizeof(float) * (size_t)H * Dv);
  for (int b0 = j0; b0 < j1; b0 += MLA_BLOCK) {
    int nb = j1 - b0 < MLA_BLOCK ? j1 - b0 : MLA_BLOCK;
    const float *blk = cache + (size_t)b0 * D;
    for (int h0 = 0; h0 < H; h0 += 64) {
      int nh = H - h0 < 64 ? H - h0 : 64;
      /* scores: 4 heads x 2 rows per register block */
      int hh = 0;
      for (; hh + 4 <= nh; hh += 4) {
        const float *q0 = q + (size_t)(h0 + hh) * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
        int j = 0;
        for (; j + 2 <= nb; j += 2) {
          const float *c0 = blk + (size_t)j * D, *c1 = c0 + D;
          vwf w00 = wsplat(0), w01 = wsplat(0), w10 = wsplat(0), w11 = wsplat(0);
          vwf w20 = wsplat(0), w21 = wsplat(0), w30 = wsplat(0), w31 = wsplat(0);
          int d = 0;
          for (; d + MLA_W <= D; d += MLA_W) {
            vwf a = wload(c0 + d), b = wload(c1 + d), w;
            w = wload(q0 + d); w00 += w * a; w01 += w * b;
            w = wload(q1 + d); w10 += w * a; w11 += w * b;
            w = wload(q2 + d); w20 += w * a; w21 += w * b;
            w = wload(q3 + d); w30 += w * a; w31 += w * b;
          }
          v4f x00 = vsplat(0), x01 = vsplat(0), x10 = vsplat(0), x11 = vsplat(0);
          v4f x20 = vsplat(0), x21 = vsplat(0), x30 = vsplat(0), x31 = vsplat(0);
          for (; d < D; d += 4) {
            v4f a = vload(c0 + d), b = vload(c1 + d), w;
            w = vload(q0 + d); x00 += w * a; x01 += w * b;
            w = vload(q1 + d); x10 += w * a; x11 += w * b;
            w = vload(q2 + d); x20 += w * a; x21 += w * b;
            w = vload(q3 + d); x30 += w * a; x31 += w * b;
          }
          s[(hh + 0) * MLA_BLOCK + j] = wsum(w00) + vsum(x00); s[(hh + 0) * MLA_BLOCK + j + 1] = wsum(w01) + vsum(x01);
          s[(hh + 1) * MLA_BLOCK + j] = wsum(w10) + vsum(x10); s[(hh + 1) * MLA_BLOCK + j + 1] = wsum(w11) + vsum(x11);
          s[(hh + 2) * MLA_BLOCK + j] = wsum(w20) + vsum(x20); s[(hh + 2) * MLA_BLOCK + j + 1] = wsum(w21) + vsum(x21);
          s[(hh + 3) * MLA_BLOCK + j] = wsum(w30) + vsum(x30); s[(hh + 3) * MLA_BLOCK + j + 1] = wsum(w31) + vsum(x31);
        }
        for (; j < nb; j++)
          for (int u = 0; u < 4; u++) s[(hh + u) * MLA_BLOCK + j] = mla_dot(q + (size_t)(h0 + hh + u) * D, blk + (size_t)j * D, D);
      }
      for (; hh < nh; hh++)
        for (int j = 0; j < nb; j++) s[hh * MLA_BLOCK + j] = mla_dot(q + (size_t)(h0 + hh) * D, blk + (size_t)j * D, D);
      /* online softmax per head: s becomes the probabilities, cf the rescale factors */
      float cf[64];
      for (hh = 0; hh < nh; hh++) {
        int h = h0 + hh;
        float *sh = s + hh * MLA_BLOCK;
        float mb = -INFINITY;
        for (int j = 0; j < nb; j++) {
          sh[j] *= scale;
          if (sh[j] > mb) mb = sh[j];
        }
        if (raw) memcpy(raw + (size_t)h * (j1 - j0) + (b0 - j0), sh, sizeof(float) * (size_t)nb);
        float mn = mb > m[h] ? mb : m[h];
        float corr = m[h] == -INFINITY ? 0.0f : expf(m[h] - mn);
        /* four lanes of simd.h's exp at a time (within 6e-9 of expf): a call of expf per score
         * was about a third of a native decode once the products ran 16 wide */
        v4f lv = vsplat(0.0f);
        int j = 0;
        for (; j + 4 <= nb; j += 4) {
          const v4f e = vexp(vload(sh + j) - vsplat(mn));
          vstore(sh + j, e);
          lv += e;
        }
        float ls = vsum(lv);
        for (; j < nb; j++) {
          sh[j] = expf(sh[j] - mn);
          ls += sh[j];
        }
        l[h] = l[h] * corr + ls;
        m[h] = mn;
        cf[hh] = corr;
      }
      /* values: 4 heads x 8 dims in registers, so each row vector loaded serves 4 heads */
      hh = 0;
      for (; hh + 4 <= nh; hh += 4) {
        const float *p0 = s + (hh + 0) * MLA_BLOCK, *p1 = s + (hh + 1) * MLA_BLOCK;
        const float *p2 = s + (hh + 2) * MLA_BLOCK, *p3 = s + (hh + 3) * MLA_BLOCK;
        float *a0p = acc + (size_t)(h0 + hh) * Dv, *a1p = a0p + Dv, *a2p = a1p + Dv, *a3p = a2p + Dv;
        const v4f c0 = vsplat(cf[hh]), c1 = vsplat(cf[hh + 1]), c2 = vsplat(cf[hh + 2]), c3 = vsplat(cf[hh + 3]);
        int d = 0;
        { /* four heads, two vectors each, a pass; a lane sums the same terms in the same order at any width */
          const vwf e0 = wsplat(cf[hh]), e1 = wsplat(cf[hh + 1]), e2 = wsplat(cf[hh + 2]), e3 = wsplat(cf[hh + 3]);
          for (; d + 2 * MLA_W <= Dv; d += 2 * MLA_W) {
            vwf x0 = wload(a0p + d) * e0, y0 = wload(a0p + d + MLA_W) * e0;
            vwf x1 = wload(a1p + d) * e1, y1 = wload(a1p + d + MLA_W) * e1;
            vwf x2 = wload(a2p + d) * e2, y2 = wload(a2p + d + MLA_W) * e2;
            vwf x3 = wload(a3p + d) * e3, y3 = wload(a3p + d + MLA_W) * e3;
            for (int j = 0; j < nb; j++) {
              const float *cj = blk + (size_t)j * D + d;
              const vwf va = wload(cj), vb = wload(cj + MLA_W);
              vwf w = wsplat(p0[j]);
              x0 += w * va; y0 += w * vb;
              w = wsplat(p1[j]);
              x1 += w * va; y1 += w * vb;
              w = wsplat(p2[j]);
              x2 += w * va; y2 += w * vb;
              w = wsplat(p3[j]);
              x3 += w * va; y3 += w * vb;
            }
            wstore(a0p + d, x0); wstore(a0p + d + MLA_W, y0);
            wstore(a1p + d, x1); wstore(a1p + d + MLA_W, y1);
            wstore(a2p + d, x2); wstore(a2p + d + MLA_W, y2);
            wstore(a3p + d, x3); wstore(a3p + d + MLA_W, y3);
          }
        }
        for (; d < Dv; d += 4) {
          v4f x0 = vload(a0p + d) * c0, x1 = vload(a1p + d) * c1, x2 = vload(a2p + d) * c2, x3 = vload(a3p + d) * c3;
          for (int j = 0; j < nb; j++) {
            const v4f va = vload(blk + (size_t)j * D + d);
            x0 += vsplat(p0[j]) * va;
            x1 += vsplat(p1[j]) * va;
            x2 += vsplat(p2[j]) * va;
            x3 += vsplat(p3[j]) * va;
          }
          vstore(a0p + d, x0); vstore(a1p + d, x1); vstore(a2p + d, x2); vstore(a3p + d, x3);
        }
      }
      for (; hh < nh; hh++) {
        const float *ph = s + hh * MLA_BLOCK;
        float *ah = acc + (size_t)(h0 + hh) * Dv;
        const v4f cv = vsplat(cf[hh]);
        for (int d = 0; d < Dv; d += 4) {
          v4f a = vload(ah + d) * cv;
          for (int j = 0; j < nb; j++) a += vsplat(ph[j]) * vload(blk + (size_t)j * D + d);
          vstore(ah + d, a);
        }
      }
    }
  }
}

/* out /= l per head; lse = m + log l (-inf for a head that saw no row) */
static void mla_finish(float *out, const float *m, const float *l, int H, int Dv, float *lse) {
  for (int h = 0; h < H; h++) {
    float *oh = out + (size_t)h * Dv;
    float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
    for (int d = 0; d < Dv; d += 4) vstore(oh + d, vload(oh + d) * vsplat(inv));
    if (lse) lse[h] = l[h] > 0.0f ? m[h] + logf(l[h]) : -INFINITY;
  }
}

int kle_mla_decode_partial(const float *q, const float *cache, int j0, int j1, int H, int D,
                           int Dv, float scale, float *out, float *lse) {
  if (j0 < 0 || j1 < j0 || !mla_dims_ok(H, D, Dv)) return KLE_EINVAL;
  float *ml = malloc(sizeof(float) * 2 * (size_t)H);
  if (!ml) return KLE_ENOMEM;
  mla_span(q, cache, j0, j1, H, D, Dv, scale, out, ml, ml + H, NULL);
  mla_finish(out, ml, ml + H, H, Dv, lse);
  free(ml);
  return KLE_OK;
}

/*
 * score[j] = decay * score[j] + (1/H) sum_h exp(raw[h, j] - lse[h]) for j < L - 1, and the
 * query's own row L - 1 starts at its first term: the slot may hold an evicted row's score.
 */
static void mla_fold_score(const float *raw, const float *lse, int L, int H, float *score, float decay) {
  const float invH = 1.0f / (float)H;
  for (int j = 0; j < L - 1; j++) score[j] *= decay;
  score[L - 1] = 0.0f;
  for (int h = 0; h < H; h++) {
    const float *rh = raw + (size_t)h * L;
    for (int j = 0; j < L; j++) score[j] += expf(rh[j] - lse[h]) * invH;
  }
}

int kle_mla_decode_scored(const float *q, const float *cache, int L, int H, int D, int Dv,
                          float scale, float *out, float *score, float decay) {
  if (!score_args_ok(L, score, decay) || !mla_dims_ok(H, D, Dv)) return KLE_EINVAL;
  float *ml = malloc(sizeof(float) * (3 * (size_t)H + (size_t)H * L));
  if (!ml) return KLE_ENOMEM;
  float *lse = ml + 2 * (size_t)H, *raw = lse + H;
  mla_span(q, cache, 0, L, H, D, Dv, scale, out, ml, ml + H, raw);
  mla_finish(out, ml, ml + H, H, Dv, lse);
  mla_fold_score(raw, lse, L, H, score, decay);
  free(ml);
  return KLE_OK;
}

int kle_mla_decode(const float *q, const float *cache, int L, int H, int D, int Dv, float scale,
                   float *out, float *lse) {
  if (L < 0) return KLE_EINVAL;
  return kle_mla_decode_partial(q, cache, 0, L, H, D, Dv, scale, out, lse);
}

int kle_mla_merge(const float *outs, const float *lses, int n, int H, int Dv, float *out,
                  float *lse) {
  if (n <= 0 || H <= 0 || Dv <= 0) return KLE_EINVAL;
  for (int h = 0; h < H; h++) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++)
      if (lses[(size_t)i * H + h] > m) m = lses[(size_t)i * H + h];
    float *oh = out + (size_t)h * Dv;
    memset(oh, 0, sizeof(float) * (size_t)Dv);
    if (m == -INFINITY) {
      if (lse) lse[h] = -INFINITY;
      continue;
    }
    float tot = 0.0f;
    for (int i = 0; i < n; i++) tot += expf(lses[(size_t)i * H + h] - m);
    for (int i = 0; i < n; i++) {
      float wgt = expf(lses[(size_t)i * H + h] - m) / tot;
      const float *src = outs + ((size_t)i * H + h) * Dv;
      for (int d = 0; d < Dv; d++) oh[d] += wgt * src[d];
    }
    if (lse) lse[h] = m + logf(tot);
  }
  return KLE_OK;
}

int kle_mla_prefill(const float *q, const float *cache, int L0, int T, int H, int D, int Dv,
                    float scale, float *out) {
  if (L0 < 0 || T < 0 || !mla_dims_ok(H, D, Dv)) return KLE_EINVAL;
  for (int i = 0; i < T; i++) {
    int rc = kle_mla_decode(q + (size_t)i * H * D, cache, L0 + i + 1, H, D, Dv, scale,
                            out + (size_t)i * H * Dv, NULL);
    if (rc) return rc;
  }
  return KLE_OK;
}

/* ------------------------------------------------------------------ absorption, up-projection */

int kle_mla_absorb_q(const float *W, const float *x, float *q_lat, int H, int R, int Dv, int ldq) {
  if (H <= 0 || R <= 0 || Dv <= 0 || ldq < Dv || Dv % 4) return KLE_EINVAL;
  for (int h = 0; h < H; h++) {
    float *qh = q_lat + (size_t)h * ldq;
    memset(qh, 0, sizeof(float) * (size_t)Dv);
    for (int r = 0; r < R; r++) {
      const float *wr = W + ((size_t)h * R + r) * Dv;
      v4f xr = vsplat(x[(size_t)h * R + r]);
      for (int d = 0; d < Dv; d += 4) vstore(qh + d, vload(qh + d) + xr * vload(wr + d));
    }
  }
  return KLE_OK;
}

int kle_mla_up_v(const float *W, const float *o, float *y, int H, int R, int Dv) {
  if (H <= 0 || R <= 0 || Dv <= 0) return KLE_EINVAL;
  for (int h = 0; h < H; h++) {
    int rc = kle_matmul(KLE_W_F32, W + (size_t)h * R * Dv, o + (size_t)h * Dv, y + (size_t)h * R, 1,
                        R, Dv);
    if (rc) return rc;
  }
  return KLE_OK;
}
