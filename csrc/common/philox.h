// The noise stream: N(seed, step, b, j), one function on every backend (DESIGN.md).
// One Philox4x32-10 call (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
// with key = seed and counter = (j / 4, b, step, 0) gives the four normals j = 4g .. 4g+3:
// Box-Muller on the words (w0, w1) gives r cos, r sin for j % 4 = 0, 1; (w2, w3) for 2, 3.
// Words map to uniforms as Triton's uint_to_uniform_float does. No torch headers.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define PD_HOST_DEVICE __host__ __device__ __forceinline__
#define PD_UNROLL _Pragma("unroll")
#else
#define PD_HOST_DEVICE inline __attribute__((always_inline))
#define PD_UNROLL _Pragma("GCC unroll 16")
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

// Element j of the stream from its Philox call, with the platform's logf/sinf/cosf (CUDA); the
// CPU kernels use vectorizable polynomials of the same formula (csrc/cpu/randn.cpp).
PD_HOST_DEVICE float noise_at(NoiseKey key, int64_t j, int64_t step) {
  const PhiloxWords w = philox4x32_10(key.seed, static_cast<uint32_t>(j >> 2), key.counter_b,
                                      static_cast<uint32_t>(step));
  const bool second_pair = (j >> 1) & 1;
  const float u_a = fmaxf(uint_to_uniform(second_pair ? w.w2 : w.w0), kMinUniform);
  const float u_b = uint_to_uniform(second_pair ? w.w3 : w.w1);
  const float radius = sqrtf(-2.0f * logf(u_a)), theta = kTwoPi * u_b;
  return radius * ((j & 1) ? sinf(theta) : cosf(theta));
}

}  // namespace pydiffuse
