/*
 * matmul_q8.h: the two halves of kle_matmul_q8 for callers that split one matmul (not public):
 * a batch's activations quantized once, then any slice of weight rows against them.
 */
#ifndef KLE_MATMUL_Q8_H
#define KLE_MATMUL_Q8_H

#include <stdint.h>

/*
 * X [T, n_in] (n_in a multiple of 32) -> scales dx [T, n_in / 32], then (at dx + T * n_in / 32)
 * each block's dx * sum of codes (2 T n_in / 32 floats in all), and int16 values qx [T, n_in],
 * for a product with fmt's weights: a K-quant's blocks share one scale per super-block of 256
 * (the same dx repeated in their 8 entries), the others' have one each
 */
void kle_q8_quantize_x(int fmt, const float *X, int T, int n_in, float *dx, int16_t *qx);
/* the same for tokens t0 .. t1 - 1 of the T (each token's codes and scales are its own: threads
 * may quantize disjoint ranges at once) */
void kle_q8_quantize_rows(int fmt, const float *X, int T, int t0, int t1, int n_in, float *dx, int16_t *qx);
/*
 * int16 elements qx must hold for T x n_in: the codes, and in builds with a byte-code dot
 * (AVX-512 VNNI's vpdpbusd) as many again: the codes + 128 as bytes, then each pair of blocks'
 * scales spread over 16 lanes. UINT64_MAX when that does not fit 64 bits.
 */
uint64_t kle_q8_qx_elems(uint64_t T, uint64_t n_in);
/* Y rows ldy apart = the quantized X (the same T) times n_out rows of W (Q8_0, Q4_0, Q5_0, Q5_1 or a K-quant, Q2_K to Q6_K) */
int kle_q8_rows(int fmt, const void *W, const float *dx, const int16_t *qx, float *Y, int ldy, int T, int n_out, int n_in);

#endif
