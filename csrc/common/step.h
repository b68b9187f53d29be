// The step equation of every sampler (DESIGN.md, op 1) and the packed coefficient layout;
// keep the row order in sync with pydiffuse/ops/_packing.py. No torch headers: host and device.
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

enum StepCoef : int {
  kCx = 0, kCo, kEx, kE0, kM0, kMe, kMx, kS, kGuidance, kClip, kLogLo, kLogHi, kNumStepCoefs
};
enum LangevinCoef : int { kStepSize = 0, kSnr, kNumLangevinCoefs };

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
