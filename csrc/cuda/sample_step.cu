// pydiffuse::sample_step on the GPU: one pass, N elements (one 128-bit access) per thread and
// iteration; the step equation of common/step.h in float32 with each element's sample's
// coefficient row.
#include "common/step.h"
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

template <typename T, Access kAccess, bool kGuided, bool kClipped, bool kLearnedVar,
          NoiseMode kNoise>
__global__ void __launch_bounds__(kThreads) sample_step_kernel(const SampleStepArgs a) {
  using Eq = StepEquation<kGuided, kClipped, kLearnedVar>;
  constexpr int N = kWidth<T, kAccess>;
  const Geometry& g = a.g;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ out = static_cast<const T*>(a.out);
  const T* __restrict__ uncond = static_cast<const T*>(a.out_uncond);
  T* __restrict__ next = static_cast<T*>(a.next);
  T* __restrict__ x0_out = static_cast<T*>(a.x0);
  const int64_t shift = variance_shift(g.per_sample, g.channels_last, g.channels);
  for_each_group<N, kAccess>(g, [&](int64_t i, const Lanes<N>& l) {
    // a vector straddles samples only without a learned variance (step_access)
    const int64_t o_at = kLearnedVar ? split_output_offset(l.b[0], l.m[0], g.per_sample,
                                                           g.channels_last, g.channels)
                                     : i;
    float xv[N], o[N], u[N], v[N], z[N], x0[N], nx[N];
    load(x + i, xv);
    load(out + o_at, o);
    if constexpr (kGuided) load(uncond + o_at, u);
    if constexpr (kLearnedVar) load(out + o_at + shift, v);
    load_noise<kNoise, kAccess>(static_cast<const T*>(a.noise), a.rng, g, i, l, z);
    StepCoefRow row = StepCoefRow::load(a.coefs, g.batch, l.b[0]);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if constexpr (kAccess == Access::kVectorAcross)
        row = StepCoefRow::load(a.coefs, g.batch, l.b[k]);
      x0[k] = Eq::x0(row, xv[k], o[k], kGuided ? u[k] : 0.0f);
      nx[k] = Eq::next(row, xv[k], x0[k], kLearnedVar ? v[k] : 0.0f, z[k]);
    }
    store(next + i, nx);
    if (x0_out) store(x0_out + i, x0);
  });
}

}  // namespace

cudaError_t launch_sample_step(const SampleStepArgs& a, cudaStream_t stream) {
  const int64_t n = a.g.batch * a.g.per_sample;
  if (n == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    // A 2C-channel output is not contiguous across samples, nor, channels-last, across channel
    // groups: no vector may straddle either.
    Access access = step_access<T>(a.g, {a.x, a.out, a.out_uncond, a.noise, a.next, a.x0},
                                   !a.learned_var);
    if (a.learned_var && a.g.channels_last && a.g.channels % kVecWidth<T> != 0)
      access = Access::kScalar;
    return dispatch_noise(noise_mode(a.noise, a.rng), [&](auto noise) {
      constexpr NoiseMode kNoise = decltype(noise)::value;
      return dispatch_access(access, [&](auto access) {
        constexpr Access kAccess = decltype(access)::value;
        return dispatch_flags(
            [&](auto guided, auto clipped, auto learned_var) {
              constexpr bool kLearnedVar = decltype(learned_var)::value;
              if constexpr (kLearnedVar && kAccess == Access::kVectorAcross) {
                return cudaErrorInvalidValue;  // step_access never gives this
              } else {
                sample_step_kernel<T, kAccess, decltype(guided)::value, decltype(clipped)::value,
                                   kLearnedVar, kNoise>
                    <<<blocks_for(n / kWidth<T, kAccess>), kThreads, 0, stream>>>(a);
                return cudaGetLastError();
              }
            },
            a.out_uncond != nullptr, a.clipped, a.learned_var);
      });
    });
  });
}

}  // namespace pydiffuse::cuda
