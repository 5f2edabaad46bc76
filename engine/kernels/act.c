/* act.c: elementwise activations of the forward pass. */
#include <math.h>

#include "../include/kle.h"
#include "simd.h"

int kle_swiglu_ref(const float *gate, const float *up, float *out, int n) {
  if (n < 0) return KLE_EINVAL;
  for (int i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
  return KLE_OK;
}

int kle_swiglu(const float *gate, const float *up, float *out, int n) {
  if (n < 0) return KLE_EINVAL;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    v4f g = vload(gate + i);
    vstore(out + i, g * vsigmoid(g) * vload(up + i));
  }
  for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
  return KLE_OK;
}

int kle_sigmoid_ref(const float *x, float *y, int n) {
  if (n < 0) return KLE_EINVAL;
  for (int i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
  return KLE_OK;
}

int kle_sigmoid(const float *x, float *y, int n) {
  if (n < 0) return KLE_EINVAL;
  int i = 0;
  for (; i + 4 <= n; i += 4) vstore(y + i, vsigmoid(vload(x + i)));
  for (; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
  return KLE_OK;
}
