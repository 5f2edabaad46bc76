/*
 * matmul_q8.c: Y = X W^T for Q8_0, Q4_0, Q5_0, Q5_1 and the K-quants Q2_K to Q6_K with integer dot products.
 *
 * Decoding quantized weights to f32 and multiplying in f32 ran at 15-24% of the read bandwidth:
 * the decode and the float multiplies bound it, not the bytes. Here the activations are
 * quantized too, per block of 32 as Q8_0 does weights (dx = amax / 127, qx = round(x / dx), kept
 * as int16 so the SIMD multiply-add takes them as they are), and a block's dot is
 * dw * dx * sum(qw * qx), the sum exact in int32 (32 products of at most 127 * 127). Per block:
 * widen 32 weights to int16, two 8 x 16-bit multiply-adds into int32 lanes, one convert and one
 * float multiply-add into a running vector; one horizontal sum per row.
 *
 * Natively with AVX-512 BW and VNNI, one 512-bit vpdpwssd takes a whole block; Q8_0 and Q4_0
 * take two blocks per vpdpbusd instead (64 byte products: the codes + 128 as unsigned bytes
 * against the signed weights, the 128 * sum(w) it adds taken out by starting the sums at
 * -128 * sum(w), which a vpdpbusd of 128s against the weights gives once per row and block pair,
 * and the pair's two scales for each token read as one vector made when the codes were). Same
 * integers, fewer instructions per product: the convert, the scale and the float multiply-add
 * come once per 64 products instead of once per 32. In decode (1 to 3 tokens) Q8_0, Q4_0 and
 * Q5_0 turn the operands round (row_dot_dec): the weights unsigned, their offset off a per-token
 * start, since -128 * sum(w) per row is shared by no other token there. The K-quants always take
 * byte dots (Q5_0 joins Q8_0's in prefill): Q2_K-Q5_K their 2-5 bit values the unsigned operand
 * as they lie and the codes (less 128) the signed one, a lane's group scale an int32 factor; Q6_K
 * by vpmaddubsw and vpdpwssd with its group scales (row_dot_q6k_bytes). In prefill a step takes
 * two weight rows, each activation load serving both (rows_tiled).
 *
 * Q4_K (llama.cpp's K-quant: super-blocks of 256 values in 8 groups of 32, value = d * sc_j * q -
 * dmin * m_j, q in 0..15) fits the same blocks of 32: a group's dot is d * sc_j * dx * sum(q * qx)
 * in int32, and its min term dmin * m_j * dx * sum(qx), whose last factor the activations'
 * quantization keeps per block (sx = dx * sum(qx)), so it costs a multiply-add per group (Q5_K:
 * the same with a fifth bit per value). For the K-quants the activations take one dx per
 * super-block (x_group), so the decode rows add a super-block's sc_j-weighted group dots in int32
 * and scale once. Q6_K
 * (value = d * sc * (q - 32), q 6 bits, an int8 scale sc per 16 values) folds each scale into
 * its weights: sc * (q - 32) fits int16 (|.| <= 127 * 32), and 32 of its products with codes
 * (<= 127) fit int32, so a block of 32 is one dot scaled by d * dx. Q3_K folds its scales the
 * same way ((sc - 32) * (q - 4), at most 128); Q2_K too (sc * q), its mins (one per 16 values, so
 * the per-32 sums do not serve) as a second dot of the mins against the codes, scaled by dmin * dx.
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
#include "qblocks.h"
#include "simd.h"

#if !defined(__wasm__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define Q8_BYTE_CODES 1
#else
#define Q8_BYTE_CODES 0
#endif

#if defined(__wasm_simd128__)
#include <wasm_simd128.h>
#elif defined(__AVX2__) || defined(__AVX512BW__)
#include <immintrin.h>
/* a Q5_0 block's 32 values - 16 as int8 (Q5_1's, or Q5_0's with unsig: the values themselves,
 * 0..31), in two halves: each fifth bit picked out of the 32 with a byte shuffle and a compare
 * against its bit */
static inline void q50_bytes_off(const uint8_t *blk, int q51, int unsig, __m128i *w0, __m128i *w1) {
  uint32_t qh;
  memcpy(&qh, blk + (q51 ? 4 : 2), 4);
  const __m128i m = _mm_set1_epi32((int)qh), bits = _mm_set1_epi64x((long long)0x8040201008040201ull);
  const __m128i lo = _mm_shuffle_epi8(m, _mm_set_epi64x(0x0101010101010101ll, 0)), hi = _mm_shuffle_epi8(m, _mm_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll));
  const __m128i s16 = _mm_set1_epi8(16), p = _mm_loadu_si128((const __m128i *)(blk + (q51 ? 8 : 6))), m4 = _mm_set1_epi8(15);
  const __m128i off = q51 || unsig ? _mm_setzero_si128() : s16;
  *w0 = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(p, m4), _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(lo, bits), bits), s16)), off);
  *w1 = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(p, 4), m4), _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(hi, bits), bits), s16)), off);
}
static inline void q50_bytes(const uint8_t *blk, int q51, __m128i *w0, __m128i *w1) { q50_bytes_off(blk, q51, 0, w0, w1); }
#endif


/* One token row's blocks: scales dx[nb], values qx[n] (int16), and sx[nb] = dx * sum(qx) (Q4_K's
 * min terms). Shared by every version of a
 * build, so all of them multiply the same integers. Four lanes at a time (simd.h: f32x4 in wasm
 * SIMD, SSE/AVX natively); rounding to nearest even by adding and removing 1.5 * 2^23 (a call to
 * fmaxf and lrintf per element took a tenth of a Q8_0 prefill). Where the compiler fuses the
 * multiply and the add, a product within half an ulp of a half rounds once instead of twice: a
 * code may differ by one between builds, as float sums do. */
