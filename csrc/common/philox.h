// The noise stream: N(seed, step, b, j), one function on every backend (DESIGN.md).
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) with
// key = seed and counter = (j, b, step, 0); Box-Muller on the first two output words, mapped to
// uniforms as Triton's uint_to_uniform_float does. No torch headers: host and device code.
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

// The two words Box-Muller uses; the other two Philox outputs are not needed.
struct PhiloxPair {
  uint32_t w0, w1;
};

PD_HOST_DEVICE PhiloxPair philox_first_two(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2) {
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
  return {c0, c1};
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

// Box-Muller with the platform's logf/cosf (CUDA); the CPU kernels use a vectorizable
// polynomial version of the same formula (csrc/cpu/noise_math.h).
PD_HOST_DEVICE float box_muller(PhiloxPair w) {
  const float u0 = fmaxf(uint_to_uniform(w.w0), kMinUniform);
  const float u1 = uint_to_uniform(w.w1);
  return sqrtf(-2.0f * logf(u0)) * cosf(kTwoPi * u1);
}

PD_HOST_DEVICE float noise_at(NoiseKey key, int64_t j, int64_t step) {
  return box_muller(philox_first_two(key.seed, static_cast<uint32_t>(j), key.counter_b,
                                     static_cast<uint32_t>(step)));
}

}  // namespace pydiffuse
