// What an op's CUDA binding needs (compiled with PYDIFFUSE_WITH_CUDA only): the raw-pointer
// launchers of csrc/cuda (cuda/launchers.h), the device guard and current stream, and the
// translation of torch's dtypes, optional tensors and seeds into the launchers' arguments.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"
#include "torch_utils.h"

namespace pydiffuse::cuda {

// t's dtype as the launchers name it (the binding has checked it is a float type).
inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

inline const void* data_or_null(const OptTensor& t) { return t ? t->const_data_ptr() : nullptr; }

inline NoiseStream noise_stream(const OptTensor& seeds, int64_t step) {
  return {seeds ? seeds->const_data_ptr<int64_t>() : nullptr, seeds && seeds->numel() > 1, step};
}

// Scratch device memory from the torch allocator (its blocks are 512-byte aligned).
inline at::Tensor scratch_bytes(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

}  // namespace pydiffuse::cuda
