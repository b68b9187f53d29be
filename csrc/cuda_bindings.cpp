// pydiffuse ops on CUDA tensors: the CPU bindings' argument checks and layouts, then the
// raw-pointer launchers of csrc/cuda on the current stream of x's device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "common/step.h"
#include "cuda/launchers.h"
#include "op_inputs.h"

namespace pydiffuse::cuda {
namespace {

// t's dtype as the launchers name it; check_float has accepted it.
DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

const void* data_or_null(const OptTensor& t) { return t ? t->const_data_ptr() : nullptr; }

NoiseStream noise_stream(const OptTensor& seeds, int64_t step) {
  return {seeds ? seeds->const_data_ptr<int64_t>() : nullptr, seeds && seeds->numel() > 1, step};
}

std::tuple<at::Tensor, at::Tensor> sample_step_cuda(
    const at::Tensor& x, const at::Tensor& out, const OptTensor& out_uncond,
    const at::Tensor& coefs, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool has_clip, bool learned_var, bool return_x0) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_sample_step(x, out, out_uncond, coefs, noise, seeds, learned_var, return_x0);
  if (in.x.numel() == 0) return {in.next, in.x0};
  const SampleStepArgs args{in.g, dtype_of(in.x), in.x.const_data_ptr(), in.out.const_data_ptr(),
                            data_or_null(in.uncond), data_or_null(in.noise),
                            in.coefs.const_data_ptr<float>(), noise_stream(in.seeds, step),
                            has_clip, learned_var, in.next.mutable_data_ptr(),
                            return_x0 ? in.x0.mutable_data_ptr() : nullptr};
  C10_CUDA_CHECK(launch_sample_step(args, c10::cuda::getCurrentCUDAStream()));
  return {in.next, in.x0};
}

at::Tensor lincomb_cuda(at::TensorList tensors, const at::Tensor& coefs) {
  TORCH_CHECK(tensors.size() <= kMaxLincombTerms, "pydiffuse: lincomb on CUDA takes at most ",
              kMaxLincombTerms, " tensors, got ", tensors.size());
  const c10::cuda::CUDAGuard guard(tensors.at(0).device());
  auto in = prepare_lincomb(tensors, coefs);
  if (in.out.numel() == 0) return in.out;
  LincombArgs args{in.g, dtype_of(in.out), static_cast<int>(in.terms.size()), {},
                   in.coefs.const_data_ptr<float>(), in.out.mutable_data_ptr()};
  for (size_t k = 0; k < in.terms.size(); ++k) args.terms[k] = in.terms[k].const_data_ptr();
  C10_CUDA_CHECK(launch_lincomb(args, c10::cuda::getCurrentCUDAStream()));
  return in.out;
}

std::tuple<at::Tensor, at::Tensor> langevin_step_cuda(
    const at::Tensor& x, const at::Tensor& score, const at::Tensor& coefs, bool adaptive,
    bool per_sample_norm, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool return_mean) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_langevin_step(x, score, coefs, noise, seeds, return_mean);
  if (in.x.numel() == 0) return {in.next, in.mean};
  // Adaptive step sizes need per-chunk partial sums: scratch from the torch allocator.
  const auto scratch = adaptive ? at::empty({static_cast<int64_t>(langevin_scratch_bytes(in.g))},
                                            in.x.options().dtype(at::kByte))
                                : at::Tensor();
  const LangevinArgs args{in.g, dtype_of(in.x), in.x.const_data_ptr(), in.score.const_data_ptr(),
                          data_or_null(in.noise), in.coefs.const_data_ptr<float>(),
                          noise_stream(in.seeds, step), adaptive, per_sample_norm,
                          in.next.mutable_data_ptr(),
                          return_mean ? in.mean.mutable_data_ptr() : nullptr,
                          adaptive ? scratch.mutable_data_ptr() : nullptr};
  C10_CUDA_CHECK(launch_langevin_step(args, c10::cuda::getCurrentCUDAStream()));
  return {in.next, in.mean};
}

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

