// Device-side helpers shared by the CUDA kernels: grid-stride loops, 128-bit accesses, the noise
// of a group of elements, and host dispatch from runtime values to template arguments.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "common/philox.h"
#include "cuda/launchers.h"

namespace pydiffuse::cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 16;

// Blocks for `work` items of one thread each, capped: kernels loop grid-stride past the cap.
inline unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::min((work + kThreads - 1) / kThreads, kMaxBlocks));
}

// fn(i, b, m) for every N-element group of [batch, per_sample] data (per_sample % N == 0), over
// a grid-stride loop: flat offset i = b * per_sample + m.
template <int N, typename Fn>
__device__ __forceinline__ void for_each_group(const Geometry& g, Fn&& fn) {
  const int64_t n = g.batch * g.per_sample, stride = int64_t{gridDim.x} * blockDim.x * N;
  for (int64_t i = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * N; i < n; i += stride) {
    const int64_t b = i / g.per_sample;
    fn(i, b, i - b * g.per_sample);
  }
}

// Elements per 128-bit access.
template <typename T>
constexpr int kVecWidth = 16 / sizeof(T);

// 128-bit accesses are possible: no vector straddles two samples and every pointer is aligned.
template <typename T>
bool vectorizable(int64_t per_sample, std::initializer_list<const void*> pointers) {
  if (per_sample % kVecWidth<T> != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// N consecutive elements as float32, in one access (p aligned to N elements).
template <int N, typename T>
__device__ __forceinline__ void load(const T* p, float (&f)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) f[k] = to_float(pack.v[k]);
}

template <int N, typename T>
__device__ __forceinline__ void store(T* p, const float (&f)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int k = 0; k < N; ++k) pack.v[k] = from_float<T>(f[k]);
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

enum class NoiseMode : int { kNone, kGiven, kStream };

inline NoiseMode noise_mode(const void* noise, const NoiseStream& rng) {
  return noise ? NoiseMode::kGiven : rng.seeds ? NoiseMode::kStream : NoiseMode::kNone;
}

// z of the N elements at memory offset m of sample b (flat offset i): the given tensor, the
// stream at their logical indices, or 0.
template <NoiseMode kMode, int N, typename T>
__device__ __forceinline__ void load_noise(const T* noise, const NoiseStream& rng,
                                           const Geometry& g, int64_t i, int64_t b, int64_t m,
                                           float (&z)[N]) {
  if constexpr (kMode == NoiseMode::kGiven) {
    load(noise + i, z);
  } else if constexpr (kMode == NoiseMode::kStream) {
    const NoiseKey key = noise_key(rng.seeds, rng.per_sample_seeds, b);
    if (N % 4 == 0 && !g.channels_last) {  // j = m .. m + N - 1, m % N == 0: whole groups
#pragma unroll
      for (int k = 0; k < N; k += 4) noise4(key, (m + k) >> 2, rng.step, z + k);
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k)
        z[k] = noise_at(
            key, logical_index(m + k, g.channels_last, g.channels, g.spatial), rng.step);
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) z[k] = 0.0f;
  }
}

// Host-side dispatch from runtime values to template arguments: fn(tag) with tag::type the
// element type, or tag::value the noise mode / flag.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(TypeTag<float>{});
    case DType::kFloat16: return fn(TypeTag<__half>{});
    case DType::kBFloat16: return fn(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

template <typename Fn>
cudaError_t dispatch_noise(NoiseMode mode, Fn&& fn) {
  switch (mode) {
    case NoiseMode::kNone: return fn(std::integral_constant<NoiseMode, NoiseMode::kNone>{});
    case NoiseMode::kGiven: return fn(std::integral_constant<NoiseMode, NoiseMode::kGiven>{});
    case NoiseMode::kStream: return fn(std::integral_constant<NoiseMode, NoiseMode::kStream>{});
  }
  return cudaErrorInvalidValue;
}

// fn(std::bool_constant<flags>...) for runtime flags.
template <typename Fn>
cudaError_t dispatch_flags(Fn&& fn) {
  return fn();
}
template <typename Fn, typename... Flags>
cudaError_t dispatch_flags(Fn&& fn, bool first, Flags... rest) {
  if (first) return dispatch_flags([&](auto... f) { return fn(std::true_type{}, f...); }, rest...);
  return dispatch_flags([&](auto... f) { return fn(std::false_type{}, f...); }, rest...);
}

}  // namespace pydiffuse::cuda
