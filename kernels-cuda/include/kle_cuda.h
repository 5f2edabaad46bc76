/*
 * kle_cuda.h: the CUDA kernels of kimi-linear-edge. Same math and layouts as wasm/include/kle.h,
 * with a batch dimension and device pointers; every function launches on the given stream and
 * returns KLE_OK or a KLE_E* code (kle.h's), having launched nothing on error.
 */
#ifndef KLE_CUDA_H
#define KLE_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * KDA decode step for B sequences of H heads (kle_kda_step with a batch):
 *   S <- Diag(exp g) S;  u = v - S^T k;  S <- S + beta k u^T;  o = S^T (scale q)
 * S: [B,H,K,V] f32 in place; q, k, g: [B,H,K]; v, o: [B,H,V]; beta: [B,H]. flags as kle.h
 * (KLE_KDA_L2NORM_QK = 1: q and k L2-normalized in the kernel, eps 1e-6). K must be 64 or 128;
 * V a multiple of 32.
 */
int kle_cuda_kda_step(float *S, const float *q, const float *k, const float *v, const float *g,
                      const float *beta, float *o, int B, int H, int K, int V, float scale,
                      int flags, void *stream);

#ifdef __cplusplus
}
#endif
#endif
