// pydiffuse::lincomb on the CPU: sum_i c_i[b] * T_i in one pass, accumulated in float32.
#include "cpu/chunks.h"
#include "op_inputs.h"

#include <vector>

namespace pydiffuse::cpu {
namespace {

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void axpy_chunk(float* acc, const float* t, float c, int64_t count, bool first) {
  if (first) {
    for (int64_t i = 0; i < count; ++i) acc[i] = c * t[i];
  } else {
    for (int64_t i = 0; i < count; ++i) acc[i] += c * t[i];
  }
}

template <typename scalar_t>
void lincomb_kernel(const Geometry& g, const std::vector<const scalar_t*>& terms,
                    const float* coefs, scalar_t* out) {
  const int64_t n = static_cast<int64_t>(terms.size());
  for_each_chunk(g, [&](int64_t, int64_t b, int64_t m_begin, int64_t count) {
    float staged[kChunk], acc_buffer[kChunk];
    const int64_t base = b * g.per_sample + m_begin;
    float* acc = result_f32(out + base, acc_buffer);
    for (int64_t k = 0; k < n; ++k) {
      axpy_chunk(acc, load_f32(terms[k] + base, count, staged), coefs[k * g.batch + b], count,
                 k == 0);
    }
    store_result(acc, count, out + base);
  });
}

at::Tensor lincomb_cpu(at::TensorList tensors, const at::Tensor& coefs) {
  auto in = prepare_lincomb(tensors, coefs);
  if (in.out.numel() == 0) return in.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.out.scalar_type(), "lincomb", [&] {
    std::vector<const scalar_t*> terms;
    for (const auto& t : in.terms) terms.push_back(t.data_ptr<scalar_t>());
    lincomb_kernel<scalar_t>(in.g, terms, in.coefs.data_ptr<float>(), in.out.data_ptr<scalar_t>());
  });
  return in.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) { m.impl("lincomb", &lincomb_cpu); }

}  // namespace pydiffuse::cpu
