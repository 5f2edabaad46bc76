// tc.cuh: the tensor-core and async-copy primitives the kernels share (kda_chunk.cu,
// mla_decode.cu, gemm16.cu), and the overlapped (programmatic dependent) launch's configuration
// (kda_step.cu, ops.cuh's launch_pdl).
//
// Products run as mma.sync m16n8k8 TF32 in the 3xTF32 form: each f32 operand is split into a
// TF32 high part and a TF32 remainder, and hi*hi + hi*lo + lo*hi keeps the products at f32
// accuracy (the dropped lo*lo term is 2^-22 of the product), which the 1e-5 bar needs and plain
// TF32 (1e-3) would miss. Fragment layouts (PTX ISA, m16n8k8 .tf32), g = lane / 4, t = lane % 4:
//   A 16x8 row-major: a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//   B 8x8:            b0 (k=t, n=g)  b1 (k=t+4, n=g)
//   C 16x8:           c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
#ifndef KLE_CUDA_TC_CUH
#define KLE_CUDA_TC_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace kle_tc {

// the current device's SM count, which the kernels size their grids by (0 without a device)
inline int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 0;
  return n;
}

// A launch on `stream`; with `overlap` (programmatic dependent launch) the kernel may start while
// the one before it in the stream is finishing, and runs until its cudaGridDependencySynchronize()
// alongside it: what it reads there must not be written by that kernel. attr: room for the one
// launch attribute this may set.
inline cudaLaunchConfig_t overlap_launch(dim3 grid, dim3 block, void *stream, bool overlap, cudaLaunchAttribute *attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.stream = (cudaStream_t)stream;
  if (overlap) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cfg;
}

__device__ __forceinline__ void cp_async16(float *dst, const float *src) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
// 16 bytes from src, or 16 zero bytes where !valid (nothing is read then)
__device__ __forceinline__ void cp_async16_zfill(void *dst, const void *src, bool valid) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// hi = x cut to TF32 (its 13 low mantissa bits cleared), lo = x - hi (exact in f32) cut the
// same way: three integer/f32 instructions. With cvt.rna.tf32.f32 the MLA decode issued about 13
// instructions per mma and was issue-bound (5.3 with these splits and the other changes).
// Cutting instead of rounding leaves |lo| < 2^-10 |x| and loses < 2^-20 |x| in cutting lo, errors
// of every product's own size, so they stay 2^-20 relative in a sum whatever its cancellation.
__device__ __forceinline__ uint32_t tf32_bits(float x) { return __float_as_uint(x) & 0xffffe000u; }
__device__ __forceinline__ void split_tf32(float x, uint32_t &hi, uint32_t &lo) {
  hi = tf32_bits(x);
  lo = tf32_bits(x - __uint_as_float(hi));
}
// the same for an operand held in registers across a loop: the empty asm hides x's value, so the
// compiler redoes the split each time instead of keeping both halves alive (twice the registers)
__device__ __forceinline__ void split_tf32_nohoist(float x, uint32_t &hi, uint32_t &lo) {
  asm volatile("" : "+f"(x));
  split_tf32(x, hi, lo);
}
// not volatile, so the compiler keeps the order callers give and may still interleave
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Pass p of c += a b in 3xTF32: 0 lo*hi, 1 hi*lo, 2 hi*hi. Callers run pass 0 over all their
// independent accumulators, then pass 1, then pass 2: an mma waits for the one before it on the
// same accumulator, so three in a row on one would stall the warp each time.
__device__ __forceinline__ void mma_3xtf32_pass(int p, float (&c)[4], const uint32_t (&ah)[4], const uint32_t (&al)[4],
                                                const uint32_t (&bh)[2], const uint32_t (&bl)[2]) {
  if (p == 0)
    mma_tf32(c, al, bh[0], bh[1]);
  else if (p == 1)
    mma_tf32(c, ah, bl[0], bl[1]);
  else
    mma_tf32(c, ah, bh[0], bh[1]);
}

