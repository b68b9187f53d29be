// pydiffuse::sample_step on the CPU: one pass over x and the model output(s), per chunk of one
// sample: stage inputs as float32 (free for float32 data), generate the noise in-register-sized
// chunks, and run the branch-free step equation (common/step.h) that GCC vectorizes.
#include "common/step.h"
#include "cpu/chunks.h"
#include "cpu/noise.h"
#include "op_inputs.h"

namespace pydiffuse::cpu {
namespace {

// Float32 views of one chunk; u, v and z are null when absent.
struct StepChunk {
  const float *x, *o, *u, *v, *z;
  float *next, *x0;
  int64_t count;
};

template <bool kGuided, bool kClipped, bool kLearnedVar, bool kNoisy>
inline __attribute__((always_inline)) void step_loop(const StepCoefRow& row, const StepChunk& c) {
  using Eq = StepEquation<kGuided, kClipped, kLearnedVar>;
  for (int64_t i = 0; i < c.count; ++i) {
    const float x0 = Eq::x0(row, c.x[i], c.o[i], kGuided ? c.u[i] : 0.0f);
    c.next[i] = Eq::next(row, c.x[i], x0, kLearnedVar ? c.v[i] : 0.0f, kNoisy ? c.z[i] : 0.0f);
    if (c.x0) c.x0[i] = x0;
  }
}

template <bool kGuided, bool kClipped>
inline __attribute__((always_inline)) void step_loop_by_variance(const StepCoefRow& row,
                                                                 const StepChunk& c) {
  if (c.v) {
    c.z ? step_loop<kGuided, kClipped, true, true>(row, c)
        : step_loop<kGuided, kClipped, true, false>(row, c);
  } else {
    c.z ? step_loop<kGuided, kClipped, false, true>(row, c)
        : step_loop<kGuided, kClipped, false, false>(row, c);
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void step_chunk(const StepCoefRow& row, const StepChunk& c, bool clipped) {
  if (c.u) {
    clipped ? step_loop_by_variance<true, true>(row, c) : step_loop_by_variance<true, false>(row, c);
  } else {
    clipped ? step_loop_by_variance<false, true>(row, c)
            : step_loop_by_variance<false, false>(row, c);
  }
}

struct StepArgs {
  Geometry g;
  const float* coefs;
  const int64_t* seeds;  // null: no noise stream
  bool per_sample_seeds, clipped, learned_var;
  int64_t step;
};

// Gathers the prediction (and variance) channels of a 2C-channel output into float32 buffers.
template <typename scalar_t>
void gather_split_output(const scalar_t* out, const Geometry& g, int64_t b, int64_t m_begin,
                         int64_t count, float* o, float* v) {
  const int64_t shift = variance_shift(g.per_sample, g.channels_last, g.channels);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t offset =
        split_output_offset(b, m_begin + i, g.per_sample, g.channels_last, g.channels);
    o[i] = static_cast<float>(out[offset]);
    if (v) v[i] = static_cast<float>(out[offset + shift]);
  }
}

template <typename scalar_t>
void sample_step_kernel(const StepArgs& a, const scalar_t* x, const scalar_t* out,
                        const scalar_t* uncond, const scalar_t* noise, scalar_t* next,
                        scalar_t* x0) {
  const Geometry& g = a.g;
  for_each_chunk(g, [&](int64_t, int64_t b, int64_t m_begin, int64_t count) {
    float xb[kChunk], ob[kChunk], ub[kChunk], vb[kChunk], zb[kChunk], nb[kChunk], x0b[kChunk];
    const int64_t base = b * g.per_sample + m_begin;
    StepChunk c{};
    c.count = count;
    c.x = load_f32(x + base, count, xb);
    if (a.learned_var) {
      gather_split_output(out, g, b, m_begin, count, ob, vb);
      c.o = ob, c.v = vb;
      if (uncond) gather_split_output(uncond, g, b, m_begin, count, ub, nullptr), c.u = ub;
    } else {
      c.o = load_f32(out + base, count, ob);
      if (uncond) c.u = load_f32(uncond + base, count, ub);
    }
    if (noise) {
      c.z = load_f32(noise + base, count, zb);
    } else if (a.seeds) {
      fill_noise(zb, m_begin, count, g, noise_key(a.seeds, a.per_sample_seeds, b),
                 static_cast<uint32_t>(a.step));
      c.z = zb;
    }
    c.next = result_f32(next + base, nb);
    c.x0 = x0 ? result_f32(x0 + base, x0b) : nullptr;
    step_chunk(StepCoefRow::load(a.coefs, g.batch, b), c, a.clipped);
    store_result(c.next, count, next + base);
    if (x0) store_result(c.x0, count, x0 + base);
  });
}

template <typename scalar_t>
const scalar_t* data_or_null(const OptTensor& t) {
  return t ? t->data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> sample_step_cpu(
    const at::Tensor& x, const at::Tensor& out, const OptTensor& out_uncond,
    const at::Tensor& coefs, const OptTensor& noise, const OptTensor& seeds, int64_t step,
    bool has_clip, bool learned_var, bool return_x0) {
  auto in = prepare_sample_step(x, out, out_uncond, coefs, noise, seeds, learned_var, return_x0);
  if (in.x.numel() == 0) return {in.next, in.x0};
  const StepArgs a{in.g, in.coefs.data_ptr<float>(),
                   in.seeds ? in.seeds->data_ptr<int64_t>() : nullptr,
                   in.seeds && in.seeds->numel() > 1, has_clip, learned_var, step};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "sample_step", [&] {
    sample_step_kernel<scalar_t>(a, in.x.data_ptr<scalar_t>(), in.out.data_ptr<scalar_t>(),
                                 data_or_null<scalar_t>(in.uncond),
                                 data_or_null<scalar_t>(in.noise), in.next.data_ptr<scalar_t>(),
                                 return_x0 ? in.x0.data_ptr<scalar_t>() : nullptr);
  });
  return {in.next, in.x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) { m.impl("sample_step", &sample_step_cpu); }

}  // namespace pydiffuse::cpu
