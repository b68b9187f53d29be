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

// q [B, H, Nq, D], k and v [B, H, Nk, D] of one float dtype and device, Nk >= 1.
inline void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_float(q, "q");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiffuse: attention needs q, k, v of shape [B, H, N, D], got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  check_like(v, k, "v");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && k.device() == q.device(),
              "pydiffuse: k and v must match q's dtype and device");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "pydiffuse: attention's k, v ", k.sizes(), " do not match q ", q.sizes(),
              " in B, H or D");
  TORCH_CHECK(k.size(2) >= 1, "pydiffuse: attention needs at least one key");
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

// group_norm's parameters as the kernels read them: float32, C-order (tiny: [C] or [B, C]).
struct GroupNormParams {
  OptTensor weight, bias, scale, shift;
};

inline OptTensor group_norm_param(const OptTensor& t, at::IntArrayRef shape, const at::Tensor& x,
                                  const char* name) {
  if (!t) return std::nullopt;
  TORCH_CHECK(t->sizes() == shape, "pydiffuse: group_norm's ", name, " has shape ", t->sizes(),
              ", expected ", shape);
  check_float(*t, name);
  TORCH_CHECK(t->device() == x.device(), "pydiffuse: ", name, " is on ", t->device(), ", x on ",
              x.device());
  return t->to(at::kFloat).contiguous();
}

inline GroupNormParams prepare_group_norm_params(const at::Tensor& x, const OptTensor& weight,
                                                 const OptTensor& bias, const OptTensor& scale,
                                                 const OptTensor& shift) {
  const int64_t c = x.size(1);
  return {group_norm_param(weight, {c}, x, "weight"), group_norm_param(bias, {c}, x, "bias"),
          group_norm_param(scale, {x.size(0), c}, x, "scale"),
          group_norm_param(shift, {x.size(0), c}, x, "shift")};
}

inline void check_group_norm_input(const at::Tensor& x, int64_t num_groups) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() >= 2, "pydiffuse: group_norm needs x of shape [B, C, *spatial], got ",
              x.sizes());
  TORCH_CHECK(num_groups > 0 && x.size(1) % num_groups == 0, "pydiffuse: group_norm: ",
              x.size(1), " channels do not split into ", num_groups, " groups");
}

struct GroupNormInputs {
  Geometry g;
  int64_t groups;
  at::Tensor x, y, mean, rstd;  // y in x's kernel layout; mean, rstd [B, G] float32
  GroupNormParams p;
};

inline GroupNormInputs prepare_group_norm(const at::Tensor& x, int64_t num_groups,
                                          const OptTensor& weight, const OptTensor& bias,
                                          const OptTensor& scale, const OptTensor& shift) {
  check_group_norm_input(x, num_groups);
  const auto format = kernel_format(x);
  const auto xc = x.contiguous(format);
  auto mean = at::empty({x.size(0), num_groups}, x.options().dtype(at::kFloat));
  return {geometry_of(x, format), num_groups, xc, output_like(xc, format), mean,
          at::empty_like(mean), prepare_group_norm_params(x, weight, bias, scale, shift)};
}

struct GroupNormBackwardInputs {
  Geometry g;
  int64_t groups;
  at::Tensor grad_y, x, mean, rstd, grad_x;  // grad_y, grad_x in x's kernel layout
  GroupNormParams p;
  // Float32 gradients of the parameters given ([C], [C], [B, C], [B, C]), else undefined;
  // finish_group_norm_backward casts them to the parameters' dtypes.
  at::Tensor grad_weight, grad_bias, grad_scale, grad_shift;
};

inline GroupNormBackwardInputs prepare_group_norm_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift) {
  check_group_norm_input(x, num_groups);
  check_like(grad_y, x, "grad_y");
  for (const auto* t : {&mean, &rstd}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == x.size(0) &&
                    t->size(1) == num_groups && t->device() == x.device(),
                "pydiffuse: group_norm_backward's mean and rstd must be float32 [", x.size(0),
                ", ", num_groups, "] on x's device, got ", t->scalar_type(), " ", t->sizes());
  }
  const auto format = kernel_format(x);
  const auto xc = x.contiguous(format);
  auto p = prepare_group_norm_params(x, weight, bias, scale, shift);
  auto grad_of = [](const OptTensor& t) { return t ? at::empty_like(*t) : at::Tensor(); };
  return {geometry_of(x, format), num_groups, grad_y.contiguous(format), xc, mean.contiguous(),
          rstd.contiguous(), output_like(xc, format), p, grad_of(p.weight), grad_of(p.bias),
          grad_of(p.scale), grad_of(p.shift)};
}

// (grad_x, grad_weight, grad_bias, grad_scale, grad_shift), each parameter's gradient in that
// parameter's dtype, or an empty tensor for an absent parameter.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
finish_group_norm_backward(const GroupNormBackwardInputs& in, const OptTensor& weight,
                           const OptTensor& bias, const OptTensor& scale, const OptTensor& shift) {
  auto cast = [&](const at::Tensor& grad, const OptTensor& param) {
    return param ? grad.to(param->scalar_type()) : in.x.new_empty({0});
  };
  return {in.grad_x, cast(in.grad_weight, weight), cast(in.grad_bias, bias),
          cast(in.grad_scale, scale), cast(in.grad_shift, shift)};
}

}  // namespace pydiffuse