static void quantize_x(const float *x, int n, int group, float *dx, float *sx, int16_t *qx) {
  typedef int16_t v4s __attribute__((vector_size(8)));
  const v4f magic = vsplat(12582912.0f);
  const v4i absmask = (v4i){0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
  float d = 0.0f, id = 0.0f;
  for (int b = 0; b < n / KLE_QK; b++) {
    const float *xb = x + b * KLE_QK;
    if (b % group == 0) { /* a new scale: the largest magnitude of the next group blocks */
      v4f m = vsplat(0.0f);
      for (int i = 0; i < group * KLE_QK; i += 4) m = vmax(m, (v4f)((v4i)vload(xb + i) & absmask));
      const float amax = vhmax(m);
      d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    }
    dx[b] = d;
    v4i sum = {0, 0, 0, 0};
    for (int i = 0; i < KLE_QK; i += 4) {
      const v4f r = (vload(xb + i) * vsplat(id) + magic) - magic;
      const v4i qi = __builtin_convertvector(r, v4i);
      const v4s q = __builtin_convertvector(qi, v4s);
      sum += qi;
      memcpy(qx + b * KLE_QK + i, &q, sizeof q);
    }
    sx[b] = d * (float)(sum[0] + sum[1] + sum[2] + sum[3]);
  }
}

/* Q4_0 block -> 32 int8 values q - 8 in element order (low nibbles are elements 0..15) */
static void q4_unpack(const uint8_t *b, int8_t *out) {
  for (int j = 0; j < 16; j++) {
    out[j] = (int8_t)((b[2 + j] & 15) - 8);
    out[j + 16] = (int8_t)((b[2 + j] >> 4) - 8);
  }
}

/* sum over blocks of dw * dx * (int32 dot): the plain scalar version */
static float row_dot_ref(int fmt, const uint8_t *row, const float *dx, const float *sx, const int16_t *qx, int nb) {
  float acc = 0.0f;
  if (fmt == KLE_W_Q5_0 || fmt == KLE_W_Q5_1) {
    /* Q4_0 with a fifth bit per value from 32 bits before the nibbles; Q5_1: values 0..31, plus
     * its min m times the block's activation sum */
    const int q51 = fmt == KLE_W_Q5_1, off = q51 ? 0 : 16;
    float mins = 0.0f;
    for (int b = 0; b < nb; b++) {
      const uint8_t *blk = row + (size_t)b * (q51 ? Q51_BYTES : Q50_BYTES), *hb = blk + (q51 ? 4 : 2), *qs = hb + 4;
      const uint32_t qh = (uint32_t)hb[0] | (uint32_t)hb[1] << 8 | (uint32_t)hb[2] << 16 | (uint32_t)hb[3] << 24;
      int32_t sum = 0;
      for (int j = 0; j < 16; j++) {
        sum += (((qs[j] & 15) | (int)((qh >> j) & 1) << 4) - off) * qx[b * KLE_QK + j];
        sum += (((qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - off) * qx[b * KLE_QK + j + 16];
      }
      acc += qblock_scale(blk) * dx[b] * (float)sum;
      if (q51) mins += qblock_scale(blk + 2) * sx[b];
    }
    return acc + mins;
  }
  /* the K-quants: a super-block's activations share one scale (x_group), its integer sums add up
   * in int32 and take the float factors once */
  if (fmt == KLE_W_Q6_K) {
    for (int s = 0; s < nb / 8; s++) {
      const uint8_t *blk = row + (size_t)s * Q6K_BYTES;
      int32_t sum = 0;
      for (int h = 0; h < 2; h++) {
        const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(blk + 192 + 8 * h);
        for (int k = 0; k < 4; k++) { /* values 32 k .. 32 k + 31 of the half */
          const int b = 8 * s + 4 * h + k;
          for (int l = 0; l < 32; l++) {
            const int q = (((k & 2 ? ql[32 * (k & 1) + l] >> 4 : ql[32 * (k & 1) + l]) & 15) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
            sum += sc[2 * k + l / 16] * q * qx[b * KLE_QK + l];
          }
        }
      }
      acc += qblock_scale(blk + 208) * dx[8 * s] * (float)sum;
    }
    return acc;
  }
  if (fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K) {
    const int q3 = fmt == KLE_W_Q3_K;
    float mins = 0.0f;
    int8_t v[4][32];
    int16_t sc[8], m[8];
    for (int s = 0; s < nb / 8; s++) {
      const uint8_t *blk = row + (size_t)s * (q3 ? Q3K_BYTES : Q2K_BYTES);
      const float d = qblock_scale(blk + (q3 ? 108 : 80)), dmin = q3 ? 0.0f : qblock_scale(blk + 82);
      int32_t sum = 0, msum = 0;
      for (int n = 0; n < 2; n++) {
        q23k_half(q3, blk, n, v, sc, m);
        for (int j = 0; j < 4; j++) {
          const int b = 8 * s + 4 * n + j;
          int32_t lo = 0, hi = 0;
          /* the group scale folded into each weight, as the SIMD versions do */
          for (int l = 0; l < 32; l++) sum += sc[2 * j + l / 16] * v[j][l] * qx[b * KLE_QK + l];
          if (q3) continue;
          for (int l = 0; l < 16; l++) lo += qx[b * KLE_QK + l], hi += qx[b * KLE_QK + 16 + l];
          msum += m[2 * j] * lo + m[2 * j + 1] * hi;
        }
      }
      acc += d * dx[8 * s] * (float)sum;
      mins += dmin * dx[8 * s] * (float)msum;
    }
    return acc - mins;
  }
  if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K) {
    /* Q5_K: 32 bytes of fifth bits before the nibbles, bit j of byte i for group j's value i */
    const int five = fmt == KLE_W_Q5_K;
    float mins = 0.0f;
    uint8_t sc[8], m[8];
    for (int s = 0; s < nb / 8; s++) {
      const uint8_t *blk = row + (size_t)s * (five ? Q5K_BYTES : Q4K_BYTES), *qh = blk + 16, *q = blk + (five ? 48 : 16);
      q4k_scales(blk, sc, m);
      int32_t sum = 0;
      float mm = 0.0f;
      for (int j = 0; j < 8; j++) {
        const int b = 8 * s + j, shift = 4 * (j & 1);
        const uint8_t *qq = q + 32 * (j / 2);
        int32_t dot = 0;
        for (int i = 0; i < KLE_QK; i++) dot += (((qq[i] >> shift) & 15) | (five ? ((qh[i] >> j) & 1) << 4 : 0)) * qx[b * KLE_QK + i];
        sum += sc[j] * dot;
        mm += (float)m[j] * sx[b];
      }
      acc += qblock_scale(blk) * dx[8 * s] * (float)sum;
      mins += qblock_scale(blk + 2) * mm;
    }
    return acc - mins;
  }
  int8_t q[KLE_QK];
  for (int b = 0; b < nb; b++) {
    const uint8_t *blk = row + (size_t)b * (fmt == KLE_W_Q8_0 ? Q8_BYTES : Q4_BYTES);
    if (fmt == KLE_W_Q8_0)
      memcpy(q, blk + 2, KLE_QK);
    else
      q4_unpack(blk, q);
    int32_t s = 0;
    for (int i = 0; i < KLE_QK; i++) s += (int32_t)q[i] * qx[b * KLE_QK + i];
    acc += qblock_scale(blk) * dx[b] * (float)s;
  }
  return acc;
}

/*
 * The SIMD versions, each as four primitives that the one row_dot and row_dot4 below are written
 * with: kq_w, a block's 32 weights widened to 16-bit lanes (block_w returns the block, for its
 * scale); kq_acc, a running float vector; acc_add, one block's int32 dot with 32 activation codes
 * converted and scaled into it; acc_sum, its horizontal sum.
 */
#if defined(__wasm_simd128__)
/* Bit fields are cut with 16-bit shifts and byte masks, not wasm's 8-bit shifts: x86 has none, and
 * V8 emulates each with several instructions (a 16-bit shift whose stray bits the mask removes,
 * or a left shift of bits that stay inside their byte, is the same result in one). */
typedef struct {
  v128_t v[4];
} kq_w;
typedef v128_t kq_acc;

static inline const uint8_t *block_w(int fmt, const uint8_t *row, int b, kq_w *w) {
  v128_t w0, w1;
  const uint8_t *blk;
  if (fmt == KLE_W_Q8_0) {
    blk = row + (size_t)b * Q8_BYTES;
    w0 = wasm_v128_load(blk + 2);
    w1 = wasm_v128_load(blk + 18);
  } else {
    blk = row + (size_t)b * Q4_BYTES;
    const v128_t p = wasm_v128_load(blk + 2), eight = wasm_i8x16_splat(8);
    w0 = wasm_i8x16_sub(wasm_v128_and(p, wasm_i8x16_splat(15)), eight);
    w1 = wasm_i8x16_sub(wasm_v128_and(wasm_u16x8_shr(p, 4), wasm_i8x16_splat(15)), eight);
  }
  w->v[0] = wasm_i16x8_extend_low_i8x16(w0);
  w->v[1] = wasm_i16x8_extend_high_i8x16(w0);
  w->v[2] = wasm_i16x8_extend_low_i8x16(w1);
  w->v[3] = wasm_i16x8_extend_high_i8x16(w1);
  return blk;
}
/* 32 bytes of Q4_K nibbles as bytes: group a's 32 values (low nibbles) in a[0..1], group b's
 * (high) in b[0..1]; 0..15 (Q5_K: 0..31) */
static inline void q4k_b(const uint8_t *q, const uint8_t *qh, int g, v128_t a[2], v128_t b[2]) {
  const v128_t p0 = wasm_v128_load(q), p1 = wasm_v128_load(q + 16), m = wasm_i8x16_splat(15);
  v128_t l0 = wasm_v128_and(p0, m), l1 = wasm_v128_and(p1, m), h0 = wasm_v128_and(wasm_u16x8_shr(p0, 4), m), h1 = wasm_v128_and(wasm_u16x8_shr(p1, 4), m);
  if (qh) { /* Q5_K: bits 2g and 2g + 1 of the fifth-bit bytes */
    const v128_t b0 = wasm_v128_load(qh), b1 = wasm_v128_load(qh + 16), one = wasm_i8x16_splat(1);
    l0 = wasm_v128_or(l0, wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(b0, 2 * g), one), 4));
    l1 = wasm_v128_or(l1, wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(b1, 2 * g), one), 4));
    h0 = wasm_v128_or(h0, wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(b0, 2 * g + 1), one), 4));
    h1 = wasm_v128_or(h1, wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(b1, 2 * g + 1), one), 4));
  }
  a[0] = l0, a[1] = l1, b[0] = h0, b[1] = h1;
}
#if !defined(KLE_RELAXED_SIMD)
/* the same, widened to int16 lanes for the 16-bit dots */
static inline void q4k_w(const uint8_t *q, const uint8_t *qh, int g, kq_w *a, kq_w *b) {
  v128_t x[2], y[2];
  q4k_b(q, qh, g, x, y);
  a->v[0] = wasm_u16x8_extend_low_u8x16(x[0]);
  a->v[1] = wasm_u16x8_extend_high_u8x16(x[0]);
  a->v[2] = wasm_u16x8_extend_low_u8x16(x[1]);
  a->v[3] = wasm_u16x8_extend_high_u8x16(x[1]);
  b->v[0] = wasm_u16x8_extend_low_u8x16(y[0]);
  b->v[1] = wasm_u16x8_extend_high_u8x16(y[0]);
  b->v[2] = wasm_u16x8_extend_low_u8x16(y[1]);
  b->v[3] = wasm_u16x8_extend_high_u8x16(y[1]);
}
#else
/*
 * The relaxed SIMD build (kle-simd-relaxed.wasm): i32x4.relaxed_dot_i8x16_i7x16_add_s, 16 byte
 * products a call, summed four to a lane and added to c. Emscripten 3.1.6's clang has no builtin
 * for it, so the build calls this import and engine/build/relaxed.mjs puts the instruction in
 * each call's place (the import stays, unused). Its second operand must be 0..127 (x86 runs it
 * as pmaddubsw, unsigned times signed): K-quant codes are, Q8_0's signed weights are not (their
 * sign moved onto the activations would cost what the dot saves).
 */
__attribute__((import_module("kle"), import_name("rdot"))) v128_t kle_rdot(v128_t a, v128_t b, v128_t c);
/* Q4_K's codes stay bytes, in kq_w's first two vectors */
static inline void q4k_w(const uint8_t *q, const uint8_t *qh, int g, kq_w *a, kq_w *b) { q4k_b(q, qh, g, a->v, b->v); }
/* a + sc * (32 codes w (bytes, 0..127) . 32 activation codes x): the int16 codes narrowed to
 * bytes (exact: they are within +-127), two relaxed dots */
static inline v128_t iacc_add_q4k(v128_t a, const kq_w *w, const int16_t *x, int sc) {
  const v128_t a0 = wasm_i8x16_narrow_i16x8(wasm_v128_load(x), wasm_v128_load(x + 8));
  const v128_t a1 = wasm_i8x16_narrow_i16x8(wasm_v128_load(x + 16), wasm_v128_load(x + 24));
  const v128_t s = kle_rdot(a1, w->v[1], kle_rdot(a0, w->v[0], wasm_i32x4_splat(0)));
  return wasm_i32x4_add(a, wasm_i32x4_mul(s, wasm_i32x4_splat(sc)));
}
#endif
/* a Q5_0 block's 32 values - 16 in int16 lanes (Q5_1's: the values, 0..31): each fifth bit picked
 * out of the 32 with a byte shuffle and a compare against its bit */
static inline void q50_w(const uint8_t *blk, int q51, kq_w *w) {
  uint32_t qh;
  memcpy(&qh, blk + (q51 ? 4 : 2), 4);
  const v128_t m = wasm_i32x4_splat((int32_t)qh), bits = wasm_i8x16_const(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  const v128_t lo = wasm_i8x16_swizzle(m, wasm_i8x16_const(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const v128_t hi = wasm_i8x16_swizzle(m, wasm_i8x16_const(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const v128_t s16 = wasm_i8x16_splat(16), p = wasm_v128_load(blk + (q51 ? 8 : 6)), off = wasm_i8x16_splat(q51 ? 0 : 16);
  const v128_t w0 = wasm_i8x16_sub(wasm_v128_or(wasm_v128_and(p, wasm_i8x16_splat(15)), wasm_v128_and(wasm_i8x16_eq(wasm_v128_and(lo, bits), bits), s16)), off);
  const v128_t w1 = wasm_i8x16_sub(wasm_v128_or(wasm_v128_and(wasm_u16x8_shr(p, 4), wasm_i8x16_splat(15)), wasm_v128_and(wasm_i8x16_eq(wasm_v128_and(hi, bits), bits), s16)), off);
  w->v[0] = wasm_i16x8_extend_low_i8x16(w0);
  w->v[1] = wasm_i16x8_extend_high_i8x16(w0);
  w->v[2] = wasm_i16x8_extend_low_i8x16(w1);
  w->v[3] = wasm_i16x8_extend_high_i8x16(w1);
}
/* half a Q6_K super-block (64 bytes of low nibbles, 32 of bit pairs, 8 scales): its 4 blocks
 * of 32 as sc * (q - 32) in int16 lanes */
static inline void q6k_w(const uint8_t *ql, const uint8_t *qh, const int8_t *sc, kq_w w[4]) {
  const v128_t m4 = wasm_i8x16_splat(15), m2 = wasm_i8x16_splat(3), k32 = wasm_i8x16_splat(32);
  const v128_t L[4] = {wasm_v128_load(ql), wasm_v128_load(ql + 16), wasm_v128_load(ql + 32), wasm_v128_load(ql + 48)};
  const v128_t H[2] = {wasm_v128_load(qh), wasm_v128_load(qh + 16)};
  for (int k = 0; k < 4; k++)
    for (int half = 0; half < 2; half++) {
      const v128_t l = L[2 * (k & 1) + half], lo = wasm_v128_and(k & 2 ? wasm_u16x8_shr(l, 4) : l, m4);
      const v128_t hi = wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(H[half], 2 * k), m2), 4);
      const v128_t q = wasm_i8x16_sub(wasm_v128_or(lo, hi), k32), s = wasm_i16x8_splat(sc[2 * k + half]);
      w[k].v[2 * half] = wasm_i16x8_mul(wasm_i16x8_extend_low_i8x16(q), s);
      w[k].v[2 * half + 1] = wasm_i16x8_mul(wasm_i16x8_extend_high_i8x16(q), s);
    }
}
/* block j of a Q2_K / Q3_K half super-block as int16 weights with the scales folded in: values
 * are bits 2j of the 32 bytes at qs (Q3_K, hm not NULL: plus 4 times bit hb of the 32 high-bit
 * bytes, minus 4), the first 16 times s0, the next 16 times s1 (q23k_half's values times their group scales) */
static inline void q23k_w(const uint8_t *qs, const uint8_t *hm, int j, int hb, int s0, int s1, kq_w *w) {
  const v128_t m3 = wasm_i8x16_splat(3);
  v128_t a = wasm_v128_and(wasm_u16x8_shr(wasm_v128_load(qs), 2 * j), m3), b = wasm_v128_and(wasm_u16x8_shr(wasm_v128_load(qs + 16), 2 * j), m3);
  if (hm) {
    const v128_t one = wasm_i8x16_splat(1), four = wasm_i8x16_splat(4);
    a = wasm_i8x16_sub(wasm_v128_or(a, wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(wasm_v128_load(hm), hb), one), 2)), four);
    b = wasm_i8x16_sub(wasm_v128_or(b, wasm_i16x8_shl(wasm_v128_and(wasm_u16x8_shr(wasm_v128_load(hm + 16), hb), one), 2)), four);
  }
  const v128_t S0 = wasm_i16x8_splat((int16_t)s0), S1 = wasm_i16x8_splat((int16_t)s1);
  w->v[0] = wasm_i16x8_mul(wasm_i16x8_extend_low_i8x16(a), S0);
  w->v[1] = wasm_i16x8_mul(wasm_i16x8_extend_high_i8x16(a), S0);
  w->v[2] = wasm_i16x8_mul(wasm_i16x8_extend_low_i8x16(b), S1);
  w->v[3] = wasm_i16x8_mul(wasm_i16x8_extend_high_i8x16(b), S1);
}
/* 16 lanes of a, then 16 of b */
static inline void kq_pair(int a, int b, kq_w *w) {
  w->v[0] = w->v[1] = wasm_i16x8_splat((int16_t)a);
  w->v[2] = w->v[3] = wasm_i16x8_splat((int16_t)b);
}
static inline kq_acc acc_zero(void) { return wasm_f32x4_splat(0.0f); }
static inline kq_acc acc_add(kq_acc acc, const kq_w *w, const int16_t *x, float scale) {
  v128_t s = wasm_i32x4_dot_i16x8(w->v[0], wasm_v128_load(x));
  for (int i = 1; i < 4; i++) s = wasm_i32x4_add(s, wasm_i32x4_dot_i16x8(w->v[i], wasm_v128_load(x + 8 * i)));
  return wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), wasm_f32x4_splat(scale)));
}
static inline float acc_sum(kq_acc a) {
  return (wasm_f32x4_extract_lane(a, 0) + wasm_f32x4_extract_lane(a, 1)) + (wasm_f32x4_extract_lane(a, 2) + wasm_f32x4_extract_lane(a, 3));
}
typedef v128_t kq_iacc;
static inline kq_iacc iacc_zero(void) { return wasm_i32x4_splat(0); }
static inline kq_iacc iacc_merge(kq_iacc a, kq_iacc b) { return wasm_i32x4_add(a, b); }
static inline kq_iacc iacc_add(kq_iacc a, const kq_w *w, const int16_t *x) {
  for (int i = 0; i < 4; i++) a = wasm_i32x4_add(a, wasm_i32x4_dot_i16x8(w->v[i], wasm_v128_load(x + 8 * i)));
  return a;
}
#if !defined(KLE_RELAXED_SIMD)
/* a Q4_K group's dot times its scale: one i32x4 multiply after the dots (four i16x8 ones before) */
static inline kq_iacc iacc_add_q4k(kq_iacc a, const kq_w *w, const int16_t *x, int sc) {
  return wasm_i32x4_add(a, wasm_i32x4_mul(iacc_add(iacc_zero(), w, x), wasm_i32x4_splat(sc)));
}
#endif
static inline kq_acc acc_add_i(kq_acc acc, kq_iacc s, float scale) {
  return wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), wasm_f32x4_splat(scale)));
}
#elif defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* a whole block per instruction: its 32 weights widened to 32 int16 lanes, one vpdpwssd against
 * the 32 activation codes, 16 int32 sums; then one convert and one fused multiply-add */