// BF16 products (mma m16n8k16, f32 accumulators), for operands one side of which is BF16 already
// (a BF16 cache): the other, f32, side is split into a BF16 high part and a BF16 remainder, and
// hi*b + lo*b keeps it to 2^-18 of each product (2.5-4.5e-6 relative in MLA attention against
// float64, where 3xTF32 gave 0.7-2.6e-6), with half the mma of 2xTF32 at the same k.
// Fragments (PTX ISA, m16n8k16 .bf16), g = lane / 4, t = lane % 4, each register two values,
// the lower k in the low half:
//   A 16x16 row-major: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8:            b0 (k=2t..2t+1, n=g)  b1 (k=2t+8.., n=g)
//   C as m16n8k8's.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// the bits of x rounded to BF16, and of the remainder x - hi rounded again
__device__ __forceinline__ void split_bf16_bits(float x, uint32_t &hi, uint32_t &lo) {
  hi = __bfloat16_as_ushort(__float2bfloat16_rn(x));
  lo = __bfloat16_as_ushort(__float2bfloat16_rn(x - __uint_as_float(hi << 16)));
}
// two values rounded to BF16 as a fragment register: (a, b) with a in the low half
__device__ __forceinline__ uint32_t bf16_pair(float a, float b) {
  return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(a)) | (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(b)) << 16;
}
// two values' halves packed as a fragment register: (a, b) with a in the low half
__device__ __forceinline__ void split_bf16_pair(float a, float b, uint32_t &hi, uint32_t &lo) {
  uint32_t ha, la, hb, lb;
  split_bf16_bits(a, ha, la);
  split_bf16_bits(b, hb, lb);
  hi = ha | hb << 16;
  lo = la | lb << 16;
}
// f(mi, ni, h, row, col) for every accumulator pair (c[2h], c[2h + 1]) of a warp's MI x NI grid of
// m16n8 C fragments acc[mi][ni]: its row (g + 8h in fragment mi) and its first column (2t in
// fragment ni) within the warp's tile. The epilogues' one walk over the C layout.
template <int MI, int NI, class F>
__device__ __forceinline__ void each_c_pair(int lane, F f) {
#pragma unroll
  for (int mi = 0; mi < MI; mi++)
#pragma unroll
    for (int ni = 0; ni < NI; ni++)
#pragma unroll
      for (int h = 0; h < 2; h++) f(mi, ni, h, mi * 16 + lane / 4 + h * 8, ni * 8 + 2 * (lane % 4));
}
// A warp's accumulators acc[MI][NI] into Y [., N] at its tile's origin (m0, n0): rows below T,
// row m to Y's row order[base + m] with GATHER (a grouped GEMM's gathered pairs), columns below N
template <int MI, int NI, bool GATHER>
__device__ __forceinline__ void store_c_tile(int lane, const float (&acc)[MI][NI][4], float *Y, int N, int T, int m0, int n0,
                                             const int32_t *order, int base) {
  each_c_pair<MI, NI>(lane, [&](int mi, int ni, int h, int r, int c) {
    const int m = m0 + r, n = n0 + c;
    if (m >= T) return;
    float *yr = Y + (size_t)(GATHER ? order[base + m] : m) * N;
    if (n < N) yr[n] = acc[mi][ni][2 * h];
    if (n + 1 < N) yr[n + 1] = acc[mi][ni][2 * h + 1];
  });
}
// four 8x8 BF16 matrices from shared memory as they lie: lanes 8i .. 8i + 7 give the rows of
// matrix i, each 16 bytes; r[i] holds (row lane / 4, columns 2 (lane % 4) and + 1): with rows
// along n and columns along k, matrix i's B fragment register
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *row) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// four 8x8 BF16 matrices from shared memory, transposed: lanes 8i .. 8i + 7 give the rows of
// matrix i, each 16 bytes; r[i] is matrix i's B fragment register (k = its row, n = its column)
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *row) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

}  // namespace kle_tc

#endif
