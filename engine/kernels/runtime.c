/* runtime.c: version, allocator and a bandwidth probe, the only state being the allocator's. */
#include <stdlib.h>

#include "../include/kle.h"
#include "simd.h"

int kle_api_version(void) { return KLE_API_VERSION; }

int kle_simd_enabled(void) {
#if defined(__wasm_simd128__) || defined(__SSE2__) || defined(__ARM_NEON)
  return 1;
#else
  return 0;
#endif
}

void *kle_alloc(size_t bytes) { return malloc(bytes ? bytes : 1); }
void kle_free(void *p) { free(p); }

/* Four independent accumulators so the adds do not serialize: the loop is load-bound. */
float kle_probe_read(const float *x, long n) {
  v4f a0 = vsplat(0), a1 = vsplat(0), a2 = vsplat(0), a3 = vsplat(0);
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 += vload(x + i);
    a1 += vload(x + i + 4);
    a2 += vload(x + i + 8);
    a3 += vload(x + i + 12);
  }
  float s = vsum((a0 + a1) + (a2 + a3));
  for (; i < n; i++) s += x[i];
  return s;
}
