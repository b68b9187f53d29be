// The noise stream on the CPU: vectorizable Philox4x32-10 + Box-Muller (see common/philox.h).
#pragma once

#include <stdint.h>

#include "common/layout.h"
#include "cpu/chunks.h"
#include "common/philox.h"

namespace pydiffuse::cpu {

// z[i] = N(key, step, j) for the logical indices j of the in-sample memory offsets
// m_begin .. m_begin + count - 1 (count <= kChunk); implemented in randn.cpp for each CPU ISA.
void fill_noise(float* z, int64_t m_begin, int64_t count, const Geometry& g, NoiseKey key,
                uint32_t step);

}  // namespace pydiffuse::cpu
