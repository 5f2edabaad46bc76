/*
 * matmul.c: Y[T, n_out] = X[T, n_in] W^T for weights in f32, bf16, f16 and GGUF's q8_0 and
 * q4_0 block layouts (their codecs live here; their products in matmul_q8.c, with integer dots).
 * The fast path decodes 4 weight rows at a time into a small float tile that stays in L1, then
 * runs every token against it, so each weight byte is decoded once per call whatever T is.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kle.h"
#include "numfmt.h"
#include "matmul_bf16.h"
#include "qblocks.h"
#include "simd.h"


long kle_row_bytes(int fmt, int n_in) {
  if (n_in <= 0) return -1;
  int64_t b;
  switch (fmt) {
  case KLE_W_F32: b = 4 * (int64_t)n_in; break;
  case KLE_W_BF16:
  case KLE_W_F16: b = 2 * (int64_t)n_in; break;
  case KLE_W_Q8_0: if (n_in % KLE_QK) return -1; b = (int64_t)(n_in / KLE_QK) * Q8_BYTES; break;
  case KLE_W_Q4_0: if (n_in % KLE_QK) return -1; b = (int64_t)(n_in / KLE_QK) * Q4_BYTES; break;
  case KLE_W_Q4_K: if (n_in % KLE_QK_K) return -1; b = (int64_t)(n_in / KLE_QK_K) * Q4K_BYTES; break;
  case KLE_W_Q6_K: if (n_in % KLE_QK_K) return -1; b = (int64_t)(n_in / KLE_QK_K) * Q6K_BYTES; break;
  case KLE_W_Q5_K: if (n_in % KLE_QK_K) return -1; b = (int64_t)(n_in / KLE_QK_K) * Q5K_BYTES; break;
  case KLE_W_Q2_K: if (n_in % KLE_QK_K) return -1; b = (int64_t)(n_in / KLE_QK_K) * Q2K_BYTES; break;
  case KLE_W_Q3_K: if (n_in % KLE_QK_K) return -1; b = (int64_t)(n_in / KLE_QK_K) * Q3K_BYTES; break;
  case KLE_W_Q5_0: if (n_in % KLE_QK) return -1; b = (int64_t)(n_in / KLE_QK) * Q50_BYTES; break;
  case KLE_W_Q5_1: if (n_in % KLE_QK) return -1; b = (int64_t)(n_in / KLE_QK) * Q51_BYTES; break;
  default: return -1;
  }
  return b > LONG_MAX ? -1 : (long)b; /* wasm's long is 32 bits */
}

/* ------------------------------------------------------------------ block codecs */

static void q8_0_encode(const float *x, uint8_t *b) {
  float amax = 0.0f;
  for (int i = 0; i < KLE_QK; i++) amax = fmaxf(amax, fabsf(x[i]));
  float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  uint16_t dh = f32_to_f16(d);
  memcpy(b, &dh, 2);
  for (int i = 0; i < KLE_QK; i++) b[2 + i] = (uint8_t)(int8_t)roundf(x[i] * id);
}

static void q4_0_encode(const float *x, uint8_t *b) {
  float amax = 0.0f, mx = 0.0f; /* the value of largest magnitude, sign kept */
  for (int i = 0; i < KLE_QK; i++)
    if (fabsf(x[i]) > amax) {
      amax = fabsf(x[i]);
      mx = x[i];
    }
  float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  uint16_t dh = f32_to_f16(d);
  memcpy(b, &dh, 2);
  for (int j = 0; j < KLE_QK / 2; j++) {
    int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + 16] * id + 8.5f);
    lo = lo > 15 ? 15 : lo;
    hi = hi > 15 ? 15 : hi;
    b[2 + j] = (uint8_t)(lo | (hi << 4));
  }
}

/* one K-quant super-block into 256 floats, in llama.cpp's order of float operations (unfused) */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static void decode_kq(int fmt, const uint8_t *b, float *y) {
  if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K) {
    /* Q5_K: the same, with a fifth bit per value in 32 bytes before the nibbles (bit 2p of byte l
     * for group pair p's low-nibble value l, bit 2p + 1 for its high-nibble one) */
    const int five = fmt == KLE_W_Q5_K;
    float ds[8], dm[8];
    q4k_header(b, ds, dm);
    const uint8_t *qh = b + 16, *q = b + (five ? 48 : 16);
    for (int g = 0; g < 8; g += 2, q += 32) { /* 32 bytes: group g in low nibbles, g + 1 in high */
      const float d1 = ds[g], n1 = dm[g], d2 = ds[g + 1], n2 = dm[g + 1];
      const int u1 = 1 << g, u2 = 2 << g;
      for (int l = 0; l < 32; l++) y[32 * g + l] = d1 * (float)((q[l] & 15) + (five && (qh[l] & u1) ? 16 : 0)) - n1;
      for (int l = 0; l < 32; l++) y[32 * g + 32 + l] = d2 * (float)((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - n2;
    }
    return;
  }
  /* Q6_K: each half of 128 values takes 64 bytes of low nibbles, 32 of high bit pairs, 8 scales */
  const float d = qblock_scale(b + 208);
  for (int h = 0; h < 2; h++) {
    const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
    const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
    float *o = y + 128 * h;
    for (int l = 0; l < 32; l++) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32, q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32, q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      o[l] = d * (float)sc[is] * (float)q1;
      o[l + 32] = d * (float)sc[is + 2] * (float)q2;
      o[l + 64] = d * (float)sc[is + 4] * (float)q3;
      o[l + 96] = d * (float)sc[is + 6] * (float)q4;
    }
  }
}

