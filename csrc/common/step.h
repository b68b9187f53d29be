// The step equation of every sampler (DESIGN.md, op 1) and the packed coefficient layout. The
// row order is written once here for C++ and CUDA (and once in pydiffuse/ops/_packing.py for
// Python and Triton); pydiffuse._C reports it and pydiffuse.ops checks the two agree when it
// loads _C. No torch headers: host and device.
//
//   o    = u + g (out - u)                 (classifier-free guidance, when out_uncond is given)
//   x0   = cx x + co o;  x0 = clamp(x0, -clip, clip)
//   eps  = ex x + e0 x0
//   next = m0 x0 + me eps + mx x + s z,    s *= exp(0.5 (f log_hi + (1 - f) log_lo)),
//                                           f = (v + 1) / 2 with a learned variance (iDDPM)
#pragma once

#include <math.h>

#include "philox.h"

namespace pydiffuse {

// The rows of the packed coefficient tables, in order: X(enumerator, name in _packing.py).
#define PD_STEP_COEFS(X)                                                                       \
  X(kCx, "cx") X(kCo, "co") X(kEx, "ex") X(kE0, "e0") X(kM0, "m0") X(kMe, "me") X(kMx, "mx") \
  X(kS, "s") X(kGuidance, "guidance") X(kClip, "clip") X(kLogLo, "log_lo") X(kLogHi, "log_hi")
#define PD_LANGEVIN_COEFS(X) X(kStepSize, "step_size") X(kSnr, "snr")

#define PD_COEF_ENUMERATOR(id, name) id,
#define PD_COEF_NAME(id, name) name,
enum StepCoef : int { PD_STEP_COEFS(PD_COEF_ENUMERATOR) kNumStepCoefs };
enum LangevinCoef : int { PD_LANGEVIN_COEFS(PD_COEF_ENUMERATOR) kNumLangevinCoefs };
// The row names, for pydiffuse._C to report (csrc/ops.cpp).
inline constexpr const char* kStepCoefNames[] = {PD_STEP_COEFS(PD_COEF_NAME)};
inline constexpr const char* kLangevinCoefNames[] = {PD_LANGEVIN_COEFS(PD_COEF_NAME)};
#undef PD_COEF_ENUMERATOR
#undef PD_COEF_NAME

// One sample's coefficients, read from the packed [kNumStepCoefs, B] table.
struct StepCoefRow {
  float c[kNumStepCoefs];
  PD_HOST_DEVICE static StepCoefRow load(const float* table, int64_t batch, int64_t b) {
    StepCoefRow row;
    PD_UNROLL
    for (int k = 0; k < kNumStepCoefs; ++k) row.c[k] = table[k * batch + b];
    return row;
  }
};

// Compile-time switches of the step equation.
template <bool kGuided, bool kClipped, bool kLearnedVar>
struct StepEquation {
  // x0 from the sample x and the model output o (and the unconditional output u).
  PD_HOST_DEVICE static float x0(const StepCoefRow& r, float x, float o, float u) {
    if (kGuided) o = u + r.c[kGuidance] * (o - u);
    float x0 = r.c[kCx] * x + r.c[kCo] * o;
    if (kClipped) {  // as torch.clamp: NaN stays NaN
      x0 = x0 < -r.c[kClip] ? -r.c[kClip] : x0;
      x0 = x0 > r.c[kClip] ? r.c[kClip] : x0;
    }
    return x0;
  }
  // next from x, x0, the variance channel v and the noise z.
  PD_HOST_DEVICE static float next(const StepCoefRow& r, float x, float x0, float v, float z) {
    const float eps = r.c[kEx] * x + r.c[kE0] * x0;
    float s = r.c[kS];
    if (kLearnedVar) {
      const float f = 0.5f * (v + 1.0f);
      s *= expf(0.5f * (f * r.c[kLogHi] + (1.0f - f) * r.c[kLogLo]));
    }
    return r.c[kM0] * x0 + r.c[kMe] * eps + r.c[kMx] * x + s * z;
  }
};

// Offset of the model-output element that pairs with x's element (b, m) when the output has 2C
// channels (learned variance); the variance element sits `variance_shift` further on.
PD_HOST_DEVICE int64_t split_output_offset(int64_t b, int64_t m, int64_t per_sample,
                                           bool channels_last, int64_t channels) {
  return channels_last ? b * 2 * per_sample + (m / channels) * 2 * channels + m % channels
                       : b * 2 * per_sample + m;
}
PD_HOST_DEVICE int64_t variance_shift(int64_t per_sample, bool channels_last, int64_t channels) {
  return channels_last ? channels : per_sample;
}

}  // namespace pydiffuse