// q, k or v as the attention kernel reads it: any strides in 16-byte steps over a dense last
// dimension (a packed qkv projection passes as it is); anything else is copied.
at::Tensor attention_operand(const at::Tensor& t) {
  const int64_t step = 16 / t.element_size();
  const bool ok = t.stride(3) == 1 && t.stride(0) % step == 0 && t.stride(1) % step == 0 &&
                  t.stride(2) % step == 0 &&
                  reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale) {
  check_attention_inputs(q, k, v);
  TORCH_CHECK(attention_supports_head_dim(q.size(3)),
              "pydiffuse: attention on CUDA supports head dims 32, 64 and 128, got ", q.size(3));
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  TORCH_CHECK(k.size(2) >= 1, "pydiffuse: attention needs at least one key");
  const auto qc = attention_operand(q), kc = attention_operand(k), vc = attention_operand(v);
  AttentionArgs args{dtype_of(q), q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
                     qc.const_data_ptr(), kc.const_data_ptr(), vc.const_data_ptr(),
                     {qc.stride(0), qc.stride(1), qc.stride(2)},
                     {kc.stride(0), kc.stride(1), kc.stride(2)},
                     {vc.stride(0), vc.stride(1), vc.stride(2)}, static_cast<float>(scale),
                     out.mutable_data_ptr(), lse.mutable_data_ptr<float>()};
  C10_CUDA_CHECK(launch_attention(args, c10::cuda::getCurrentCUDAStream()));
  return {out, lse};
}

GroupNormParamPtrs group_norm_param_ptrs(const GroupNormParams& p) {
  auto ptr = [](const OptTensor& t) { return t ? t->const_data_ptr<float>() : nullptr; };
  return {ptr(p.weight), ptr(p.bias), ptr(p.scale), ptr(p.shift)};
}

// The CUDA kernels index a group's elements in 32 bits and (b, c, split) rows in 31.
void check_group_norm_size(const Geometry& g, int64_t num_groups) {
  TORCH_CHECK(g.per_sample / num_groups < (int64_t{1} << 31) && g.batch * g.channels < (1 << 26),
              "pydiffuse: group_norm on CUDA needs groups of fewer than 2^31 elements and "
              "B * C < 2^26");
}

// Scratch device memory from the torch allocator (its blocks are 512-byte aligned).
at::Tensor scratch_bytes(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cuda(
    const at::Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, double eps, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_group_norm(x, num_groups, weight, bias, scale, shift);
  if (in.x.numel() == 0) {  // an empty group's statistics are NaN, as on the CPU
    in.mean.fill_(std::numeric_limits<float>::quiet_NaN());
    in.rstd.fill_(std::numeric_limits<float>::quiet_NaN());
    return {in.y, in.mean, in.rstd};
  }
  check_group_norm_size(in.g, num_groups);
  const auto scratch = scratch_bytes(group_norm_scratch_bytes(in.g, num_groups), in.x);
  const GroupNormArgs args{in.g, dtype_of(in.x), num_groups, static_cast<float>(eps), silu,
                           group_norm_param_ptrs(in.p), in.x.const_data_ptr(),
                           in.y.mutable_data_ptr(), in.mean.mutable_data_ptr<float>(),
                           in.rstd.mutable_data_ptr<float>(), scratch.mutable_data_ptr()};
  C10_CUDA_CHECK(launch_group_norm(args, c10::cuda::getCurrentCUDAStream()));
  return {in.y, in.mean, in.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_group_norm_backward(grad_y, x, mean, rstd, num_groups, weight, bias, scale,
                                        shift);
  if (in.x.numel() == 0) {
    for (auto* t : {&in.grad_weight, &in.grad_bias, &in.grad_scale, &in.grad_shift})
      if (t->defined()) t->zero_();
    return finish_group_norm_backward(in, weight, bias, scale, shift);
  }
  check_group_norm_size(in.g, num_groups);
  auto grad = [](at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; };
  const auto scratch = scratch_bytes(group_norm_backward_scratch_bytes(in.g, num_groups), in.x);
  const GroupNormBackwardArgs args{
      in.g, dtype_of(in.x), num_groups, silu, group_norm_param_ptrs(in.p),
      in.grad_y.const_data_ptr(), in.x.const_data_ptr(), in.mean.const_data_ptr<float>(),
      in.rstd.const_data_ptr<float>(), in.grad_x.mutable_data_ptr(), grad(in.grad_weight),
      grad(in.grad_bias), grad(in.grad_scale), grad(in.grad_shift), scratch.mutable_data_ptr()};
  C10_CUDA_CHECK(launch_group_norm_backward(args, c10::cuda::getCurrentCUDAStream()));
  return finish_group_norm_backward(in, weight, bias, scale, shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) {
  m.impl("sample_step", &sample_step_cuda);
  m.impl("lincomb", &lincomb_cuda);
  m.impl("langevin_step", &langevin_step_cuda);
  m.impl("randn", &randn_cuda);
  // attention_backward on CUDA is the Triton kernel, registered from Python
  // (pydiffuse/ops/attention.py).
  m.impl("attention", &attention_cuda);
  m.impl("group_norm", &group_norm_cuda);
  m.impl("group_norm_backward", &group_norm_backward_cuda);
}

}  // namespace pydiffuse::cuda
