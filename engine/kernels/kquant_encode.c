/*
 * kquant_encode.c: f32 -> Q4_K and Q6_K super-blocks (qblocks.h's layouts), for `kimi-edge
 * convert --type q4_k_m`. Each group's scale (and Q4_K's min) is fitted by least squares over a
 * few candidate step sizes; the super-block then stores those scales in 6 bits (Q4_K) or as int8
 * (Q6_K) under its f16 d, and the values are quantized again with the scales as stored, so the
 * codes fit what a decoder will multiply them by.
 */
#include <math.h>
#include <string.h>

/* one file, one result on every target: no fused multiply-adds where gcc would make them */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "numfmt.h"
#include "qblocks.h"

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/*
 * x[0..n) ~ s * q - m with q in 0..qmax (m >= 0: the format subtracts its min): for each candidate
 * grid, codes from it, then s and m by least squares over those codes; the pair with the least
 * squared error wins.
 */
static void fit_affine(const float *x, int n, int qmax, float *s_out, float *m_out) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
  if (lo > 0.0f) lo = 0.0f;
  *s_out = 0.0f;
  *m_out = -lo;
  if (hi <= lo) return;
  float best = INFINITY;
  for (int k = -4; k <= 8; k++) {
    const float iscale = ((float)qmax + 0.25f * (float)k) / (hi - lo);
    double sq = 0, sq2 = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; i++) {
      const float q = clampf(nearbyintf((x[i] - lo) * iscale), 0.0f, (float)qmax);
      sq += q, sq2 += (double)q * q, sx += x[i], sqx += (double)q * x[i];
    }
    const double det = n * sq2 - sq * sq;
    if (det <= 0) continue;
    double s = (n * sqx - sq * sx) / det, m = (s * sq - sx) / n;
    if (m < 0) { /* no min to subtract: s alone */
      m = 0;
      s = sq2 > 0 ? sqx / sq2 : 0;
    }
    if (s <= 0) continue;
    float err = 0.0f;
    for (int i = 0; i < n; i++) {
      const float q = clampf(nearbyintf(((float)x[i] + (float)m) / (float)s), 0.0f, (float)qmax);
      const float e = (float)s * q - (float)m - x[i];
      err += e * e;
    }
    if (err < best) best = err, *s_out = (float)s, *m_out = (float)m;
  }
}

void kle_q4k_encode(const float *x, uint8_t *b) {
  float s[8], m[8], smax = 0.0f, mmax = 0.0f;
  for (int j = 0; j < 8; j++) {
    fit_affine(x + 32 * j, 32, 15, &s[j], &m[j]);
    smax = fmaxf(smax, s[j]);
    mmax = fmaxf(mmax, m[j]);
  }
  const uint16_t dh = f32_to_f16(smax / 63.0f), mh = f32_to_f16(mmax / 63.0f);
  memcpy(b, &dh, 2);
  memcpy(b + 2, &mh, 2);
  const float d = f16_to_f32(dh), dmin = f16_to_f32(mh);
  uint8_t *sc = b + 4, *q = b + 16;
  memset(sc, 0, 12);
  int ls[8], lm[8];
  for (int j = 0; j < 8; j++) {
    ls[j] = d > 0.0f ? (int)clampf(nearbyintf(s[j] / d), 0.0f, 63.0f) : 0;
    lm[j] = dmin > 0.0f ? (int)clampf(nearbyintf(m[j] / dmin), 0.0f, 63.0f) : 0;
    if (j < 4) {
      sc[j] |= (uint8_t)ls[j];
      sc[j + 4] |= (uint8_t)lm[j];
    } else { /* low 4 bits in byte j + 4's nibbles, the top 2 in the spare bits of bytes j - 4, j */
      sc[j + 4] = (uint8_t)((ls[j] & 15) | (lm[j] & 15) << 4);
      sc[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
      sc[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
  }
  /* the codes against the scales as stored; groups 2p and 2p + 1 share 32 bytes, low and high nibbles */
  for (int j = 0; j < 8; j++) {
    int sj, mj;
    q4k_scale_min(sc, j, &sj, &mj);
    const float ds = d * (float)sj, dm = dmin * (float)mj;
    for (int l = 0; l < 32; l++) {
      const int v = ds > 0.0f ? (int)clampf(nearbyintf((x[32 * j + l] + dm) / ds), 0.0f, 15.0f) : 0;
      uint8_t *p = q + 32 * (j / 2) + l;
      *p = j & 1 ? (uint8_t)((*p & 15) | v << 4) : (uint8_t)v;
    }
  }
}

/* x[0..16) ~ s * q, q in -32..31: the signed step that maps the largest magnitude to -32 or near it, refined */
static float fit_symmetric(const float *x) {
  float amax = 0.0f, v = 0.0f;
  for (int i = 0; i < 16; i++)
    if (fabsf(x[i]) > amax) amax = fabsf(x[i]), v = x[i];
  if (amax == 0.0f) return 0.0f;
  float best = INFINITY, bs = 0.0f;
  for (int k = -4; k <= 6; k++) {
    const float iscale = -(32.0f + 0.25f * (float)k) / v;
    double sqq = 0, sqx = 0;
    for (int i = 0; i < 16; i++) {
      const float q = clampf(nearbyintf(x[i] * iscale), -32.0f, 31.0f);
      sqq += (double)q * q, sqx += (double)q * x[i];
    }
    if (sqq <= 0) continue;
    const float s = (float)(sqx / sqq);
    float err = 0.0f;
    for (int i = 0; i < 16; i++) {
      const float e = s * clampf(nearbyintf(x[i] / s), -32.0f, 31.0f) - x[i];
      err += e * e;
    }
    if (err < best) best = err, bs = s;
  }
  return bs;
}

void kle_q6k_encode(const float *x, uint8_t *b) {
  float s[16], amax = 0.0f, smax = 0.0f;
  for (int g = 0; g < 16; g++) {
    s[g] = fit_symmetric(x + 16 * g);
    if (fabsf(s[g]) > amax) amax = fabsf(s[g]), smax = s[g];
  }
  /* int8 scales under d: the largest one at -128 or 127 */
  const uint16_t dh = f32_to_f16(smax < 0.0f ? smax / -128.0f : smax / 127.0f);
  const float d = f16_to_f32(dh);
  memcpy(b + 208, &dh, 2);
  int8_t *sc = (int8_t *)(b + 192);
  uint8_t *ql = b, *qh = b + 128;
  memset(b, 0, 192);
  for (int g = 0; g < 16; g++) sc[g] = (int8_t)(d > 0.0f ? clampf(nearbyintf(s[g] / d), -128.0f, 127.0f) : 0.0f);
  for (int i = 0; i < 256; i++) {
    /* value i = 128 h + 32 k + l: its group 8 h + 2 k + l / 16; its low nibble in ql[64 h + 32 (k & 1) + l]
     * (high nibble for k >= 2), its top two bits at 2 k of qh[32 h + l] */
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    const float eff = d * (float)sc[i / 16];
    const int u = (eff != 0.0f ? (int)clampf(nearbyintf(x[i] / eff), -32.0f, 31.0f) : 0) + 32;
    uint8_t *lo = ql + 64 * h + 32 * (k & 1) + l;
    *lo |= (uint8_t)(k >= 2 ? (u & 15) << 4 : u & 15);
    qh[32 * h + l] |= (uint8_t)((u >> 4) << (2 * k));
  }
}
