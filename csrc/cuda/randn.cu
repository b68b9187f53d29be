// pydiffuse::randn on the GPU: the noise stream N(seed, step, b, j) written out in C order.
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

template <typename T, Access kAccess>
__global__ void __launch_bounds__(kThreads) randn_kernel(const Geometry g, const NoiseStream rng,
                                                         T* __restrict__ out) {
  constexpr int N = kWidth<T, kAccess>;
  for_each_group<N, kAccess>(g, [&](int64_t i, const Lanes<N>& l) {
    float z[N];
    load_noise<NoiseMode::kStream, kAccess>(static_cast<const T*>(nullptr), rng, g, i, l, z);
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
    return dispatch_access(step_access<T>(g, {out}), [&](auto access) {
      constexpr Access kAccess = decltype(access)::value;
      randn_kernel<T, kAccess><<<blocks_for(n / kWidth<T, kAccess>), kThreads, 0, stream>>>(
          g, rng, static_cast<T*>(out));
      return cudaGetLastError();
    });
  });
}

}  // namespace pydiffuse::cuda
