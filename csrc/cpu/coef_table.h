// A packed coefficient table [rows, B] as the CPU kernels read it: row k of sample b at
// data[k * row_stride + b * col_stride]. col_stride is 0 when every sample has the same row:
// the table that pydiffuse.ops packs from Python floats is a [rows, 1] tensor expanded over the
// batch, so a batch of 2^24 one-element samples does not carry a 12 x 2^24 table.
#pragma once

#include <ATen/ATen.h>

#include "cpu/chunks.h"

namespace pydiffuse::cpu {

struct CoefTable {
  const float* data;
  int64_t row_stride, col_stride;

  // t is a float32 [rows, B] table, shared (stride 0 over B) or contiguous (csrc/torch_utils.h).
  static CoefTable of(const at::Tensor& t) {
    return {t.const_data_ptr<float>(), t.stride(0), t.size(1) == 1 ? 0 : t.stride(1)};
  }
  bool shared() const { return col_stride == 0; }
  float at(int64_t k, int64_t b) const { return data[k * row_stride + b * col_stride]; }
};

// The span's rows as columns when every sample is one element and rows differ: cols[k][i] is
// row k of the span's sample i, read in place (per_sample == 1 and not shared(): a C-order
// table, see table_layout). Longer samples take their row once per sample instead.
template <int K>
void row_columns(const float* cols[K], const CoefTable& t, const Span& s) {
  for (int k = 0; k < K; ++k) cols[k] = t.data + k * t.row_stride + s.b * t.col_stride;
}

}  // namespace pydiffuse::cpu
