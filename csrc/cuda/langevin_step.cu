// pydiffuse::langevin_step on the GPU: mean = x + e score; next = mean + sqrt(2 e) z in one pass.
// SNR-adaptive e (score-SDE corrector) first sums score^2 and z^2 per chunk of a sample (a warp
// per short sample; z from the stream is regenerated, not stored), then one block turns the
// partials into e_b in a fixed order (deterministic, as csrc/cpu/langevin_step.cpp), then the
// step runs with e_b.
#include "common/step.h"
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

constexpr int64_t kReduceChunk = kThreads * 16;  // elements per block and partial sum
constexpr int64_t kWarpSample = 32 * 16;         // samples up to this size: one warp each
constexpr int kWarpsPerBlock = kThreads / 32;

int64_t chunks_per_sample(const Geometry& g) {
  return (g.per_sample + kReduceChunk - 1) / kReduceChunk;
}

// The sum of v over the block, in a fixed order, returned to every thread.
__device__ double2 block_sum(double2 v) {
  constexpr int kWarps = kThreads / 32;
  __shared__ double2 warp_sums[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v.x += __shfl_down_sync(0xffffffffu, v.x, offset);
    v.y += __shfl_down_sync(0xffffffffu, v.y, offset);
  }
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < kWarps ? warp_sums[lane] : double2{0.0, 0.0};
#pragma unroll
  for (int offset = kWarps / 2; offset > 0; offset /= 2) {
    v.x += __shfl_down_sync(0xffffffffu, v.x, offset);
    v.y += __shfl_down_sync(0xffffffffu, v.y, offset);
  }
  __syncthreads();  // warp_sums is free for the next call
  return {__shfl_sync(0xffffffffu, v.x, 0), __shfl_sync(0xffffffffu, v.y, 0)};
}

// (sum score^2, sum z^2) over one thread's share of sample b: offsets m = first, first + stride,
// ... below m_end, N elements from each (vectors never straddle samples here: kAccess is
// kVector or kScalar).
template <typename T, Access kAccess, NoiseMode kNoise>
__device__ float2 thread_sum_squares(const LangevinArgs& a, int64_t b, int64_t first,
                                     int64_t m_end, int64_t stride) {
  constexpr int N = kWidth<T, kAccess>;
  const Geometry& g = a.g;
  const T* __restrict__ score = static_cast<const T*>(a.score);
  float ss = 0.0f, zz = 0.0f;
  for (int64_t m = first; m < m_end; m += stride) {
    const int64_t i = b * g.per_sample + m;
    float s[N], z[N];
    load(score + i, s);
    load_noise<kNoise, kAccess>(static_cast<const T*>(a.noise), a.rng, g, i,
                                Lanes<N>::template from<false>(b, m, g.per_sample), z);
#pragma unroll
    for (int k = 0; k < N; ++k) ss += s[k] * s[k], zz += z[k] * z[k];
  }
  return {ss, zz};
}

// partial[chunk] = (sum score^2, sum z^2) over the kReduceChunk elements of one chunk of a sample.
template <typename T, Access kAccess, NoiseMode kNoise>
__global__ void __launch_bounds__(kThreads)
    sum_squares_kernel(const LangevinArgs a, int64_t chunks, double2* __restrict__ partial) {
  constexpr int N = kWidth<T, kAccess>;
  const Geometry& g = a.g;
  for (int64_t chunk = blockIdx.x; chunk < g.batch * chunks; chunk += gridDim.x) {
    const int64_t b = chunk / chunks, m_begin = (chunk - b * chunks) * kReduceChunk;
    const float2 sums = thread_sum_squares<T, kAccess, kNoise>(
        a, b, m_begin + threadIdx.x * N, min(m_begin + kReduceChunk, g.per_sample), kThreads * N);
    const double2 total = block_sum({sums.x, sums.y});
    if (threadIdx.x == 0) partial[chunk] = total;
  }
}

// partial[b] = (sum score^2, sum z^2) of sample b for samples of at most kWarpSample elements
// (one chunk each): one warp per sample, where a block per sample would idle most of its
// threads; the lanes' sums meet in a fixed butterfly order (deterministic).
template <typename T, Access kAccess, NoiseMode kNoise>
__global__ void __launch_bounds__(kThreads)
    sum_squares_warp_kernel(const LangevinArgs a, double2* __restrict__ partial) {
  constexpr int N = kWidth<T, kAccess>;
  const Geometry& g = a.g;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  // b is the same for the 32 lanes of a warp: they loop, and shuffle, together
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
       b < g.batch; b += warps) {
    const float2 sums =
        thread_sum_squares<T, kAccess, kNoise>(a, b, lane * N, g.per_sample, 32 * N);
    double2 v{sums.x, sums.y};
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      v.x += __shfl_xor_sync(0xffffffffu, v.x, offset);
      v.y += __shfl_xor_sync(0xffffffffu, v.y, offset);
    }
    if (lane == 0) partial[b] = v;
  }
}

