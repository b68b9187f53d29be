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
#include "cpu/coef_table.h"
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
  return {g, xc, score.contiguous(format), table_layout(coefs), output_like(xc, format),
          output_like(xc, format, return_mean), contiguous_as(noise, format),
          contiguous_as(seeds, at::MemoryFormat::Contiguous)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) { m.impl("langevin_step", &langevin_step_meta); }

namespace cpu {
namespace {

// next = x + e score + sqrt(2 e) z (and mean = x + e score) over a run; e one step size or (es)
// one per element.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void langevin_chunk(const float* x, const float* score, const float* z, float e, const float* es,
                    float* next, float* mean, int64_t count) {
  const float scale = std::sqrt(2.0f * e);
  for (int64_t i = 0; i < count; ++i) {
    const float ei = es ? es[i] : e;
    const float m = x[i] + ei * score[i];
    next[i] = m + (es ? std::sqrt(2.0f * ei) : scale) * z[i];
    if (mean) mean[i] = m;
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
double sum_squares_vectorized(const float* v, int64_t count) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= count; i += 16)
    for (int k = 0; k < 16; ++k) lanes[k] += v[i + k] * v[i + k];
  double total = 0;
  for (; i < count; ++i) total += static_cast<double>(v[i]) * v[i];
  for (float lane : lanes) total += lane;
  return total;
}

// sum v_i^2, in lanes of 16 floats (a short sample in double, without the call's overhead).
inline double sum_squares(const float* v, int64_t count) {
  if (count >= 16) return sum_squares_vectorized(v, count);
  double total = 0;
  for (int64_t i = 0; i < count; ++i) total += static_cast<double>(v[i]) * v[i];
  return total;
}

struct LangevinArgs {
  Geometry g;
  CoefTable coefs;
  NoiseSeeds seeds;
  int64_t step;
  float* noise_store;  // [B, per_sample] in x's memory order, or null
  bool noise_stored;   // noise_store holds the stream
};

// The span's noise as float32: the given tensor, the stored stream, or the stream drawn into
// `buffer` (or into the store, when there is one).
template <typename scalar_t>
const float* span_noise(const LangevinArgs& a, const scalar_t* noise, const Span& s,
                        float* buffer) {
  if (noise) return load_f32(noise + s.base, s.count, buffer);
  if (a.noise_stored) return a.noise_store + s.base;
  float* z = a.noise_store ? a.noise_store + s.base : buffer;
  fill_noise(z, s, a.g, a.seeds, static_cast<uint32_t>(a.step));
  return z;
}

// e_b = 2 * step_size_b * (snr_b * |z| / |score|)^2, norms per sample or batch-averaged; each
// sample's sums of squares add up its pieces (cpu/chunks.h) in order.
template <typename scalar_t>
std::vector<float> adaptive_step_sizes(const LangevinArgs& a, const scalar_t* score,
                                       const scalar_t* noise, bool per_sample_norm) {
  const Geometry& g = a.g;
  const int64_t pieces = SpanLayout(g).pieces;
  std::vector<double> partial(2 * g.batch * pieces);
  for_each_span(g, [&](const Span& s) {
    float sb[kChunk], zb[kChunk];
    const float* sc = load_f32(score + s.base, s.count, sb);
    const float* z = span_noise(a, noise, s, zb);
    for_each_segment(g, s, [&](int64_t b, int64_t m_begin, int64_t offset, int64_t count) {
      const int64_t piece = b * pieces + m_begin / kChunk;
      partial[2 * piece] = sum_squares(sc + offset, count);
      partial[2 * piece + 1] = sum_squares(z + offset, count);
    });
  });
  std::vector<double> score_norm(g.batch), noise_norm(g.batch);
  for (int64_t b = 0; b < g.batch; ++b) {
    double ss = 0, zz = 0;
    for (int64_t k = 0; k < pieces; ++k) {
      ss += partial[2 * (b * pieces + k)];
      zz += partial[2 * (b * pieces + k) + 1];
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
    const double ratio = a.coefs.at(kSnr, b) * noise_norm[b] / score_norm[b];
    e[b] = static_cast<float>(2.0 * a.coefs.at(kStepSize, b) * ratio * ratio);
  }
  return e;
}

// e_b of each sample of span s from its own norms (per-sample norms, whole samples: every
// sample lies in one span, so its norms and its step take one pass), one value per element.
void span_step_sizes(const LangevinArgs& a, const Span& s, const float* score, const float* z,
                     float* e) {
  for_each_segment(a.g, s, [&](int64_t b, int64_t, int64_t offset, int64_t count) {
    const double ratio = a.coefs.at(kSnr, b) * std::sqrt(sum_squares(z + offset, count)) /
                         std::sqrt(sum_squares(score + offset, count));
    std::fill_n(e + offset, count,
                static_cast<float>(2.0 * a.coefs.at(kStepSize, b) * ratio * ratio));
  });
}

// e of sample b at e->at(0, b): one step size for the batch, or one per sample; null: each
// sample's own, from its norms in the same pass (span_step_sizes).
template <typename scalar_t>
void langevin_kernel(const LangevinArgs& a, const CoefTable* e, const scalar_t* x,
                     const scalar_t* score, const scalar_t* noise, scalar_t* next,
                     scalar_t* mean) {
  const Geometry& g = a.g;
  for_each_span(g, [&](const Span& s) {
    float xb[kChunk], sb[kChunk], zb[kChunk], nb[kChunk], mb[kChunk], eb[kChunk];
    const float* xf = load_f32(x + s.base, s.count, xb);
    const float* sf = load_f32(score + s.base, s.count, sb);
    const float* z = span_noise(a, noise, s, zb);
    float* next_f = result_f32(next + s.base, nb);
    float* mean_f = mean ? result_f32(mean + s.base, mb) : nullptr;
    if (!e) {
      span_step_sizes(a, s, sf, z, eb);
      langevin_chunk(xf, sf, z, 0.0f, eb, next_f, mean_f, s.count);
    } else if (e->shared()) {
      langevin_chunk(xf, sf, z, e->at(0, 0), nullptr, next_f, mean_f, s.count);
    } else if (g.per_sample == 1) {
      const float* es[1];
      row_columns<1>(es, *e, s);
      langevin_chunk(xf, sf, z, 0.0f, es[0], next_f, mean_f, s.count);
    } else {
      for_each_segment(g, s, [&](int64_t b, int64_t, int64_t o, int64_t count) {
        langevin_chunk(xf + o, sf + o, z + o, e->at(0, b), nullptr, next_f + o,
                       mean_f ? mean_f + o : nullptr, count);
      });
    }
    store_result(next_f, s.count, next + s.base);
    if (mean) store_result(mean_f, s.count, mean + s.base);
  });
}

std::tuple<at::Tensor, at::Tensor> langevin_step_cpu(
    const at::Tensor& x, const at::Tensor& score, const at::Tensor& coefs, bool adaptive,
    bool per_sample_norm, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool return_mean) {
  auto in = prepare_langevin_step(x, score, coefs, noise, seeds, return_mean);
  if (in.x.numel() == 0) return {in.next, in.mean};
  // per-sample norms of whole-sample spans: one pass; other adaptive steps reduce first, then
  // step, drawing the stream once into a store
  const bool one_pass = adaptive && per_sample_norm && in.g.per_sample <= kChunk;
  const bool store_noise = adaptive && !one_pass && !in.noise;
  const auto noise_store = store_noise ? cpu::empty_output(in.x.sizes(), at::kFloat,
                                                           kernel_format(in.x))
                                       : at::Tensor();
  LangevinArgs a{in.g, CoefTable::of(in.coefs),
                 NoiseSeeds{in.seeds ? in.seeds->data_ptr<int64_t>() : nullptr,
                            in.seeds && in.seeds->numel() > 1},
                 step, store_noise ? noise_store.data_ptr<float>() : nullptr, false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "langevin", [&] {
    const scalar_t* noise_ptr = in.noise ? in.noise->data_ptr<scalar_t>() : nullptr;
    const scalar_t* score_ptr = in.score.data_ptr<scalar_t>();
    CoefTable e_table{a.coefs.data + kStepSize * a.coefs.row_stride, 0, a.coefs.col_stride};
    std::vector<float> e;
    if (adaptive && !one_pass) {
      e = adaptive_step_sizes(a, score_ptr, noise_ptr, per_sample_norm);
      // batch-averaged norms with shared coefficients give every sample the same step size
      e_table = CoefTable{e.data(), 0, a.coefs.shared() && !per_sample_norm ? 0 : 1};
    }
    a.noise_stored = store_noise;
    langevin_kernel<scalar_t>(a, one_pass ? nullptr : &e_table, in.x.data_ptr<scalar_t>(),
                              score_ptr, noise_ptr, in.next.data_ptr<scalar_t>(),
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
  const auto coefs_c = in.coefs.contiguous();  // the CUDA kernels read a C-order table
  // Adaptive step sizes need per-chunk partial sums: scratch from the torch allocator.
  const auto scratch = adaptive ? scratch_bytes(langevin_scratch_bytes(in.g), in.x) : at::Tensor();
  const LangevinArgs args{in.g, dtype_of(in.x), in.x.const_data_ptr(), in.score.const_data_ptr(),
                          data_or_null(in.noise), coefs_c.const_data_ptr<float>(),
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