/* One Q2_K or Q3_K super-block into 256 floats, in llama.cpp's order: the group's factor first
 * (d * scale, and Q2_K's dmin * min), then times the value */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static void decode_q23k(int q3, const uint8_t *b, float *y) {
  const float d = qblock_scale(b + (q3 ? 108 : 80)), dmin = q3 ? 0.0f : qblock_scale(b + 82);
  int8_t v[4][32];
  int16_t sc[8], mins[8];
  for (int n = 0; n < 2; n++) {
    q23k_half(q3, b, n, v, sc, mins);
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++) {
        const int g = 2 * j + l / 16;
        float *o = y + 128 * n + 32 * j + l;
        if (q3)
          *o = d * (float)sc[g] * (float)v[j][l];
        else
          *o = d * (float)sc[g] * (float)v[j][l] - dmin * (float)mins[g];
      }
  }
}

/* One Q5_0 / Q5_1 block into 32 floats: element j < 16 is the low nibble of byte j with fifth bit
 * j of the 32-bit word, element j + 16 the high nibble with bit j + 16. The product and the sum
 * are not fused (as llama.cpp's decoder computes them), so the values match its bit for bit. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static void decode_q5(int fmt, const uint8_t *b, float *y) {
  const float d = qblock_scale(b), m = fmt == KLE_W_Q5_1 ? qblock_scale(b + 2) : 0.0f;
  const uint8_t *hb = b + (fmt == KLE_W_Q5_1 ? 4 : 2), *qs = hb + 4;
  const uint32_t qh = (uint32_t)hb[0] | (uint32_t)hb[1] << 8 | (uint32_t)hb[2] << 16 | (uint32_t)hb[3] << 24;
  for (int j = 0; j < 16; j++) {
    const int x0 = (qs[j] & 15) | (int)(((qh >> j) << 4) & 16), x1 = (qs[j] >> 4) | (int)((qh >> (j + 12)) & 16);
    if (fmt == KLE_W_Q5_0) {
      y[j] = (float)(x0 - 16) * d;
      y[j + 16] = (float)(x1 - 16) * d;
    } else {
      y[j] = (float)x0 * d + m;
      y[j + 16] = (float)x1 * d + m;
    }
  }
}

/* Decode elements [k0, k0+n) of one row; k0 and n are multiples of the format's block (32, or 256
 * for the K-quants). */
static void decode_ref(int fmt, const uint8_t *row, int k0, int n, float *out) {
  if (fmt == KLE_W_Q5_0 || fmt == KLE_W_Q5_1) {
    const long bb = fmt == KLE_W_Q5_0 ? Q50_BYTES : Q51_BYTES;
    for (int i = 0; i < n; i += KLE_QK) decode_q5(fmt, row + (long)((k0 + i) / KLE_QK) * bb, out + i);
    return;
  }
  if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K || fmt == KLE_W_Q6_K) {
    const long bb = fmt == KLE_W_Q4_K ? Q4K_BYTES : fmt == KLE_W_Q5_K ? Q5K_BYTES : Q6K_BYTES;
    for (int i = 0; i < n; i += KLE_QK_K) decode_kq(fmt, row + (long)((k0 + i) / KLE_QK_K) * bb, out + i);
    return;
  }
  if (fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K) {
    const long bb = fmt == KLE_W_Q2_K ? Q2K_BYTES : Q3K_BYTES;
    for (int i = 0; i < n; i += KLE_QK_K) decode_q23k(fmt == KLE_W_Q3_K, row + (long)((k0 + i) / KLE_QK_K) * bb, out + i);
    return;
  }
  for (int i = 0; i < n; i++) {
    int k = k0 + i;
    switch (fmt) {
    case KLE_W_F32: memcpy(&out[i], row + 4L * k, 4); break;
    case KLE_W_BF16: { uint16_t h; memcpy(&h, row + 2L * k, 2); out[i] = bf16_to_f32(h); } break;
    case KLE_W_F16: { uint16_t h; memcpy(&h, row + 2L * k, 2); out[i] = f16_to_f32(h); } break;
    case KLE_W_Q8_0: {
      const uint8_t *b = row + (long)(k / KLE_QK) * Q8_BYTES;
      out[i] = qblock_scale(b) * (float)(int8_t)b[2 + k % KLE_QK];
    } break;
    case KLE_W_Q4_0: {
      const uint8_t *b = row + (long)(k / KLE_QK) * Q4_BYTES;
      int j = k % KLE_QK;
      int nib = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
      out[i] = qblock_scale(b) * (float)(nib - 8);
    } break;
    }
  }
}

