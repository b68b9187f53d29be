// How a [B, C, *spatial] (or [B, D]) tensor lies in memory, as the kernels see it: B samples of
// `per_sample` elements each, samples outermost; within a sample either C-order or channels-last
// ([spatial, C]). No torch headers: host and device.
#pragma once

#include <stdint.h>

namespace pydiffuse {

struct Geometry {
  int64_t batch;
  int64_t per_sample;  // C * spatial
  int64_t channels;
  int64_t spatial;
  bool channels_last;
};

}  // namespace pydiffuse
