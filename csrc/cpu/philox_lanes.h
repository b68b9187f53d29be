// Many Philox4x32-10 calls at once on the CPU (common/philox.h's function, lane by lane): the
// four words of call k into four planes, so the Box-Muller pass that follows reads them as
// vectors. GCC cannot vectorize the 32x32 -> 64-bit products of Philox without moving every
// lane through 64-bit registers and back; philox_lanes.cpp writes them with pmuludq on the
// even and odd 32-bit lanes (AVX-512 or AVX2, chosen at run time; a scalar loop elsewhere).
#pragma once

#include <stdint.h>

namespace pydiffuse::cpu {

// Calls k = 0 .. n - 1, each with key (key_lo[k], key_hi[k]) and counter (c0[k], c1[k], c2, 0);
// words[r][k] = word r of call k (words: four arrays of at least n entries).
void philox_planes(uint32_t* const words[4], const uint32_t* key_lo, const uint32_t* key_hi,
                   const uint32_t* c0, const uint32_t* c1, uint32_t c2, int64_t n);

// The lanes philox_planes runs in here: "avx512", "avx2" or "scalar" (pydiffuse info reports it).
const char* philox_lanes();

}  // namespace pydiffuse::cpu
