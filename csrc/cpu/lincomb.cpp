// pydiffuse::lincomb, its host side: the schema and Meta kernel, the kernels' input invariants,
// the CPU kernel (sum_i c_i[b] * T_i in one pass, accumulated in float32) and the CPU and CUDA
// bindings (the CUDA kernel: csrc/cuda/lincomb.cu).
#include <vector>

#include "cpu/chunks.h"
#include "cpu/coef_table.h"
#include "torch_utils.h"
#ifdef PYDIFFUSE_WITH_CUDA
#include "cuda_binding.h"
#endif

namespace pydiffuse {

TORCH_LIBRARY_FRAGMENT(pydiffuse, m) {
  m.def("lincomb(Tensor[] tensors, Tensor coefs) -> Tensor");
}

namespace {

at::Tensor lincomb_meta(at::TensorList tensors, const at::Tensor&) {
  TORCH_CHECK(!tensors.empty(), "pydiffuse: lincomb needs at least one tensor");
  return at::empty_like(tensors[0], tensors[0].options(), kernel_format(tensors[0]));
}

struct LincombInputs {
  Geometry g;
  std::vector<at::Tensor> terms;
  at::Tensor coefs, out;
};

LincombInputs prepare_lincomb(at::TensorList tensors, const at::Tensor& coefs) {
  TORCH_CHECK(!tensors.empty(), "pydiffuse: lincomb needs at least one tensor");
  const auto& first = tensors[0];
  check_float(first, "tensors[0]");
  for (const auto& t : tensors) check_like(t, first, "a lincomb term");
  const auto format = kernel_format(first);
  const auto g = geometry_of(first, format);
  check_table(coefs, static_cast<int64_t>(tensors.size()), g.batch, first, "coefs");
  std::vector<at::Tensor> terms;
  for (const auto& t : tensors) terms.push_back(t.contiguous(format));
  return {g, std::move(terms), table_layout(coefs), output_like(first, format)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) { m.impl("lincomb", &lincomb_meta); }

namespace cpu {
namespace {

// acc (=|+=) c t over a run, c one coefficient or (cs) one per element.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void axpy_chunk(float* acc, const float* t, float c, const float* cs, int64_t count, bool first) {
  if (cs && first) {
    for (int64_t i = 0; i < count; ++i) acc[i] = cs[i] * t[i];
  } else if (cs) {
    for (int64_t i = 0; i < count; ++i) acc[i] += cs[i] * t[i];
  } else if (first) {
    for (int64_t i = 0; i < count; ++i) acc[i] = c * t[i];
  } else {
    for (int64_t i = 0; i < count; ++i) acc[i] += c * t[i];
  }
}

// One term over span s: its coefficient shared by the batch, per sample, or (one-element
// samples) per element.
void axpy_span(float* acc, const float* t, const CoefTable& coefs, int64_t k, const Geometry& g,
               const Span& s, bool first) {
  if (coefs.shared()) return axpy_chunk(acc, t, coefs.at(k, 0), nullptr, s.count, first);
  if (g.per_sample == 1) {
    const float* cs[1];
    row_columns<1>(cs, CoefTable{coefs.data + k * coefs.row_stride, 0, 1}, s);
    return axpy_chunk(acc, t, 0.0f, cs[0], s.count, first);
  }
  for_each_segment(g, s, [&](int64_t b, int64_t, int64_t offset, int64_t count) {
    axpy_chunk(acc + offset, t + offset, coefs.at(k, b), nullptr, count, first);
  });
}

template <typename scalar_t>
void lincomb_kernel(const Geometry& g, const std::vector<const scalar_t*>& terms,
                    const CoefTable& coefs, scalar_t* out) {
  const int64_t n = static_cast<int64_t>(terms.size());
  for_each_span(g, [&](const Span& s) {
    float staged[kChunk], acc_buffer[kChunk];
    float* acc = result_f32(out + s.base, acc_buffer);
    for (int64_t k = 0; k < n; ++k) {
      axpy_span(acc, load_f32(terms[k] + s.base, s.count, staged), coefs, k, g, s, k == 0);
    }
    store_result(acc, s.count, out + s.base);
  });
}

at::Tensor lincomb_cpu(at::TensorList tensors, const at::Tensor& coefs) {
  auto in = prepare_lincomb(tensors, coefs);
  if (in.out.numel() == 0) return in.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.out.scalar_type(), "lincomb", [&] {
    std::vector<const scalar_t*> terms;
    for (const auto& t : in.terms) terms.push_back(t.data_ptr<scalar_t>());
    lincomb_kernel<scalar_t>(in.g, terms, CoefTable::of(in.coefs), in.out.data_ptr<scalar_t>());
  });
  return in.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) { m.impl("lincomb", &lincomb_cpu); }

}  // namespace cpu

#ifdef PYDIFFUSE_WITH_CUDA
namespace cuda {
namespace {

at::Tensor lincomb_cuda(at::TensorList tensors, const at::Tensor& coefs) {
  TORCH_CHECK(tensors.size() <= kMaxLincombTerms, "pydiffuse: lincomb on CUDA takes at most ",
              kMaxLincombTerms, " tensors, got ", tensors.size());
  const c10::cuda::CUDAGuard guard(tensors.at(0).device());
  auto in = prepare_lincomb(tensors, coefs);
  if (in.out.numel() == 0) return in.out;
  const auto coefs_c = in.coefs.contiguous();  // the CUDA kernels read a C-order table
  LincombArgs args{in.g, dtype_of(in.out), static_cast<int>(in.terms.size()), {},
                   coefs_c.const_data_ptr<float>(), in.out.mutable_data_ptr()};
  for (size_t k = 0; k < in.terms.size(); ++k) args.terms[k] = in.terms[k].const_data_ptr();
  C10_CUDA_CHECK(launch_lincomb(args, c10::cuda::getCurrentCUDAStream()));
  return in.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) { m.impl("lincomb", &lincomb_cuda); }

}  // namespace cuda
#endif  // PYDIFFUSE_WITH_CUDA

}  // namespace pydiffuse
