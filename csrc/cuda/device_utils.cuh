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

// Elements per 128-bit access.
template <typename T>
constexpr int kVecWidth = 16 / sizeof(T);

// 128-bit accesses are possible over runs of `count` elements (samples, rows): no vector
// straddles two runs and every pointer is aligned.
template <typename T>
bool vectorizable(int64_t count, std::initializer_list<const void*> pointers) {
  if (count % kVecWidth<T> != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// How a step kernel walks [batch, per_sample] data: one element per thread and iteration, one
// 128-bit vector inside one sample (per_sample % N == 0), or one that may straddle samples
// (B * per_sample % N == 0: small or odd samples keep their vectors, each lane its own sample).
enum class Access : int { kScalar, kVector, kVectorAcross };

template <typename T>
Access step_access(const Geometry& g, std::initializer_list<const void*> pointers,
                   bool across = true) {
  if (vectorizable<T>(g.per_sample, pointers)) return Access::kVector;
  return across && vectorizable<T>(g.batch * g.per_sample, pointers) ? Access::kVectorAcross
                                                                     : Access::kScalar;
}

// Elements per access.
template <typename T, Access kAccess>
constexpr int kWidth = kAccess == Access::kScalar ? 1 : kVecWidth<T>;

// The samples b[k] and in-sample offsets m[k] of N consecutive elements from (b, m): all in
// sample b, or (kAcross) wrapping into the next samples.
template <int N>
struct Lanes {
  int64_t b[N], m[N];
  template <bool kAcross>
  __device__ __forceinline__ static Lanes from(int64_t b, int64_t m, int64_t per_sample) {
    Lanes l;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      l.b[k] = b, l.m[k] = m++;
      if (kAcross && m == per_sample) m = 0, ++b;
    }
    return l;
  }
};

// fn(i, lanes) for every N-element group of [batch, per_sample] data over a grid-stride loop,
// i = b * per_sample + m the flat offset of the group's first element: the work follows the
// elements, whatever the samples' size.
template <int N, Access kAccess, typename Fn>
__device__ __forceinline__ void for_each_group(const Geometry& g, Fn&& fn) {
  const int64_t n = g.batch * g.per_sample, stride = int64_t{gridDim.x} * blockDim.x * N;
  for (int64_t i = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * N; i < n; i += stride) {
    const int64_t b = i / g.per_sample;
    fn(i, Lanes<N>::template from<kAccess == Access::kVectorAcross>(b, i - b * g.per_sample,
                                                                    g.per_sample));
  }
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

// z of the N elements at flat offset i (lanes l): the given tensor, the stream at their logical
// indices (one Philox call per four lanes where a vector lies in one C-order sample, so that its
// lanes are whole groups of four), or 0.
template <NoiseMode kMode, Access kAccess, int N, typename T>
__device__ __forceinline__ void load_noise(const T* noise, const NoiseStream& rng,
                                           const Geometry& g, int64_t i, const Lanes<N>& l,
                                           float (&z)[N]) {
  if constexpr (kMode == NoiseMode::kGiven) {
    load(noise + i, z);
  } else if constexpr (kMode == NoiseMode::kStream) {
    if (N % 4 == 0 && kAccess == Access::kVector && !g.channels_last) {
      const NoiseKey key = noise_key(rng.seeds, rng.per_sample_seeds, l.b[0]);
#pragma unroll
      for (int k = 0; k < N; k += 4) noise4(key, (l.m[0] + k) >> 2, rng.step, z + k);
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k)
        z[k] = noise_at(noise_key(rng.seeds, rng.per_sample_seeds, l.b[k]),
                        logical_index(l.m[k], g.channels_last, g.channels, g.spatial), rng.step);
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

template <typename Fn>
cudaError_t dispatch_access(Access access, Fn&& fn) {
  switch (access) {
    case Access::kScalar: return fn(std::integral_constant<Access, Access::kScalar>{});
    case Access::kVector: return fn(std::integral_constant<Access, Access::kVector>{});
    case Access::kVectorAcross:
      return fn(std::integral_constant<Access, Access::kVectorAcross>{});
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
