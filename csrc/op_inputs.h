// The checked inputs of each op, laid out as its kernels read them (kernel_format(x)), with the
// outputs allocated: the one prologue of the CPU and CUDA bindings.
#pragma once

#include <vector>

#include "common/step.h"
#include "cpu/output_pool.h"
#include "torch_utils.h"

namespace pydiffuse {

using OptTensor = std::optional<at::Tensor>;

inline OptTensor contiguous_as(const OptTensor& t, at::MemoryFormat format) {
  return t ? OptTensor(t->contiguous(format)) : std::nullopt;
}

// An output laid out like x (CPU outputs from cpu/output_pool.h), or empty when not wanted.
inline at::Tensor output_like(const at::Tensor& x, at::MemoryFormat format, bool wanted = true) {
  if (!wanted) return x.new_empty({0});
  return x.is_cpu() ? cpu::empty_output(x.sizes(), x.scalar_type(), format)
                    : at::empty_like(x, x.options(), format);
}

struct SampleStepInputs {
  Geometry g;
  at::Tensor x, out, coefs, next, x0;
  OptTensor uncond, noise, seeds;
};

inline SampleStepInputs prepare_sample_step(const at::Tensor& x, const at::Tensor& out,
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
  return {g, xc, out.contiguous(format), coefs.contiguous(), output_like(xc, format),
          output_like(xc, format, return_x0), contiguous_as(uncond, format),
          contiguous_as(noise, format), contiguous_as(seeds, at::MemoryFormat::Contiguous)};
}

struct LincombInputs {
  Geometry g;
  std::vector<at::Tensor> terms;
  at::Tensor coefs, out;
};

inline LincombInputs prepare_lincomb(at::TensorList tensors, const at::Tensor& coefs) {
  TORCH_CHECK(!tensors.empty(), "pydiffuse: lincomb needs at least one tensor");
  const auto& first = tensors[0];
  check_float(first, "tensors[0]");
  for (const auto& t : tensors) check_like(t, first, "a lincomb term");
  const auto format = kernel_format(first);
  const auto g = geometry_of(first, format);
  check_table(coefs, static_cast<int64_t>(tensors.size()), g.batch, first, "coefs");
  std::vector<at::Tensor> terms;
  for (const auto& t : tensors) terms.push_back(t.contiguous(format));
  return {g, std::move(terms), coefs.contiguous(), output_like(first, format)};
}

struct LangevinInputs {
  Geometry g;
  at::Tensor x, score, coefs, next, mean;
  OptTensor noise, seeds;
};

inline LangevinInputs prepare_langevin_step(const at::Tensor& x, const at::Tensor& score,
                                            const at::Tensor& coefs, const OptTensor& noise,
                                            const OptTensor& seeds, bool return_mean) {
  check_float(x, "x");
  check_like(score, x, "score");
  if (noise) check_like(*noise, x, "noise");
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

// The output of randn, checked: C-order, `dtype`, on the seeds' device.
inline at::Tensor prepare_randn(const at::Tensor& seeds, at::IntArrayRef shape,
                                at::ScalarType dtype) {
  TORCH_CHECK(!shape.empty(), "pydiffuse: randn needs a shape with a batch dimension");
  auto out = seeds.is_cpu() ? cpu::empty_output(shape, dtype, at::MemoryFormat::Contiguous)
                            : at::empty(shape, seeds.options().dtype(dtype));
  check_float(out, "randn's dtype");
  check_seeds(seeds, out.size(0), out);
  return out;
}

}  // namespace pydiffuse
