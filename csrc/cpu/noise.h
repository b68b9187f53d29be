// The noise stream on the CPU: vectorizable Philox4x32-10 + Box-Muller (see common/philox.h).
#pragma once

#include <stdint.h>

#include "common/layout.h"
#include "common/philox.h"
#include "cpu/chunks.h"

namespace pydiffuse::cpu {

// Where the keys of the stream come from: one seed for the batch, or one per sample.
struct NoiseSeeds {
  const int64_t* seeds;
  bool per_sample;
  NoiseKey key(int64_t b) const { return noise_key(seeds, per_sample, b); }
};

// z[i] = N(key of sample b, step, j) for the elements of span s (i = 0 .. s.count - 1 in memory
// order; j the logical C-order index of each within its sample); implemented in randn.cpp for
// each CPU ISA.
void fill_noise(float* z, const Span& s, const Geometry& g, const NoiseSeeds& seeds,
                uint32_t step);

}  // namespace pydiffuse::cpu
