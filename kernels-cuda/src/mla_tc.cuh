// mla_tc.cuh: the tensor-core MLA attention of mla_decode.cu, which kle_cuda_mla_decode and
// kle_cuda_mla_attend (mla_attend.cu) both run where the shapes allow.
#ifndef KLE_CUDA_MLA_TC_CUH
#define KLE_CUDA_MLA_TC_CUH

namespace kle_mla {

// shapes the kernel takes: D a multiple of 8 up to 640, Dv a multiple of 64 up to min(D, 512);
// any head count and number of queries
bool tc_fits(int D, int Dv);
// device bytes tc_attend needs (0 for bad sizes or no device)
long tc_workspace_bytes(int L, int T, int H, int Dv);
// kle_cuda_mla_attend's contract (q [T, H, D], query i sees cache rows 0 .. L0 + i, out
// [T, H, Dv]) plus lse [T, H] and the scaled scores logits [T, H, L0 + T] (the rows each query
// sees) when not NULL; cache f32, or BF16 (uint16_t bits) with bf16's KLE_CUDA_CACHE_BF16 (and
// KLE_CUDA_BF16_ROUNDED: kle_cuda.h)
int tc_attend(const float *q, const void *cache, int bf16, int L0, int T, int H, int D, int Dv, float scale, float *out, float *lse,
              void *workspace, long workspace_bytes, void *stream, float *logits);

}  // namespace kle_mla

#endif
