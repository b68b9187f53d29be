// pydiffuse ops on CUDA tensors: the CPU bindings' argument checks and layouts, then the
// raw-pointer launchers of csrc/cuda on the current stream of x's device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

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

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) {
  m.impl("sample_step", &sample_step_cuda);
  m.impl("lincomb", &lincomb_cuda);
  m.impl("langevin_step", &langevin_step_cuda);
  m.impl("randn", &randn_cuda);
}

}  // namespace pydiffuse::cuda
