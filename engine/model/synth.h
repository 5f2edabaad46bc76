/*
 * synth.h: the values of a synthetic model's weights, the same on every backend (not public).
 *
 * A full-size model (Kimi-Linear-48B-A3B: about 98 GB in BF16) cannot be downloaded here, so
 * benchmarks and the GPU node run one whose weights are generated where they live: element i of
 * a tensor is a pure function of (seed, tensor, i), computed by the host for host memory and by
 * the device for device memory (the CUDA backend includes this header). Identical values on
 * both sides make the CPU engine the reference for the GPU one on the same synthetic model.
 */
#ifndef KLE_SYNTH_H
#define KLE_SYNTH_H

#include <stdint.h>

#ifdef __CUDACC__
#define KLE_SYNTH_FN __host__ __device__ static inline
#else
#define KLE_SYNTH_FN static inline
#endif

/* splitmix64's finalizer: a bijection that spreads every input bit over the output */
KLE_SYNTH_FN uint64_t kle_synth_mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* one tensor's stream: (seed, key) folded once, so a device thread hashes only its index */
KLE_SYNTH_FN uint64_t kle_synth_stream(uint64_t seed, uint64_t key) { return kle_synth_mix(seed ^ kle_synth_mix(key)); }

/* the key of (role, layer, expert): layer -1 is the model's global tensors */
KLE_SYNTH_FN uint64_t kle_synth_key(int role, int layer, int expert) {
  return (uint64_t)(uint32_t)role | (uint64_t)(uint32_t)(layer + 1) << 8 | (uint64_t)(uint32_t)(expert + 1) << 24;
}

/*
 * offset + scale * r, r uniform in [-1, 1) on a 2^-23 grid. r * scale is exact in double (24-bit
 * by 24-bit significands) and the sum is rounded once in double, once to float: the same bits
 * whether or not a compiler fuses the multiply and add, on the host and on the GPU.
 */
KLE_SYNTH_FN float kle_synth_value(uint64_t stream, uint64_t i, float offset, float scale) {
  const uint64_t h = kle_synth_mix(stream + i * 0xd1b54a32d192ed03ull);
  const double r = (double)(h >> 40) * (1.0 / 8388608.0) - 1.0;
  return (float)((double)offset + r * (double)scale);
}

/* bfloat16 bits of x, rounded to nearest even (the values here are finite) */
KLE_SYNTH_FN uint16_t kle_synth_bf16(float x) {
  union {
    float f;
    uint32_t u;
  } v;
  v.f = x;
  return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

#ifndef __CUDACC__
/* n values (a multiple of 32) of a stream as Q8_0 blocks (34 bytes each, kle_quantize's) */
void kle_synth_q8_0(uint8_t *dst, uint64_t n, uint64_t stream, float offset, float scale);
#endif

#endif
