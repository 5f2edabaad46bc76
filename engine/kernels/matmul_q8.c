/*
 * matmul_q8.c: Y = X W^T for Q8_0 and Q4_0 weights with integer dot products.
 *
 * Decoding quantized weights to f32 and multiplying in f32 ran at 15-24% of the read bandwidth:
 * the decode and the float multiplies bound it, not the bytes. Here the activations are
 * quantized too, per block of 32 as Q8_0 does weights (dx = amax / 127, qx = round(x / dx), kept
 * as int16 so the SIMD multiply-add takes them as they are), and a block's dot is
 * dw * dx * sum(qw * qx), the sum exact in int32 (32 products of at most 127 * 127). Per block:
 * widen 32 weights to int16, two 8 x 16-bit multiply-adds into int32 lanes, one convert and one
 * float multiply-add into a running vector; one horizontal sum per row.
 *
 * Natively with AVX-512 BW and VNNI, one 512-bit vpdpwssd takes a whole block.
 *
 * The cost is the activations' rounding: |x - dx * qx| <= dx / 2, so a block contributes at
 * most dx / 2 * sum |w| of error (test/unit/matmul.test.ts checks that bound against float64 for
 * every target). kle_matmul_q8_ref is the same algorithm in plain scalar code; the SIMD versions
 * (wasm SIMD's i32x4.dot_i16x8_s; x86 AVX2 vpmaddwd, or AVX-512 VNNI / AVX-VNNI vpdpwssd when the
 * native build's -march has them) differ from it only in the order of the float sums.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kle.h"
#include "matmul_q8.h"
#include "numfmt.h"
#include "simd.h"

#if defined(__wasm_simd128__)
#include <wasm_simd128.h>
#elif defined(__AVX2__) || defined(__AVX512BW__)
#include <immintrin.h>
#endif

#define Q8_BYTES 34
#define Q4_BYTES 18

/* One token row's blocks: scales dx[nb], values qx[n] (int16). Shared by every version of a
 * build, so all of them multiply the same integers. Four lanes at a time (simd.h: f32x4 in wasm
 * SIMD, SSE/AVX natively); rounding to nearest even by adding and removing 1.5 * 2^23 (a call to
 * fmaxf and lrintf per element took a tenth of a Q8_0 prefill). Where the compiler fuses the
 * multiply and the add, a product within half an ulp of a half rounds once instead of twice: a
 * code may differ by one between builds, as float sums do. */
static void quantize_x(const float *x, int n, float *dx, int16_t *qx) {
  typedef int16_t v4s __attribute__((vector_size(8)));
  const v4f magic = vsplat(12582912.0f);
  const v4i absmask = (v4i){0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
  for (int b = 0; b < n / KLE_QK; b++) {
    const float *xb = x + b * KLE_QK;
    v4f m = vsplat(0.0f);
    for (int i = 0; i < KLE_QK; i += 4) m = vmax(m, (v4f)((v4i)vload(xb + i) & absmask));
    const float amax = vhmax(m);
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    dx[b] = d;
    for (int i = 0; i < KLE_QK; i += 4) {
      const v4f r = (vload(xb + i) * vsplat(id) + magic) - magic;
      const v4s q = __builtin_convertvector(__builtin_convertvector(r, v4i), v4s);
      memcpy(qx + b * KLE_QK + i, &q, sizeof q);
    }
  }
}

static float scale_of(const uint8_t *b) {
  uint16_t h;
  memcpy(&h, b, 2);
  return f16_to_f32(h);
}

/* Q4_0 block -> 32 int8 values q - 8 in element order (low nibbles are elements 0..15) */
static void q4_unpack(const uint8_t *b, int8_t *out) {
  for (int j = 0; j < 16; j++) {
    out[j] = (int8_t)((b[2 + j] & 15) - 8);
    out[j + 16] = (int8_t)((b[2 + j] >> 4) - 8);
  }
}

/* sum over blocks of dw * dx * (int32 dot): the plain scalar version */
static float row_dot_ref(int fmt, const uint8_t *row, const float *dx, const int16_t *qx, int nb) {
  float acc = 0.0f;
  int8_t q[KLE_QK];
  for (int b = 0; b < nb; b++) {
    const uint8_t *blk = row + (size_t)b * (fmt == KLE_W_Q8_0 ? Q8_BYTES : Q4_BYTES);
    if (fmt == KLE_W_Q8_0)
      memcpy(q, blk + 2, KLE_QK);
    else
      q4_unpack(blk, q);
    int32_t s = 0;
    for (int i = 0; i < KLE_QK; i++) s += (int32_t)q[i] * qx[b * KLE_QK + i];
    acc += scale_of(blk) * dx[b] * (float)s;
  }
  return acc;
}

#if defined(__wasm_simd128__)
/* 32 int8 weights (two vectors) against 32 int16 activations: int32 x 4 */
static inline v128_t dot32(v128_t w0, v128_t w1, const int16_t *x) {
  v128_t s = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w0), wasm_v128_load(x));
  s = wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w0), wasm_v128_load(x + 8)));
  s = wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w1), wasm_v128_load(x + 16)));
  return wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w1), wasm_v128_load(x + 24)));
}

