/* numfmt.h: conversions between float and the 16-bit formats of weight files. */
#ifndef KLE_NUMFMT_H
#define KLE_NUMFMT_H

#include <stdint.h>
#include <string.h>

#include "simd.h"
#if defined(__F16C__)
#include <immintrin.h>
#endif

static inline float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* round to nearest even; NaN stays NaN */
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* IEEE half to float: shifting the exponent+mantissa into place and scaling by 2^112 handles
 * normals and subnormals alike; infinities and NaNs get an all-ones exponent. */
static inline float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
  /* the same value in one instruction (a NaN comes back quiet), where the native build has it:
   * every Q8_0 / Q4_0 block scale goes through here */
  return _cvtsh_ss(h);
#endif
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
  float f = f32_from_bits(em) * 0x1p112f;
  uint32_t u = f32_bits(f);
  if ((h & 0x7c00u) == 0x7c00u) u = em | 0x7f800000u;
  return f32_from_bits(u | sign);
}

/* f16_to_f32 on four halves held in 32-bit lanes, bit for bit */
static inline v4f v_f16_bits_to_f32(v4u h) {
  v4u sign = (h & 0x8000u) << 16;
  v4u em = (h & 0x7fffu) << 13;
  v4f f = (v4f)em * vsplat(0x1p112f);
  v4i inf = (v4i)((h & 0x7c00u) == 0x7c00u);
  v4u u = ((v4u)f & ~(v4u)inf) | ((em | 0x7f800000u) & (v4u)inf);
  return (v4f)(u | sign);
}

static inline v4f v_f16_to_f32(const uint16_t *p) {
  typedef uint16_t v4h __attribute__((vector_size(8), aligned(2), may_alias));
  return v_f16_bits_to_f32(__builtin_convertvector(*(const v4h *)p, v4u));
}

static inline v4f v_bf16_to_f32(const uint16_t *p) {
  typedef uint16_t v4h __attribute__((vector_size(8), aligned(2), may_alias));
  v4u h = __builtin_convertvector(*(const v4h *)p, v4u);
  return (v4f)(h << 16);
}

/* float to IEEE half, round to nearest even, with overflow to inf and subnormals. */
static inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65536: inf */
  if (a < 0x38800000u) {                                    /* subnormal half or zero */
    float s = f32_from_bits(a) * 0x1p24f;                   /* in units of 2^-24 */
    uint32_t m = (uint32_t)s;
    float rem = s - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u;
  return (uint16_t)(sign | (r >> 13));
}

#endif