/*
 * The K-quants for the matmul tiles, decoded in a permuted order: 16 bytes are read as four
 * int32 words and byte k of every word is extracted with shifts, so one vector holds values k,
 * k + 4, k + 8, k + 12 of the 16. Only same-width shifts and int -> float converts are needed,
 * which every SIMD target has (gcc scalarized a direct 16-byte -> 16-float conversion: a scalar
 * convert per value, half of a Q4_K_M decode step). The activations are permuted the same way
 * once per call (permute16) and a dot product does not care about order. Same float operations per
 * value as decode_kq.
 */
static inline v4i kq_words(const uint8_t *p) { /* any byte offset: Q6_K blocks are 210 bytes */
  v4i w;
  memcpy(&w, p, sizeof w);
  return w;
}

#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static void decode_kq_perm(int fmt, const uint8_t *b, float *y) {
  if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K) {
    const int five = fmt == KLE_W_Q5_K;
    float ds[8], dm[8];
    q4k_header(b, ds, dm);
    const uint8_t *qh = b + 16, *q = b + (five ? 48 : 16);
    for (int g = 0; g < 8; g += 2, q += 32) {
      const v4f d1 = vsplat(ds[g]), n1 = vsplat(dm[g]), d2 = vsplat(ds[g + 1]), n2 = vsplat(dm[g + 1]);
      for (int h = 0; h < 32; h += 16) {
        const v4i w = kq_words(q + h), hb = five ? kq_words(qh + h) : (v4i){0, 0, 0, 0};
        for (int k = 0; k < 4; k++) {
          const v4i lo = ((w >> (8 * k)) & 15) + (((hb >> (8 * k + g)) & 1) << 4);
          const v4i hi = ((w >> (8 * k + 4)) & 15) + (((hb >> (8 * k + g + 1)) & 1) << 4);
          vstore(y + 32 * g + h + 4 * k, d1 * __builtin_convertvector(lo, v4f) - n1);
          vstore(y + 32 * g + 32 + h + 4 * k, d2 * __builtin_convertvector(hi, v4f) - n2);
        }
      }
    }
    return;
  }
  const float d = qblock_scale(b + 208); /* Q6_K */
  for (int h = 0; h < 2; h++) {
    const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
    const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l += 16) {
        const v4i wl = kq_words(ql + 32 * (j & 1) + l), wh = kq_words(qh + l);
        const v4f s = vsplat(d * (float)sc[2 * j + l / 16]);
        for (int k = 0; k < 4; k++) {
          const v4i u = ((wl >> (8 * k + 4 * (j >> 1))) & 15) | (((wh >> (8 * k + 2 * j)) & 3) << 4);
          vstore(y + 128 * h + 32 * j + l + 4 * k, s * __builtin_convertvector(u - 32, v4f));
        }
      }
  }
}

/* x[16g + 4k + l] <- src[16g + k + 4l]: the order decode_kq_perm produces */
static void permute16(const float *src, float *dst, int n) {
  for (int g = 0; g < n; g += 16)
    for (int k = 0; k < 4; k++)
      for (int l = 0; l < 4; l++) dst[g + 4 * k + l] = src[g + k + 4 * l];
}

static int k_quant(int fmt) { return fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K || fmt == KLE_W_Q6_K; }

static void decode_fast(int fmt, const uint8_t *row, int k0, int n, float *out) {
  int i = 0;
  if (k_quant(fmt)) {
    const long bb = fmt == KLE_W_Q4_K ? Q4K_BYTES : fmt == KLE_W_Q5_K ? Q5K_BYTES : Q6K_BYTES;
    for (; i < n; i += KLE_QK_K) decode_kq_perm(fmt, row + (long)((k0 + i) / KLE_QK_K) * bb, out + i);
    return;
  }
  switch (fmt) {
  case KLE_W_BF16:
    for (; i + 4 <= n; i += 4) vstore(out + i, v_bf16_to_f32((const uint16_t *)(row + 2L * (k0 + i))));
    break;
  case KLE_W_F16:
    for (; i + 4 <= n; i += 4) vstore(out + i, v_f16_to_f32((const uint16_t *)(row + 2L * (k0 + i))));
    break;
  }
  if (i < n) decode_ref(fmt, row, k0 + i, n - i, out + i);
}