static float row_dot(int fmt, const uint8_t *row, const float *dx, const int16_t *qx, int nb) {
  v128_t acc = wasm_f32x4_splat(0.0f);
  const v128_t lo4 = wasm_i8x16_splat(15), eight = wasm_i8x16_splat(8);
  for (int b = 0; b < nb; b++) {
    v128_t w0, w1;
    const uint8_t *blk;
    if (fmt == KLE_W_Q8_0) {
      blk = row + (size_t)b * Q8_BYTES;
      w0 = wasm_v128_load(blk + 2);
      w1 = wasm_v128_load(blk + 18);
    } else {
      blk = row + (size_t)b * Q4_BYTES;
      const v128_t p = wasm_v128_load(blk + 2);
      w0 = wasm_i8x16_sub(wasm_v128_and(p, lo4), eight);
      w1 = wasm_i8x16_sub(wasm_u8x16_shr(p, 4), eight);
    }
    const v128_t s = dot32(w0, w1, qx + b * KLE_QK);
    acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), wasm_f32x4_splat(scale_of(blk) * dx[b])));
  }
  return (wasm_f32x4_extract_lane(acc, 0) + wasm_f32x4_extract_lane(acc, 1)) +
         (wasm_f32x4_extract_lane(acc, 2) + wasm_f32x4_extract_lane(acc, 3));
}

static inline float hsum(v128_t a) {
  return (wasm_f32x4_extract_lane(a, 0) + wasm_f32x4_extract_lane(a, 1)) + (wasm_f32x4_extract_lane(a, 2) + wasm_f32x4_extract_lane(a, 3));
}

/* four tokens against one row: each block's weights unpacked and widened once for all four */
static void row_dot4(int fmt, const uint8_t *row, const float *const dx[4], const int16_t *const qx[4], int nb, float out[4]) {
  v128_t acc[4] = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
  const v128_t lo4 = wasm_i8x16_splat(15), eight = wasm_i8x16_splat(8);
  for (int b = 0; b < nb; b++) {
    v128_t w0, w1;
    const uint8_t *blk;
    if (fmt == KLE_W_Q8_0) {
      blk = row + (size_t)b * Q8_BYTES;
      w0 = wasm_v128_load(blk + 2);
      w1 = wasm_v128_load(blk + 18);
    } else {
      blk = row + (size_t)b * Q4_BYTES;
      const v128_t p = wasm_v128_load(blk + 2);
      w0 = wasm_i8x16_sub(wasm_v128_and(p, lo4), eight);
      w1 = wasm_i8x16_sub(wasm_u8x16_shr(p, 4), eight);
    }
    const v128_t a = wasm_i16x8_extend_low_i8x16(w0), c = wasm_i16x8_extend_high_i8x16(w0);
    const v128_t e = wasm_i16x8_extend_low_i8x16(w1), f = wasm_i16x8_extend_high_i8x16(w1);
    const float dw = scale_of(blk);
    for (int t = 0; t < 4; t++) {
      const int16_t *x = qx[t] + b * KLE_QK;
      v128_t s = wasm_i32x4_dot_i16x8(a, wasm_v128_load(x));
      s = wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(c, wasm_v128_load(x + 8)));
      s = wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(e, wasm_v128_load(x + 16)));
      s = wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(f, wasm_v128_load(x + 24)));
      acc[t] = wasm_f32x4_add(acc[t], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), wasm_f32x4_splat(dw * dx[t][b])));
    }
  }
  for (int t = 0; t < 4; t++) out[t] = hsum(acc[t]);
}
#elif defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* a whole block per instruction: its 32 weights widened to 32 int16 lanes, one vpdpwssd against
 * the 32 activation codes, 16 int32 sums; then one convert and one fused multiply-add */
