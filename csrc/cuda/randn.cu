// pydiffuse::randn on the GPU: the noise stream N(seed, step, b, j) written out in C order.
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) randn_kernel(const Geometry g, const NoiseStream rng,
                                                         T* __restrict__ out) {
  for_each_group<N>(g, [&](int64_t i, int64_t b, int64_t m) {
    float z[N];
    load_noise<NoiseMode::kStream>(static_cast<const T*>(nullptr), rng, g, i, b, m, z);
    store(out + i, z);
  });
}

}  // namespace

cudaError_t launch_randn(const Geometry& g, DType dtype, const NoiseStream& rng, void* out,
                         cudaStream_t stream) {
  const int64_t n = g.batch * g.per_sample;
  if (n == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return dispatch_flags(
        [&](auto vec) {
          constexpr int N = decltype(vec)::value ? kVecWidth<T> : 1;
          randn_kernel<T, N><<<blocks_for(n / N), kThreads, 0, stream>>>(g, rng,
                                                                          static_cast<T*>(out));
          return cudaGetLastError();
        },
        vectorizable<T>(g.per_sample, {out}));
  });
}

}  // namespace pydiffuse::cuda
