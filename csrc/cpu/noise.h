// The noise stream on the CPU: vectorizable Philox4x32-10 + Box-Muller (see common/philox.h).
#pragma once

#include <stdint.h>

#include "common/layout.h"
#include "common/philox.h"

namespace pydiffuse::cpu {

// z[i] = N(key, step, j[i]) for i < count; implemented in randn.cpp for each CPU ISA.
void fill_noise(float* z, const uint32_t* j, int64_t count, NoiseKey key, uint32_t step);

// j[i] = the logical C-order index of memory offset m_begin + i within a sample.
inline void logical_indices(uint32_t* j, int64_t m_begin, int64_t count, const Geometry& g) {
  if (!g.channels_last) {
    for (int64_t i = 0; i < count; ++i) j[i] = static_cast<uint32_t>(m_begin + i);
    return;
  }
  int64_t c = m_begin % g.channels, s = m_begin / g.channels;
  for (int64_t i = 0; i < count; ++i) {
    j[i] = static_cast<uint32_t>(c * g.spatial + s);
    if (++c == g.channels) c = 0, ++s;
  }
}

}  // namespace pydiffuse::cpu