static inline __m512i block_w(int fmt, const uint8_t *blk) {
  if (fmt == KLE_W_Q8_0) return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 2)));
  const __m128i p = _mm_loadu_si128((const __m128i *)(blk + 2)), lo4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
  const __m128i w0 = _mm_sub_epi8(_mm_and_si128(p, lo4), eight), w1 = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(p, 4), lo4), eight);
  return _mm512_cvtepi8_epi16(_mm256_set_m128i(w1, w0));
}

static float row_dot(int fmt, const uint8_t *row, const float *dx, const int16_t *qx, int nb) {
  __m512 acc = _mm512_setzero_ps();
  const size_t bb = fmt == KLE_W_Q8_0 ? Q8_BYTES : Q4_BYTES;
  for (int b = 0; b < nb; b++) {
    const uint8_t *blk = row + (size_t)b * bb;
    const __m512i s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), block_w(fmt, blk), _mm512_loadu_si512(qx + b * KLE_QK));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(scale_of(blk) * dx[b]), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

static void row_dot4(int fmt, const uint8_t *row, const float *const dx[4], const int16_t *const qx[4], int nb, float out[4]) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  const size_t bb = fmt == KLE_W_Q8_0 ? Q8_BYTES : Q4_BYTES;
  for (int b = 0; b < nb; b++) {
    const uint8_t *blk = row + (size_t)b * bb;
    const __m512i w = block_w(fmt, blk);
    const float dw = scale_of(blk);
    for (int t = 0; t < 4; t++) {
      const __m512i s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(qx[t] + b * KLE_QK));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(dw * dx[t][b]), acc[t]);
    }
  }
  for (int t = 0; t < 4; t++) out[t] = _mm512_reduce_add_ps(acc[t]);
}
#elif defined(__AVX2__)
/* 16 int16 weights times 16 int16 activations, added into int32 x 8 */
static inline __m256i madd_acc(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, w, x);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, w, x);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
#endif
}

static inline float hsum8(__m256 acc) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}

static float row_dot(int fmt, const uint8_t *row, const float *dx, const int16_t *qx, int nb) {
  __m256 acc = _mm256_setzero_ps();
  const __m128i lo4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
  for (int b = 0; b < nb; b++) {
    __m128i w0, w1;
    const uint8_t *blk;
    if (fmt == KLE_W_Q8_0) {
      blk = row + (size_t)b * Q8_BYTES;
      w0 = _mm_loadu_si128((const __m128i *)(blk + 2));
      w1 = _mm_loadu_si128((const __m128i *)(blk + 18));
    } else {
      blk = row + (size_t)b * Q4_BYTES;
      const __m128i p = _mm_loadu_si128((const __m128i *)(blk + 2));
      w0 = _mm_sub_epi8(_mm_and_si128(p, lo4), eight);
      w1 = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(p, 4), lo4), eight);
    }
    const int16_t *x = qx + b * KLE_QK;
    __m256i s = madd_acc(_mm256_setzero_si256(), _mm256_cvtepi8_epi16(w0), _mm256_loadu_si256((const __m256i *)x));
    s = madd_acc(s, _mm256_cvtepi8_epi16(w1), _mm256_loadu_si256((const __m256i *)(x + 16)));
    const __m256 d = _mm256_set1_ps(scale_of(blk) * dx[b]);
#if defined(__FMA__)
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
#else
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), d));
#endif
  }
  return hsum8(acc);
}

static void row_dot4(int fmt, const uint8_t *row, const float *const dx[4], const int16_t *const qx[4], int nb, float out[4]) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  const __m128i lo4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
  for (int b = 0; b < nb; b++) {
    __m128i w0, w1;
    const uint8_t *blk;
    if (fmt == KLE_W_Q8_0) {
      blk = row + (size_t)b * Q8_BYTES;
      w0 = _mm_loadu_si128((const __m128i *)(blk + 2));
      w1 = _mm_loadu_si128((const __m128i *)(blk + 18));
    } else {
      blk = row + (size_t)b * Q4_BYTES;
      const __m128i p = _mm_loadu_si128((const __m128i *)(blk + 2));
      w0 = _mm_sub_epi8(_mm_and_si128(p, lo4), eight);
      w1 = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(p, 4), lo4), eight);
    }
    const __m256i wa = _mm256_cvtepi8_epi16(w0), wb = _mm256_cvtepi8_epi16(w1);
    const float dw = scale_of(blk);
    for (int t = 0; t < 4; t++) {
      const int16_t *x = qx[t] + b * KLE_QK;
      __m256i s = madd_acc(_mm256_setzero_si256(), wa, _mm256_loadu_si256((const __m256i *)x));
      s = madd_acc(s, wb, _mm256_loadu_si256((const __m256i *)(x + 16)));
      const __m256 d = _mm256_set1_ps(dw * dx[t][b]);
#if defined(__FMA__)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[t]);
#else
      acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_cvtepi32_ps(s), d));