int kle_quantize(int fmt, const float *src, void *dst, int n) {
  long rb = kle_row_bytes(fmt, n);
  /* the read-only formats: every other K-quant and the 5-bit ones */
  if (rb < 0 || (fmt > KLE_W_Q4_0 && fmt != KLE_W_Q4_K && fmt != KLE_W_Q6_K)) return KLE_EINVAL;
  uint8_t *o = dst;
  if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q6_K) {
    for (int i = 0; i < n; i += KLE_QK_K)
      if (fmt == KLE_W_Q4_K) kle_q4k_encode(src + i, o + (long)(i / KLE_QK_K) * Q4K_BYTES);
      else kle_q6k_encode(src + i, o + (long)(i / KLE_QK_K) * Q6K_BYTES);
    return KLE_OK;
  }
  for (int i = 0; i < n; i++) {
    switch (fmt) {
    case KLE_W_F32: memcpy(o + 4L * i, &src[i], 4); break;
    case KLE_W_BF16: { uint16_t h = f32_to_bf16(src[i]); memcpy(o + 2L * i, &h, 2); } break;
    case KLE_W_F16: { uint16_t h = f32_to_f16(src[i]); memcpy(o + 2L * i, &h, 2); } break;
    case KLE_W_Q8_0: if (i % KLE_QK == 0) q8_0_encode(src + i, o + (long)(i / KLE_QK) * Q8_BYTES); break;
    case KLE_W_Q4_0: if (i % KLE_QK == 0) q4_0_encode(src + i, o + (long)(i / KLE_QK) * Q4_BYTES); break;
    }
  }
  return KLE_OK;
}

int kle_dequantize(int fmt, const void *src, float *dst, int n) {
  if (kle_row_bytes(fmt, n) < 0) return KLE_EINVAL;
  decode_ref(fmt, src, 0, n, dst);
  return KLE_OK;
}

/* ------------------------------------------------------------------ matmul */

static int mm_args_ok(int fmt, int T, int n_out, int n_in) {
  return T >= 0 && n_out > 0 && kle_row_bytes(fmt, n_in) > 0;
}

int kle_matmul_ref(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in) {
  if (!mm_args_ok(fmt, T, n_out, n_in)) return KLE_EINVAL;
  float *row = malloc(sizeof(float) * (size_t)n_in);
  if (!row) return KLE_ENOMEM;
  long rb = kle_row_bytes(fmt, n_in);
  for (int n = 0; n < n_out; n++) {
    decode_ref(fmt, (const uint8_t *)W + rb * n, 0, n_in, row);
    for (int t = 0; t < T; t++) {
      float acc = 0.0f;
      for (int i = 0; i < n_in; i++) acc += row[i] * X[(size_t)t * n_in + i];
      Y[(size_t)t * n_out + n] = acc;
    }
  }
  free(row);
  return KLE_OK;
}

#define KC 256 /* weight elements per tile column: 4 rows x 256 floats = 4 KiB */

