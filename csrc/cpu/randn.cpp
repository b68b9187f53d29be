// pydiffuse::randn, its host side: the schema and Meta kernel, the kernels' input invariants, the
// CPU kernel and the CPU and CUDA bindings (the CUDA kernel: csrc/cuda/randn.cu); and
// fill_noise: the noise stream in two vector passes over a span's Philox calls: their words in
// SIMD lanes (philox_lanes.cpp), then Box-Muller written so that GCC vectorizes it (log, cos,
// sin as branch-free polynomials), built for AVX-512, AVX2 and baseline x86-64 and chosen at
// load time (target_clones).
#include <cstring>

#include "cpu/chunks.h"
#include "cpu/noise.h"
#include "cpu/philox_lanes.h"
#include "torch_utils.h"
#ifdef PYDIFFUSE_WITH_CUDA
#include "cuda_binding.h"
#endif

namespace pydiffuse {

TORCH_LIBRARY_FRAGMENT(pydiffuse, m) {
  m.def("randn(Tensor seeds, SymInt[] shape, int step, ScalarType dtype) -> Tensor");
}

namespace {

at::Tensor randn_meta(const at::Tensor& seeds, c10::SymIntArrayRef shape, int64_t,
                      at::ScalarType dtype) {
  return at::empty_symint(shape, seeds.options().dtype(dtype));
}

// The output of randn, checked: C-order, `dtype`, on the seeds' device.
at::Tensor prepare_randn(const at::Tensor& seeds, at::IntArrayRef shape, at::ScalarType dtype) {
  TORCH_CHECK(!shape.empty(), "pydiffuse: randn needs a shape with a batch dimension");
  auto out = seeds.is_cpu() ? cpu::empty_output(shape, dtype, at::MemoryFormat::Contiguous)
                            : at::empty(shape, seeds.options().dtype(dtype));
  check_float(out, "randn's dtype");
  check_seeds(seeds, out.size(0), out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) { m.impl("randn", &randn_meta); }

namespace cpu {
namespace {

PD_HOST_DEVICE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
PD_HOST_DEVICE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// log(u) for u in [1e-7, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s) = 2 (s + s^3/3 + ... + s^9/9), s = (m - 1)/(m + 1), |s| <= 0.1716.
PD_HOST_DEVICE float log_unit(float u) {
  const uint32_t bits = float_to_bits(u);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127);
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  e = high ? e + 1.0f : e;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  const float series =
      2.0f * s * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9)))));
  return e * 0.693145751953125f + (e * 1.428606765330187e-06f + series);  // ln 2 = hi + lo
}

// cos(2 pi u) for u in [0, 1]: fold to a in [0, 1/4] by symmetry (exact float subtractions),
// then Taylor in theta = 2 pi a <= pi/2 (truncation below 1e-8).
PD_HOST_DEVICE float cos_two_pi(float u) {
  float a = u > 0.5f ? 1.0f - u : u;
  const bool flip = a > 0.25f;
  a = flip ? 0.5f - a : a;
  const float t = kTwoPi * a, t2 = t * t;
  const float c =
      1.0f + t2 * (-1.0f / 2 + t2 * (1.0f / 24 + t2 * (-1.0f / 720 + t2 * (1.0f / 40320 +
      t2 * (-1.0f / 3628800 + t2 * (1.0f / 479001600))))));
  return flip ? -c : c;
}

// sin(2 pi u) for u in [0, 1]: fold to a in [-1/4, 1/4], then Taylor in theta = 2 pi a.
PD_HOST_DEVICE float sin_two_pi(float u) {
  float a = u > 0.5f ? u - 1.0f : u;
  a = a > 0.25f ? 0.5f - a : a;
  a = a < -0.25f ? -0.5f - a : a;
  const float t = kTwoPi * a, t2 = t * t;
  return t * (1.0f + t2 * (-1.0f / 6 + t2 * (1.0f / 120 + t2 * (-1.0f / 5040 + t2 * (
      1.0f / 362880 + t2 * (-1.0f / 39916800 + t2 * (1.0f / 6227020800.0f)))))));
}

// j[i] = the logical C-order index of memory offset m_begin + i within a channels-last sample.
void logical_indices(uint32_t* j, int64_t m_begin, int64_t count, const Geometry& g) {
  int64_t c = m_begin % g.channels, s = m_begin / g.channels;
  for (int64_t i = 0; i < count; ++i) {
    j[i] = static_cast<uint32_t>(c * g.spatial + s);
    if (++c == g.channels) c = 0, ++s;
  }
}

PD_HOST_DEVICE float radius(uint32_t w) {
  return __builtin_sqrtf(-2.0f * log_unit(std::max(uint_to_uniform(w), kMinUniform)));
}

}  // namespace

// The Philox calls of span s, contiguous layout: for each sample of the span, the calls that
// cover its elements m_begin .. m_begin + count - 1 (count + 3 over 4 of them, or one more when
// the piece starts inside a call), listed sample after sample; then their words (``run``).
struct PhiloxCalls {
  static constexpr int64_t kMax = kChunk + 1;
  uint32_t key_lo[kMax], key_hi[kMax], counter_b[kMax], group[kMax];
  uint32_t w0[kMax], w1[kMax], w2[kMax], w3[kMax];
  int64_t n = 0;
  void add(NoiseKey key, int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g, ++n) {
      key_lo[n] = static_cast<uint32_t>(key.seed);
      key_hi[n] = static_cast<uint32_t>(key.seed >> 32);
      counter_b[n] = key.counter_b, group[n] = static_cast<uint32_t>(g);
    }
  }
  // The four words of every call at this step (philox_planes: the calls in SIMD lanes).
  void run(uint32_t step) {
    uint32_t* const words[4] = {w0, w1, w2, w3};
    philox_planes(words, key_lo, key_hi, group, counter_b, step, n);
  }
};