#endif
    }
  }
  for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}
#else
/* no integer SIMD here (the wasm scalar build): the scalar version is the fast one */
static float row_dot(int fmt, const uint8_t *row, const float *dx, const int16_t *qx, int nb) { return row_dot_ref(fmt, row, dx, qx, nb); }
#define NO_ROW_DOT4
#endif

typedef float (*row_dot_fn)(int, const uint8_t *, const float *, const int16_t *, int);

void kle_q8_quantize_x(const float *X, int T, int n_in, float *dx, int16_t *qx) {
  const int nb = n_in / KLE_QK;
  for (int t = 0; t < T; t++) quantize_x(X + (size_t)t * n_in, n_in, dx + (size_t)t * nb, qx + (size_t)t * n_in);
}

static int rows_q8(row_dot_fn dot, int fmt, const void *W, const float *dx, const int16_t *qx, float *Y, int ldy, int T, int n_out,
                   int n_in) {
  const long rb = kle_row_bytes(fmt, n_in);
  if ((fmt != KLE_W_Q8_0 && fmt != KLE_W_Q4_0) || T < 0 || n_out <= 0 || rb <= 0 || ldy < n_out) return KLE_EINVAL;
  const int nb = n_in / KLE_QK;
  /* weight rows outside, tokens inside: a row (a few KiB) stays in L1 for all of the batch; the
   * SIMD versions take tokens four at a time, each block's weights widened once for the four */
  for (int r = 0; r < n_out; r++) {
    const uint8_t *row = (const uint8_t *)W + (size_t)rb * r;
    int t = 0;
#ifndef NO_ROW_DOT4
    if (dot == row_dot)
      for (; t + 4 <= T; t += 4) {
        const float *dxs[4];
        const int16_t *qxs[4];
        float out[4];
        for (int j = 0; j < 4; j++) dxs[j] = dx + (size_t)(t + j) * nb, qxs[j] = qx + (size_t)(t + j) * n_in;
        row_dot4(fmt, row, dxs, qxs, nb, out);
        for (int j = 0; j < 4; j++) Y[(size_t)(t + j) * ldy + r] = out[j];
      }
#endif
    for (; t < T; t++) Y[(size_t)t * ldy + r] = dot(fmt, row, dx + (size_t)t * nb, qx + (size_t)t * n_in, nb);
  }
  return KLE_OK;
}

int kle_q8_rows(int fmt, const void *W, const float *dx, const int16_t *qx, float *Y, int ldy, int T, int n_out, int n_in) {
  return rows_q8(row_dot, fmt, W, dx, qx, Y, ldy, T, n_out, n_in);
}

static int matmul_q8(row_dot_fn dot, int fmt, const void *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  const long rb = kle_row_bytes(fmt, n_in);
  if ((fmt != KLE_W_Q8_0 && fmt != KLE_W_Q4_0) || T < 0 || n_out <= 0 || rb <= 0 || ldy < n_out) return KLE_EINVAL;
  /* T x n_in activations as int16 and their scales: sizes from the caller's shape, in 64 bits */
  const uint64_t n = (uint64_t)T * (uint64_t)n_in;
  if (n > SIZE_MAX / 4) return KLE_ENOMEM;
  int16_t *qx = malloc(sizeof(int16_t) * (size_t)n + 2);
  float *dx = malloc(sizeof(float) * (size_t)T * (size_t)(n_in / KLE_QK) + 4);
  if (!qx || !dx) {
    free(qx);
    free(dx);
    return KLE_ENOMEM;
  }
  kle_q8_quantize_x(X, T, n_in, dx, qx);
  const int rc = rows_q8(dot, fmt, W, dx, qx, Y, ldy, T, n_out, n_in);
  free(qx);
  free(dx);
  return rc;
}

int kle_matmul_q8(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in) {
  return matmul_q8(row_dot, fmt, W, X, Y, n_out, T, n_out, n_in);
}

int kle_matmul_q8_ld(int fmt, const void *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  return matmul_q8(row_dot, fmt, W, X, Y, ldy, T, n_out, n_in);
}

int kle_matmul_q8_ref(int fmt, const void *W, const float *X, float *Y, int T, int n_out, int n_in) {
  return matmul_q8(row_dot_ref, fmt, W, X, Y, n_out, T, n_out, n_in);
}