/* Dot products of up to 4 decoded rows (w[r] may point into W directly for f32) with tokens. */
static void tile_dots(const float *const w[4], int nr, const float *X, int n_in, int k0, int kn,
                      int T, float *Y, int ldy, int n0) {
  int t = 0;
  for (; t + 2 <= T; t += 2) {
    const float *x0 = X + (size_t)t * n_in + k0, *x1 = x0 + n_in;
    if (nr == 4) {
      v4f a00 = vsplat(0), a01 = vsplat(0), a10 = vsplat(0), a11 = vsplat(0);
      v4f a20 = vsplat(0), a21 = vsplat(0), a30 = vsplat(0), a31 = vsplat(0);
      int i = 0;
      for (; i + 4 <= kn; i += 4) {
        v4f p = vload(x0 + i), q = vload(x1 + i), r;
        r = vload(w[0] + i); a00 += r * p; a01 += r * q;
        r = vload(w[1] + i); a10 += r * p; a11 += r * q;
        r = vload(w[2] + i); a20 += r * p; a21 += r * q;
        r = vload(w[3] + i); a30 += r * p; a31 += r * q;
      }
      float s[8] = {vsum(a00), vsum(a01), vsum(a10), vsum(a11), vsum(a20), vsum(a21), vsum(a30), vsum(a31)};
      for (; i < kn; i++)
        for (int r2 = 0; r2 < 4; r2++) {
          s[2 * r2] += w[r2][i] * x0[i];
          s[2 * r2 + 1] += w[r2][i] * x1[i];
        }
      for (int r2 = 0; r2 < 4; r2++) {
        Y[(size_t)t * ldy + n0 + r2] += s[2 * r2];
        Y[(size_t)(t + 1) * ldy + n0 + r2] += s[2 * r2 + 1];
      }
      continue;
    }
    for (int r2 = 0; r2 < nr; r2++) {
      v4f a = vsplat(0), b = vsplat(0);
      int i = 0;
      for (; i + 4 <= kn; i += 4) {
        v4f r = vload(w[r2] + i);
        a += r * vload(x0 + i);
        b += r * vload(x1 + i);
      }
      float sa = vsum(a), sb = vsum(b);
      for (; i < kn; i++) {
        sa += w[r2][i] * x0[i];
        sb += w[r2][i] * x1[i];
      }
      Y[(size_t)t * ldy + n0 + r2] += sa;
      Y[(size_t)(t + 1) * ldy + n0 + r2] += sb;
    }
  }
  for (; t < T; t++) {
    const float *x0 = X + (size_t)t * n_in + k0;
    if (nr == 4) {
      v4f a0 = vsplat(0), a1 = vsplat(0), a2 = vsplat(0), a3 = vsplat(0);
      int i = 0;
      for (; i + 4 <= kn; i += 4) {
        v4f p = vload(x0 + i);
        a0 += vload(w[0] + i) * p;
        a1 += vload(w[1] + i) * p;
        a2 += vload(w[2] + i) * p;
        a3 += vload(w[3] + i) * p;
      }
      float s[4] = {vsum(a0), vsum(a1), vsum(a2), vsum(a3)};
      for (; i < kn; i++)
        for (int r2 = 0; r2 < 4; r2++) s[r2] += w[r2][i] * x0[i];
      for (int r2 = 0; r2 < 4; r2++) Y[(size_t)t * ldy + n0 + r2] += s[r2];
      continue;
    }
    for (int r2 = 0; r2 < nr; r2++) {
      v4f a = vsplat(0);
      int i = 0;
      for (; i + 4 <= kn; i += 4) a += vload(w[r2] + i) * vload(x0 + i);
      float sa = vsum(a);
      for (; i < kn; i++) sa += w[r2][i] * x0[i];
      Y[(size_t)t * ldy + n0 + r2] += sa;
    }
  }
}

#if !defined(__AVX512F__)
/*
 * BF16 rows for one or two tokens, 4 lanes wide (wasm SIMD, and native builds without AVX-512):
 * straight from the weights, 8 a load. A 32-bit lane of BF16 pairs holds element 2i in its low
 * half and 2i + 1 in its high half, so the odd elements are that lane with its low half cleared
 * and the even ones that lane shifted up 16: one operation each, against the tokens' activations
 * split the same way (evens, odds) once per call. The tile path decoded rows into a buffer and
 * read them again (a 105M BF16 model decoded at 56 tokens/s in wasm SIMD).
 */
static inline __attribute__((always_inline)) void bf16_rows4(const uint16_t *W, const float *xe, const float *xo, float *Y, int ldy, int n_in,
                                                             int r0, int NR, int NT) {
  const int h = n_in / 2;
  v4f acc[4][2];
  for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = vsplat(0.0f);
  for (int i = 0; i + 8 <= n_in; i += 8) {
    v4f e[2], o[2];
    for (int t = 0; t < NT; t++) e[t] = vload(xe + (size_t)t * h + i / 2), o[t] = vload(xo + (size_t)t * h + i / 2);
    for (int r = 0; r < NR; r++) {
      const v4i u = *(const v4i_u *)(W + (size_t)(r0 + r) * n_in + i);
      const v4f we = (v4f)(u << 16), wo = (v4f)(u & (v4i){(int32_t)0xffff0000, (int32_t)0xffff0000, (int32_t)0xffff0000, (int32_t)0xffff0000});
      for (int t = 0; t < NT; t++) acc[r][t] += we * e[t] + wo * o[t];
    }
  }
  for (int r = 0; r < NR; r++)
    for (int t = 0; t < NT; t++) {
      float sum = vsum(acc[r][t]);
      for (int i = n_in & ~7; i < n_in; i++) sum += bf16_to_f32(W[(size_t)(r0 + r) * n_in + i]) * (i % 2 ? xo : xe)[(size_t)t * h + i / 2];
      Y[(size_t)t * ldy + r0 + r] = sum;
    }
}
static int mm_bf16_4lane(const uint16_t *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  const int h = (n_in + 1) / 2;
  float *xe = malloc(sizeof(float) * 2 * (size_t)T * (size_t)h + 16), *xo = xe + (size_t)T * h;
  if (!xe) return KLE_ENOMEM;
  for (int t = 0; t < T; t++)
    for (int i = 0; i < n_in; i++) (i % 2 ? xo : xe)[(size_t)t * h + i / 2] = X[(size_t)t * n_in + i];
  for (int r0 = 0; r0 < n_out; r0 += 4) {
    const int nr = n_out - r0 < 4 ? n_out - r0 : 4;
    /* constant counts, so that the loops unroll */
    if (nr == 4 && T == 1) bf16_rows4(W, xe, xo, Y, ldy, n_in, r0, 4, 1);
    else if (nr == 4) bf16_rows4(W, xe, xo, Y, ldy, n_in, r0, 4, 2);
    else bf16_rows4(W, xe, xo, Y, ldy, n_in, r0, nr, T);
  }
  free(xe);
  return KLE_OK;
}
#endif

