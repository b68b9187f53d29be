// pydiffuse::lincomb on the GPU: out = sum_k c_k[b] T_k in one pass, accumulated in float32;
// the term pointers travel by value in the kernel's parameters.
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) lincomb_kernel(const LincombArgs a) {
  T* __restrict__ out = static_cast<T*>(a.out);
  for_each_group<N>(a.g, [&](int64_t i, int64_t b, int64_t) {
    float acc[N] = {};
    for (int k = 0; k < a.num_terms; ++k) {
      const float c = a.coefs[k * a.g.batch + b];
      float t[N];
      load(static_cast<const T*>(a.terms[k]) + i, t);
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] += c * t[e];
    }
    store(out + i, acc);
  });
}

}  // namespace

cudaError_t launch_lincomb(const LincombArgs& a, cudaStream_t stream) {
  const int64_t n = a.g.batch * a.g.per_sample;
  if (n == 0) return cudaSuccess;
  if (a.num_terms < 1 || a.num_terms > kMaxLincombTerms) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    bool vec = vectorizable<T>(a.g.per_sample, {a.out});
    for (int k = 0; k < a.num_terms; ++k) vec &= vectorizable<T>(a.g.per_sample, {a.terms[k]});
    return dispatch_flags(
        [&](auto vec) {
          constexpr int N = decltype(vec)::value ? kVecWidth<T> : 1;
          lincomb_kernel<T, N><<<blocks_for(n / N), kThreads, 0, stream>>>(a);
          return cudaGetLastError();
        },
        vec);
  });
}

}  // namespace pydiffuse::cuda
