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

/* a Q4_K (or Q5_K) super-block's header: d * sc_j and dmin * m_j for its 8 groups */
static inline void q4k_header(const uint8_t *blk, float ds[8], float dm[8]) {
  const float d = qblock_scale(blk), dmin = qblock_scale(blk + 2);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    q4k_scale_min(blk + 4, j, &sc, &m);
    ds[j] = d * (float)sc;
    dm[j] = dmin * (float)m;
  }
}

#endif
