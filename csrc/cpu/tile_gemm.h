// The tile products of the CPU attention kernels: C[m, n] (+)= alpha A B in float32, with B and C
// row-major and A read through two strides (row-major A, or a transposed one: the P^T dO and
// dS^T Q of the backward pass). On AVX-512 CPUs a register-blocked micro-kernel works on the
// operands where they lie (no packing: attention's tiles are small and reused from L1/L2); on
// others the BLAS torch links (sgemm_, weakly bound) or at::addmm.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc) __attribute__((weak));

namespace pydiffuse::cpu {

// A(r, k) = a[r * rs + k * ks]; one of the strides is 1.
struct StridedA {
  const float* a;
  int64_t rs, ks;
};

namespace tile_gemm_detail {

// C[MR, 16 NV] (+)= alpha A[MR, kc] B[kc, 16 NV]; the last vector of each row is masked by
// `last` (n not a multiple of 16).
template <int MR, int NV>
__attribute__((target("avx512f"))) void micro(int64_t kc, float alpha, StridedA A, const float* b,
                                             int64_t ldb, bool accumulate, float* c, int64_t ldc,
                                             __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* a = A.a;
  for (int64_t k = 0; k < kc; ++k, a += A.ks, b += ldb) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * A.rs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
  const __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + 16 * v;
      const __mmask16 mask = v == NV - 1 ? last : __mmask16(0xFFFF);
      __m512 x = _mm512_mul_ps(acc[r][v], scale);
      if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, dst));
      _mm512_mask_storeu_ps(dst, mask, x);
    }
}

using Micro = void (*)(int64_t, float, StridedA, const float*, int64_t, bool, float*, int64_t,
                       __mmask16);

// Rows per micro-tile: 24 accumulators of 32 registers (12 x 2 for narrow panels).
template <int NV>
constexpr int kRows = NV <= 2 ? 12 : 6;

template <int NV, int... R>
constexpr Micro pick(int rows, std::integer_sequence<int, R...>) {
  Micro table[] = {micro<R + 1, NV>...};
  return table[rows - 1];
}

template <int NV>
Micro micro_for(int rows) {
  return pick<NV>(rows, std::make_integer_sequence<int, kRows<NV>>{});
}

__attribute__((target("avx512f"))) inline void gemm_avx512(int64_t m, int64_t n, int64_t k,
                                                           float alpha, StridedA A, const float* b,
                                                           int64_t ldb, bool accumulate, float* c,
                                                           int64_t ldc) {
  for (int64_t n0 = 0; n0 < n; n0 += 64) {
    const int64_t cols = std::min<int64_t>(64, n - n0);
    const int nv = static_cast<int>((cols + 15) / 16);
    const int tail = static_cast<int>(cols - 16 * (nv - 1));
    const __mmask16 last = static_cast<__mmask16>((1u << tail) - 1u);
    const int max_rows = nv <= 2 ? 12 : 6;
    for (int64_t m0 = 0; m0 < m; m0 += max_rows) {
      const int rows = static_cast<int>(std::min<int64_t>(max_rows, m - m0));
      const Micro fn = nv == 1   ? micro_for<1>(rows)
                       : nv == 2 ? micro_for<2>(rows)
                       : nv == 3 ? micro_for<3>(rows)
                                 : micro_for<4>(rows);
      const StridedA a{A.a + m0 * A.rs, A.rs, A.ks};
      fn(k, alpha, a, b + n0, ldb, accumulate, c + m0 * ldc + n0, ldc, last);
    }
  }
}

inline void gemm_blas(int64_t m, int64_t n, int64_t k, float alpha, StridedA A, const float* b,
                      int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const bool trans_a = A.ks != 1;  // A stored [k, m]
  const int64_t lda = trans_a ? A.ks : A.rs;
  const float beta = accumulate ? 1.0f : 0.0f;
  if (sgemm_) {  // column-major: C^T = B^T op(A)^T
    const char ta = 'N', tb = trans_a ? 'T' : 'N';
    const int mi = n, ni = m, ki = k, la = ldb, lb = lda, lc = ldc;
    sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, b, &la, A.a, &lb, &beta, c, &lc);
    return;
  }
  auto view = [](const float* p, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<float*>(p), {rows, cols}, {ld, 1}, at::kFloat);
  };
  auto a = trans_a ? view(A.a, k, m, lda).t() : view(A.a, m, k, lda);
  view(c, m, n, ldc).addmm_(a, view(b, k, n, ldb), beta, alpha);
}

}  // namespace tile_gemm_detail

// C[m, n] = alpha A B, or C += alpha A B with `accumulate`; B [k, n] and C row-major (ldb, ldc).
using TileGemm = void (*)(int64_t m, int64_t n, int64_t k, float alpha, StridedA A,
                          const float* b, int64_t ldb, bool accumulate, float* c, int64_t ldc);

// The micro-kernel on AVX-512 CPUs, else the BLAS (also with PYDIFFUSE_CPU_GEMM=blas, for tests).
inline TileGemm choose_tile_gemm() {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  const char* force = std::getenv("PYDIFFUSE_CPU_GEMM");
  const bool blas = force && std::string(force) == "blas";
  return avx512 && !blas ? &tile_gemm_detail::gemm_avx512 : &tile_gemm_detail::gemm_blas;
}

}  // namespace pydiffuse::cpu
