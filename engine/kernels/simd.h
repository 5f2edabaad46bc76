/*
 * simd.h: a 4-lane float vector written with GCC/Clang vector extensions.
 *
 * Why vector extensions rather than wasm_simd128.h or SSE intrinsics: the same source then
 * compiles to f32x4 under emcc -msimd128, to SSE/AVX under gcc, and to plain scalar code under
 * emcc without -msimd128 (the "wasm scalar" build the benchmarks compare against).
 * Loads and stores go through an unaligned, may_alias type so that any float* is valid.
 */
#ifndef KLE_SIMD_H
#define KLE_SIMD_H

#include <stdint.h>

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint32_t v4u __attribute__((vector_size(16)));
typedef float v4f_u __attribute__((vector_size(16), aligned(4), may_alias));
typedef int32_t v4i_u __attribute__((vector_size(16), aligned(4), may_alias));

static inline v4f vload(const float *p) { return *(const v4f_u *)p; }
static inline void vstore(float *p, v4f x) { *(v4f_u *)p = x; }
static inline v4f vsplat(float x) { return (v4f){x, x, x, x}; }
static inline float vsum(v4f x) { return (x[0] + x[1]) + (x[2] + x[3]); }
/* lanes of a where m is all ones, else lanes of b (vector casts of equal size are bitcasts) */
static inline v4f vsel(v4i m, v4f a, v4f b) { return (v4f)(((v4i)a & m) | ((v4i)b & ~m)); }
static inline v4f vmax(v4f a, v4f b) { return vsel(a > b, a, b); }
static inline float vhmax(v4f x) {
  float a = x[0] > x[1] ? x[0] : x[1];
  float b = x[2] > x[3] ? x[2] : x[3];
  return a > b ? a : b;
}

/*
 * exp for 4 lanes: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor
 * polynomial (truncation error < 6e-9 relative) and 2^n built in the exponent bits.
 * Inputs below -87.3 give 0 (as expf would, give or take denormals); above 88.3 saturate.
 * The rounding uses the 1.5*2^23 trick, which stays exact because we never build with
 * -ffast-math.
 */
static inline v4f vexp(v4f x) {
  const v4f lo = vsplat(-87.3f), hi = vsplat(88.3f);
  v4i under = x < lo;
  x = vsel(under, lo, x);
  x = vsel(x > hi, hi, x);
  const v4f magic = vsplat(12582912.0f);
  v4f t = x * vsplat(1.44269504088896341f) + magic;
  v4f n = t - magic;
  v4f r = x - n * vsplat(0.693145751953125f);
  r = r - n * vsplat(1.428606765330187e-06f);
  v4f p = vsplat(1.0f / 5040.0f);
  p = p * r + vsplat(1.0f / 720.0f);
  p = p * r + vsplat(1.0f / 120.0f);
  p = p * r + vsplat(1.0f / 24.0f);
  p = p * r + vsplat(1.0f / 6.0f);
  p = p * r + vsplat(0.5f);
  p = p * r + vsplat(1.0f);
  p = p * r + vsplat(1.0f);
  v4i ni = __builtin_convertvector(n, v4i);
  v4i bits = (ni + 127) << 23;
  v4f scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  v4f y = p * scale;
  return vsel(under, vsplat(0.0f), y);
}

static inline v4f vsigmoid(v4f x) { return vsplat(1.0f) / (vsplat(1.0f) + vexp(-x)); }

/*
 * softplus(x) = log(1 + e^x) = max(x, 0) + log1p(u), u = e^-|x| in (0, 1], for 4 lanes.
 * log1p(u) is log(y), y = 1 + u, times u / (y - 1): the factor undoes y's rounding (Goldberg's
 * correction; where y rounds to 1, log1p(u) = u). log(y) for y in (1, 2]: y = 2^e m with m in
 * [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its series to
 * s^11 (truncation below 1e-10 relative). Within a few ulp of log1pf(expf(x)) (test/unit/ops.test.ts
 * checks 1e-6 against float64 over |x| up to 40).
 */
static inline v4f vsoftplus(v4f x) {
  const v4i absmask = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
  const v4f ax = (v4f)((v4i)x & absmask), one = vsplat(1.0f);
  const v4f u = vexp(-ax), y = one + u;
  const v4i big = y > vsplat(1.41421356f);
  const v4f m = vsel(big, y * vsplat(0.5f), y), e = vsel(big, one, vsplat(0.0f));
  const v4f s = (m - one) / (m + one), s2 = s * s;
  v4f p = vsplat(1.0f / 11.0f);
  p = p * s2 + vsplat(1.0f / 9.0f);
  p = p * s2 + vsplat(1.0f / 7.0f);
  p = p * s2 + vsplat(1.0f / 5.0f);
  p = p * s2 + vsplat(1.0f / 3.0f);
  p = p * s2 + one;
  const v4f lg = vsplat(2.0f) * s * p + e * vsplat(0.693147181f), d = y - one;
  const v4f l1p = vsel(d == vsplat(0.0f), u, lg * (u / vsel(d == vsplat(0.0f), one, d)));
  return vmax(x, vsplat(0.0f)) + l1p;
}

#endif
