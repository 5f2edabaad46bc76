/*
 * qblocks.h: the block layouts of the quantized weight formats, as GGUF files (llama.cpp) write
 * them, shared by the decoders (matmul.c) and the integer-dot products (matmul_q8.c).
 */
#ifndef KLE_QBLOCKS_H
#define KLE_QBLOCKS_H

#include <stdint.h>
#include <string.h>

#include "numfmt.h"

/* bytes of one block: 32 values, or 256 for the K-quants */
#define Q8_BYTES 34   /* f16 d, 32 x int8 */
#define Q4_BYTES 18   /* f16 d, 16 bytes of nibbles */
#define Q50_BYTES 22  /* f16 d, 32 fifth bits, 16 bytes of nibbles */
#define Q51_BYTES 24  /* f16 d, f16 m, 32 fifth bits, 16 bytes of nibbles */
#define Q4K_BYTES 144 /* f16 d, f16 dmin, 12 bytes of scales and mins, 128 of nibbles */
#define Q5K_BYTES 176 /* as Q4_K, with 32 bytes of fifth bits before the nibbles */
#define Q6K_BYTES 210 /* 128 bytes of low nibbles, 64 of bit pairs, 16 int8 scales, f16 d */
#define Q2K_BYTES 84  /* 16 bytes of 4-bit scales and mins, 64 of bit pairs, f16 d, f16 dmin */
#define Q3K_BYTES 110 /* 32 bytes of high bits, 64 of bit pairs, 12 of 6-bit scales, f16 d */

/* the f16 scale a block stores at b */
static inline float qblock_scale(const uint8_t *b) {
  uint16_t h;
  memcpy(&h, b, 2);
  return f16_to_f32(h);
}

/* Q4_K's (and Q5_K's) 6-bit scale and min of group j (of 8), packed in 12 bytes: groups 0-3 in
 * the low 6 bits of bytes j and j + 4; groups 4-7 take their low 4 bits from byte j + 4's nibbles
 * and their top 2 from the spare top bits of bytes j - 4 (scale) and j (min). */
static inline void q4k_scale_min(const uint8_t *s, int j, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

/*
 * a Q4_K (or Q5_K) super-block's 6-bit scales sc_j and mins m_j for its 8 groups, a byte each.
 * They come out four at a time from the three 32-bit words of the 12 bytes (q4k_scale_min's
 * layout: groups 4-7 take a nibble of the third word and the top two bits of the first (scales)
 * or second (mins)): group by group with its branches, this was 7% of a wasm Q4_K_M decode step.
 */
static inline void q4k_scales64(const uint8_t *blk, uint64_t *sc, uint64_t *m) {
  uint32_t a, b, c;
  memcpy(&a, blk + 4, 4);
  memcpy(&b, blk + 8, 4);
  memcpy(&c, blk + 12, 4);
  /* little-endian: byte k of each word is group 4 i + k's */
  *sc = (a & 0x3f3f3f3fu) | (uint64_t)((c & 0x0f0f0f0fu) | ((a >> 6) & 0x03030303u) << 4) << 32;
  *m = (b & 0x3f3f3f3fu) | (uint64_t)(((c >> 4) & 0x0f0f0f0fu) | ((b >> 6) & 0x03030303u) << 4) << 32;
}
/* the same as 8 bytes each (group j's in byte j) */
static inline void q4k_scales(const uint8_t *blk, uint8_t sc[8], uint8_t m[8]) {
  uint64_t s, n;
  q4k_scales64(blk, &s, &n);
  memcpy(sc, &s, 8);
  memcpy(m, &n, 8);
}
/* the same as factors: ds[j] = d * sc_j, dm[j] = dmin * m_j */
static inline void q4k_header(const uint8_t *blk, float ds[8], float dm[8]) {
  uint8_t sc[8], m[8];
  q4k_scales(blk, sc, m);
  const float d = qblock_scale(blk), dmin = qblock_scale(blk + 2);
  for (int j = 0; j < 8; j++) ds[j] = d * (float)sc[j], dm[j] = dmin * (float)m[j];
}

/* one super-block of 256 values into Q4_K's 144 bytes, Q6_K's 210 (kquant_encode.c) */
void kle_q4k_encode(const float *x, uint8_t *b);
void kle_q6k_encode(const float *x, uint8_t *b);

/* Q3_K's 6-bit scale of group j (of 16), 0..63 (the value's factor is this - 32): the low 4 bits
 * in the nibbles of bytes 0-7 (groups 0-7 low, 8-15 high), the top 2 in bytes 8-11, group j's in
 * byte 8 + j % 4 at bit 2 (j / 4) */
static inline int q3k_scale(const uint8_t *s, int j) {
  const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
  return lo | ((s[8 + (j & 3)] >> (2 * (j >> 2))) & 3) << 4;
}

/*
 * Half a Q2_K or Q3_K super-block (n = 0, 1: its values 128 n ..) as integers: v[j] the 32 values
 * of block 4 n + j of 32 (Q3_K's q - 4, in -4..3; Q2_K's q, in 0..3), and the scales of its 8
 * groups of 16, sc[2 j] and sc[2 j + 1] for block j's two halves (Q3_K's scale - 32; Q2_K's 4-bit
 * scale), with Q2_K's mins beside them in mins. Value l of block j holds bits 2j of byte 32 n + l
 * of the pairs (Q3_K: and bit 4 n + j of high-bit byte l). The decoder (matmul.c) and the integer
 * dots' scalar reference start from these; their SIMD versions (matmul_q8.c, q23k_w) make the
 * same integers in vectors.
 */
static inline void q23k_half(int q3, const uint8_t *blk, int n, int8_t v[4][32], int16_t sc[8], int16_t mins[8]) {
  const uint8_t *qs = blk + (q3 ? 32 : 16) + 32 * n, *hm = blk, *s = blk + (q3 ? 96 : 0);
  for (int i = 0; i < 8; i++) {
    sc[i] = (int16_t)(q3 ? q3k_scale(s, 8 * n + i) - 32 : s[8 * n + i] & 15);
    mins[i] = (int16_t)(q3 ? 0 : s[8 * n + i] >> 4);
  }
  for (int j = 0; j < 4; j++)
    for (int l = 0; l < 32; l++)
      v[j][l] = (int8_t)(((qs[l] >> (2 * j)) & 3) + (q3 ? 4 * ((hm[l] >> (4 * n + j)) & 1) - 4 : 0));
}

#endif