#if defined(__AVX512F__) && !defined(__wasm__)
#include <immintrin.h>
/* 16 weights of a BF16 / F16 row as f32 */
static inline __m512 w16_f32(int fmt, const uint16_t *p) {
  const __m256i h = _mm256_loadu_si256((const __m256i *)p);
  return fmt == KLE_W_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

/* NR rows from r0 by NT tokens from t0 of mm16_native, the counts constants where inlined */
static inline __attribute__((always_inline)) void mm16_tile(int fmt, const uint16_t *W, const float *X, float *Y, int ldy, int n_in, int r0,
                                                             int t0, int NR, int NT) {
  const int n16 = n_in & ~15;
  __m512 acc[4][4];
  for (int r = 0; r < 4; r++)
    for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
  for (int i = 0; i < n16; i += 16) {
    __m512 w[4], x[4];
    for (int r = 0; r < NR; r++) w[r] = w16_f32(fmt, W + (size_t)(r0 + r) * n_in + i);
    for (int t = 0; t < NT; t++) x[t] = _mm512_loadu_ps(X + (size_t)(t0 + t) * n_in + i);
    for (int r = 0; r < NR; r++)
      for (int t = 0; t < NT; t++) acc[r][t] = _mm512_fmadd_ps(w[r], x[t], acc[r][t]);
  }
  for (int r = 0; r < NR; r++)
    for (int t = 0; t < NT; t++) {
      const uint16_t *wr = W + (size_t)(r0 + r) * n_in;
      const float *xt = X + (size_t)(t0 + t) * n_in;
      float sum = _mm512_reduce_add_ps(acc[r][t]);
      for (int i = n16; i < n_in; i++) sum += (fmt == KLE_W_BF16 ? bf16_to_f32(wr[i]) : f16_to_f32(wr[i])) * xt[i];
      Y[(size_t)(t0 + t) * ldy + r0 + r] = sum;
    }
}

/* Y = X W^T for 16-bit weights natively with AVX-512: 4 rows by 4 tokens a step, 16 lanes wide,
 * the weights widened in registers. The tile path below decoded them into memory and multiplied
 * 4 lanes wide: a 105M BF16 model decoded at 53 tokens/s (11 GB/s of weights). */
static void mm16_native(int fmt, const uint16_t *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  for (int r0 = 0; r0 < n_out; r0 += 4) {
    const int nr = n_out - r0 < 4 ? n_out - r0 : 4;
    for (int t0 = 0; t0 < T; t0 += 4) {
      const int nt = T - t0 < 4 ? T - t0 : 4;
      if (nr == 4 && nt == 4) mm16_tile(fmt, W, X, Y, ldy, n_in, r0, t0, 4, 4);
      else if (nr == 4 && nt == 1) mm16_tile(fmt, W, X, Y, ldy, n_in, r0, t0, 4, 1);
      else mm16_tile(fmt, W, X, Y, ldy, n_in, r0, t0, nr, nt);
    }
  }
}
#endif

#if defined(__AVX512BF16__) && !defined(__wasm__)
/* Decode reads each weight once, 4 rows at a time: rows of a few KiB are too short for the
 * hardware prefetcher to ramp up on the 4 streams, so each 64-byte load also asks for one line of
 * the tile two after this one, walked in memory order (a tile has as many lines as loads, so the
 * whole of it arrives; nothing past the matrix's end is asked for). It replaced asking for the
 * same offset of the next tile's rows, which left the tiles at 10-12 GB/s against 22-27 GB/s for a
 * plain read on an AMD EPYC host (Zen 4, one thread; 2048 x 768, 16000 x 768, 768 x 2048 and
 * 4096 x 2304 BF16 matrices streamed from DRAM, vdpbf16ps): 18-20 GB/s one tile ahead in memory
 * order, 20-23 two tiles ahead. */
/* (offsets, not pointers: a pointer may not pass the matrix's end) */
static inline void prefetch_ahead(const uint16_t *W, size_t *off, size_t bytes) {
  if (*off < bytes) _mm_prefetch((const char *)W + *off, _MM_HINT_T0);
  *off += 64;
}
/*
 * BF16 rows for a few tokens with vdpbf16ps (AVX-512 BF16): 32 products an instruction, each
 * exact in f32 (8-bit by 8-bit significands) and added to an f32 lane. The activations go in as
 * three BF16 terms, x = h + m + l (h = bf16(x), m = bf16(x - h), l = bf16(x - h - m)), three dots
 * for each 32 weights, which leaves 2^-25 of |x|: the f32 products' accuracy, so that a decode
 * step gives the logits of the same token in a prefill (engine.test.ts, 1e-5 of their scale;
 * two terms, as the CUDA GEMMs split, measured 2.7e-5 there); rounded to BF16 alone they would
 * lose 2^-9. The widen-and-FMA path above took three instructions for 16 weights: a 105M BF16
 * model decoded at 29 GB/s of weights on one core, where llama.cpp's vdpbf16ps (activations
 * rounded) reads 52.
 */
#define BFD_MAX_IN 8192 /* the terms live on the stack: at most 3 tokens x 3 terms x 16 KiB */
static void mm16_bf16dot(const uint16_t *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  /* each token's three terms, 32 a vector, in the weights' order */
  const int nv = n_in / 32;
  __m512i xs[T][3][nv];
  for (int t = 0; t < T; t++)
    for (int v = 0; v < nv; v++) {
      float part[3][32];
      for (int i = 0; i < 32; i++) {
        float x = X[(size_t)t * n_in + 32 * v + i];
        for (int k = 0; k < 3; k++) {
          part[k][i] = bf16_to_f32(f32_to_bf16(x));
          x -= part[k][i]; /* exact */
        }
      }
      for (int k = 0; k < 3; k++) xs[t][k][v] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(part[k] + 16), _mm512_loadu_ps(part[k]));
    }
  const size_t bytes = 2 * (size_t)n_out * n_in;
  for (int r0 = 0; r0 < n_out; r0 += 4) {
    const int nr = n_out - r0 < 4 ? n_out - r0 : 4;
    size_t pf = 2 * (size_t)(r0 + 8) * n_in;
    __m512 acc[4][3];
    for (int r = 0; r < 4; r++)
      for (int t = 0; t < 3; t++) acc[r][t] = _mm512_setzero_ps();
    for (int v = 0; v < nv; v++)
      for (int r = 0; r < nr; r++) {
        const __m512bh w = (__m512bh)_mm512_loadu_si512(W + (size_t)(r0 + r) * n_in + 32 * v);
        prefetch_ahead(W, &pf, bytes);
        for (int t = 0; t < T; t++) /* the small terms first */
          acc[r][t] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[r][t], w, (__m512bh)xs[t][2][v]), w, (__m512bh)xs[t][1][v]), w,
                                       (__m512bh)xs[t][0][v]);
      }
    for (int r = 0; r < nr; r++)
      for (int t = 0; t < T; t++) Y[(size_t)t * ldy + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
  }
}
#endif