typedef __m512i kq_w;
typedef __m512 kq_acc;

/* a Q8_0 / Q4_0 block's 32 signed weights as bytes (Q4_0: the low nibbles, then the high, - 8) */
static inline __m256i block_bytes(int fmt, const uint8_t *blk) {
  if (fmt == KLE_W_Q8_0) return _mm256_loadu_si256((const __m256i *)(blk + 2));
  const __m128i p = _mm_loadu_si128((const __m128i *)(blk + 2)), lo4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
  return _mm256_set_m128i(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(p, 4), lo4), eight), _mm_sub_epi8(_mm_and_si128(p, lo4), eight));
}
static inline const uint8_t *block_w(int fmt, const uint8_t *row, int b, kq_w *w) {
  const uint8_t *blk = row + (size_t)b * (fmt == KLE_W_Q8_0 ? Q8_BYTES : Q4_BYTES);
  *w = _mm512_cvtepi8_epi16(block_bytes(fmt, blk));
  return blk;
}
static inline void q4k_w(const uint8_t *q, const uint8_t *qh, int g, kq_w *a, kq_w *b) {
  const __m256i p = _mm256_loadu_si256((const __m256i *)q), m = _mm256_set1_epi8(15);
  __m256i lo = _mm256_and_si256(p, m), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m);
  if (qh) { /* Q5_K: bits 2g and 2g + 1 of the fifth-bit bytes */
    const __m256i h = _mm256_loadu_si256((const __m256i *)qh), one = _mm256_set1_epi8(1);
    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * g), one), 4));
    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * g + 1), one), 4));
  }
  *a = _mm512_cvtepu8_epi16(lo);
  *b = _mm512_cvtepu8_epi16(hi);
}
static inline void q50_w(const uint8_t *blk, int q51, kq_w *w) {
  __m128i w0, w1;
  q50_bytes(blk, q51, &w0, &w1);
  *w = _mm512_cvtepi8_epi16(_mm256_set_m128i(w1, w0));
}
static inline void q6k_w(const uint8_t *ql, const uint8_t *qh, const int8_t *sc, kq_w w[4]) {
  const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
  const __m256i L0 = _mm256_loadu_si256((const __m256i *)ql), L1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
  const __m256i H = _mm256_loadu_si256((const __m256i *)qh);
  for (int k = 0; k < 4; k++) {
    const __m256i l = k & 1 ? L1 : L0, lo = _mm256_and_si256(k & 2 ? _mm256_srli_epi16(l, 4) : l, m4);
    const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 2 * k), m2), 4);
    const __m512i s = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(sc[2 * k])), _mm256_set1_epi16(sc[2 * k + 1]), 1);
    w[k] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm256_sub_epi8(_mm256_or_si256(lo, hi), k32)), s);
  }
}
static inline void q23k_w(const uint8_t *qs, const uint8_t *hm, int j, int hb, int s0, int s1, kq_w *w) {
  __m256i v = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs), 2 * j), _mm256_set1_epi8(3));
  if (hm) {
    const __m256i h = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)hm), hb), _mm256_set1_epi8(1));
    v = _mm256_sub_epi8(_mm256_or_si256(v, _mm256_slli_epi16(h, 2)), _mm256_set1_epi8(4));
  }
  const __m512i S = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)s0)), _mm256_set1_epi16((short)s1), 1);
  *w = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(v), S);
}
static inline void kq_pair(int a, int b, kq_w *w) {
  *w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)a)), _mm256_set1_epi16((short)b), 1);
}
static inline kq_acc acc_zero(void) { return _mm512_setzero_ps(); }
static inline kq_acc acc_add(kq_acc acc, const kq_w *w, const int16_t *x, float scale) {
  const __m512i s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), *w, _mm512_loadu_si512(x));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(scale), acc);
}
static inline float acc_sum(kq_acc a) { return _mm512_reduce_add_ps(a); }
typedef __m512i kq_iacc;
static inline kq_iacc iacc_zero(void) { return _mm512_setzero_si512(); }
static inline kq_iacc iacc_merge(kq_iacc a, kq_iacc b) { return _mm512_add_epi32(a, b); }
static inline kq_iacc iacc_add(kq_iacc a, const kq_w *w, const int16_t *x) { return _mm512_dpwssd_epi32(a, *w, _mm512_loadu_si512(x)); }
/* the scale folded into the weights (sc q <= 63 * 31 fits int16), then the dot into a */
static inline kq_iacc iacc_add_q4k(kq_iacc a, const kq_w *w, const int16_t *x, int sc) {
  return _mm512_dpwssd_epi32(a, _mm512_mullo_epi16(*w, _mm512_set1_epi16((short)sc)), _mm512_loadu_si512(x));
}
static inline kq_acc acc_add_i(kq_acc acc, kq_iacc s, float scale) { return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(scale), acc); }
#elif defined(__AVX2__)
typedef struct {
  __m256i lo, hi;
} kq_w;
typedef __m256 kq_acc;

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

static inline const uint8_t *block_w(int fmt, const uint8_t *row, int b, kq_w *w) {
  __m128i w0, w1;
  const uint8_t *blk;
  if (fmt == KLE_W_Q8_0) {
    blk = row + (size_t)b * Q8_BYTES;
    w0 = _mm_loadu_si128((const __m128i *)(blk + 2));
    w1 = _mm_loadu_si128((const __m128i *)(blk + 18));
  } else {
    blk = row + (size_t)b * Q4_BYTES;
    const __m128i p = _mm_loadu_si128((const __m128i *)(blk + 2)), lo4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    w0 = _mm_sub_epi8(_mm_and_si128(p, lo4), eight);
    w1 = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(p, 4), lo4), eight);
  }
  w->lo = _mm256_cvtepi8_epi16(w0);
  w->hi = _mm256_cvtepi8_epi16(w1);
  return blk;
}
static inline void q4k_w(const uint8_t *q, const uint8_t *qh, int g, kq_w *a, kq_w *b) {
  const __m128i p0 = _mm_loadu_si128((const __m128i *)q), p1 = _mm_loadu_si128((const __m128i *)(q + 16)), m = _mm_set1_epi8(15);
  __m128i l0 = _mm_and_si128(p0, m), l1 = _mm_and_si128(p1, m), h0 = _mm_and_si128(_mm_srli_epi16(p0, 4), m),
          h1 = _mm_and_si128(_mm_srli_epi16(p1, 4), m);
  if (qh) { /* Q5_K: bits 2g and 2g + 1 of the fifth-bit bytes */
    const __m128i b0 = _mm_loadu_si128((const __m128i *)qh), b1 = _mm_loadu_si128((const __m128i *)(qh + 16)), one = _mm_set1_epi8(1);
    l0 = _mm_or_si128(l0, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(b0, 2 * g), one), 4));
    l1 = _mm_or_si128(l1, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(b1, 2 * g), one), 4));
    h0 = _mm_or_si128(h0, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(b0, 2 * g + 1), one), 4));
    h1 = _mm_or_si128(h1, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(b1, 2 * g + 1), one), 4));
  }
  a->lo = _mm256_cvtepu8_epi16(l0);
  a->hi = _mm256_cvtepu8_epi16(l1);
  b->lo = _mm256_cvtepu8_epi16(h0);
  b->hi = _mm256_cvtepu8_epi16(h1);
}
static inline void q50_w(const uint8_t *blk, int q51, kq_w *w) {
  __m128i w0, w1;
  q50_bytes(blk, q51, &w0, &w1);
  w->lo = _mm256_cvtepi8_epi16(w0);
  w->hi = _mm256_cvtepi8_epi16(w1);
}
static inline void q6k_w(const uint8_t *ql, const uint8_t *qh, const int8_t *sc, kq_w w[4]) {
  const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3), k32 = _mm_set1_epi8(32);
  const __m128i L[4] = {_mm_loadu_si128((const __m128i *)ql), _mm_loadu_si128((const __m128i *)(ql + 16)),
                        _mm_loadu_si128((const __m128i *)(ql + 32)), _mm_loadu_si128((const __m128i *)(ql + 48))};
  const __m128i H[2] = {_mm_loadu_si128((const __m128i *)qh), _mm_loadu_si128((const __m128i *)(qh + 16))};
  for (int k = 0; k < 4; k++)
    for (int half = 0; half < 2; half++) {
      const __m128i l = L[2 * (k & 1) + half], lo = _mm_and_si128(k & 2 ? _mm_srli_epi16(l, 4) : l, m4);
      const __m128i hi = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(H[half], 2 * k), m2), 4);
      const __m256i q = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_or_si128(lo, hi), k32)), _mm256_set1_epi16(sc[2 * k + half]));
      if (half) w[k].hi = q;
      else w[k].lo = q;
    }
}
static inline void q23k_w(const uint8_t *qs, const uint8_t *hm, int j, int hb, int s0, int s1, kq_w *w) {
  const __m128i m3 = _mm_set1_epi8(3);
  __m128i a = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)qs), 2 * j), m3);
  __m128i b = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)(qs + 16)), 2 * j), m3);
  if (hm) {
    const __m128i one = _mm_set1_epi8(1), four = _mm_set1_epi8(4);
    a = _mm_sub_epi8(_mm_or_si128(a, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)hm), hb), one), 2)), four);
    b = _mm_sub_epi8(_mm_or_si128(b, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)(hm + 16)), hb), one), 2)), four);
  }
  w->lo = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(a), _mm256_set1_epi16((short)s0));
  w->hi = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(b), _mm256_set1_epi16((short)s1));
}
static inline void kq_pair(int a, int b, kq_w *w) {
  w->lo = _mm256_set1_epi16((short)a);
  w->hi = _mm256_set1_epi16((short)b);
}
static inline kq_acc acc_zero(void) { return _mm256_setzero_ps(); }
static inline kq_acc acc_add(kq_acc acc, const kq_w *w, const int16_t *x, float scale) {
  __m256i s = madd_acc(_mm256_setzero_si256(), w->lo, _mm256_loadu_si256((const __m256i *)x));
  s = madd_acc(s, w->hi, _mm256_loadu_si256((const __m256i *)(x + 16)));
#if defined(__FMA__)
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale), acc);
#else
  return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale)));
