// Every op's schema, once (TORCH_LIBRARY); the Meta kernels that let torch.compile trace them;
// and the small pybind11 module pydiffuse._C that reports how the extension was built.
// Backends attach with TORCH_LIBRARY_IMPL from csrc/cpu/*.cpp and csrc/cuda_bindings.cpp.
#include <pybind11/pybind11.h>

#include "cpu/output_pool.h"
#include "torch_utils.h"

namespace pydiffuse {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_step_meta(
    const at::Tensor& x, const at::Tensor& out, const std::optional<at::Tensor>& out_uncond,
    const at::Tensor& coefs, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& seeds, int64_t step, bool has_clip, bool learned_var,
    bool return_x0) {
  auto format = kernel_format(x);
  auto next = at::empty_like(x, x.options(), format);
  auto x0 = return_x0 ? at::empty_like(x, x.options(), format) : x.new_empty({0});
  return {next, x0};
}

at::Tensor lincomb_meta(at::TensorList tensors, const at::Tensor& coefs) {
  TORCH_CHECK(!tensors.empty(), "pydiffuse: lincomb needs at least one tensor");
  return at::empty_like(tensors[0], tensors[0].options(), kernel_format(tensors[0]));
}

std::tuple<at::Tensor, at::Tensor> langevin_step_meta(
    const at::Tensor& x, const at::Tensor& score, const at::Tensor& coefs, bool adaptive,
    bool per_sample_norm, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& seeds, int64_t step, bool return_mean) {
  auto format = kernel_format(x);
  auto next = at::empty_like(x, x.options(), format);
  auto mean = return_mean ? at::empty_like(x, x.options(), format) : x.new_empty({0});
  return {next, mean};
}

at::Tensor randn_meta(const at::Tensor& seeds, c10::SymIntArrayRef shape, int64_t step,
                      at::ScalarType dtype) {
  return at::empty_symint(shape, seeds.options().dtype(dtype));
}

// out [B, H, Nq, D] C-order in q's dtype; lse [B, H, Nq] float32 (every backend returns these).
std::tuple<at::Tensor, at::Tensor> attention_meta(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiffuse: attention needs q, k, v of shape [B, H, N, D]");
  auto lse = at::empty_symint({q.sym_size(0), q.sym_size(1), q.sym_size(2)},
                              q.options().dtype(at::kFloat));
  return {at::empty_symint(q.sym_sizes(), q.options()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double scale) {
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options())};
}

// y in x's kernel layout; mean, rstd [B, G] float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_meta(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, double eps, bool silu) {
  TORCH_CHECK(x.dim() >= 2, "pydiffuse: group_norm needs x of shape [B, C, *spatial]");
  auto stats = at::empty_symint({x.sym_size(0), c10::SymInt(num_groups)},
                                x.options().dtype(at::kFloat));
  return {at::empty_like(x, x.options(), kernel_format(x)), stats, at::empty_like(stats)};
}

// grad_x in x's kernel layout; each parameter's gradient C-order in its dtype, or empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_meta(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  auto grad_of = [&](const std::optional<at::Tensor>& t) {
    return t ? at::empty_symint(t->sym_sizes(), t->options()) : x.new_empty({0});
  };
  return {at::empty_like(x, x.options(), kernel_format(x)), grad_of(weight), grad_of(bias),
          grad_of(scale), grad_of(shift)};
}

}  // namespace

TORCH_LIBRARY(pydiffuse, m) {
  m.def(
      "sample_step(Tensor x, Tensor out, Tensor? out_uncond, Tensor coefs, Tensor? noise, "
      "Tensor? seeds, int step, bool has_clip, bool learned_var, bool return_x0) "
      "-> (Tensor, Tensor)");
  m.def("lincomb(Tensor[] tensors, Tensor coefs) -> Tensor");
  m.def(
      "langevin_step(Tensor x, Tensor score, Tensor coefs, bool adaptive, bool per_sample_norm, "
      "Tensor? noise, Tensor? seeds, int step, bool return_mean) -> (Tensor, Tensor)");
  m.def("randn(Tensor seeds, SymInt[] shape, int step, ScalarType dtype) -> Tensor");
  // y = act((GN(x) * weight + bias) * (1 + scale) + shift); also returns mean, rstd [B, G] fp32.
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, "
      "Tensor? shift, float eps, bool silu) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight [C], grad_bias [C], grad_scale [B, C], grad_shift [B, C]); a gradient of
  // an absent parameter is an empty tensor.
  m.def(
      "group_norm_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, int num_groups, "
      "Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, bool silu) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // out = softmax(q k^T scale) v for [B, H, N, D]; also returns lse [B, H, Nq] fp32 (natural log
  // of the softmax denominator of the scaled scores).
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) {
  m.impl("sample_step", &sample_step_meta);
  m.impl("lincomb", &lincomb_meta);
  m.impl("langevin_step", &langevin_step_meta);
  m.impl("randn", &randn_meta);
  m.impl("group_norm", &group_norm_meta);
  m.impl("group_norm_backward", &group_norm_backward_meta);
  m.impl("attention", &attention_meta);
  m.impl("attention_backward", &attention_backward_meta);
}

}  // namespace pydiffuse

PYBIND11_MODULE(_C, module) {
  module.doc() = "pydiffuse compiled kernels; the ops live in torch.ops.pydiffuse";
#ifdef PYDIFFUSE_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
  module.attr("cuda_archs") = PYDIFFUSE_CUDA_ARCHS;
  module.attr("compiler") = PYDIFFUSE_COMPILER;
  module.def("release_cached_outputs", &pydiffuse::cpu::release_cached_outputs,
             "Free the CPU output cache (csrc/cpu/output_pool.h); returns the bytes released.");
}
