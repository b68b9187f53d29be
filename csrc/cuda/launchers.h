// Raw-pointer launchers of the CUDA kernels (csrc/cuda/*.cu), called by each op's CUDA binding
// in csrc/cpu/<op>.cpp. No torch headers, so CI compiles the kernels with nvcc alone. Data is B
// samples of per_sample elements (common/layout.h), contiguous in the kernel format; coefficient
// tables and seeds live on the device. Every launcher enqueues on `stream`, launches nothing for
// empty data and returns cudaGetLastError().
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

// out = softmax(q k^T scale) v, lse = logsumexp(q k^T scale) (natural log) for q [B, H, Nq, D],
// k, v [B, H, Nk, D] (Nk >= 1), D one of 32, 64, 128. q, k, v are addressed by element strides
// (batch, head, row) over a dense last dimension, every stride a multiple of 16 bytes and every
// pointer 16-byte aligned; out [B, H, Nq, D] (q's dtype) and lse [B, H, Nq] are C-order.
struct AttentionArgs {
  DType dtype;
  int64_t batch, heads, n_q, n_k, head_dim;
  const void *q, *k, *v;
  int64_t q_strides[3], k_strides[3], v_strides[3];
  float scale;
  void* out;
  float* lse;
};
bool attention_supports_head_dim(int64_t head_dim);
cudaError_t launch_attention(const AttentionArgs& a, cudaStream_t stream);

// Group norm of x [B, C, *spatial] (groups of C / groups channels, every group under 2^31
// elements): y = act((GN(x) weight + bias) (1 + scale) + shift), act = SiLU when silu.
// Parameters are float32, C-order, null when absent (weight 1, bias, scale, shift 0).
struct GroupNormParamPtrs {
  const float *weight, *bias;  // [C]
  const float *scale, *shift;  // [B, C]
};
struct GroupNormArgs {
  Geometry g;
  DType dtype;  // of x and y
  int64_t groups;
  float eps;
  bool silu;
  GroupNormParamPtrs p;
  const void* x;
  void* y;
  float *mean, *rstd;  // [B, G]; rstd = 1 / sqrt(biased variance + eps)
  void* scratch;       // group_norm_scratch_bytes(g, groups), 16-byte aligned
};
size_t group_norm_scratch_bytes(const Geometry& g, int64_t groups);
cudaError_t launch_group_norm(const GroupNormArgs& a, cudaStream_t stream);

// grad_x (x's dtype and layout) and float32 parameter gradients, each null when its parameter
// is absent; SiLU's derivative is recomputed from x, mean, rstd. Deterministic.
struct GroupNormBackwardArgs {
  Geometry g;
  DType dtype;  // of grad_y, x, grad_x
  int64_t groups;
  bool silu;
  GroupNormParamPtrs p;
  const void *grad_y, *x;
  const float *mean, *rstd;  // [B, G]
  void* grad_x;
  float *grad_weight, *grad_bias, *grad_scale, *grad_shift;
  void* scratch;  // group_norm_backward_scratch_bytes(g, groups), 16-byte aligned
};
size_t group_norm_backward_scratch_bytes(const Geometry& g, int64_t groups);
cudaError_t launch_group_norm_backward(const GroupNormBackwardArgs& a, cudaStream_t stream);

}  // namespace pydiffuse::cuda
