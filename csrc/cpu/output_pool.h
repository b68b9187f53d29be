// Outputs of the CPU kernels come from a small cache of large blocks, as torch's CUDA caching
// allocator does on the GPU: a sampler loop frees step t's tensor and allocates step t+1's of the
// same size, and fresh pages cost more than the kernel (first-touch faults of 64 MiB: ~14 ms
// here, against ~7 ms for a whole sample_step). Blocks of 1 MiB and up are kept, 2 MiB aligned
// with transparent huge pages requested, up to PYDIFFUSE_CPU_POOL_MB in all (default 1024; 0
// turns the cache off).
#pragma once

#include <ATen/ATen.h>

namespace pydiffuse::cpu {

// An uninitialised CPU tensor in `format`, its storage from the cache.
at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format);

// Frees every cached block; returns the bytes released.
int64_t release_cached_outputs();

}  // namespace pydiffuse::cpu
