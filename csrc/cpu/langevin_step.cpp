// pydiffuse::langevin_step, its host side: the schema and Meta kernel, the kernels' input
// invariants, the CPU kernel and the CPU and CUDA bindings (the CUDA kernel:
// csrc/cuda/langevin_step.cu).
// The CPU kernel: plain, one pass. SNR-adaptive (score-SDE corrector): a first pass sums
// |score|^2 and |z|^2 per chunk, the per-sample step sizes follow, and a second pass writes the
// step. The first pass keeps the noise stream it draws in a float32 buffer: on the CPU, drawing
// it again costs about three times the buffer's memory traffic.
#include <cmath>
#include <vector>

#include "common/step.h"
#include "cpu/chunks.h"
#include "cpu/noise.h"
#include "torch_utils.h"
#ifdef PYDIFFUSE_WITH_CUDA
#include "cuda_binding.h"
#endif

namespace pydiffuse {

TORCH_LIBRARY_FRAGMENT(pydiffuse, m) {
  m.def(
      "langevin_step(Tensor x, Tensor score, Tensor coefs, bool adaptive, bool per_sample_norm, "
      "Tensor? noise, Tensor? seeds, int step, bool return_mean) -> (Tensor, Tensor)");
}

namespace {

std::tuple<at::Tensor, at::Tensor> langevin_step_meta(
    const at::Tensor& x, const at::Tensor&, const at::Tensor&, bool, bool, const OptTensor&,
    const OptTensor&, int64_t, bool return_mean) {
  auto format = kernel_format(x);
  auto next = at::empty_like(x, x.options(), format);
  auto mean = return_mean ? at::empty_like(x, x.options(), format) : x.new_empty({0});
  return {next, mean};
}

struct LangevinInputs {
  Geometry g;
  at::Tensor x, score, coefs, next, mean;
  OptTensor noise, seeds;
};

LangevinInputs prepare_langevin_step(const at::Tensor& x, const at::Tensor& score,
                                     const at::Tensor& coefs, const OptTensor& noise,
                                     const OptTensor& seeds, bool return_mean) {
  check_float(x, "x");
  check_like(score, x, "score");
  if (noise) check_like(*noise, x, "noise");
  // the kernels draw z from `seeds` unless `noise` is given: one of them must be
  TORCH_CHECK(noise || seeds, "pydiffuse: langevin_step needs noise or seeds");
  const auto format = kernel_format(x);
  const auto g = geometry_of(x, format);
  check_table(coefs, kNumLangevinCoefs, g.batch, x, "coefs");
  if (seeds) check_seeds(*seeds, g.batch, x);
  const auto xc = x.contiguous(format);
  return {g, xc, score.contiguous(format), coefs.contiguous(), output_like(xc, format),
          output_like(xc, format, return_mean), contiguous_as(noise, format),
          contiguous_as(seeds, at::MemoryFormat::Contiguous)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) { m.impl("langevin_step", &langevin_step_meta); }

namespace cpu {
namespace {

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void langevin_chunk(const float* x, const float* score, const float* z, float e, float* next,
                    float* mean, int64_t count) {
  const float scale = std::sqrt(2.0f * e);
  for (int64_t i = 0; i < count; ++i) {
    const float m = x[i] + e * score[i];
    next[i] = m + scale * z[i];
    if (mean) mean[i] = m;
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
double sum_squares(const float* v, int64_t count) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= count; i += 16)
    for (int k = 0; k < 16; ++k) lanes[k] += v[i + k] * v[i + k];
  double total = 0;
  for (; i < count; ++i) total += static_cast<double>(v[i]) * v[i];
  for (float lane : lanes) total += lane;
  return total;
}

struct LangevinArgs {
  Geometry g;
  const float* coefs;
  const int64_t* seeds;
  bool per_sample_seeds;
  int64_t step;
  float* noise_store;  // [B, per_sample] in x's memory order, or null
  bool noise_stored;   // noise_store holds the stream
};

// The chunk's noise as float32: the given tensor, the stored stream, or the stream drawn into
// `buffer` (or into the store, when there is one).
template <typename scalar_t>
const float* chunk_noise(const LangevinArgs& a, const scalar_t* noise, int64_t b, int64_t m_begin,
                         int64_t count, float* buffer) {
  const int64_t base = b * a.g.per_sample + m_begin;
  if (noise) return load_f32(noise + base, count, buffer);
  if (a.noise_stored) return a.noise_store + base;
  float* z = a.noise_store ? a.noise_store + base : buffer;
  fill_noise(z, m_begin, count, a.g, noise_key(a.seeds, a.per_sample_seeds, b),
             static_cast<uint32_t>(a.step));
  return z;
}

// e_b = 2 * step_size_b * (snr_b * |z| / |score|)^2, norms per sample or batch-averaged.
template <typename scalar_t>
std::vector<float> adaptive_step_sizes(const LangevinArgs& a, const scalar_t* score,
                                       const scalar_t* noise, bool per_sample_norm) {
  const Geometry& g = a.g;
  std::vector<double> partial(2 * num_chunks(g));
  for_each_chunk(g, [&](int64_t chunk, int64_t b, int64_t m_begin, int64_t count) {
    float sb[kChunk], zb[kChunk];
    partial[2 * chunk] = sum_squares(load_f32(score + b * g.per_sample + m_begin, count, sb), count);
    partial[2 * chunk + 1] = sum_squares(chunk_noise(a, noise, b, m_begin, count, zb), count);
  });
  const int64_t per_sample_chunks = chunks_per_sample(g);
  std::vector<double> score_norm(g.batch), noise_norm(g.batch);
  for (int64_t b = 0; b < g.batch; ++b) {
    double ss = 0, zz = 0;
    for (int64_t k = 0; k < per_sample_chunks; ++k) {
      ss += partial[2 * (b * per_sample_chunks + k)];
      zz += partial[2 * (b * per_sample_chunks + k) + 1];
    }
    score_norm[b] = std::sqrt(ss), noise_norm[b] = std::sqrt(zz);
  }
  if (!per_sample_norm) {
    double ss = 0, zz = 0;
    for (int64_t b = 0; b < g.batch; ++b) ss += score_norm[b], zz += noise_norm[b];
    std::fill(score_norm.begin(), score_norm.end(), ss / g.batch);
    std::fill(noise_norm.begin(), noise_norm.end(), zz / g.batch);
  }
  std::vector<float> e(g.batch);
  for (int64_t b = 0; b < g.batch; ++b) {
    const double ratio = a.coefs[kSnr * g.batch + b] * noise_norm[b] / score_norm[b];
    e[b] = static_cast<float>(2.0 * a.coefs[kStepSize * g.batch + b] * ratio * ratio);
  }
  return e;
}

template <typename scalar_t>
void langevin_kernel(const LangevinArgs& a, const float* e, const scalar_t* x,
                     const scalar_t* score, const scalar_t* noise, scalar_t* next,
                     scalar_t* mean) {
  const Geometry& g = a.g;
  for_each_chunk(g, [&](int64_t, int64_t b, int64_t m_begin, int64_t count) {
    float xb[kChunk], sb[kChunk], zb[kChunk], nb[kChunk], mb[kChunk];
    const int64_t base = b * g.per_sample + m_begin;
    float* next_f = result_f32(next + base, nb);
    float* mean_f = mean ? result_f32(mean + base, mb) : nullptr;
    langevin_chunk(load_f32(x + base, count, xb), load_f32(score + base, count, sb),
                   chunk_noise(a, noise, b, m_begin, count, zb), e[b], next_f, mean_f, count);
    store_result(next_f, count, next + base);
    if (mean) store_result(mean_f, count, mean + base);
  });
}

std::tuple<at::Tensor, at::Tensor> langevin_step_cpu(
    const at::Tensor& x, const at::Tensor& score, const at::Tensor& coefs, bool adaptive,
    bool per_sample_norm, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool return_mean) {
  auto in = prepare_langevin_step(x, score, coefs, noise, seeds, return_mean);
  if (in.x.numel() == 0) return {in.next, in.mean};
  const bool store_noise = adaptive && !in.noise;
  const auto noise_store = store_noise ? cpu::empty_output(in.x.sizes(), at::kFloat,
                                                           kernel_format(in.x))
                                       : at::Tensor();
  LangevinArgs a{in.g, in.coefs.data_ptr<float>(),
                 in.seeds ? in.seeds->data_ptr<int64_t>() : nullptr,
                 in.seeds && in.seeds->numel() > 1, step,
                 store_noise ? noise_store.data_ptr<float>() : nullptr, false};
  const int64_t batch = in.g.batch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "langevin", [&] {
    const scalar_t* noise_ptr = in.noise ? in.noise->data_ptr<scalar_t>() : nullptr;
    const scalar_t* score_ptr = in.score.data_ptr<scalar_t>();
    std::vector<float> e(a.coefs + kStepSize * batch, a.coefs + (kStepSize + 1) * batch);
    if (adaptive) e = adaptive_step_sizes(a, score_ptr, noise_ptr, per_sample_norm);
    a.noise_stored = store_noise;
    langevin_kernel<scalar_t>(a, e.data(), in.x.data_ptr<scalar_t>(), score_ptr, noise_ptr,
                              in.next.data_ptr<scalar_t>(),
                              return_mean ? in.mean.data_ptr<scalar_t>() : nullptr);
  });
  return {in.next, in.mean};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) { m.impl("langevin_step", &langevin_step_cpu); }

}  // namespace cpu

#ifdef PYDIFFUSE_WITH_CUDA
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> langevin_step_cuda(
    const at::Tensor& x, const at::Tensor& score, const at::Tensor& coefs, bool adaptive,
    bool per_sample_norm, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool return_mean) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_langevin_step(x, score, coefs, noise, seeds, return_mean);
  if (in.x.numel() == 0) return {in.next, in.mean};
  // Adaptive step sizes need per-chunk partial sums: scratch from the torch allocator.
  const auto scratch = adaptive ? scratch_bytes(langevin_scratch_bytes(in.g), in.x) : at::Tensor();
  const LangevinArgs args{in.g, dtype_of(in.x), in.x.const_data_ptr(), in.score.const_data_ptr(),
                          data_or_null(in.noise), in.coefs.const_data_ptr<float>(),
                          noise_stream(in.seeds, step), adaptive, per_sample_norm,
                          in.next.mutable_data_ptr(),
                          return_mean ? in.mean.mutable_data_ptr() : nullptr,
                          adaptive ? scratch.mutable_data_ptr() : nullptr};
  C10_CUDA_CHECK(launch_langevin_step(args, c10::cuda::getCurrentCUDAStream()));
  return {in.next, in.mean};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) { m.impl("langevin_step", &langevin_step_cuda); }

}  // namespace cuda
#endif  // PYDIFFUSE_WITH_CUDA

}  // namespace pydiffuse
