/*
 * matmul_bf16.h: BF16 weights times activations rounded to BF16 (not public): the CPU's
 * kle_model_precision BF16 for decode, the arithmetic llama.cpp and vLLM give a BF16 model. One
 * vdpbf16ps is 32 products of two BF16 values, each exact in f32, added to 16 f32 lanes; the
 * f32-accurate path splits each activation into three BF16 terms and so takes three (matmul.c,
 * mm16_bf16dot).
 */
#ifndef KLE_MATMUL_BF16_H
#define KLE_MATMUL_BF16_H

#include <stddef.h>
#include <stdint.h>

/* 1 where this build multiplies BF16 pairs in hardware (AVX-512 BF16): only there is rounding
 * the activations worth its error, so only there does the CPU backend offer BF16 precision */
#if defined(__AVX512BF16__) && !defined(__wasm__)
#define KLE_BF16R 1
#else
#define KLE_BF16R 0
#endif

/* 1 where BF16 products also pay for a prefill's many tokens: on AMD's cores (Zen 4 on) vdpbf16ps
 * runs at the FMA's rate and does the work of two (105M BF16 pp512, one thread, alternating
 * processes: 605-825 -> 1,206-1,270 tokens/s); Intel's run it on one port of the two that take FMAs,
 * where a Xeon's 4 x 4 tiles measured slower than the f32 FMA tiles (266 against 321). Decode's
 * few tokens gain on both (they read each weight once and are bound by its bytes). 0 where
 * KLE_BF16R is 0. */
int kle_bf16r_prefill(void);
/* Xh[i] = X[i] rounded to BF16 (to nearest even), i < n */
void kle_bf16_round(const float *X, size_t n, uint16_t *Xh);
/* Y rows ldy apart = Xh [T, n_in] (BF16) times n_out rows of W [n_out, n_in] (BF16), sums in f32;
 * n_in a multiple of 32. KLE_EINVAL where the build has no BF16 products (KLE_BF16R 0). */
int kle_bf16r_rows(const uint16_t *W, const uint16_t *Xh, float *Y, int ldy, int T, int n_out, int n_in);

#endif
