// Float32 math for the CPU kernels' loops (compiled per target_clones clone): exp, the sigmoid
// and SiLU, on floats or sixteen-lane vectors, and sixteen-lane accumulators.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace pydiffuse::cpu {

constexpr int64_t kLanes = 16;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // Lanes never cross a non-inlined call
// Sixteen float32 lanes (GCC vector extension: one AVX-512 register, two AVX2 or four SSE ones).
// Sums of a run accumulate in lanes: GCC does not vectorize a float sum (it would reassociate).
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntLanes __attribute__((vector_size(kLanes * sizeof(int32_t))));

// The integer type of T's bits: int32_t for float, IntLanes for Lanes.
template <typename T>
using BitsOf = std::conditional_t<std::is_same_v<T, float>, int32_t, IntLanes>;

template <typename To, typename From>
inline __attribute__((always_inline)) To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

// The math below is written once for T = float (scalar tails) and T = Lanes (explicit vectors,
// which GCC keeps vectorized where its SLP vectorizer of unrolled scalar code does not).

// exp(x) for float32: x = n ln2 + r (Cody-Waite), a degree-5 minimax polynomial of exp(r) on
// [-ln2/2, ln2/2] (2.3e-7 relative error), 2^n from the bits of the rounding sum
// t = x log2(e) + 1.5 * 2^23 + 127 (whose low mantissa bits are n + 127). x is clamped to
// [-87, 80]: no infinities, and 1 + exp(x) keeps a normal reciprocal.
template <typename T>
inline __attribute__((always_inline)) T exp_approx(T x) {
  constexpr float kShift = 12582912.0f + 127.0f;
  x = x < -87.0f ? -87.0f : x;
  x = x > 80.0f ? 80.0f : x;
  const T t = x * 1.44269504088896341f + kShift;
  const T n = t - kShift;  // round(x log2(e))
  T r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  T p = r * 8.30130061516351e-3f + 4.1915588730608626e-2f;
  p = p * r + 1.6667520580267878e-1f;
  p = p * r + 4.999889235744184e-1f;
  p = p * r + 9.999997078885453e-1f;
  p = p * r + 1.0000000720270854f;
  return p * bit_cast<T>(bit_cast<BitsOf<T>>(t) << 23);  // (n + 127) << 23: 2^n
}

// sigmoid(z) = 1 / (1 + exp(-z)) and silu(z) = z sigmoid(z) = z / (1 + exp(-z)): exp's relative
// error and one rounding (tests/ops/test_group_norm.py measures the maximum against float64).
// A true divide: on the AVX-512 EPYC this was measured on, it ties with a bit-trick reciprocal
// and three Newton steps (7 instructions) over a GN + SiLU pass, and is one instruction.
template <typename T>
inline __attribute__((always_inline)) T sigmoid(T z) {
  return 1.0f / (1.0f + exp_approx(-z));
}

template <typename T>
inline __attribute__((always_inline)) T silu(T z) {
  return z / (1.0f + exp_approx(-z));
}

inline __attribute__((always_inline)) Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The sum of the lanes in float64, pairwise (a tree of depth 4, not a chain of 16 adds).
inline __attribute__((always_inline)) double lane_sum(Lanes v) {
  double t[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) t[l] = v[l];
  for (int64_t half = kLanes / 2; half > 0; half /= 2)
    for (int64_t l = 0; l < half; ++l) t[l] += t[l + half];
  return t[0];
}
#pragma GCC diagnostic pop

}  // namespace pydiffuse::cpu
