// pydiffuse::lincomb on the GPU: out = sum_k c_k[b] T_k in one pass, accumulated in float32;
// the term pointers travel by value in the kernel's parameters.
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

template <typename T, Access kAccess>
__global__ void __launch_bounds__(kThreads) lincomb_kernel(const LincombArgs a) {
  constexpr int N = kWidth<T, kAccess>;
  T* __restrict__ out = static_cast<T*>(a.out);
  for_each_group<N, kAccess>(a.g, [&](int64_t i, const Lanes<N>& l) {
    float acc[N] = {};
    for (int k = 0; k < a.num_terms; ++k) {
      const float* c = a.coefs + k * a.g.batch;
      float t[N];
      load(static_cast<const T*>(a.terms[k]) + i, t);
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] += c[l.b[e]] * t[e];
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
    Access access = step_access<T>(a.g, {a.out});
    for (int k = 0; k < a.num_terms; ++k)  // a term's access differs only when it is misaligned
      if (step_access<T>(a.g, {a.terms[k]}) != access) access = Access::kScalar;
    return dispatch_access(access, [&](auto access) {
      constexpr Access kAccess = decltype(access)::value;
      lincomb_kernel<T, kAccess><<<blocks_for(n / kWidth<T, kAccess>), kThreads, 0, stream>>>(a);
      return cudaGetLastError();
    });
  });
}

}  // namespace pydiffuse::cuda
