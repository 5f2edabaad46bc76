/* norm.c: RMSNorm, the KDA output norm (RMSNorm times a sigmoid gate) and L2 normalization
 * (docs/model.md, sections 1 and 2). */
#include <math.h>

#include "../include/kle.h"
#include "simd.h"

static int rows_ok(int n_rows, int D) { return n_rows >= 0 && D > 0; }

static float sumsq(const float *x, int D) {
  v4f a = vsplat(0), b = vsplat(0);
  int i = 0;
  for (; i + 8 <= D; i += 8) {
    v4f p = vload(x + i), q = vload(x + i + 4);
    a += p * p;
    b += q * q;
  }
  for (; i + 4 <= D; i += 4) {
    v4f p = vload(x + i);
    a += p * p;
  }
  float s = vsum(a + b);
  for (; i < D; i++) s += x[i] * x[i];
  return s;
}

int kle_rmsnorm_ref(const float *x, const float *w, float *y, int n_rows, int D, float eps) {
  if (!rows_ok(n_rows, D)) return KLE_EINVAL;
  for (int r = 0; r < n_rows; r++) {
    const float *xr = x + (size_t)r * D;
    float *yr = y + (size_t)r * D;
    float s = 0.0f;
    for (int i = 0; i < D; i++) s += xr[i] * xr[i];
    float inv = 1.0f / sqrtf(s / (float)D + eps);
    for (int i = 0; i < D; i++) yr[i] = xr[i] * inv * w[i];
  }
  return KLE_OK;
}

int kle_rmsnorm(const float *x, const float *w, float *y, int n_rows, int D, float eps) {
  if (!rows_ok(n_rows, D)) return KLE_EINVAL;
  for (int r = 0; r < n_rows; r++) {
    const float *xr = x + (size_t)r * D;
    float *yr = y + (size_t)r * D;
    float inv = 1.0f / sqrtf(sumsq(xr, D) / (float)D + eps);
    int i = 0;
    for (; i + 4 <= D; i += 4) vstore(yr + i, vload(xr + i) * vsplat(inv) * vload(w + i));
    for (; i < D; i++) yr[i] = xr[i] * inv * w[i];
  }
  return KLE_OK;
}

int kle_rmsnorm_gated_ref(const float *x, const float *gate, const float *w, float *y,
                          int n_rows, int D, float eps) {
  if (!rows_ok(n_rows, D)) return KLE_EINVAL;
  for (int r = 0; r < n_rows; r++) {
    const float *xr = x + (size_t)r * D, *gr = gate + (size_t)r * D;
    float *yr = y + (size_t)r * D;
    float s = 0.0f;
    for (int i = 0; i < D; i++) s += xr[i] * xr[i];
    float inv = 1.0f / sqrtf(s / (float)D + eps);
    for (int i = 0; i < D; i++) yr[i] = xr[i] * inv * w[i] * (1.0f / (1.0f + expf(-gr[i])));
  }
  return KLE_OK;
}

int kle_rmsnorm_gated(const float *x, const float *gate, const float *w, float *y, int n_rows,
                      int D, float eps) {
  if (!rows_ok(n_rows, D)) return KLE_EINVAL;
  for (int r = 0; r < n_rows; r++) {
    const float *xr = x + (size_t)r * D, *gr = gate + (size_t)r * D;
    float *yr = y + (size_t)r * D;
    float inv = 1.0f / sqrtf(sumsq(xr, D) / (float)D + eps);
    int i = 0;
    for (; i + 4 <= D; i += 4)
      vstore(yr + i, vload(xr + i) * vsplat(inv) * vload(w + i) * vsigmoid(vload(gr + i)));
    for (; i < D; i++) yr[i] = xr[i] * inv * w[i] * (1.0f / (1.0f + expf(-gr[i])));
  }
  return KLE_OK;
}

int kle_l2norm_ref(float *x, int n_rows, int D, float eps) {
  if (!rows_ok(n_rows, D)) return KLE_EINVAL;
  for (int r = 0; r < n_rows; r++) {
    float *xr = x + (size_t)r * D;
    float s = 0.0f;
    for (int i = 0; i < D; i++) s += xr[i] * xr[i];
    float inv = 1.0f / sqrtf(s + eps);
    for (int i = 0; i < D; i++) xr[i] *= inv;
  }
  return KLE_OK;
}

int kle_l2norm(float *x, int n_rows, int D, float eps) {
  if (!rows_ok(n_rows, D)) return KLE_EINVAL;
  for (int r = 0; r < n_rows; r++) {
    float *xr = x + (size_t)r * D;
    float inv = 1.0f / sqrtf(sumsq(xr, D) + eps);
    int i = 0;
    for (; i + 4 <= D; i += 4) vstore(xr + i, vload(xr + i) * vsplat(inv));
    for (; i < D; i++) xr[i] *= inv;
  }
  return KLE_OK;
}
