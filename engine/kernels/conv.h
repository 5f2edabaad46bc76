/*
 * conv.h: the short convolution in two halves for callers that split it by tokens (not public):
 * any ranges of output tokens, which read the input and the tail without changing them, then the
 * tail rolled once over the T tokens.
 */
#ifndef KLE_CONV_H
#define KLE_CONV_H

/* y rows t0 .. t1 - 1 of kle_conv_short (C a multiple of 4; y not x) */
int kle_conv_short_rows(const float *x, const float *w, const float *state, float *y, int T, int C, int W, int silu_on, int t0, int t1);
/* the tail after T tokens of x, as kle_conv_short leaves it */
void kle_conv_short_tail(const float *x, float *state, int T, int C, int W);

#endif
