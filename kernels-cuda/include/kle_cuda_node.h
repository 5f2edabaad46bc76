/*
 * kle_cuda_node.h: what the CUDA build's Node addon exports beside kle.h (whose engine API it
 * implements on the GPU: kernels-cuda/src/engine.cu).
 */
#ifndef KLE_CUDA_NODE_H
#define KLE_CUDA_NODE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The current CUDA device: writes its name (NUL-terminated, at most n bytes) and returns its
 * compute capability as major * 10 + minor, or KLE_EDEVICE (-5) when there is no usable device.
 */
int kle_cuda_device_info(uint8_t *name, int n);
/*
 * The card's copy bandwidth: the median of reps device-to-device copies of `bytes` (read once,
 * written once: 2 x bytes moved each), in GB/s; 0 on failure. The benches' physical limit.
 */
float kle_cuda_copy_gbps(long bytes, int reps);

#ifdef __cplusplus
}
#endif
#endif
