// philox_planes (see philox_lanes.h): Philox4x32-10 (Salmon et al. 2011) in 16 (AVX-512) or 8
// (AVX2) lanes of 32-bit words. Each round's mulhi / mullo of a lane by M comes from two
// pmuludq: the even lanes' products in place, the odd lanes' after a 32-bit shift; their high
// and low halves are blended back into the lanes they belong to (no cross-lane shuffles). The
// words are the scalar function's exactly (integer arithmetic); tests/ops compare the stream.
#include "cpu/philox_lanes.h"

#include "common/philox.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#endif

namespace pydiffuse::cpu {
namespace {

void philox_scalar(uint32_t* const words[4], const uint32_t* key_lo, const uint32_t* key_hi,
                   const uint32_t* c0, const uint32_t* c1, uint32_t c2, int64_t begin,
                   int64_t n) {
  for (int64_t k = begin; k < n; ++k) {
    const uint64_t key = static_cast<uint64_t>(key_hi[k]) << 32 | key_lo[k];
    const PhiloxWords w = philox4x32_10(key, c0[k], c1[k], c2);
    words[0][k] = w.w0, words[1][k] = w.w1, words[2][k] = w.w2, words[3][k] = w.w3;
  }
}

#if defined(__x86_64__)

#define PD_AVX512 __attribute__((target("avx512f")))
#define PD_AVX2 __attribute__((target("avx2")))

// (mulhi, mullo) of each 32-bit lane of a by m (m in every lane).
PD_AVX512 inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

PD_AVX2 inline void mulhilo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

PD_AVX2 inline __m256i load8(const uint32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

PD_AVX512 void philox_avx512(uint32_t* const words[4], const uint32_t* key_lo,
                             const uint32_t* key_hi, const uint32_t* c0_in,
                             const uint32_t* c1_in, uint32_t c2_in, int64_t n) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i w0 = _mm512_set1_epi32(static_cast<int>(kPhiloxW0));
  const __m512i w1 = _mm512_set1_epi32(static_cast<int>(kPhiloxW1));
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 live = n - k >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - k)) - 1);
    __m512i k0 = _mm512_maskz_loadu_epi32(live, key_lo + k);
    __m512i k1 = _mm512_maskz_loadu_epi32(live, key_hi + k);
    __m512i c0 = _mm512_maskz_loadu_epi32(live, c0_in + k);
    __m512i c1 = _mm512_maskz_loadu_epi32(live, c1_in + k);
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(c2_in)), c3 = _mm512_setzero_si512();
    for (int round = 0; round < 10; ++round) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, k0, 0x96);  // a ^ b ^ c
      c2 = _mm512_ternarylogic_epi32(hi0, c3, k1, 0x96);
      c1 = lo1, c3 = lo0;
      k0 = _mm512_add_epi32(k0, w0), k1 = _mm512_add_epi32(k1, w1);
    }
    _mm512_mask_storeu_epi32(words[0] + k, live, c0);
    _mm512_mask_storeu_epi32(words[1] + k, live, c1);
    _mm512_mask_storeu_epi32(words[2] + k, live, c2);
    _mm512_mask_storeu_epi32(words[3] + k, live, c3);
  }
}

PD_AVX2 void philox_avx2(uint32_t* const words[4], const uint32_t* key_lo,
                         const uint32_t* key_hi, const uint32_t* c0_in, const uint32_t* c1_in,
                         uint32_t c2_in, int64_t n) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i w0 = _mm256_set1_epi32(static_cast<int>(kPhiloxW0));
  const __m256i w1 = _mm256_set1_epi32(static_cast<int>(kPhiloxW1));
  const int64_t whole = n / 8 * 8;
  for (int64_t k = 0; k < whole; k += 8) {
    __m256i k0 = load8(key_lo + k), k1 = load8(key_hi + k), c0 = load8(c0_in + k);
    __m256i c1 = load8(c1_in + k);
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(c2_in)), c3 = _mm256_setzero_si256();
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
      c1 = lo1, c3 = lo0;
      k0 = _mm256_add_epi32(k0, w0), k1 = _mm256_add_epi32(k1, w1);
    }
    const __m256i out[4] = {c0, c1, c2, c3};
    for (int r = 0; r < 4; ++r)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[r] + k), out[r]);
  }
  philox_scalar(words, key_lo, key_hi, c0_in, c1_in, c2_in, whole, n);
}

enum class Isa { kAvx512, kAvx2, kScalar };

// The widest lanes the CPU has, capped by PYDIFFUSE_PHILOX_SIMD ("avx2" or "off"; read once),
// so that a test can run every path on one machine: they must give the same words.
Isa best_isa() {
  static const Isa isa = [] {
    const char* cap = std::getenv("PYDIFFUSE_PHILOX_SIMD");
    const bool off = cap && std::strcmp(cap, "off") == 0;
    const bool avx2_cap = cap && std::strcmp(cap, "avx2") == 0;
    if (!off && !avx2_cap && __builtin_cpu_supports("avx512f")) return Isa::kAvx512;
    if (!off && __builtin_cpu_supports("avx2")) return Isa::kAvx2;
    return Isa::kScalar;
  }();
  return isa;
}

#endif  // __x86_64__

}  // namespace

const char* philox_lanes() {
#if defined(__x86_64__)
  switch (best_isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kScalar:
      break;
  }
#endif
  return "scalar";
}

void philox_planes(uint32_t* const words[4], const uint32_t* key_lo, const uint32_t* key_hi,
                   const uint32_t* c0, const uint32_t* c1, uint32_t c2, int64_t n) {
#if defined(__x86_64__)
  switch (best_isa()) {
    case Isa::kAvx512:
      return philox_avx512(words, key_lo, key_hi, c0, c1, c2, n);
    case Isa::kAvx2:
      return philox_avx2(words, key_lo, key_hi, c0, c1, c2, n);
    case Isa::kScalar:
      break;
  }
#endif
  philox_scalar(words, key_lo, key_hi, c0, c1, c2, 0, n);
}

}  // namespace pydiffuse::cpu
