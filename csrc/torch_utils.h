// Helpers shared by the ops' bindings (csrc/cpu/<op>.cpp, CPU and CUDA): layout, geometry,
// outputs, and the checks of the kernels' invariants. The user-facing checks, which name the
// public arguments, are pydiffuse/ops' (Python); these keep a direct torch.ops.pydiffuse call
// with bad shapes, dtypes or devices from reading or writing out of bounds.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <optional>

#include "common/layout.h"
#include "cpu/output_pool.h"

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

// The memory format a kernel works in: channels-last where x is, else C-order.
inline at::MemoryFormat kernel_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  if (x.dim() == 5 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))
    return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

inline Geometry geometry_of(const at::Tensor& x, at::MemoryFormat format) {
  TORCH_CHECK(x.dim() >= 1, "pydiffuse: x must have a batch dimension");
  Geometry g;
  g.batch = x.size(0);
  g.per_sample = g.batch == 0 ? 0 : x.numel() / g.batch;
  g.channels = x.dim() >= 2 ? x.size(1) : 1;
  g.spatial = g.channels == 0 ? 0 : g.per_sample / g.channels;
  g.channels_last = format != at::MemoryFormat::Contiguous;
  return g;
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16,
              "pydiffuse: ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), "pydiffuse: ", name, " has shape ", t.sizes(),
              ", expected ", x.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "pydiffuse: ", name, " has dtype ",
              t.scalar_type(), ", expected ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "pydiffuse: ", name, " is on ", t.device(),
              ", x on ", x.device());
}

inline void check_table(const at::Tensor& table, int64_t rows, int64_t batch, const at::Tensor& x,
                        const char* name) {
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.dim() == 2 && table.size(0) == rows &&
                  table.size(1) == batch,
              "pydiffuse: ", name, " must be a float32 tensor [", rows, ", ", batch, "], got ",
              table.scalar_type(), " ", table.sizes());
  TORCH_CHECK(table.device() == x.device(), "pydiffuse: ", name, " is on ", table.device(),
              ", x on ", x.device());
}

// A checked coefficient table as the CPU kernels read it (cpu/coef_table.h): rows shared by the
// batch stay unexpanded (stride 0 over B), any other table is made C-order.
inline at::Tensor table_layout(const at::Tensor& table) {
  return table.size(1) == 1 || table.stride(1) == 0 ? table : table.contiguous();
}

inline void check_seeds(const at::Tensor& seeds, int64_t batch, const at::Tensor& x) {
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1 &&
                  (seeds.numel() == 1 || seeds.numel() == batch),
              "pydiffuse: seeds must be an int64 tensor [1] or [", batch, "], got ",
              seeds.scalar_type(), " ", seeds.sizes());
  TORCH_CHECK(seeds.device() == x.device(), "pydiffuse: seeds are on ", seeds.device(),
              ", x on ", x.device());
}

// The model output of a learned-variance step has 2C channels: the prediction, then v.
inline void check_step_output(const at::Tensor& out, const at::Tensor& x, bool learned_var,
                              const char* name) {
  if (!learned_var) return check_like(out, x, name);
  auto expected = x.sizes().vec();
  TORCH_CHECK(x.dim() >= 2, "pydiffuse: learned_var needs x of shape [B, C, ...]");
  expected[1] *= 2;
  TORCH_CHECK(out.sizes().vec() == expected, "pydiffuse: ", name, " has shape ", out.sizes(),
              ", expected ", at::IntArrayRef(expected), " (2C channels: learned variance)");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              "pydiffuse: ", name, " must match x's dtype and device");
}

}  // namespace pydiffuse