#endif
}
static inline float acc_sum(kq_acc acc) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}
typedef __m256i kq_iacc;
static inline kq_iacc iacc_zero(void) { return _mm256_setzero_si256(); }
static inline kq_iacc iacc_merge(kq_iacc a, kq_iacc b) { return _mm256_add_epi32(a, b); }
static inline kq_iacc iacc_add(kq_iacc a, const kq_w *w, const int16_t *x) {
  return madd_acc(madd_acc(a, w->lo, _mm256_loadu_si256((const __m256i *)x)), w->hi, _mm256_loadu_si256((const __m256i *)(x + 16)));
}
static inline kq_iacc iacc_add_q4k(kq_iacc a, const kq_w *w, const int16_t *x, int sc) {
  const __m256i s = _mm256_set1_epi16((short)sc);
  const kq_w ws = {_mm256_mullo_epi16(w->lo, s), _mm256_mullo_epi16(w->hi, s)};
  return iacc_add(a, &ws, x);
}
static inline kq_acc acc_add_i(kq_acc acc, kq_iacc s, float scale) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale), acc);
#else
  return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale)));
#endif
}
#else
/* no integer SIMD here (the wasm scalar build): the scalar version is the fast one */
#define NO_SIMD_DOT
#endif

#ifdef NO_SIMD_DOT
static float row_dot(int fmt, const uint8_t *row, const float *dx, const float *sx, const int16_t *qx, int nb) {
  return row_dot_ref(fmt, row, dx, sx, qx, nb);
}
#else
/*
 * The K-quants' rows for a few tokens. Their activations share a scale per super-block
 * (x_group), so a super-block's group dots add up in int32 with the group scales as integer
 * factors, and one convert and one float multiply-add a super-block go to the running vector
 * (with a scale per block of 32, each group's dot took its own: 8 a super-block).
 * Largest sums a super-block: Q4_K 256 * 63 * 15 * 127 (Q5_K * 31 / 15), Q6_K 256 * 128 * 32 * 127,
 * Q3_K 256 * 32 * 4 * 127: all within int32.
 */
/* T tokens (1..4) against one Q4_K (five: Q5_K) row: each group pair's nibbles widened once for all of them */
static void row_dot_q4k(const uint8_t *row, int five, int T, const float *const dx[4], const float *const sx[4],
                        const int16_t *const qx[4], int nb, float out[4]) {
  kq_acc acc[4] = {acc_zero(), acc_zero(), acc_zero(), acc_zero()};
  float mins[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  uint8_t sc[8], m[8];
  for (int s = 0; s < nb / 8; s++) {
    const uint8_t *blk = row + (size_t)s * (five ? Q5K_BYTES : Q4K_BYTES);
    q4k_scales(blk, sc, m);
    /* two chains: each group pair's a and b */
    kq_iacc ia[4] = {iacc_zero(), iacc_zero(), iacc_zero(), iacc_zero()}, ib[4] = {iacc_zero(), iacc_zero(), iacc_zero(), iacc_zero()};
    for (int g = 0; g < 4; g++) {
      const int j = 2 * g, k = 8 * s + j;
      kq_w a, b;
      q4k_w(blk + (five ? 48 : 16) + 32 * g, five ? blk + 16 : NULL, g, &a, &b);
      for (int t = 0; t < T; t++) {
        ia[t] = iacc_add_q4k(ia[t], &a, qx[t] + (size_t)k * KLE_QK, sc[j]);
        ib[t] = iacc_add_q4k(ib[t], &b, qx[t] + (size_t)(k + 1) * KLE_QK, sc[j + 1]);
      }
    }
    const float d = qblock_scale(blk), dmin = qblock_scale(blk + 2);
    for (int t = 0; t < T; t++) {
      acc[t] = acc_add_i(acc[t], iacc_merge(ia[t], ib[t]), d * dx[t][8 * s]);
      float mm = 0.0f;
      for (int j = 0; j < 8; j++) mm += (float)m[j] * sx[t][8 * s + j];
      mins[t] += dmin * mm;
    }
  }
  for (int t = 0; t < T; t++) out[t] = acc_sum(acc[t]) - mins[t];
}

/* T tokens (1..4) against one Q6_K row: each half super-block's weights made once for all of them */
static void row_dot_q6k(const uint8_t *row, int T, const float *const dx[4], const int16_t *const qx[4], int nb, float out[4]) {
  kq_acc acc[4] = {acc_zero(), acc_zero(), acc_zero(), acc_zero()};
  for (int s = 0; s < nb / 8; s++) {
    const uint8_t *blk = row + (size_t)s * Q6K_BYTES;
    /* the blocks alternate between two chains */
    kq_iacc ia[2][4] = {{iacc_zero(), iacc_zero(), iacc_zero(), iacc_zero()}, {iacc_zero(), iacc_zero(), iacc_zero(), iacc_zero()}};
    for (int h = 0; h < 2; h++) {
      kq_w w[4];
      q6k_w(blk + 64 * h, blk + 128 + 32 * h, (const int8_t *)(blk + 192 + 8 * h), w);
      for (int k = 0; k < 4; k++) {
        const int b = 8 * s + 4 * h + k;
        for (int t = 0; t < T; t++) ia[k & 1][t] = iacc_add(ia[k & 1][t], &w[k], qx[t] + (size_t)b * KLE_QK);
      }
    }
    const float d = qblock_scale(blk + 208);
    for (int t = 0; t < T; t++) acc[t] = acc_add_i(acc[t], iacc_merge(ia[0][t], ia[1][t]), d * dx[t][8 * s]);
  }
  for (int t = 0; t < T; t++) out[t] = acc_sum(acc[t]);
}

/* T tokens (1..4) against one Q2_K or Q3_K row: each block's weights (q23k_w: q23k_half's
 * values times their group scales) made once for all of them; Q2_K's mins as a second dot, of each half-block's min
 * against its codes */
static void row_dot_q23k(const uint8_t *row, int q3, int T, const float *const dx[4], const int16_t *const qx[4], int nb,
                         float out[4]) {
  kq_acc acc[4] = {acc_zero(), acc_zero(), acc_zero(), acc_zero()}, accm[4] = {acc_zero(), acc_zero(), acc_zero(), acc_zero()};
  for (int s = 0; s < nb / 8; s++) {
    const uint8_t *blk = row + (size_t)s * (q3 ? Q3K_BYTES : Q2K_BYTES), *sc = blk + (q3 ? 96 : 0);
    kq_iacc ia[4] = {iacc_zero(), iacc_zero(), iacc_zero(), iacc_zero()}, im[4] = {iacc_zero(), iacc_zero(), iacc_zero(), iacc_zero()};
    for (int n = 0; n < 2; n++)
      for (int j = 0; j < 4; j++) {
        const int b = 8 * s + 4 * n + j, g = 8 * n + 2 * j;
        kq_w w, mv;
        if (q3) q23k_w(blk + 32 + 32 * n, blk, j, 4 * n + j, q3k_scale(sc, g) - 32, q3k_scale(sc, g + 1) - 32, &w);
        else q23k_w(blk + 16 + 32 * n, NULL, j, 0, sc[g] & 15, sc[g + 1] & 15, &w);
        for (int t = 0; t < T; t++) ia[t] = iacc_add(ia[t], &w, qx[t] + (size_t)b * KLE_QK);
        if (q3) continue;
        kq_pair(sc[g] >> 4, sc[g + 1] >> 4, &mv);
        for (int t = 0; t < T; t++) im[t] = iacc_add(im[t], &mv, qx[t] + (size_t)b * KLE_QK);
      }
    const float d = qblock_scale(blk + (q3 ? 108 : 80)), dmin = q3 ? 0.0f : qblock_scale(blk + 82);
    for (int t = 0; t < T; t++) {
      acc[t] = acc_add_i(acc[t], ia[t], d * dx[t][8 * s]);
      if (!q3) accm[t] = acc_add_i(accm[t], im[t], dmin * dx[t][8 * s]);
    }
  }
  for (int t = 0; t < T; t++) out[t] = acc_sum(acc[t]) - (q3 ? 0.0f : acc_sum(accm[t]));
}

/* T tokens (1..4) against one Q5_0 row (q51: Q5_1, whose value d * q + m adds m times the block's
 * kept activation sum) */
static void row_dot_q50(const uint8_t *row, int q51, int T, const float *const dx[4], const float *const sx[4], const int16_t *const qx[4],
                        int nb, float out[4]) {
  kq_acc acc[4] = {acc_zero(), acc_zero(), acc_zero(), acc_zero()};
  float mins[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int b = 0; b < nb; b++) {
    const uint8_t *blk = row + (size_t)b * (q51 ? Q51_BYTES : Q50_BYTES);
    kq_w w;
    q50_w(blk, q51, &w);
    const float d = qblock_scale(blk);
    for (int t = 0; t < T; t++) acc[t] = acc_add(acc[t], &w, qx[t] + (size_t)b * KLE_QK, d * dx[t][b]);
    if (q51) {
      const float m = qblock_scale(blk + 2);
      for (int t = 0; t < T; t++) mins[t] += m * sx[t][b];
    }
  }
  for (int t = 0; t < T; t++) out[t] = acc_sum(acc[t]) + mins[t];
}

#if defined(__wasm_simd128__)
/* Q8_0 / Q4_0 in wasm, four blocks a step: their four f16 scales converted in one vector
 * (numfmt.h's v_f16_bits_to_f32, bit for bit the scalar conversion) and multiplied by the
 * activations' four, then each block's lane splat to its dot. A block at a time, the scalar
 * conversion (no F16C in wasm), the multiply and the splat were as many instructions as the
 * block's integer dot: a 2304 -> 4096 Q8_0 matvec 2.92 -> 1.94 ms, Q4_0 2.81 -> 1.40 ms
 * (bench:wasm-builds, Node 20), every output bit the same. */
/* the scales of blocks b .. b + 3 of a Q8_0 / Q4_0 row */
static inline v128_t block_scales4(int fmt, const uint8_t *row, int b) {
  const size_t bb = fmt == KLE_W_Q8_0 ? Q8_BYTES : Q4_BYTES;
  const uint8_t *p = row + (size_t)b * bb;
  uint16_t h[4];
  for (int j = 0; j < 4; j++) memcpy(&h[j], p + j * bb, 2);
  return (v128_t)v_f16_bits_to_f32((v4u){h[0], h[1], h[2], h[3]});
}
static inline v128_t lane_splat(v128_t d, int j) {
  switch (j) {
  case 0: return wasm_i32x4_shuffle(d, d, 0, 0, 0, 0);
  case 1: return wasm_i32x4_shuffle(d, d, 1, 1, 1, 1);
  case 2: return wasm_i32x4_shuffle(d, d, 2, 2, 2, 2);
  default: return wasm_i32x4_shuffle(d, d, 3, 3, 3, 3);
  }
}
/* block b of one token, its scale lane j of d, splat (acc_add's sums and products, in its order) */
static inline kq_acc acc_add_lane(kq_acc acc, int fmt, const uint8_t *row, int b, const int16_t *qx, v128_t d, int j) {
  kq_w w;
  block_w(fmt, row, b, &w);
  return wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(iacc_add(iacc_zero(), &w, qx + b * KLE_QK)), lane_splat(d, j)));
}
#endif