// The four normals of each call k: z[4k + r] is element j = 4 group[k] + r of its sample.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static void normals4(float* z, const PhiloxCalls& c) {
  for (int64_t k = 0; k < c.n; ++k) {
    const float ra = radius(c.w0[k]), rc = radius(c.w2[k]);
    const float ub = uint_to_uniform(c.w1[k]), ud = uint_to_uniform(c.w3[k]);
    z[4 * k] = ra * cos_two_pi(ub);
    z[4 * k + 1] = ra * sin_two_pi(ub);
    z[4 * k + 2] = rc * cos_two_pi(ud);
    z[4 * k + 3] = rc * sin_two_pi(ud);
  }
}

// Samples of one or two elements (kPer) use only the first pair of their one Philox call (group
// 0): z[kPer k + r] = r-th normal of call k, the second pair's Box-Muller skipped.
template <int kPer>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static void first_normals(float* z, const PhiloxCalls& c) {
  for (int64_t k = 0; k < c.n; ++k) {
    const float ra = radius(c.w0[k]), ub = uint_to_uniform(c.w1[k]);
    z[kPer * k] = ra * cos_two_pi(ub);
    if (kPer == 2) z[kPer * k + 1] = ra * sin_two_pi(ub);
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
static void fill_noise_indexed(float* z, const uint32_t* j, int64_t count, NoiseKey key,
                               uint32_t step) {
  for (int64_t i = 0; i < count; ++i) {
    const PhiloxWords w = philox4x32_10(key.seed, j[i] >> 2, key.counter_b, step);
    const bool second_pair = (j[i] >> 1) & 1;
    const float r = radius(second_pair ? w.w2 : w.w0);
    const float u = uint_to_uniform(second_pair ? w.w3 : w.w1);
    z[i] = r * ((j[i] & 1) ? sin_two_pi(u) : cos_two_pi(u));
  }
}

// Contiguous layout: the span's Philox calls in one vectorized pass; their normals are the
// span's elements in order when every sample starts and ends on a call boundary, else they are
// copied out sample by sample.
static void fill_noise_contiguous(float* z, const Span& s, const Geometry& g,
                                  const NoiseSeeds& seeds, uint32_t step) {
  PhiloxCalls calls;
  bool aligned = true;
  for_each_segment(g, s, [&](int64_t b, int64_t m_begin, int64_t, int64_t count) {
    calls.add(seeds.key(b), m_begin >> 2, (m_begin + count + 3) >> 2);
    aligned = aligned && m_begin % 4 == 0 && count % 4 == 0;
  });
  calls.run(step);
  if (aligned) return normals4(z, calls);
  if (s.count > g.per_sample && g.per_sample == 1) return first_normals<1>(z, calls);
  if (s.count > g.per_sample && g.per_sample == 2) return first_normals<2>(z, calls);
  float quad[4 * PhiloxCalls::kMax];
  normals4(quad, calls);
  if (s.count > g.per_sample) {  // whole samples, each ceil(per_sample / 4) calls from m = 0
    const int64_t per = g.per_sample, calls_per = (per + 3) / 4;
    for (int64_t k = 0; k < s.count / per; ++k)
      for (int64_t r = 0; r < per; ++r) z[k * per + r] = quad[4 * k * calls_per + r];
    return;
  }
  std::memcpy(z, quad + (s.m_begin & 3), s.count * sizeof(float));
}

void fill_noise(float* z, const Span& s, const Geometry& g, const NoiseSeeds& seeds,
                uint32_t step) {
  if (!g.channels_last) return fill_noise_contiguous(z, s, g, seeds, step);
  for_each_segment(g, s, [&](int64_t b, int64_t m_begin, int64_t offset, int64_t count) {
    uint32_t j[kChunk];
    logical_indices(j, m_begin, count, g);
    fill_noise_indexed(z + offset, j, count, seeds.key(b), step);
  });
}

namespace {

template <typename scalar_t>
void randn_kernel(const Geometry& g, const NoiseSeeds& seeds, int64_t step, scalar_t* out) {
  for_each_span(g, [&](const Span& s) {
    float buffer[kChunk];
    float* z = result_f32(out + s.base, buffer);
    fill_noise(z, s, g, seeds, static_cast<uint32_t>(step));
    store_result(z, s.count, out + s.base);
  });
}

at::Tensor randn_cpu(const at::Tensor& seeds, at::IntArrayRef shape, int64_t step,
                     at::ScalarType dtype) {
  auto out = prepare_randn(seeds, shape, dtype);
  if (out.numel() == 0) return out;
  const auto g = geometry_of(out, at::MemoryFormat::Contiguous);
  const auto seeds_c = seeds.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pydiffuse_randn", [&] {
    randn_kernel(g, NoiseSeeds{seeds_c.data_ptr<int64_t>(), seeds_c.numel() > 1}, step,
                 out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) { m.impl("randn", &randn_cpu); }

}  // namespace cpu

#ifdef PYDIFFUSE_WITH_CUDA
namespace cuda {
namespace {

at::Tensor randn_cuda(const at::Tensor& seeds, at::IntArrayRef shape, int64_t step,
                      at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(seeds.device());
  auto out = prepare_randn(seeds, shape, dtype);
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(launch_randn(geometry_of(out, at::MemoryFormat::Contiguous), dtype_of(out),
                              noise_stream(seeds.contiguous(), step), out.mutable_data_ptr(),
                              c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) { m.impl("randn", &randn_cuda); }

}  // namespace cuda
#endif  // PYDIFFUSE_WITH_CUDA

}  // namespace pydiffuse
