// float16 / bfloat16 <-> float32 element conversions that GCC vectorizes (c10::Half's and
// c10::BFloat16's are scalar), bit-exact with c10's: round to nearest even, subnormals, inf and
// NaN (a NaN stays a NaN; its payload may differ). Wrap the loops in a target_clones function.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace pydiffuse::cpu {

inline __attribute__((always_inline)) uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline __attribute__((always_inline)) float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE half -> float: the exponent rebased by one multiply (subnormals included), then inf/NaN.
inline __attribute__((always_inline)) float half_to_float(uint16_t h) {
  const uint32_t em = static_cast<uint32_t>(h & 0x7FFFu) << 13;
  uint32_t u = float_bits(bits_float(em) * 0x1p112f);
  u = em >= (0x7C00u << 13) ? (em | 0x7F800000u) : u;
  return bits_float(u | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

// float -> IEEE half, round to nearest even (F. Giesen's float_to_half_fast3_rtne, branch-free).
inline __attribute__((always_inline)) uint16_t float_to_half(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = u & 0x80000000u, f = u ^ sign;
  const uint32_t huge = f > 0x7F800000u ? 0x7E00u : 0x7C00u;  // NaN, or inf / overflow
  constexpr uint32_t kDenormMagic = ((127 - 15) + (23 - 10) + 1) << 23;
  const uint32_t subnormal = float_bits(bits_float(f) + bits_float(kDenormMagic)) - kDenormMagic;
  const uint32_t normal = (f + ((15u - 127u) << 23) + 0xFFFu + ((f >> 13) & 1u)) >> 13;
  const uint32_t h = f >= ((127u + 16u) << 23) ? huge : (f < (113u << 23) ? subnormal : normal);
  return static_cast<uint16_t>(h | (sign >> 16));
}

inline __attribute__((always_inline)) float bfloat16_to_float(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

inline __attribute__((always_inline)) uint16_t float_to_bfloat16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(x != x ? 0x7FC0u : rounded);
}

// dst[i] = float(src[i]) for c10::Half or c10::BFloat16 data.
template <typename scalar_t>
inline __attribute__((always_inline)) void widen(const scalar_t* src, int64_t n, float* dst) {
  static_assert(sizeof(scalar_t) == 2);
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      dst[i] = half_to_float(bits[i]);
    } else {
      dst[i] = bfloat16_to_float(bits[i]);
    }
  }
}

// dst[i] = scalar_t(src[i]), rounded to nearest even.
template <typename scalar_t>
inline __attribute__((always_inline)) void narrow(const float* src, int64_t n, scalar_t* dst) {
  static_assert(sizeof(scalar_t) == 2);
  auto* bits = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      bits[i] = float_to_half(src[i]);
    } else {
      bits[i] = float_to_bfloat16(src[i]);
    }
  }
}

}  // namespace pydiffuse::cpu