/* Q8_0 and Q4_0 (the K-quants take row_dot_q4k / row_dot_q6k, chosen once per matmul: a branch
 * here cost wasm's Q8_0 prefill 15%) */
static float row_dot(int fmt, const uint8_t *row, const float *dx, const float *sx, const int16_t *qx, int nb) {
  (void)sx;
  kq_acc acc = acc_zero();
  int b = 0;
#if defined(__wasm_simd128__)
  for (; b + 4 <= nb; b += 4) {
    const v128_t d = wasm_f32x4_mul(block_scales4(fmt, row, b), wasm_v128_load(dx + b));
    acc = acc_add_lane(acc, fmt, row, b, qx, d, 0);
    acc = acc_add_lane(acc, fmt, row, b + 1, qx, d, 1);
    acc = acc_add_lane(acc, fmt, row, b + 2, qx, d, 2);
    acc = acc_add_lane(acc, fmt, row, b + 3, qx, d, 3);
  }
#endif
  for (; b < nb; b++) {
    kq_w w;
    const uint8_t *blk = block_w(fmt, row, b, &w);
    acc = acc_add(acc, &w, qx + b * KLE_QK, qblock_scale(blk) * dx[b]);
  }
  return acc_sum(acc);
}

/* four tokens against one row: each block's weights unpacked and widened once for all four */
static void row_dot4(int fmt, const uint8_t *row, const float *const dx[4], const int16_t *const qx[4], int nb, float out[4]) {
  kq_acc acc[4] = {acc_zero(), acc_zero(), acc_zero(), acc_zero()};
  /* (row_dot's four-block step here, each token's scales a vector: a 2304 -> 1024 Q8_0 matmul over
   * 64 tokens 8.09 -> 10.18 ms in wasm; its scale is shared by the four tokens already) */
  for (int b = 0; b < nb; b++) {
    kq_w w;
    const float dw = qblock_scale(block_w(fmt, row, b, &w));
    for (int t = 0; t < 4; t++) acc[t] = acc_add(acc[t], &w, qx[t] + b * KLE_QK, dw * dx[t][b]);
  }
  for (int t = 0; t < 4; t++) out[t] = acc_sum(acc[t]);
}
#endif

#if Q8_BYTE_CODES
/* the byte codes of token t (code + 128) and its block pairs' scales, 16 lanes a pair (the
 * first block's in lanes 0-7, the second's in 8-15), after the int16 codes of all T tokens */
static const uint8_t *byte_codes(const int16_t *qx, int T, int n_in) { return (const uint8_t *)(qx + (size_t)T * n_in); }
static const float *pair_scales(const int16_t *qx, int T, int n_in) { return (const float *)(byte_codes(qx, T, n_in) + (size_t)T * n_in); }
/* then each 16 codes' sum (int32, n_in / 16 a token): the min terms of Q2_K's and Q3_K's groups of
 * 16, one product a group and super-block instead of a code sum a lane and block pair */
static const int32_t *code_sums(const int16_t *qx, int T, int n_in) { return (const int32_t *)(pair_scales(qx, T, n_in) + (size_t)T * n_in / 4); }
/* then, for the formats whose weights vpdpbusd takes unsigned (Q8_0 as bytes + 128, Q4_0's
 * nibbles, Q5_0's 5-bit values), minus the weights' offset (128, 8, 16) times the sum of each 4
 * codes (int32, n_in / 4 a token): the start of a block pair's accumulator, so that the offset
 * comes off once a token and not off every row */
static const int32_t *lane_corr(const int16_t *qx, int T, int n_in) { return code_sums(qx, T, n_in) + (size_t)T * n_in / 16; }
static int w_offset(int fmt) { return fmt == KLE_W_Q8_0 ? 128 : fmt == KLE_W_Q4_0 ? 8 : fmt == KLE_W_Q5_0 ? 16 : 0; }
/* whether a matmul takes row_dot_dec: decode (prefill tiles take -128 sum(w) a row, over 4
 * tokens) over whole block pairs; quantization makes lane_corr exactly then */
static int dec_unsigned(int fmt, int T, int n_in) { return w_offset(fmt) && T < 4 && n_in % 64 == 0; }

/* a byte dot's inputs from token t0 on: its codes (n_in bytes a token) and its block pairs'
 * scales (16 floats a pair), and R x T accumulators set to zero */
typedef struct {
  const uint8_t *xu;
  const float *dv;
} tile_in;
static inline tile_in tile_inputs(const int16_t *qx, int T_all, int n_in, int t0, int np) {
  const tile_in in = {byte_codes(qx, T_all, n_in) + (size_t)t0 * n_in, pair_scales(qx, T_all, n_in) + (size_t)t0 * np * 16};
  return in;
}
static inline void acc_clear(__m512 acc[2][4]) {
  for (int i = 0; i < 2; i++)
    for (int t = 0; t < 4; t++) acc[i][t] = _mm512_setzero_ps();
}

static void make_byte_codes(int fmt, const float *dx, int T, int t0, int t1, int n_in, int16_t *qx) {
  const int nb = n_in / KLE_QK, np = nb / 2;
  uint8_t *xu = (uint8_t *)byte_codes(qx, T, n_in);
  float *dv = (float *)pair_scales(qx, T, n_in);
  /* decode over unsigned weights (row_dot_dec) takes the codes signed as they are */
  const __m256i k80s = _mm256_set1_epi8(dec_unsigned(fmt, T, n_in) ? 0 : (char)0x80);
  for (int t = t0; t < t1; t++) {
    const int16_t *q = qx + (size_t)t * n_in;
    for (int i = 0; i < n_in; i += KLE_QK) /* int16 -> int8 (|code| <= 127), then + 128 as a byte */
      _mm256_storeu_si256((__m256i *)(xu + (size_t)t * n_in + i), _mm256_xor_si256(_mm512_cvtepi16_epi8(_mm512_loadu_si512(q + i)), k80s));
    /* Q4_0 in decode: each block pair's 16-byte quarters in the order its nibbles unpack to
     * (a's 0-15, b's 0-15, a's 16-31, b's 16-31) and its scales to match, so that row_dot_dec
     * takes a pair's nibbles without a permute (q4_dec_order) */
    const int q4 = fmt == KLE_W_Q4_0 && dec_unsigned(fmt, T, n_in);
    for (int p = 0; p < np; p++) {
      const float *d = dx + (size_t)t * nb + 2 * p;
      __m512 v = _mm512_insertf32x8(_mm512_set1_ps(d[0]), _mm256_set1_ps(d[1]), 1);
      if (q4) {
        __m512i *c = (__m512i *)(xu + (size_t)t * n_in + 64 * p);
        _mm512_storeu_si512(c, _mm512_shuffle_i64x2(_mm512_loadu_si512(c), _mm512_loadu_si512(c), _MM_SHUFFLE(3, 1, 2, 0)));
        v = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(3, 1, 2, 0));
      }
      _mm512_storeu_ps(dv + ((size_t)t * np + p) * 16, v);
    }
    int32_t *bs = (int32_t *)code_sums(qx, T, n_in) + (size_t)t * (n_in / 16);
    for (int g = 0; g < n_in / 16; g++) {
      int32_t sum = 0;
      for (int i = 0; i < 16; i++) sum += q[16 * g + i];
      bs[g] = sum;
    }
    if (dec_unsigned(fmt, T, n_in)) {
      const __m512i ko = _mm512_set1_epi8((char)w_offset(fmt));
      int32_t *corr = (int32_t *)lane_corr(qx, T, n_in) + (size_t)t * n_in / 4;
      for (int i = 0; i < n_in; i += 64) {
        const __m512i xs = _mm512_loadu_si512(xu + (size_t)t * n_in + i);
        _mm512_storeu_si512(corr + i / 4, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), ko, xs)));
      }
    }
  }
}

/* a Q5_0 block's 32 signed weights as bytes (block_bytes' Q5_0) */
static inline __m256i q50_block_bytes(const uint8_t *blk) {
  __m128i w0, w1;
  q50_bytes(blk, 0, &w0, &w1);
  return _mm256_set_m128i(w1, w0);
}

/* two Q4_0 blocks' nibbles as they unpack, a's low, b's low, a's high, b's high (0..15 each): the
 * decode activations' order (make_byte_codes), which pair_w_unsigned permutes into element order */
static inline __m512i q4_dec_order(const uint8_t *a, const uint8_t *b) {
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + 2))), _mm_loadu_si128((const __m128i *)(b + 2)), 1);
  const __m256i m4 = _mm256_set1_epi8(15);
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4)), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), 1);
}

/* two Q8_0 / Q4_0 / Q5_0 blocks' 64 weights plus their offset (128, 8, 16): vpdpbusd's unsigned
 * operand, block a's in element order, then b's */
static inline __m512i pair_w_unsigned(int fmt, const uint8_t *a, const uint8_t *b) {
  if (fmt == KLE_W_Q5_0) {
    __m128i a0, a1, b0, b1;
    q50_bytes_off(a, 0, 1, &a0, &a1);
    q50_bytes_off(b, 0, 1, &b0, &b1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(a1, a0)), _mm256_set_m128i(b1, b0), 1);
  }
  if (fmt == KLE_W_Q4_0) /* both blocks' nibbles at once, then in block order */
    return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7), q4_dec_order(a, b));
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 2))), _mm256_loadu_si256((const __m256i *)(b + 2)), 1);
  return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
}
/* two blocks' f16 scales, a's in lanes 0-7 and b's in 8-15 (q4: a's in 0-3 and 8-11, b's in 4-7
 * and 12-15, q4_dec_order's): one conversion for both */
