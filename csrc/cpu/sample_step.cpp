// pydiffuse::sample_step, its host side: the schema and Meta kernel, the kernels' input
// invariants (inputs laid out as the kernels read them, outputs allocated), the CPU kernel and
// the CPU and CUDA bindings (the CUDA kernel: csrc/cuda/sample_step.cu).
// The CPU kernel makes one pass over x and the model output(s), span by span (cpu/chunks.h: up
// to kChunk consecutive elements, across samples): stage inputs as float32 (free for float32
// data), generate the span's noise, and run the branch-free step equation (common/step.h) that
// GCC vectorizes, with one coefficient row for the span, per sample, or per element.
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
      "sample_step(Tensor x, Tensor out, Tensor? out_uncond, Tensor coefs, Tensor? noise, "
      "Tensor? seeds, int step, bool has_clip, bool learned_var, bool return_x0) "
      "-> (Tensor, Tensor)");
}

namespace {

std::tuple<at::Tensor, at::Tensor> sample_step_meta(
    const at::Tensor& x, const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&, int64_t, bool, bool, bool return_x0) {
  auto format = kernel_format(x);
  auto next = at::empty_like(x, x.options(), format);
  auto x0 = return_x0 ? at::empty_like(x, x.options(), format) : x.new_empty({0});
  return {next, x0};
}

struct SampleStepInputs {
  Geometry g;
  at::Tensor x, out, coefs, next, x0;
  OptTensor uncond, noise, seeds;
};

SampleStepInputs prepare_sample_step(const at::Tensor& x, const at::Tensor& out,
                                     const OptTensor& uncond, const at::Tensor& coefs,
                                     const OptTensor& noise, const OptTensor& seeds,
                                     bool learned_var, bool return_x0) {
  check_float(x, "x");
  check_step_output(out, x, learned_var, "out");
  if (uncond) check_like(*uncond, out, "out_uncond");
  if (noise) check_like(*noise, x, "noise");
  const auto format = kernel_format(x);
  const auto g = geometry_of(x, format);
  check_table(coefs, kNumStepCoefs, g.batch, x, "coefs");
  if (seeds) check_seeds(*seeds, g.batch, x);
  const auto xc = x.contiguous(format);
  return {g, xc, out.contiguous(format), table_layout(coefs), output_like(xc, format),
          output_like(xc, format, return_x0), contiguous_as(uncond, format),
          contiguous_as(noise, format), contiguous_as(seeds, at::MemoryFormat::Contiguous)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) { m.impl("sample_step", &sample_step_meta); }

namespace cpu {
namespace {

// Float32 views of a run of elements; u, v and z are null when absent.
struct StepChunk {
  const float *x, *o, *u, *v, *z;
  float *next, *x0;
  int64_t count;

  // The elements offset .. offset + count - 1 of this run.
  StepChunk part(int64_t offset, int64_t n) const {
    const auto at = [offset](auto* p) { return p ? p + offset : p; };
    return {at(x), at(o), at(u), at(v), at(z), at(next), at(x0), n};
  }
};

// The coefficient row of every element: one row, or one per element from columns.
struct SameRow {
  const StepCoefRow& row;
  const StepCoefRow& operator[](int64_t) const { return row; }
};
struct RowColumns {
  const float* const* cols;
  StepCoefRow operator[](int64_t i) const {
    StepCoefRow row;
    for (int k = 0; k < kNumStepCoefs; ++k) row.c[k] = cols[k][i];
    return row;
  }
};

template <bool kGuided, bool kClipped, bool kLearnedVar, bool kNoisy, typename Rows>
inline __attribute__((always_inline)) void step_loop(const Rows& rows, const StepChunk& c) {
  using Eq = StepEquation<kGuided, kClipped, kLearnedVar>;
  for (int64_t i = 0; i < c.count; ++i) {
    const auto& row = rows[i];
    const float x0 = Eq::x0(row, c.x[i], c.o[i], kGuided ? c.u[i] : 0.0f);
    c.next[i] = Eq::next(row, c.x[i], x0, kLearnedVar ? c.v[i] : 0.0f, kNoisy ? c.z[i] : 0.0f);
    if (c.x0) c.x0[i] = x0;
  }
}

template <bool kGuided, bool kClipped, typename Rows>
inline __attribute__((always_inline)) void step_loop_by_variance(const Rows& rows,
                                                                 const StepChunk& c) {
  if (c.v) {
    c.z ? step_loop<kGuided, kClipped, true, true>(rows, c)
        : step_loop<kGuided, kClipped, true, false>(rows, c);
  } else {
    c.z ? step_loop<kGuided, kClipped, false, true>(rows, c)
        : step_loop<kGuided, kClipped, false, false>(rows, c);
  }
}

template <typename Rows>
inline __attribute__((always_inline)) void step_run(const Rows& rows, const StepChunk& c,
                                                    bool clipped) {
  if (c.u) {
    clipped ? step_loop_by_variance<true, true>(rows, c)
            : step_loop_by_variance<true, false>(rows, c);
  } else {
    clipped ? step_loop_by_variance<false, true>(rows, c)
            : step_loop_by_variance<false, false>(rows, c);
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void step_chunk(const StepCoefRow& row, const StepChunk& c, bool clipped) {
  step_run(SameRow{row}, c, clipped);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void step_chunk_columns(const float* const* cols, const StepChunk& c, bool clipped) {
  step_run(RowColumns{cols}, c, clipped);
}

StepCoefRow row_of(const CoefTable& t, int64_t b) {
  StepCoefRow row;
  for (int k = 0; k < kNumStepCoefs; ++k) row.c[k] = t.at(k, b);
  return row;
}

struct StepArgs {
  Geometry g;
  CoefTable coefs;
  const int64_t* seeds;  // null: no noise stream
  bool per_sample_seeds, clipped, learned_var;
  int64_t step;
};

// The step over span s: one row for the batch, a row per sample, or (one-element samples with
// rows of their own) a row per element.
void step_span(const StepArgs& a, const Span& s, const StepChunk& c) {
  if (a.coefs.shared()) return step_chunk(row_of(a.coefs, 0), c, a.clipped);
  if (a.g.per_sample == 1) {
    const float* cols[kNumStepCoefs];
    row_columns<kNumStepCoefs>(cols, a.coefs, s);
    return step_chunk_columns(cols, c, a.clipped);
  }
  for_each_segment(a.g, s, [&](int64_t b, int64_t, int64_t offset, int64_t count) {
    step_chunk(row_of(a.coefs, b), c.part(offset, count), a.clipped);
  });
}

// Gathers the prediction (and variance) channels of a 2C-channel output into float32 buffers.
template <typename scalar_t>
void gather_split_output(const scalar_t* out, const Geometry& g, int64_t b, int64_t m_begin,
                         int64_t count, float* o, float* v) {
  const int64_t shift = variance_shift(g.per_sample, g.channels_last, g.channels);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t offset =
        split_output_offset(b, m_begin + i, g.per_sample, g.channels_last, g.channels);
    o[i] = static_cast<float>(out[offset]);
    if (v) v[i] = static_cast<float>(out[offset + shift]);
  }
}

template <typename scalar_t>
void sample_step_kernel(const StepArgs& a, const scalar_t* x, const scalar_t* out,
                        const scalar_t* uncond, const scalar_t* noise, scalar_t* next,
                        scalar_t* x0) {
  const Geometry& g = a.g;
  for_each_span(g, [&](const Span& s) {
    float xb[kChunk], ob[kChunk], ub[kChunk], vb[kChunk], zb[kChunk], nb[kChunk], x0b[kChunk];
    StepChunk c{};
    c.count = s.count;
    c.x = load_f32(x + s.base, s.count, xb);
    if (a.learned_var) {
      for_each_segment(g, s, [&](int64_t b, int64_t m_begin, int64_t offset, int64_t count) {
        gather_split_output(out, g, b, m_begin, count, ob + offset, vb + offset);
        if (uncond) gather_split_output(uncond, g, b, m_begin, count, ub + offset, nullptr);
      });
      c.o = ob, c.v = vb, c.u = uncond ? ub : nullptr;
    } else {
      c.o = load_f32(out + s.base, s.count, ob);
      if (uncond) c.u = load_f32(uncond + s.base, s.count, ub);
    }
    if (noise) {
      c.z = load_f32(noise + s.base, s.count, zb);
    } else if (a.seeds) {
      fill_noise(zb, s, g, NoiseSeeds{a.seeds, a.per_sample_seeds}, static_cast<uint32_t>(a.step));
      c.z = zb;
    }
    c.next = result_f32(next + s.base, nb);
    c.x0 = x0 ? result_f32(x0 + s.base, x0b) : nullptr;
    step_span(a, s, c);
    store_result(c.next, s.count, next + s.base);
    if (x0) store_result(c.x0, s.count, x0 + s.base);
  });
}

template <typename scalar_t>
const scalar_t* data_or_null(const OptTensor& t) {
  return t ? t->data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> sample_step_cpu(
    const at::Tensor& x, const at::Tensor& out, const OptTensor& out_uncond,
    const at::Tensor& coefs, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool has_clip, bool learned_var, bool return_x0) {
  auto in = prepare_sample_step(x, out, out_uncond, coefs, noise, seeds, learned_var, return_x0);
  if (in.x.numel() == 0) return {in.next, in.x0};
  const StepArgs a{in.g, CoefTable::of(in.coefs),
                   in.seeds ? in.seeds->data_ptr<int64_t>() : nullptr,
                   in.seeds && in.seeds->numel() > 1, has_clip, learned_var, step};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "sample_step", [&] {
    sample_step_kernel<scalar_t>(a, in.x.data_ptr<scalar_t>(), in.out.data_ptr<scalar_t>(),
                                 data_or_null<scalar_t>(in.uncond),
                                 data_or_null<scalar_t>(in.noise), in.next.data_ptr<scalar_t>(),
                                 return_x0 ? in.x0.data_ptr<scalar_t>() : nullptr);
  });
  return {in.next, in.x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) { m.impl("sample_step", &sample_step_cpu); }

}  // namespace cpu

#ifdef PYDIFFUSE_WITH_CUDA
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_step_cuda(
    const at::Tensor& x, const at::Tensor& out, const OptTensor& out_uncond,
    const at::Tensor& coefs, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool has_clip, bool learned_var, bool return_x0) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_sample_step(x, out, out_uncond, coefs, noise, seeds, learned_var, return_x0);
  if (in.x.numel() == 0) return {in.next, in.x0};
  const auto coefs_c = in.coefs.contiguous();  // the CUDA kernels read a C-order table
  const SampleStepArgs args{in.g, dtype_of(in.x), in.x.const_data_ptr(), in.out.const_data_ptr(),
                            data_or_null(in.uncond), data_or_null(in.noise),
                            coefs_c.const_data_ptr<float>(), noise_stream(in.seeds, step),
                            has_clip, learned_var, in.next.mutable_data_ptr(),
                            return_x0 ? in.x0.mutable_data_ptr() : nullptr};
  C10_CUDA_CHECK(launch_sample_step(args, c10::cuda::getCurrentCUDAStream()));
  return {in.next, in.x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) { m.impl("sample_step", &sample_step_cuda); }

}  // namespace cuda
#endif  // PYDIFFUSE_WITH_CUDA

}  // namespace pydiffuse