void kle_bf16_round(const float *X, size_t n, uint16_t *Xh) {
  for (size_t i = 0; i < n; i++) Xh[i] = f32_to_bf16(X[i]);
}

#if KLE_BF16R
/* NR rows from r0 by NT tokens from t0, 32 products an instruction; the counts constants where inlined
 * (n_out: the matrix's rows, which bound the prefetch) */
static inline __attribute__((always_inline)) void bf16r_tile(const uint16_t *W, const uint16_t *Xh, float *Y, int ldy, int n_out, int n_in, int r0,
                                                             int t0, int NR, int NT) {
  __m512 acc[4][4];
  for (int r = 0; r < 4; r++)
    for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
  const size_t bytes = 2 * (size_t)n_out * n_in;
  size_t pf = 2 * (size_t)(r0 + 8) * n_in;
  for (int i = 0; i < n_in; i += 32) {
    __m512bh w[4], x[4];
    for (int r = 0; r < NR; r++) w[r] = (__m512bh)_mm512_loadu_si512(W + (size_t)(r0 + r) * n_in + i);
    if (NT < 4) /* decode (a prefill's tiles reuse each row for 4 tokens) */
      for (int r = 0; r < NR; r++) prefetch_ahead(W, &pf, bytes);
    for (int t = 0; t < NT; t++) x[t] = (__m512bh)_mm512_loadu_si512(Xh + (size_t)(t0 + t) * n_in + i);
    for (int r = 0; r < NR; r++)
      for (int t = 0; t < NT; t++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[r], x[t]);
  }
  for (int r = 0; r < NR; r++)
    for (int t = 0; t < NT; t++) Y[(size_t)(t0 + t) * ldy + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
}
#endif

int kle_bf16r_prefill(void) {
#if KLE_BF16R
  __builtin_cpu_init(); /* cheap, and safe before libgcc's constructor has run */
  return __builtin_cpu_is("amd");
#else
  return 0;
#endif
}

int kle_bf16r_rows(const uint16_t *W, const uint16_t *Xh, float *Y, int ldy, int T, int n_out, int n_in) {
#if KLE_BF16R
  if (T <= 0 || n_out <= 0 || n_in <= 0 || n_in % 32 || ldy < n_out) return KLE_EINVAL;
  for (int r0 = 0; r0 < n_out; r0 += 4) {
    const int nr = n_out - r0 < 4 ? n_out - r0 : 4;
    for (int t0 = 0; t0 < T; t0 += 4) {
      const int nt = T - t0 < 4 ? T - t0 : 4;
      if (nr == 4 && nt == 4) bf16r_tile(W, Xh, Y, ldy, n_out, n_in, r0, t0, 4, 4);
      else if (nr == 4 && nt == 1) bf16r_tile(W, Xh, Y, ldy, n_out, n_in, r0, t0, 4, 1);
      else bf16r_tile(W, Xh, Y, ldy, n_out, n_in, r0, t0, nr, nt);
    }
  }
  return KLE_OK;
#else
  (void)W, (void)Xh, (void)Y, (void)ldy, (void)T, (void)n_out, (void)n_in;
  return KLE_EINVAL;
#endif
}

int kle_matmul(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in) {
  return kle_matmul_ld(fmt, W, X, Y, n_out, T, n_out, n_in);
}

int kle_matmul_ld(int fmt, const void *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  if (!mm_args_ok(fmt, T, n_out, n_in) || ldy < n_out) return KLE_EINVAL;
  /* quantized weights: integer dot products with quantized activations (matmul_q8.c) */
  if (kle_matmul_int8(fmt, T)) return kle_matmul_q8_ld(fmt, W, X, Y, ldy, T, n_out, n_in);
#if defined(__AVX512BF16__) && !defined(__wasm__)
  if (fmt == KLE_W_BF16 && T >= 1 && T <= 3 && n_in % 32 == 0 && n_in <= BFD_MAX_IN) {
    mm16_bf16dot((const uint16_t *)W, X, Y, ldy, T, n_out, n_in);
    return KLE_OK;
  }
#endif
#if !defined(__AVX512F__)
  if (fmt == KLE_W_BF16 && T <= 2 && n_in % 2 == 0) return mm_bf16_4lane((const uint16_t *)W, X, Y, ldy, T, n_out, n_in);
#endif
#if defined(__AVX512F__) && !defined(__wasm__)
  if (fmt == KLE_W_BF16 || fmt == KLE_W_F16) {
    mm16_native(fmt, (const uint16_t *)W, X, Y, ldy, T, n_out, n_in);
    return KLE_OK;
  }
#endif
  long rb = kle_row_bytes(fmt, n_in);
  float *Xp = NULL;
  if (k_quant(fmt)) { /* decoded in permuted order: see decode_kq_perm */
    if ((uint64_t)T * (uint64_t)n_in > SIZE_MAX / 8) return KLE_ENOMEM;
    Xp = malloc(sizeof(float) * (size_t)T * (size_t)n_in + 1);
    if (!Xp) return KLE_ENOMEM;
    for (int t = 0; t < T; t++) permute16(X + (size_t)t * n_in, Xp + (size_t)t * n_in, n_in);
    X = Xp;
  }
  float tile[4][KC];
  for (int t = 0; t < T; t++) memset(Y + (size_t)t * ldy, 0, sizeof(float) * (size_t)n_out);
  for (int n0 = 0; n0 < n_out; n0 += 4) {
    int nr = n_out - n0 < 4 ? n_out - n0 : 4;
    for (int k0 = 0; k0 < n_in; k0 += KC) {
      int kn = n_in - k0 < KC ? n_in - k0 : KC;
      const float *w[4];
      for (int r = 0; r < nr; r++) {
        const uint8_t *row = (const uint8_t *)W + rb * (n0 + r);
        if (fmt == KLE_W_F32) {
          w[r] = (const float *)row + k0;
        } else {
          decode_fast(fmt, row, k0, kn, tile[r]);
          w[r] = tile[r];
        }
      }
      tile_dots(w, nr, X, n_in, k0, kn, T, Y, ldy, n0);
    }
  }
  free(Xp);
  return KLE_OK;
}