static inline __m512 pair_scales_w(const uint8_t *a, const uint8_t *b, int q4) {
  uint16_t ha, hb;
  memcpy(&ha, a, 2);
  memcpy(&hb, b, 2);
  const __m512i halves = q4 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1)
                            : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  return _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_insert_epi16(_mm_cvtsi32_si128(ha), hb, 1))));
}

/* two blocks' 64 signed weights */
static inline __m512i pair_w(int fmt, const uint8_t *a, const uint8_t *b) {
  if (fmt == KLE_W_Q5_0) return _mm512_inserti64x4(_mm512_castsi256_si512(q50_block_bytes(a)), q50_block_bytes(b), 1);
  if (fmt == KLE_W_Q4_0) return _mm512_sub_epi8(pair_w_unsigned(fmt, a, b), _mm512_set1_epi8(8));
  return _mm512_inserti64x4(_mm512_castsi256_si512(block_bytes(fmt, a)), block_bytes(fmt, b), 1);
}

/* T tokens (1..4) from token t0 on against R (1, 2) Q8_0 / Q4_0 / Q5_0 rows, two blocks a step:
 * the activations' byte codes the unsigned operand, each load used by both rows (an odd last
 * block by the int16 dot; Q5_0 rows of an odd count of blocks go to row_dot_q50 instead) */
static inline __attribute__((always_inline)) void row_dot_bytes(int fmt, const uint8_t *const rows[2], int R, int T, int t0, int T_all, const float *dx, const int16_t *qx,
                                 int nb, int n_in, float out[2][4]) {
  const int np = nb / 2;
  const long bytes = kle_row_bytes(fmt, KLE_QK); /* a block's */
  const tile_in in = tile_inputs(qx, T_all, n_in, t0, np);
  const uint8_t *xu = in.xu;
  const float *dv = in.dv;
  const __m512i k80 = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
  __m512 acc[2][4];
  acc_clear(acc);
  for (int p = 0; p < np; p++) {
    __m512i w[2], start[2];
    __m512 dw[2];
    for (int i = 0; i < R; i++) {
      const uint8_t *a = rows[i] + (size_t)(2 * p) * bytes, *b = a + bytes;
      w[i] = pair_w(fmt, a, b);
      start[i] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, k80, w[i])); /* -128 sum(w), per 4 */
      dw[i] = _mm512_insertf32x8(_mm512_set1_ps(qblock_scale(a)), _mm256_set1_ps(qblock_scale(b)), 1);
    }
    for (int t = 0; t < T; t++) {
      const __m512i x = _mm512_loadu_si512(xu + (size_t)t * n_in + 64 * p);
      const __m512 d = _mm512_loadu_ps(dv + ((size_t)t * np + p) * 16);
      for (int i = 0; i < R; i++)
        acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start[i], x, w[i])), _mm512_mul_ps(dw[i], d), acc[i][t]);
    }
  }
  for (int i = 0; i < R; i++) {
    if (nb & 1) {
      kq_w w;
      const float d = qblock_scale(block_w(fmt, rows[i], nb - 1, &w));
      for (int t = 0; t < T; t++)
        acc[i][t] = acc_add(acc[i][t], &w, qx + (size_t)(t0 + t) * n_in + (size_t)(nb - 1) * KLE_QK, d * dx[(size_t)(t0 + t) * nb + nb - 1]);
    }
    for (int t = 0; t < T; t++) out[i][t] = acc_sum(acc[i][t]);
  }
}

/* T tokens (1..4) from token t0 on against R (1, 2) Q4_K (five: Q5_K) rows, a group pair a
 * vpdpbusd: the weights' 4 (5) bits are the unsigned operand as they lie, once the pair's nibbles
 * share a register (low nibbles in the low half, high ones in the high half); the activations'
 * codes (the byte codes less 128) the signed one, the two blocks' 64 bytes in one load that both
 * rows use. Each lane's group scale is an int32 factor and a super-block adds up in int32 (its
 * activations share one scale, x_group): one convert and multiply-add a super-block, where a
 * float factor a block pair made the byte dot slower than the 16-bit one in decode (3.29-3.32
 * against 2.84 ms a 105M Q4_K_M token). The mins' term goes 8 blocks at a time, in float. */
static inline __attribute__((always_inline)) void row_dot_q4k_bytes(const uint8_t *const rows[2], int R, int five, int T, int t0, int T_all,
                                                                     const float *dx, const float *sx, const int16_t *qx, int nb, int n_in,
                                                                     float out[2][4]) {
  const tile_in in = tile_inputs(qx, T_all, n_in, t0, nb / 2);
  const uint8_t *xu = in.xu;
  const float *sxt = sx + (size_t)t0 * nb, *dxt = dx + (size_t)t0 * nb;
  const __m512i k80 = _mm512_set1_epi8((char)0x80), m4 = _mm512_set1_epi8(15), one = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  /* per 16-bit lane: 0 in the low half, 1 in the high half (the nibble shift is 4 times it) */
  const __m512i upper = _mm512_inserti64x4(zero, _mm256_set1_epi16(1), 1), nib = _mm512_slli_epi16(upper, 2);
  const __m512i half = _mm512_inserti64x4(zero, _mm256_set1_epi32(1), 1); /* per 32-bit lane: 0 low, 1 high */
  __m512 acc[2][4];
  __m256 mins[2][4];
  acc_clear(acc);
  for (int i = 0; i < 2; i++)
    for (int t = 0; t < 4; t++) mins[i][t] = _mm256_setzero_ps();
  for (int s = 0; s < nb / 8; s++) {
    const uint8_t *qs[2];
    __m512i hb[2], SC[2], IA[2][4];
    float d[2];
    for (int i = 0; i < R; i++) {
      const uint8_t *blk = rows[i] + (size_t)s * (five ? Q5K_BYTES : Q4K_BYTES);
      uint64_t sc, m; /* in registers: a 16-byte load of bytes just stored would wait on the stores */
      q4k_scales64(blk, &sc, &m);
      SC[i] = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)); /* lanes 0-7: the groups' scales */
      d[i] = qblock_scale(blk);
      const __m256 dm = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)m))), _mm256_set1_ps(qblock_scale(blk + 2)));
      qs[i] = blk + (five ? 48 : 16);
      hb[i] = five ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16))) : zero;
      for (int t = 0; t < T; t++) {
        mins[i][t] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(sxt + (size_t)t * nb + 8 * s), mins[i][t]);
        IA[i][t] = zero;
      }
    }
    for (int g = 0; g < 4; g++) {
      const int k = 8 * s + 2 * g;
      const __m512i gi = _mm512_add_epi32(half, _mm512_set1_epi32(2 * g)); /* lanes 0-7: group 2g, 8-15: 2g + 1 */
      __m512i w[2], A[2];
      for (int i = 0; i < R; i++) {
        w[i] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs[i] + 32 * g))), nib), m4);
        if (five) /* fifth bits: bit 2g of each byte for the low nibbles, 2g + 1 for the high */
          w[i] = _mm512_or_si512(w[i], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(hb[i], _mm512_add_epi16(upper, _mm512_set1_epi16((short)(2 * g)))), one), 4));
        A[i] = _mm512_permutexvar_epi32(gi, SC[i]);
      }
      for (int t = 0; t < T; t++) {
        const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(xu + (size_t)t * n_in + (size_t)k * KLE_QK), k80);
        for (int i = 0; i < R; i++) IA[i][t] = _mm512_add_epi32(IA[i][t], _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, w[i], x), A[i]));
      }
    }
    for (int i = 0; i < R; i++)
      for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(IA[i][t]), _mm512_set1_ps(d[i] * dxt[(size_t)t * nb + 8 * s]), acc[i][t]);
  }
  for (int i = 0; i < R; i++)
    for (int t = 0; t < T; t++) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(mins[i][t]), _mm256_extractf128_ps(mins[i][t], 1));
      const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
      out[i][t] = _mm512_reduce_add_ps(acc[i][t]) - _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
    }
}

/* T tokens (1..4) from token t0 on against R (1, 2) Q2_K (q3: Q3_K) rows, a block pair a
 * vpdpbusd as in row_dot_q4k_bytes: the 2-bit values (Q3_K: with their third bit, 0..7) the
 * unsigned operand, the codes the signed one. A lane of the dot holds 4 values of one group of
 * 16, so each lane takes its group's scale sc (Q3_K: sc - 32) as an int32 factor, and a super-
 * block's products add up in int32 (the activations share its scale, x_group): one convert and
 * multiply-add a super-block. The offsets (Q2_K's dmin * m, Q3_K's values stored + 4) are each
 * group's factor times its 16 codes' sum (code_sums): 16 products a super-block, not a code sum a
 * lane and block pair. */
static inline __attribute__((always_inline)) void row_dot_q23k_bytes(const uint8_t *const rows[2], int R, int q3, int T, int t0, int T_all,
                                                                      const float *dx, const int16_t *qx, int nb, int n_in, float out[2][4]) {
  const tile_in in = tile_inputs(qx, T_all, n_in, t0, nb / 2);
  const uint8_t *xu = in.xu;
  const int32_t *bs = code_sums(qx, T_all, n_in) + (size_t)t0 * (n_in / 16);
  const float *dxt = dx + (size_t)t0 * nb;
  const __m512i k80 = _mm512_set1_epi8((char)0x80), m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  const __m512i upper = _mm512_inserti64x4(zero, _mm256_set1_epi16(1), 1); /* per 16-bit lane: 1 in the high half */
  const __m512i rep4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[2][4];
  acc_clear(acc);
  for (int s = 0; s < nb / 8; s++) {
    /* each row's 16 group scales in one vector, SA (Q2_K: sc, Q3_K: sc - 32), and the offsets'
     * factors SB (Q2_K: m, Q3_K: 4 (sc - 32)) */
    __m512i SA[2], SB[2], IA[2][4], IB[2][4];
    float fa[2], fb[2];
    const uint8_t *blks[2];
    for (int i = 0; i < R; i++) {
      const uint8_t *blk = blks[i] = rows[i] + (size_t)s * (q3 ? Q3K_BYTES : Q2K_BYTES);
      fa[i] = qblock_scale(blk + (q3 ? 108 : 80));
      if (q3) { /* 6-bit scales: low 4 bits in the nibbles of bytes 0-7, top 2 in bytes 8-11 (q3k_scale) */
        /* the 12 bytes in registers (a 16-byte load of a copy would wait on its stores; one of the
         * block would pass its end) */
        uint64_t lo8;
        uint32_t hi4;
        memcpy(&lo8, blk + 96, 8);
        memcpy(&hi4, blk + 104, 4);
        const __m128i r = _mm_insert_epi32(_mm_cvtsi64_si128((long long)lo8), (int)hi4, 2);
        const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_shuffle_epi8(r, _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7))),
                                                              _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4)), _mm512_set1_epi32(15));
        const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_shuffle_epi8(r, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11))),
                                                              _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6)), _mm512_set1_epi32(3));
        SA[i] = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
        SB[i] = _mm512_slli_epi32(SA[i], 2);
        fb[i] = fa[i];
      } else {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk));
        SA[i] = _mm512_and_si512(v, _mm512_set1_epi32(15));
        SB[i] = _mm512_srli_epi32(v, 4);
        fb[i] = qblock_scale(blk + 82);
      }
      for (int t = 0; t < T; t++) {
        IA[i][t] = zero;
        IB[i][t] = _mm512_mullo_epi32(SB[i], _mm512_loadu_si512(bs + (size_t)t * (n_in / 16) + 16 * s));
      }
    }
    for (int n = 0; n < 2; n++)
      for (int j = 0; j < 4; j += 2) {
        const int b = 8 * s + 4 * n + j;
        const __m512i gi = _mm512_add_epi32(rep4, _mm512_set1_epi32(8 * n + 2 * j)); /* lane l: group 8n + 2j + l / 4 */
        __m512i w[2], A[2];
        for (int i = 0; i < R; i++) {
          const uint8_t *blk = blks[i];
          /* block j's values: bits 2j of the 32 bytes; block j + 1's: bits 2j + 2 */
          const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + (q3 ? 32 : 16) + 32 * n)));
          w[i] = _mm512_and_si512(_mm512_srlv_epi16(q, _mm512_add_epi16(_mm512_set1_epi16((short)(2 * j)), _mm512_slli_epi16(upper, 1))), m3);
          if (q3) { /* third bits: bit 4n + j of the high-bit bytes, 4n + j + 1 for block j + 1 */
            const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)blk));
            w[i] = _mm512_or_si512(w[i], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(h, _mm512_add_epi16(_mm512_set1_epi16((short)(4 * n + j)), upper)), one), 2));
          }
          A[i] = _mm512_permutexvar_epi32(gi, SA[i]);
        }
        for (int t = 0; t < T; t++) {
          const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(xu + (size_t)t * n_in + (size_t)b * KLE_QK), k80);
          for (int i = 0; i < R; i++) IA[i][t] = _mm512_add_epi32(IA[i][t], _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, w[i], x), A[i]));
        }
      }
    for (int i = 0; i < R; i++)
      for (int t = 0; t < T; t++) {
        const float d = dxt[(size_t)t * nb + 8 * s];
        if (q3) { /* both terms take d: one convert */
          acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(IA[i][t], IB[i][t])), _mm512_set1_ps(fa[i] * d), acc[i][t]);
        } else {
          acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(IA[i][t]), _mm512_set1_ps(fa[i] * d), acc[i][t]);
          acc[i][t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(IB[i][t]), _mm512_set1_ps(fb[i] * d), acc[i][t]);
        }
      }
  }
  for (int i = 0; i < R; i++)
    for (int t = 0; t < T; t++) out[i][t] = _mm512_reduce_add_ps(acc[i][t]);
}

