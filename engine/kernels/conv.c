/* conv.c: the short causal depthwise convolution of KDA (kernel 4), with a rolling tail
 * (docs/model.md, section 2, step 1). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../include/kle.h"
#include "conv.h"
#include "simd.h"

static int conv_ok(int T, int C, int W) { return T >= 0 && C > 0 && W >= 1 && W <= 16; }

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* Input row at time i relative to x, where negative i reach into the tail. */
static const float *conv_row(const float *x, const float *state, int i, int C, int W) {
  return i >= 0 ? x + (size_t)i * C : state + (size_t)(W - 1 + i) * C;
}

static void update_tail(const float *x, float *state, int T, int C, int W) {
  int keep = W - 1;
  if (keep == 0) return;
  if (T >= keep) {
    memcpy(state, x + (size_t)(T - keep) * C, sizeof(float) * (size_t)keep * C);
  } else {
    memmove(state, state + (size_t)T * C, sizeof(float) * (size_t)(keep - T) * C);
    memcpy(state + (size_t)(keep - T) * C, x, sizeof(float) * (size_t)T * C);
  }
}

int kle_conv_short_ref(const float *x, const float *w, float *state, float *y, int T, int C,
                       int W, int silu_on) {
  if (!conv_ok(T, C, W)) return KLE_EINVAL;
  for (int t = 0; t < T; t++)
    for (int c = 0; c < C; c++) {
      float acc = 0.0f;
      for (int tap = 0; tap < W; tap++)
        acc += w[(size_t)tap * C + c] * conv_row(x, state, t - (W - 1) + tap, C, W)[c];
      y[(size_t)t * C + c] = silu_on ? silu(acc) : acc;
    }
  update_tail(x, state, T, C, W);
  return KLE_OK;
}

int kle_conv_short_rows(const float *x, const float *w, const float *state, float *y, int T, int C, int W, int silu_on, int t0, int t1) {
  if (!conv_ok(T, C, W) || t0 < 0 || t1 > T || t0 > t1 || C % 4) return KLE_EINVAL;
  if (y == x) return KLE_EINVAL; /* the taps read inputs that an in-place output would clobber */
  for (int t = t0; t < t1; t++) {
    const float *rows[16];
    for (int tap = 0; tap < W; tap++) rows[tap] = conv_row(x, state, t - (W - 1) + tap, C, W);
    float *yt = y + (size_t)t * C;
    for (int c = 0; c < C; c += 4) {
      v4f acc = vsplat(0);
      for (int tap = 0; tap < W; tap++) acc += vload(w + (size_t)tap * C + c) * vload(rows[tap] + c);
      if (silu_on) acc = acc * vsigmoid(acc);
      vstore(yt + c, acc);
    }
  }
  return KLE_OK;
}

void kle_conv_short_tail(const float *x, float *state, int T, int C, int W) { update_tail(x, state, T, C, W); }

int kle_conv_short(const float *x, const float *w, float *state, float *y, int T, int C, int W,
                   int silu_on) {
  if (!conv_ok(T, C, W)) return KLE_EINVAL;
  if (C % 4) return kle_conv_short_ref(x, w, state, y, T, C, W, silu_on);
  const int rc = kle_conv_short_rows(x, w, state, y, T, C, W, silu_on, 0, T);
  if (rc == KLE_OK) update_tail(x, state, T, C, W);
  return rc;
}
