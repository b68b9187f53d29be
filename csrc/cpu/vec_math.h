// Float32 math that GCC vectorizes inside the CPU kernels' loops (compiled per target_clones
// clone): exp, a divide-free reciprocal, the sigmoid, and sixteen-lane accumulators.
#pragma once

#include <cstdint>
#include <cstring>

namespace pydiffuse::cpu {

// exp(x) for float32, vectorizable: x = n ln2 + r (Cody-Waite), a degree-5 minimax polynomial
// of exp(r) on [-ln2/2, ln2/2] (2.3e-7 relative error), 2^n from the bits of the rounding sum
// t = x log2(e) + 1.5 * 2^23 + 127 (whose low mantissa bits are n + 127). x is clamped to
// [-87, 80]: no infinities, and 1 + exp(x) keeps a normal reciprocal.
inline __attribute__((always_inline)) float exp_approx(float x) {
  constexpr float kShift = 12582912.0f + 127.0f;
  x = x < -87.0f ? -87.0f : x;
  x = x > 80.0f ? 80.0f : x;
  const float t = x * 1.44269504088896341f + kShift;
  const float n = t - kShift;  // round(x log2(e))
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 8.30130061516351e-3f;
  p = p * r + 4.1915588730608626e-2f;
  p = p * r + 1.6667520580267878e-1f;
  p = p * r + 4.999889235744184e-1f;
  p = p * r + 9.999997078885453e-1f;
  p = p * r + 1.0000000720270854f;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits <<= 23;  // (n + 127) << 23: 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// 1 / v for v >= 1 without a divide (vdivps is the slowest instruction of the loop): a bit-trick
// first guess (12% error), then three Newton steps (error 12% -> 1.4% -> 2e-4 -> 4e-8).
inline __attribute__((always_inline)) float reciprocal(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits = 0x7EF311C3 - bits;
  float r;
  std::memcpy(&r, &bits, sizeof(r));
  for (int step = 0; step < 3; ++step) r = r * (2.0f - v * r);
  return r;
}

inline __attribute__((always_inline)) float sigmoid(float z) {
  return reciprocal(1.0f + exp_approx(-z));
}

constexpr int64_t kLanes = 16;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // Lanes never cross a non-inlined call
// Sixteen float32 lanes (GCC vector extension: one AVX-512 register, two AVX2 or four SSE ones).
// Sums of a run accumulate in lanes: GCC does not vectorize a float sum (it would reassociate).
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline __attribute__((always_inline)) Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline __attribute__((always_inline)) double lane_sum(Lanes v) {
  double t = 0;
  for (int64_t l = 0; l < kLanes; ++l) t += v[l];
  return t;
}
#pragma GCC diagnostic pop

}  // namespace pydiffuse::cpu