/* T tokens (1..4) from token t0 on against R (1, 2) Q6_K rows, as llama.cpp's Q6_K dot does it
 * with Q8_K: the 6-bit values (0..63) unsigned as they lie against the signed codes, vpmaddubsw
 * (a pair's sum is at most 2 x 63 x 127, no saturation) then vpdpwssd with each i16 lane's group
 * scale, so a super-block adds up in int32 with one convert and multiply-add; the 32 each value is
 * offset by comes off once a super-block and token, as 32 sum_g sc_g (the sum of group g's 16
 * codes, code_sums). The same integers as the scalar reference's. Was a vpdpbusd a block pair
 * with -128 sum(w) a row, and a float multiply-add a block pair and token: 105M Q6_K tg 2.74 ms. */
static inline __attribute__((always_inline)) void row_dot_q6k_bytes(const uint8_t *const rows[2], int R, int T, int t0, int T_all,
                                                                     const float *dx, const int16_t *qx, int nb, int n_in, float out[2][4]) {
  const uint8_t *xu = byte_codes(qx, T_all, n_in) + (size_t)t0 * n_in;
  const int32_t *cs = code_sums(qx, T_all, n_in) + (size_t)t0 * (n_in / 16);
  const float *dxt = dx + (size_t)t0 * nb;
  const __m512i k80 = _mm512_set1_epi8((char)0x80), m4 = _mm512_set1_epi8(15), m3 = _mm512_set1_epi8(3), zero = _mm512_setzero_si512();
  const __m512i upper = _mm512_inserti64x4(zero, _mm256_set1_epi16(2), 1); /* per 16-bit lane: 2 in the high half */
  /* i16 lane j of a block pair's vpmaddubsw holds values 2j and 2j + 1: group j / 8 of the pair */
  const __m512i rep8 = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 acc[2][4];
  acc_clear(acc);
  for (int s = 0; s < nb / 8; s++) {
    __m512i sc16[2], ia[2][4];
    const uint8_t *blks[2];
    for (int i = 0; i < R; i++) {
      const uint8_t *blk = blks[i] = rows[i] + (size_t)s * Q6K_BYTES;
      const __m128i sc8 = _mm_loadu_si128((const __m128i *)(blk + 192));
      sc16[i] = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc8));
      const __m512i sc32 = _mm512_cvtepi8_epi32(sc8);
      for (int t = 0; t < T; t++) /* -32 sum_g sc_g sum(codes of g) */
        ia[i][t] = _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_mullo_epi32(sc32, _mm512_loadu_si512(cs + (size_t)t * (n_in / 16) + 16 * s)), 5));
    }
    for (int h = 0; h < 2; h++)
      for (int k = 0; k < 4; k += 2) {
        const int b = 8 * s + 4 * h + k;
        const __m512i gi = _mm512_add_epi16(rep8, _mm512_set1_epi16((short)(8 * h + 2 * k)));
        __m512i w[2], sw[2];
        for (int i = 0; i < R; i++) {
          /* blocks k and k + 1: low 4 bits from the half's 64 low-bit bytes (the high nibbles for
           * k = 2), top 2 from its 32 high-bit bytes at bits 2k and 2k + 2 */
          const uint8_t *blk = blks[i];
          const __m512i lo = _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(blk + 64 * h), (unsigned)(2 * k)), m4);
          const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h)));
          const __m512i hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(hb, _mm512_add_epi16(_mm512_set1_epi16((short)(2 * k)), upper)), m3), 4);
          w[i] = _mm512_or_si512(lo, hi);
          sw[i] = _mm512_permutexvar_epi16(gi, sc16[i]);
        }
        for (int t = 0; t < T; t++) {
          const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(xu + (size_t)t * n_in + (size_t)b * KLE_QK), k80);
          for (int i = 0; i < R; i++) ia[i][t] = _mm512_dpwssd_epi32(ia[i][t], _mm512_maddubs_epi16(w[i], x), sw[i]);
        }
      }
    for (int i = 0; i < R; i++) {
      const float d = qblock_scale(blks[i] + 208);
      for (int t = 0; t < T; t++)
        acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[i][t]), _mm512_set1_ps(d * dxt[(size_t)t * nb + 8 * s]), acc[i][t]);
    }
  }
  for (int i = 0; i < R; i++)
    for (int t = 0; t < T; t++) out[i][t] = _mm512_reduce_add_ps(acc[i][t]);
}

/* Q8_0, Q4_0 and Q5_0 in decode (1 to 3 tokens): the weights are vpdpbusd's unsigned operand
 * (Q4_0's nibbles and Q5_0's 5-bit values as they lie, Q8_0's bytes + 128) and the activations'
 * codes the signed one, so the weights' offset (8, 16, 128) comes off the activations (corr,
 * lane_corr: made once a token when they are quantized, each lane's int32 start) instead of off
 * every row (row_dot_bytes' -128 sum(w), one more vpdpbusd a block pair and row). The int32
 * lanes are the same integers as row_dot_bytes' (Q4_0's in q4_dec_order: the same products
 * gathered into other lanes, so its float sums may differ in rounding). */
static inline __attribute__((always_inline)) void row_dot_dec(int fmt, const uint8_t *row, int T, const int16_t *qx, const int32_t *corr, int nb,
                                                                int n_in, float out[4]) {
  const int np = nb / 2;
  /* a block's size as a constant for each inlined format (kle_row_bytes, a call, per row measured
   * 1.96-2.10 -> 2.24-2.28 ms a 105M Q4_0 token) */
  const long bytes = fmt == KLE_W_Q4_0 ? Q4_BYTES : fmt == KLE_W_Q5_0 ? Q50_BYTES : Q8_BYTES;
  const tile_in in = tile_inputs(qx, T, n_in, 0, np);
  /* two accumulators a token, even and odd pairs: one would chain every pair's multiply-add on
   * the last one's (its latency, not the loads, set the pace) */
  __m512 acc[3][2];
  for (int t = 0; t < 3; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
#define KLE_DEC_PAIR(P, J)                                                                                                            \
  do {                                                                                                                                \
    const uint8_t *a = row + (size_t)(2 * (P)) * bytes, *b = a + bytes;                                                              \
    const __m512i w = fmt == KLE_W_Q4_0 ? q4_dec_order(a, b) : pair_w_unsigned(fmt, a, b);                                           \
    const __m512 dw = pair_scales_w(a, b, fmt == KLE_W_Q4_0);                                                                         \
    for (int t = 0; t < T; t++) {                                                                                                     \
      const __m512i xs = _mm512_loadu_si512(in.xu + (size_t)t * n_in + 64 * (P));                                                     \
      const __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr + ((size_t)t * n_in + 64 * (P)) / 4), w, xs);                   \
      acc[t][J] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_loadu_ps(in.dv + ((size_t)t * np + (P)) * 16)), acc[t][J]); \
    }                                                                                                                                 \
  } while (0)
  int p = 0;
  for (; p + 1 < np; p += 2) {
    KLE_DEC_PAIR(p, 0);
    KLE_DEC_PAIR(p + 1, 1);
  }
  if (p < np) KLE_DEC_PAIR(p, 0);
#undef KLE_DEC_PAIR
  for (int t = 0; t < T; t++) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

/* One step of rows_tiled: R (1, 2) rows by n (1..4) tokens from token t, by the byte dot of fmt */
static inline __attribute__((always_inline)) void tile_dot(int fmt, const uint8_t *const rows[2], int R, int n, int t, int T, const float *dx,
                                                            const float *sx, const int16_t *qx, int nb, int n_in, float out[2][4]) {
  if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K) row_dot_q4k_bytes(rows, R, fmt == KLE_W_Q5_K, n, t, T, dx, sx, qx, nb, n_in, out);
  else if (fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K) row_dot_q23k_bytes(rows, R, fmt == KLE_W_Q3_K, n, t, T, dx, qx, nb, n_in, out);
  else if (fmt == KLE_W_Q6_K) row_dot_q6k_bytes(rows, R, n, t, T, dx, qx, nb, n_in, out);
  else row_dot_bytes(fmt, rows, R, n, t, T, dx, qx, nb, n_in, out);
}

/* rows_q8's rows by the byte dots: in prefill (4 tokens or more) two rows by four tokens a step,
 * each activation load serving both rows (105M Q8_0 pp512 947 -> 1,260 tokens/s on one thread);
 * one row a step for fewer tokens, where two rows' weights streamed together made decode 2.2x
 * slower */
