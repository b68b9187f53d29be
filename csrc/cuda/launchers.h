// Raw-pointer launchers of the CUDA kernels (csrc/cuda/*.cu), called by csrc/cuda_bindings.cpp.
// No torch headers, so CI compiles the kernels with nvcc alone. Data is B samples of per_sample
// elements (common/layout.h), contiguous in the kernel format; coefficient tables and seeds live
// on the device. Every launcher enqueues on `stream`, launches nothing for empty data and returns
// cudaGetLastError().
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "common/layout.h"

namespace pydiffuse::cuda {

enum class DType : int { kFloat32, kFloat16, kBFloat16 };

// The noise stream N(seeds, step, b, j) of common/philox.h; seeds == nullptr: no stream.
struct NoiseStream {
  const int64_t* seeds;  // [1] (one seed, counter b) or [B] (one per sample)
  bool per_sample_seeds;
  int64_t step;
};

// next = m0 x0 + me eps + mx x + s z (common/step.h). out and out_uncond have C channels, or 2C
// with learned_var (prediction, then v; see split_output_offset); z is `noise` (laid out like
// x) if given, else the stream if seeded, else 0. x0 may be null.
struct SampleStepArgs {
  Geometry g;
  DType dtype;
  const void *x, *out, *out_uncond, *noise;
  const float* coefs;  // [kNumStepCoefs, B]
  NoiseStream rng;
  bool clipped, learned_var;
  void *next, *x0;
};
cudaError_t launch_sample_step(const SampleStepArgs& a, cudaStream_t stream);

// out = sum_k coefs[k, b] * terms[k], k < num_terms <= kMaxLincombTerms.
constexpr int kMaxLincombTerms = 16;
struct LincombArgs {
  Geometry g;
  DType dtype;
  int num_terms;
  const void* terms[kMaxLincombTerms];
  const float* coefs;  // [num_terms, B]
  void* out;
};
cudaError_t launch_lincomb(const LincombArgs& a, cudaStream_t stream);

// mean = x + e score; next = mean + sqrt(2 e) z, e = step_size or, when adaptive,
// 2 step_size (snr |z| / |score|)^2 (norms per sample, or batch-averaged). z is `noise` if given,
// else the stream. mean may be null; adaptive steps need langevin_scratch_bytes(g) of scratch.
struct LangevinArgs {
  Geometry g;
  DType dtype;
  const void *x, *score, *noise;
  const float* coefs;  // [kNumLangevinCoefs, B]
  NoiseStream rng;
  bool adaptive, per_sample_norm;
  void *next, *mean;
  void* scratch;  // device memory, 16-byte aligned
};
size_t langevin_scratch_bytes(const Geometry& g);
cudaError_t launch_langevin_step(const LangevinArgs& a, cudaStream_t stream);

// out = the noise stream over a C-order [B, per_sample] tensor.
cudaError_t launch_randn(const Geometry& g, DType dtype, const NoiseStream& rng, void* out,
                         cudaStream_t stream);

}  // namespace pydiffuse::cuda
