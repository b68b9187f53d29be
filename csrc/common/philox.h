// The noise stream: N(seed, step, b, j), one function on every backend (DESIGN.md).
// One Philox4x32-10 call (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
// with key = seed and counter = (j / 4, b, step, 0) gives the four normals j = 4g .. 4g+3:
// Box-Muller on the words (w0, w1) gives r cos, r sin for j % 4 = 0, 1; (w2, w3) for 2, 3.
// Words map to uniforms as Triton's uint_to_uniform_float does. No torch headers.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define PD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PD_HOST_DEVICE inline __attribute__((always_inline))
#endif
#if defined(__CUDA_ARCH__)
#define PD_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define PD_UNROLL  // nvcc's host pass: these loops run on the device only
#else
#define PD_UNROLL _Pragma("GCC unroll 16")  // full unrolling lets GCC vectorize the outer loop
#endif

namespace pydiffuse {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // 2^-31
constexpr float kMinUniform = 1e-7f;
constexpr float kTwoPi = 6.283185307179586f;

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

PD_HOST_DEVICE PhiloxWords philox4x32_10(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c3 = 0;
  PD_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return {c0, c1, c2, c3};
}

// uint32 -> [0, 1]: reinterpret as int32, fold negatives onto [0, 2^31), scale by 2^-31.
PD_HOST_DEVICE float uint_to_uniform(uint32_t w) {
  int32_t i = static_cast<int32_t>(w);
  i = i < 0 ? -i - 1 : i;
  return static_cast<float>(i) * kUniformScale;
}

// Key and counter words of sample b: one seed for the batch keys with the seed and counts b;
// per-sample seeds key with seeds[b] and count 0, so a sample's noise follows its own seed.
struct NoiseKey {
  uint64_t seed;
  uint32_t counter_b;
};

PD_HOST_DEVICE NoiseKey noise_key(const int64_t* seeds, bool per_sample, int64_t b) {
  return per_sample ? NoiseKey{static_cast<uint64_t>(seeds[b]), 0u}
                    : NoiseKey{static_cast<uint64_t>(seeds[0]), static_cast<uint32_t>(b)};
}

// Logical C-order index j within a sample from the offset m in memory: identity for contiguous
// tensors; for channels_last (per sample [S, C] in memory) j = c * S + s.
PD_HOST_DEVICE int64_t logical_index(int64_t m, bool channels_last, int64_t channels,
                                     int64_t spatial) {
  return channels_last ? (m % channels) * spatial + m / channels : m;
}

#if defined(__CUDACC__)
// The noise stream on the GPU, immune to --use_fast_math: that flag turns logf, cosf and
// sinf into lg2.approx / cos.approx / sin.approx, whose absolute error (~2^-21.4) becomes |z|
// errors up to ~1e-3 where u -> 1. Here log u = e ln2 + log1p(m - 1) with u = m 2^e, m in
// [sqrt(1/2), sqrt(2)) (m - 1 exact), (cos, sin)(2 pi u) = (cos, sin)pi(2 u) and sqrt is
// correctly rounded: log1pf, sincospif and __fsqrt_rn have no fast-math form.
__device__ __forceinline__ float box_muller_radius(uint32_t word) {
  int e;
  float m = frexpf(fmaxf(uint_to_uniform(word), kMinUniform), &e);  // m in [1/2, 1)
  if (m < 0.70710678f) m *= 2.0f, --e;
  return __fsqrt_rn(-2.0f * (static_cast<float>(e) * 0.693147182f + log1pf(m - 1.0f)));
}

// N(key, step, j) alone: one Philox call for one of its four normals.
__device__ __forceinline__ float noise_at(NoiseKey key, int64_t j, int64_t step) {
  const PhiloxWords w = philox4x32_10(key.seed, static_cast<uint32_t>(j >> 2), key.counter_b,
                                      static_cast<uint32_t>(step));
  const bool second_pair = (j >> 1) & 1;
  const float r = box_muller_radius(second_pair ? w.w2 : w.w0);
  const float u2 = 2.0f * uint_to_uniform(second_pair ? w.w3 : w.w1);
  return r * ((j & 1) ? sinpif(u2) : cospif(u2));
}

// N(key, step, j) for the four j = 4 group .. 4 group + 3 of one Philox call.
__device__ __forceinline__ void noise4(NoiseKey key, int64_t group, int64_t step, float* z) {
  const PhiloxWords w = philox4x32_10(key.seed, static_cast<uint32_t>(group), key.counter_b,
                                      static_cast<uint32_t>(step));
  const float ra = box_muller_radius(w.w0), rc = box_muller_radius(w.w2);
  float sin_b, cos_b, sin_d, cos_d;
  sincospif(2.0f * uint_to_uniform(w.w1), &sin_b, &cos_b);
  sincospif(2.0f * uint_to_uniform(w.w3), &sin_d, &cos_d);
  z[0] = ra * cos_b, z[1] = ra * sin_b, z[2] = rc * cos_d, z[3] = rc * sin_d;
}

#endif  // __CUDACC__

}  // namespace pydiffuse
