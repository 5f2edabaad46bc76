// wstream.cuh: what the weight-streaming matmuls share (gemm16.cu for 16-bit weights, gemm_q8.cu
// for Q8_0): loads that bypass L1, warp sums, the tensor-core GEMM's tile sizes and its split
// along the inner dimension.
#ifndef KLE_CUDA_WSTREAM_CUH
#define KLE_CUDA_WSTREAM_CUH

#include <cuda_runtime.h>
#include <stdint.h>

namespace kle_ops {

inline int blocks_for(long n, int per) { return (int)((n + per - 1) / per); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// weights are read once per step: do not let them push activations out of L1
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// the tensor-core GEMMs' tiles: TBM tokens by TBN weight rows, k-slices of TBK, rows of shared
// memory padded by TPAD halves (fragment loads of 8 rows land in 8 bank groups)
constexpr int TBM = 64, TBN = 128, TBK = 32, TPAD = 8;

// splits along Kd for a tensor-core product of T tokens: enough blocks for two waves when the
// tiles alone fill less than one, each split at least two k-slices (the loads' pipeline); 1: none
int splits_for(int T, int N, int Kd);
// Y[i] = sum over z < S of part[z n + i], z in order (one result whatever the blocks' timing)
void splitk_sum(const float *part, int S, long n, float *Y, cudaStream_t st);

}  // namespace kle_ops

#endif