static void rows_tiled(int fmt, const uint8_t *W, long rb, const float *dx, const float *sx, const int16_t *qx, float *Y, int ldy, int T,
                       int n_out, int n_in) {
  const int nb = n_in / KLE_QK, pair = T >= 4;
  if (dec_unsigned(fmt, T, n_in)) {
    const int32_t *corr = lane_corr(qx, T, n_in);
    for (int r = 0; r < n_out; r++) {
      float out[4];
      const uint8_t *row = W + (size_t)rb * r;
      /* constant format and count, so that the loops unroll without branches */
      if (fmt == KLE_W_Q4_0) T == 1 ? row_dot_dec(KLE_W_Q4_0, row, 1, qx, corr, nb, n_in, out) : row_dot_dec(KLE_W_Q4_0, row, T, qx, corr, nb, n_in, out);
      else if (fmt == KLE_W_Q5_0) T == 1 ? row_dot_dec(KLE_W_Q5_0, row, 1, qx, corr, nb, n_in, out) : row_dot_dec(KLE_W_Q5_0, row, T, qx, corr, nb, n_in, out);
      else T == 1 ? row_dot_dec(KLE_W_Q8_0, row, 1, qx, corr, nb, n_in, out) : row_dot_dec(KLE_W_Q8_0, row, T, qx, corr, nb, n_in, out);
      for (int j = 0; j < T; j++) Y[(size_t)j * ldy + r] = out[j];
    }
    return;
  }
  for (int r = 0; r < n_out; r += 1 + pair) {
    const int R = n_out - r < 2 || !pair ? 1 : 2;
    const uint8_t *rows[2] = {W + (size_t)rb * r, W + (size_t)rb * (r + R - 1)};
    for (int t = 0; t < T; t += 4) {
      const int n = T - t < 4 ? T - t : 4;
      float out[2][4];
      /* constant counts, so that the loops over them unroll */
      if (R == 1 && n == 1) tile_dot(fmt, rows, 1, 1, t, T, dx, sx, qx, nb, n_in, out);
      else if (R == 2 && n == 4) tile_dot(fmt, rows, 2, 4, t, T, dx, sx, qx, nb, n_in, out);
      else if (R == 2) tile_dot(fmt, rows, 2, n, t, T, dx, sx, qx, nb, n_in, out);
      else tile_dot(fmt, rows, 1, n, t, T, dx, sx, qx, nb, n_in, out);
      for (int i = 0; i < R; i++)
        for (int j = 0; j < n; j++) Y[(size_t)(t + j) * ldy + r + i] = out[i][j];
    }
  }
}
#endif

uint64_t kle_q8_qx_elems(uint64_t T, uint64_t n_in) {
  /* with byte codes, 8 * n_in int16 units in all per token: the codes (4), their bytes (2), the
   * pair scales (2), the sums of 16 codes (1 / 8 * 8), then the sums of 4 less an offset (4 / 8 * 8) */
  const uint64_t per8 = Q8_BYTE_CODES ? 21 : 8;
  return T && n_in > UINT64_MAX / T / per8 ? UINT64_MAX : (T * n_in * per8 + 7) / 8;
}

typedef float (*row_dot_fn)(int, const uint8_t *, const float *, const float *, const int16_t *, int);

/* the formats row_dot_q4k, _q6k, _q50 and _q23k take (row_dot: Q8_0 and Q4_0) */
static int by_super_block(int fmt) {
  return fmt == KLE_W_Q5_0 || fmt == KLE_W_Q5_1 || fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K || fmt == KLE_W_Q6_K || fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K;
}

static int int_dot_format(int fmt) { return fmt == KLE_W_Q8_0 || fmt == KLE_W_Q4_0 || by_super_block(fmt); }

int kle_matmul_int8(int fmt, int T) {
  if (fmt == KLE_W_Q8_0 || fmt == KLE_W_Q4_0) return 1;
  const int later = by_super_block(fmt);
#if defined(__wasm__)
  return later && T < 4;
#else
  (void)T;
  return later;
#endif
}

/* blocks of 32 activations that share a scale when multiplied by fmt's weights: a K-quant's
 * super-block of 256 (as llama.cpp's Q8_K), so that its groups' integer dots add up in int32 with
 * one float step a super-block (row_dot_q4k and the others below); 1 for the rest */
static int x_group(int fmt, int n_in) {
  const int kq = fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K || fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K || fmt == KLE_W_Q6_K;
  return kq && n_in % KLE_QK_K == 0 ? KLE_QK_K / KLE_QK : 1;
}

void kle_q8_quantize_rows(int fmt, const float *X, int T, int t0, int t1, int n_in, float *dx, int16_t *qx) {
  const int nb = n_in / KLE_QK, group = x_group(fmt, n_in);
  float *sx = dx + (size_t)T * nb;
  for (int t = t0; t < t1; t++) quantize_x(X + (size_t)t * n_in, n_in, group, dx + (size_t)t * nb, sx + (size_t)t * nb, qx + (size_t)t * n_in);
#if Q8_BYTE_CODES
  make_byte_codes(fmt, dx, T, t0, t1, n_in, qx);
#endif
}

void kle_q8_quantize_x(int fmt, const float *X, int T, int n_in, float *dx, int16_t *qx) { kle_q8_quantize_rows(fmt, X, T, 0, T, n_in, dx, qx); }

static int rows_fast(row_dot_fn dot, int fmt, const void *W, const float *dx, const int16_t *qx, float *Y, int ldy, int T, int n_out,
                     int n_in) {
  const long rb = kle_row_bytes(fmt, n_in);
  if (!int_dot_format(fmt) || T < 0 || n_out <= 0 || rb <= 0 || ldy < n_out) return KLE_EINVAL;
  const int nb = n_in / KLE_QK;
  const float *sx = dx + (size_t)T * nb;
  /* weight rows outside, tokens inside: a row (a few KiB) stays in L1 for all of the batch; the
   * SIMD versions take tokens four at a time, each block's weights widened once for the four */
#if Q8_BYTE_CODES
  /* the byte dots: Q8_0 and Q4_0 always; Q2_K and Q3_K always (105M Q2_K tg 3.9 -> 2.95 ms a token
   * against the 16-bit row_dot_q23k, the Q3_K_M file's unchanged); Q6_K always (once the 16-bit
   * one added its super-blocks in int32, Q6_K tg 2.89-2.94 -> 2.74-2.76 ms); Q4_K and Q5_K always
   * (once their scales stopped going through memory: row_dot_q4k_bytes); Q5_0 in prefill, and in
   * decode by row_dot_dec (with -128 sum(w) a row the byte dot had measured 3.04 ms a 105M Q4_K_M
   * token against 3.06 with the 16-bit one) */
  if (dot == row_dot && (fmt == KLE_W_Q8_0 || fmt == KLE_W_Q4_0 || fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K || fmt == KLE_W_Q6_K ||
                         fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K || (fmt == KLE_W_Q5_0 && nb % 2 == 0))) {
    rows_tiled(fmt, (const uint8_t *)W, rb, dx, sx, qx, Y, ldy, T, n_out, n_in);
    return KLE_OK;
  }
#endif
#ifndef NO_SIMD_DOT
  if (dot == row_dot && by_super_block(fmt)) {
    for (int r = 0; r < n_out; r++) {
      const uint8_t *row = (const uint8_t *)W + (size_t)rb * r;
      for (int t = 0; t < T; t += 4) {
        const int n = T - t < 4 ? T - t : 4;
        const float *dxs[4] = {0}, *sxs[4] = {0};
        const int16_t *qxs[4] = {0};
        float out[4];
        for (int j = 0; j < n; j++) dxs[j] = dx + (size_t)(t + j) * nb, sxs[j] = sx + (size_t)(t + j) * nb, qxs[j] = qx + (size_t)(t + j) * n_in;
        /* constant token counts, so that each call's loops over them unroll */
        if (fmt == KLE_W_Q4_K || fmt == KLE_W_Q5_K) {
          const int five = fmt == KLE_W_Q5_K;
          if (n == 4) row_dot_q4k(row, five, 4, dxs, sxs, qxs, nb, out);
          else if (n == 1) row_dot_q4k(row, five, 1, dxs, sxs, qxs, nb, out);
          else row_dot_q4k(row, five, n, dxs, sxs, qxs, nb, out);
        } else if (fmt == KLE_W_Q5_0 || fmt == KLE_W_Q5_1) {
          const int q51 = fmt == KLE_W_Q5_1;
          if (n == 4) row_dot_q50(row, q51, 4, dxs, sxs, qxs, nb, out);
          else if (n == 1) row_dot_q50(row, q51, 1, dxs, sxs, qxs, nb, out);
          else row_dot_q50(row, q51, n, dxs, sxs, qxs, nb, out);
        } else if (fmt == KLE_W_Q2_K || fmt == KLE_W_Q3_K) {
          const int q3 = fmt == KLE_W_Q3_K;
          if (n == 4) row_dot_q23k(row, q3, 4, dxs, qxs, nb, out);
          else if (n == 1) row_dot_q23k(row, q3, 1, dxs, qxs, nb, out);
          else row_dot_q23k(row, q3, n, dxs, qxs, nb, out);
        } else {
          if (n == 4) row_dot_q6k(row, 4, dxs, qxs, nb, out);
          else if (n == 1) row_dot_q6k(row, 1, dxs, qxs, nb, out);
          else row_dot_q6k(row, n, dxs, qxs, nb, out);
        }
        for (int j = 0; j < n; j++) Y[(size_t)(t + j) * ldy + r] = out[j];
      }
    }
    return KLE_OK;
  }
#endif
  for (int r = 0; r < n_out; r++) {
    const uint8_t *row = (const uint8_t *)W + (size_t)rb * r;
    int t = 0;
#ifndef NO_SIMD_DOT
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
    for (; t < T; t++) Y[(size_t)t * ldy + r] = dot(fmt, row, dx + (size_t)t * nb, sx + (size_t)t * nb, qx + (size_t)t * n_in, nb);
  }
  return KLE_OK;
}

/* The fast dots add lanes of a few products each before the block scales multiply them; where a
 * scale is infinite (a hostile or broken file's), lanes of both signs then meet as NaN even when
 * the block's whole sum has one sign and the block-wise reference gives an infinity. NaN comes
 * only from non-finite values, so an output that is NaN (rare) is made again by the reference. */
static int rows_q8(row_dot_fn dot, int fmt, const void *W, const float *dx, const int16_t *qx, float *Y, int ldy, int T, int n_out,
                   int n_in) {
  const int rc = rows_fast(dot, fmt, W, dx, qx, Y, ldy, T, n_out, n_in);
  if (rc != KLE_OK || dot == row_dot_ref) return rc;
  const int nb = n_in / KLE_QK;
  const long rb = kle_row_bytes(fmt, n_in);
  for (int t = 0; t < T; t++)
    for (int r = 0; r < n_out; r++) {
      float *y = Y + (size_t)t * ldy + r;
      if (isnan(*y))
        *y = row_dot_ref(fmt, (const uint8_t *)W + (size_t)rb * r, dx + (size_t)t * nb, dx + (size_t)T * nb + (size_t)t * nb, qx + (size_t)t * n_in, nb);
    }
  return KLE_OK;
}

int kle_q8_rows(int fmt, const void *W, const float *dx, const int16_t *qx, float *Y, int ldy, int T, int n_out, int n_in) {
  return rows_q8(row_dot, fmt, W, dx, qx, Y, ldy, T, n_out, n_in);
}

static int matmul_q8(row_dot_fn dot, int fmt, const void *W, const float *X, float *Y, int ldy, int T, int n_out, int n_in) {
  const long rb = kle_row_bytes(fmt, n_in);
  if (!int_dot_format(fmt) || T < 0 || n_out <= 0 || rb <= 0 || ldy < n_out) return KLE_EINVAL;
  /* T x n_in activations as int16, their scales and scaled sums: sizes from the caller's shape, in 64 bits */
  const uint64_t elems = kle_q8_qx_elems((uint64_t)T, (uint64_t)n_in); /* at least T n_in */
  if (elems > SIZE_MAX / 4) return KLE_ENOMEM;
  int16_t *qx = malloc(sizeof(int16_t) * (size_t)elems + 2);
  float *dx = malloc(2 * sizeof(float) * (size_t)T * (size_t)(n_in / KLE_QK) + 4);
  if (!qx || !dx) {
    free(qx);
    free(dx);
    return KLE_ENOMEM;
  }
  kle_q8_quantize_x(fmt, X, T, n_in, dx, qx);
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