// e_b = 2 step_size_b (snr_b |z| / |score|)^2, norm = (|score|, |z|).
__device__ float adaptive_step_size(const float* coefs, int64_t batch, int64_t b, double2 norm) {
  const double ratio = coefs[kSnr * batch + b] * norm.y / norm.x;
  return static_cast<float>(2.0 * coefs[kStepSize * batch + b] * ratio * ratio);
}

// One block: e_b from the chunk partials, with per-sample norms or their batch means.
__global__ void __launch_bounds__(kThreads)
    step_sizes_kernel(const double2* __restrict__ partial, int64_t chunks, const float* coefs,
                      int64_t batch, bool per_sample_norm, float* __restrict__ e) {
  double2 norm_sum{0.0, 0.0};
  for (int64_t b = threadIdx.x; b < batch; b += kThreads) {
    double2 sq{0.0, 0.0};
    for (const double2* p = partial + b * chunks; p < partial + (b + 1) * chunks; ++p)
      sq.x += p->x, sq.y += p->y;
    const double2 norm{sqrt(sq.x), sqrt(sq.y)};
    if (per_sample_norm)
      e[b] = adaptive_step_size(coefs, batch, b, norm);
    else
      norm_sum.x += norm.x, norm_sum.y += norm.y;
  }
  if (per_sample_norm) return;
  const double2 total = block_sum(norm_sum);
  const double2 mean{total.x / batch, total.y / batch};
  for (int64_t b = threadIdx.x; b < batch; b += kThreads)
    e[b] = adaptive_step_size(coefs, batch, b, mean);
}

template <typename T, Access kAccess, NoiseMode kNoise>
__global__ void __launch_bounds__(kThreads)
    langevin_kernel(const LangevinArgs a, const float* __restrict__ e) {
  constexpr int N = kWidth<T, kAccess>;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ score = static_cast<const T*>(a.score);
  T* __restrict__ next = static_cast<T*>(a.next);
  T* __restrict__ mean_out = static_cast<T*>(a.mean);
  for_each_group<N, kAccess>(a.g, [&](int64_t i, const Lanes<N>& l) {
    float xv[N], s[N], z[N], mean[N], nx[N];
    load(x + i, xv);
    load(score + i, s);
    load_noise<kNoise, kAccess>(static_cast<const T*>(a.noise), a.rng, a.g, i, l, z);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float eb = e[l.b[k]];
      mean[k] = xv[k] + eb * s[k];
      nx[k] = mean[k] + __fsqrt_rn(2.0f * eb) * z[k];
    }
    store(next + i, nx);
    if (mean_out) store(mean_out + i, mean);
  });
}

}  // namespace

// [B * chunks] double2 partials, then [B] float step sizes.
size_t langevin_scratch_bytes(const Geometry& g) {
  return static_cast<size_t>(g.batch) *
         (chunks_per_sample(g) * sizeof(double2) + sizeof(float));
}

cudaError_t launch_langevin_step(const LangevinArgs& a, cudaStream_t stream) {
  const Geometry& g = a.g;
  const int64_t n = g.batch * g.per_sample;
  if (n == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    const Access access = step_access<T>(g, {a.x, a.score, a.noise, a.next, a.mean});
    return dispatch_noise(noise_mode(a.noise, a.rng), [&](auto noise) {
      constexpr NoiseMode kNoise = decltype(noise)::value;
      if constexpr (kNoise == NoiseMode::kNone) {
        return cudaErrorInvalidValue;  // a Langevin step needs noise or seeds
      } else {
        return dispatch_access(access, [&](auto access) {
          constexpr Access kAccess = decltype(access)::value;
          const float* e = a.coefs + kStepSize * g.batch;
          if (a.adaptive) {
            constexpr Access kInSample =
                kAccess == Access::kVectorAcross ? Access::kScalar : kAccess;
            const int64_t chunks = chunks_per_sample(g);
            auto* partial = static_cast<double2*>(a.scratch);
            float* adaptive_e = reinterpret_cast<float*>(partial + g.batch * chunks);
            if (g.per_sample <= kWarpSample) {
              const int64_t blocks = (g.batch + kWarpsPerBlock - 1) / kWarpsPerBlock;
              sum_squares_warp_kernel<T, kInSample, kNoise>
                  <<<static_cast<unsigned>(std::min(blocks, kMaxBlocks)), kThreads, 0, stream>>>(
                      a, partial);
            } else {
              sum_squares_kernel<T, kInSample, kNoise>
                  <<<static_cast<unsigned>(std::min(g.batch * chunks, kMaxBlocks)), kThreads, 0,
                     stream>>>(a, chunks, partial);
            }
            step_sizes_kernel<<<1, kThreads, 0, stream>>>(partial, chunks, a.coefs, g.batch,
                                                         a.per_sample_norm, adaptive_e);
            e = adaptive_e;
          }
          langevin_kernel<T, kAccess, kNoise>
              <<<blocks_for(n / kWidth<T, kAccess>), kThreads, 0, stream>>>(a, e);
          return cudaGetLastError();  // a failed launch's error stays pending until read
        });
      }
    });
  });
}

}  // namespace pydiffuse::cuda
