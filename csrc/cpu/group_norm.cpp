// pydiffuse::group_norm and group_norm_backward, their host side: the schemas and Meta kernels,
// the kernels' input invariants, the CPU kernels and the CPU and CUDA bindings (the CUDA kernels:
// csrc/cuda/group_norm.cu). The CPU kernels work in x's own layout.
//
// Per (b, c): y = act(a (x - mean_g) + d), a = rstd w (1 + scale), d = bias (1 + scale) + shift.
// A sample is [C, S] (C-order) or [S, C] (channels-last; also every x with S = 1). Work is cut
// into segments fixed by the shape: C-order, a block of up to kChunk elements of one channel's
// row, or as many whole rows of one group as fit in kChunk; channels-last, a block of rows of
// all channels. Segment partial sums (float32 in-register lanes, then float64) reduce in a
// fixed order, so results do not depend on the thread count. Statistics are sums of x - pivot
// with the group's first element as the pivot: no cancellation when the mean is large against
// the spread. Each op is three phases over units (a group in C-order, a sample in
// channels-last): partial sums of every segment of the unit, the unit's per-channel constants,
// then the elementwise pass. Where a unit fits in L2 and there are units to go round, one task
// runs all three for a batch of units that fits in L2 together, so the elementwise pass reads
// from cache; a task is at least kTaskElements of work, so small inputs take one thread.
//
// Backward, with g = dL/dz = grad_y act'(z) (kept from the first pass to the second with SiLU)
// and per (b, c) sums S1 = sum_s g, S2 = sum_s g (x - mean):
//   grad_shift = S1, grad_scale = w rstd S2 + bias S1, grad_bias = sum_b (1 + scale) S1,
//   grad_weight = sum_b (1 + scale) rstd S2; with k = (1 + scale) w and N = C/G * S,
//   m1 = sum_{c in group} k S1 / N, m2 = sum_{c in group} k S2 / N:
//   grad_x = rstd k g - rstd^3 m2 (x - mean) - rstd m1.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/chunks.h"
#include "cpu/convert.h"
#include "cpu/vec_math.h"
#include "torch_utils.h"
#ifdef PYDIFFUSE_WITH_CUDA
#include "cuda_binding.h"
#endif

#pragma GCC diagnostic ignored "-Wpsabi"  // cpu/vec_math.h's Lanes stay in inlined code

namespace pydiffuse {

TORCH_LIBRARY_FRAGMENT(pydiffuse, m) {
  // y = act((GN(x) * weight + bias) * (1 + scale) + shift); also returns mean, rstd [B, G] fp32.
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, "
      "Tensor? shift, float eps, bool silu) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight [C], grad_bias [C], grad_scale [B, C], grad_shift [B, C]); a gradient of
  // an absent parameter is an empty tensor.
  m.def(
      "group_norm_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, int num_groups, "
      "Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, bool silu) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace {

// y in x's kernel layout; mean, rstd [B, G] float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_meta(
    const at::Tensor& x, int64_t num_groups, const OptTensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, double, bool) {
  TORCH_CHECK(x.dim() >= 2, "pydiffuse: group_norm needs x of shape [B, C, *spatial]");
  auto stats = at::empty_symint({x.sym_size(0), c10::SymInt(num_groups)},
                                x.options().dtype(at::kFloat));
  return {at::empty_like(x, x.options(), kernel_format(x)), stats, at::empty_like(stats)};
}

// grad_x in x's kernel layout; each parameter's gradient C-order in its dtype, or empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_meta(
    const at::Tensor&, const at::Tensor& x, const at::Tensor&, const at::Tensor&, int64_t,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift, bool) {
  auto grad_of = [&](const OptTensor& t) {
    return t ? at::empty_symint(t->sym_sizes(), t->options()) : x.new_empty({0});
  };
  return {at::empty_like(x, x.options(), kernel_format(x)), grad_of(weight), grad_of(bias),
          grad_of(scale), grad_of(shift)};
}

// group_norm's parameters as the kernels read them: float32, C-order (tiny: [C] or [B, C]).
struct GroupNormParams {
  OptTensor weight, bias, scale, shift;
};

OptTensor group_norm_param(const OptTensor& t, at::IntArrayRef shape, const at::Tensor& x,
                           const char* name) {
  if (!t) return std::nullopt;
  TORCH_CHECK(t->sizes() == shape, "pydiffuse: group_norm's ", name, " has shape ", t->sizes(),
              ", expected ", shape);
  TORCH_CHECK(t->device() == x.device(), "pydiffuse: ", name, " is on ", t->device(), ", x on ",
              x.device());
  return t->to(at::kFloat).contiguous();
}

GroupNormParams prepare_group_norm_params(const at::Tensor& x, const OptTensor& weight,
                                          const OptTensor& bias, const OptTensor& scale,
                                          const OptTensor& shift) {
  const int64_t c = x.size(1);
  return {group_norm_param(weight, {c}, x, "weight"), group_norm_param(bias, {c}, x, "bias"),
          group_norm_param(scale, {x.size(0), c}, x, "scale"),
          group_norm_param(shift, {x.size(0), c}, x, "shift")};
}

void check_group_norm_input(const at::Tensor& x, int64_t num_groups) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() >= 2, "pydiffuse: group_norm needs x of shape [B, C, *spatial], got ",
              x.sizes());
  TORCH_CHECK(num_groups > 0 && x.size(1) % num_groups == 0, "pydiffuse: group_norm: ",
              x.size(1), " channels do not split into ", num_groups, " groups");
}

struct GroupNormInputs {
  Geometry g;
  int64_t groups;
  at::Tensor x, y, mean, rstd;  // y in x's kernel layout; mean, rstd [B, G] float32
  GroupNormParams p;
};

GroupNormInputs prepare_group_norm(const at::Tensor& x, int64_t num_groups,
                                   const OptTensor& weight, const OptTensor& bias,
                                   const OptTensor& scale, const OptTensor& shift) {
  check_group_norm_input(x, num_groups);
  const auto format = kernel_format(x);
  const auto xc = x.contiguous(format);
  auto mean = at::empty({x.size(0), num_groups}, x.options().dtype(at::kFloat));
  return {geometry_of(x, format), num_groups, xc, output_like(xc, format), mean,
          at::empty_like(mean), prepare_group_norm_params(x, weight, bias, scale, shift)};
}

struct GroupNormBackwardInputs {
  Geometry g;
  int64_t groups;
  at::Tensor grad_y, x, mean, rstd, grad_x;  // grad_y, grad_x in x's kernel layout
  GroupNormParams p;
  // Float32 gradients of the parameters given ([C], [C], [B, C], [B, C]), else undefined;
  // finish_group_norm_backward casts them to the parameters' dtypes.
  at::Tensor grad_weight, grad_bias, grad_scale, grad_shift;
};

GroupNormBackwardInputs prepare_group_norm_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift) {
  check_group_norm_input(x, num_groups);
  check_like(grad_y, x, "grad_y");
  for (const auto* t : {&mean, &rstd}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == x.size(0) &&
                    t->size(1) == num_groups && t->device() == x.device(),
                "pydiffuse: group_norm_backward's mean and rstd must be float32 [", x.size(0),
                ", ", num_groups, "] on x's device, got ", t->scalar_type(), " ", t->sizes());
  }
  const auto format = kernel_format(x);
  const auto xc = x.contiguous(format);
  auto p = prepare_group_norm_params(x, weight, bias, scale, shift);
  auto grad_of = [](const OptTensor& t) { return t ? at::empty_like(*t) : at::Tensor(); };
  return {geometry_of(x, format), num_groups, grad_y.contiguous(format), xc, mean.contiguous(),
          rstd.contiguous(), output_like(xc, format), p, grad_of(p.weight), grad_of(p.bias),
          grad_of(p.scale), grad_of(p.shift)};
}

// (grad_x, grad_weight, grad_bias, grad_scale, grad_shift), each parameter's gradient in that
// parameter's dtype, or an empty tensor for an absent parameter.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
finish_group_norm_backward(const GroupNormBackwardInputs& in, const OptTensor& weight,
                           const OptTensor& bias, const OptTensor& scale, const OptTensor& shift) {
  auto cast = [&](const at::Tensor& grad, const OptTensor& param) {
    return param ? grad.to(param->scalar_type()) : in.x.new_empty({0});
  };
  return {in.grad_x, cast(in.grad_weight, weight), cast(in.grad_bias, bias),
          cast(in.grad_scale, scale), cast(in.grad_shift, shift)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) {
  m.impl("group_norm", &group_norm_meta);
  m.impl("group_norm_backward", &group_norm_backward_meta);
}

namespace cpu {
namespace {

constexpr int64_t kTaskElements = 16384;  // the least work worth a thread (see grain)
constexpr int64_t kUnitCacheBytes = 512 * 1024;  // a unit's inputs that stay in L2 between passes

// On a float or on Lanes (cpu/vec_math.h).
template <bool kSilu, typename T>
inline __attribute__((always_inline)) T activation(T z) {
  if constexpr (kSilu) return silu(z);
  return z;
}

// dL/dz from dL/dy: SiLU' = sigmoid(z) (1 + z (1 - sigmoid(z))).
template <bool kSilu, typename T>
inline __attribute__((always_inline)) T activation_grad(T dy, T z) {
  if constexpr (kSilu) {
    const T sig = sigmoid(z);
    return dy * sig * (1.0f + z * (1.0f - sig));
  }
  return dy;
}

inline __attribute__((always_inline)) void store_lanes(float* p, Lanes v) {
  std::memcpy(p, &v, sizeof(v));
}

// Per-channel constants of the elementwise passes, for one sample: z = a (x - m) + d, and in the
// backward grad_x = alpha g + beta (x - m) + gamma. C-order row r reads element r of each.
struct Coefs {
  const float *a, *m, *d, *alpha, *beta, *gamma;
};

// ---- inner loops: float32 rows x cols, the constants per column (kPerCol) or per row ----

template <bool kPerCol, bool kSilu>
inline __attribute__((always_inline)) void forward_loop(const float* __restrict__ x, int64_t rows,
                                                        int64_t cols, const Coefs& k,
                                                        float* __restrict__ y) {
  const float *__restrict__ a = k.a, *__restrict__ m = k.m, *__restrict__ d = k.d;
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ xr = x + r * cols;
    float* __restrict__ yr = y + r * cols;
    int64_t c = 0;
#pragma GCC unroll 2
    for (; c + kLanes <= cols; c += kLanes) {
      const Lanes xm = load_lanes(xr + c) - (kPerCol ? load_lanes(m + c) : Lanes{} + m[r]);
      const Lanes z = kPerCol ? load_lanes(a + c) * xm + load_lanes(d + c) : a[r] * xm + d[r];
      store_lanes(yr + c, activation<kSilu>(z));
    }
    for (; c < cols; ++c) {
      const int64_t j = kPerCol ? c : r;
      yr[c] = activation<kSilu>(a[j] * (xr[c] - m[j]) + d[j]);
    }
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void forward_block(const float* x, int64_t rows, int64_t cols, const Coefs& k, bool per_col,
                   bool silu, float* y) {
  if (per_col) {
    silu ? forward_loop<true, true>(x, rows, cols, k, y)
         : forward_loop<true, false>(x, rows, cols, k, y);
  } else {
    silu ? forward_loop<false, true>(x, rows, cols, k, y)
         : forward_loop<false, false>(x, rows, cols, k, y);
  }
}

// grad_x = alpha g + beta (x - m) + gamma, g = dL/dz.
template <bool kPerCol>
inline __attribute__((always_inline)) void grad_x_loop(const float* __restrict__ x,
                                                       const float* __restrict__ g, int64_t rows,
                                                       int64_t cols, const Coefs& k,
                                                       float* __restrict__ dx) {
  const float *__restrict__ m = k.m, *__restrict__ alpha = k.alpha, *__restrict__ beta = k.beta,
              *__restrict__ gamma = k.gamma;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c, j = kPerCol ? c : r;
      dx[i] = alpha[j] * g[i] + beta[j] * (x[i] - m[j]) + gamma[j];
    }
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void grad_x_block(const float* x, const float* g, int64_t rows, int64_t cols, const Coefs& k,
                  bool per_col, float* dx) {
  per_col ? grad_x_loop<true>(x, g, rows, cols, k, dx)
          : grad_x_loop<false>(x, g, rows, cols, k, dx);
}

// (sum (x - pivot), sum (x - pivot)^2) of a contiguous run.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void shifted_sums(const float* x, int64_t n, float pivot, double* sums) {
  Lanes s1 = {}, s2 = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Lanes v = load_lanes(x + i) - pivot;
    s1 += v, s2 += v * v;
  }
  double t1 = lane_sum(s1), t2 = lane_sum(s2);
  for (; i < n; ++i) {
    const double v = x[i] - pivot;
    t1 += v, t2 += v * v;
  }
  sums[0] = t1, sums[1] = t2;
}

// Per column c of rows x cols: acc[c] = sum (x - pivot[c]), acc[cols + c] = sum (x - pivot[c])^2.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void shifted_sums_by_column(const float* __restrict__ x, int64_t rows, int64_t cols,
                            const float* __restrict__ pivot, float* __restrict__ acc) {
  float* __restrict__ acc2 = acc + cols;
  for (int64_t c = 0; c < cols; ++c) acc[c] = 0.0f, acc2[c] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float v = x[r * cols + c] - pivot[c];
      acc[c] += v;
      acc2[c] += v * v;
    }
  }
}

// g = dL/dz = dy act'(a (x - m) + d) of a contiguous run of one channel into g_out (unless
// there is no activation: then g is dy), and (sum g, sum g (x - m)) in lanes.
template <bool kSilu>
inline __attribute__((always_inline)) void grad_sums_loop(const float* __restrict__ x,
                                                          const float* __restrict__ dy, int64_t n,
                                                          const Coefs& k,
                                                          float* __restrict__ g_out,
                                                          double* sums) {
  const float a = k.a[0], m = k.m[0], d = k.d[0];
  const float* g = dy;
  if constexpr (kSilu) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      const Lanes z = a * (load_lanes(x + i) - m) + d;
      store_lanes(g_out + i, activation_grad<true>(load_lanes(dy + i), z));
    }
    for (; i < n; ++i) g_out[i] = activation_grad<true>(dy[i], a * (x[i] - m) + d);
    g = g_out;
  }
  Lanes s1 = {}, s2 = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Lanes gi = load_lanes(g + i);
    s1 += gi, s2 += gi * (load_lanes(x + i) - m);
  }
  double t1 = lane_sum(s1), t2 = lane_sum(s2);
  for (; i < n; ++i) t1 += g[i], t2 += static_cast<double>(g[i]) * (x[i] - m);
  sums[0] = t1, sums[1] = t2;
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void grad_sums(const float* x, const float* dy, int64_t n, const Coefs& k, bool silu,
               float* g_out, double* sums) {
  silu ? grad_sums_loop<true>(x, dy, n, k, g_out, sums)
       : grad_sums_loop<false>(x, dy, n, k, g_out, sums);
}

// The same by columns: g into g_out (with an activation), acc[c] = sum g,
// acc[cols + c] = sum g (x - m[c]).
template <bool kSilu>
inline __attribute__((always_inline)) void grad_sums_by_column_loop(
    const float* __restrict__ x, const float* __restrict__ dy, int64_t rows, int64_t cols,
    const Coefs& k, float* __restrict__ g_out, float* __restrict__ acc) {
  const float *__restrict__ a = k.a, *__restrict__ m = k.m, *__restrict__ d = k.d;
  float* __restrict__ acc2 = acc + cols;
  for (int64_t c = 0; c < cols; ++c) acc[c] = 0.0f, acc2[c] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes) {
      const int64_t i = r * cols + c;
      const Lanes xm = load_lanes(x + i) - load_lanes(m + c);
      Lanes g = load_lanes(dy + i);
      if constexpr (kSilu) {
        g = activation_grad<true>(g, load_lanes(a + c) * xm + load_lanes(d + c));
        store_lanes(g_out + i, g);
      }
      store_lanes(acc + c, load_lanes(acc + c) + g);
      store_lanes(acc2 + c, load_lanes(acc2 + c) + g * xm);
    }
    for (; c < cols; ++c) {
      const int64_t i = r * cols + c;
      const float xm = x[i] - m[c];
      float g = dy[i];
      if constexpr (kSilu) g_out[i] = g = activation_grad<true>(g, a[c] * xm + d[c]);
      acc[c] += g;
      acc2[c] += g * xm;
    }
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void grad_sums_by_column(const float* x, const float* dy, int64_t rows, int64_t cols,
                         const Coefs& k, bool silu, float* g_out, float* acc) {
  silu ? grad_sums_by_column_loop<true>(x, dy, rows, cols, k, g_out, acc)
       : grad_sums_by_column_loop<false>(x, dy, rows, cols, k, g_out, acc);
}

// Half and bfloat16 data staged as float32 and back (cpu/convert.h).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void widen_half(const c10::Half* src, int64_t n, float* dst) { widen(src, n, dst); }
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void widen_bfloat16(const c10::BFloat16* src, int64_t n, float* dst) { widen(src, n, dst); }
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void narrow_half(const float* src, int64_t n, c10::Half* dst) { narrow(src, n, dst); }
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void narrow_bfloat16(const float* src, int64_t n, c10::BFloat16* dst) { narrow(src, n, dst); }

// n elements at src as float32: src itself for float32, else widened into buffer.
template <typename scalar_t>
const float* staged(const scalar_t* src, int64_t n, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    widen_half(src, n, buffer);
  } else {
    widen_bfloat16(src, n, buffer);
  }
  return buffer;
}

// Where a float32 result goes: dst itself for float32, else buffer (then `store`).
template <typename scalar_t>
float* result(scalar_t* dst, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return dst;
  } else {
    return buffer;
  }
}

template <typename scalar_t>
void store(const float* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    narrow_half(src, n, dst);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    narrow_bfloat16(src, n, dst);
  }
}

// fn(scalar_t{}) for x's dtype: float32, float16 or bfloat16 (check_float has accepted it).
template <typename Fn>
void dispatch_float(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kHalf: return fn(c10::Half{});
    case at::kBFloat16: return fn(c10::BFloat16{});
    default: return fn(float{});
  }
}

// ---- traversal ----

// How the kernels cut x: see the file comment.
struct Plan {
  int64_t B, C, S, G, cpg;  // cpg: channels per group
  bool cl;
  int64_t blocks;  // segments per channel row (C-order) or per sample (channels-last)
  int64_t rows;    // rows per segment: channel rows (C-order), spatial rows (channels-last)
  int64_t units, segments_per_unit, unit_elements, segment_elements;

  Plan(const Geometry& g, int64_t groups)
      : B(g.batch), C(g.channels), S(g.spatial), G(groups), cpg(g.channels / groups),
        cl(g.channels_last || g.spatial == 1) {
    if (cl) {
      rows = std::max<int64_t>(1, kChunk / C);
      blocks = (S + rows - 1) / rows;
      units = B, segments_per_unit = blocks, unit_elements = C * S;
      segment_elements = rows * C;
    } else {  // short rows go several to a segment: a segment is contiguous either way
      rows = S < kChunk ? std::min(cpg, kChunk / S) : 1;
      blocks = (S + kChunk - 1) / kChunk;
      units = B * G, segments_per_unit = (cpg + rows - 1) / rows * blocks;
      unit_elements = cpg * S, segment_elements = rows * std::min(S, kChunk);
    }
  }

  // Segment `seg` of unit `unit`: its sample, first channel (C-order), offset and rows x cols
  // extent (contiguous: rows > 1 only where a row is whole).
  struct Segment {
    int64_t b, c, offset, rows, cols;
  };
  Segment segment(int64_t unit, int64_t seg) const {
    if (cl) {
      const int64_t r0 = seg * rows;
      return {unit, 0, (unit * S + r0) * C, std::min(rows, S - r0), C};
    }
    // (few integer divides: they cost as much as a short segment's arithmetic)
    const int64_t b = unit / G, row_block = blocks == 1 ? seg : seg / blocks;
    const int64_t r0 = row_block * rows, c = (unit - b * G) * cpg + r0;
    const int64_t s0 = (seg - row_block * blocks) * kChunk;
    return {b, c, unit * unit_elements + r0 * S + s0, std::min(rows, cpg - r0),
            std::min(kChunk, S - s0)};
  }
};

// Items of `elements` each, per task: every thread a share, but no task under kTaskElements
// (waking a thread costs more than that much work).
inline int64_t grain(int64_t items, int64_t elements) {
  const int64_t tasks = std::clamp<int64_t>(items * elements / kTaskElements, 1,
                                            at::get_num_threads());
  return (items + tasks - 1) / tasks;
}

// Runs phase1(unit, seg, buffer) over every segment, finish(unit) over every unit, then
// phase2(unit, seg, buffer): all three per unit in one task where units fit in cache and are
// enough to share out, else phase by phase. The arithmetic is the same either way.
template <typename Phase1, typename Finish, typename Phase2>
void run_phases(const Plan& plan, int64_t unit_bytes, int64_t buffer_floats, const Phase1& phase1,
                const Finish& finish, const Phase2& phase2) {
  const int64_t spu = plan.segments_per_unit;
  if (unit_bytes <= kUnitCacheBytes && plan.units >= 4 * at::get_num_threads()) {
    // Units go in batches that fit in cache together: a batch's units are independent, so the
    // out-of-order core overlaps their latency chains (sums, sqrt, constants) phase by phase.
    const int64_t batch = kUnitCacheBytes / unit_bytes;
    at::parallel_for(0, plan.units, grain(plan.units, plan.unit_elements),
                     [&](int64_t begin, int64_t end) {
                       std::unique_ptr<float[]> buffer(new float[buffer_floats]);  // uninit.
                       for (int64_t u0 = begin; u0 < end; u0 += batch) {
                         const int64_t u1 = std::min(end, u0 + batch);
                         for (int64_t u = u0; u < u1; ++u)
                           for (int64_t s = 0; s < spu; ++s) phase1(u, s, buffer.get());
                         for (int64_t u = u0; u < u1; ++u) finish(u);
                         for (int64_t u = u0; u < u1; ++u)
                           for (int64_t s = 0; s < spu; ++s) phase2(u, s, buffer.get());
                       }
                     });
    return;
  }
  auto segments = [&](const auto& phase) {
    at::parallel_for(0, plan.units * spu, grain(plan.units * spu, plan.segment_elements),
                     [&](int64_t begin, int64_t end) {
                       std::unique_ptr<float[]> buffer(new float[buffer_floats]);
                       for (int64_t i = begin; i < end; ++i) phase(i / spu, i % spu, buffer.get());
                     });
  };
  segments(phase1);
  at::parallel_for(0, plan.units, grain(plan.units, plan.unit_elements / 16),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t u = begin; u < end; ++u) finish(u);
                   });
  segments(phase2);
}

// Uninitialized float32/float64 work arrays: small ones from malloc, large ones from the CPU
// output cache (cpu/output_pool.h): with B * C large (x [B, C]) they are as big as x, and fresh
// pages on every call cost more than the kernel.
class Scratch {
 public:
  template <typename T>
  T* take(int64_t n) {
    const int64_t bytes = std::max<int64_t>(1, n) * static_cast<int64_t>(sizeof(T));
    if (bytes < kPooledBytes) {
      small_.emplace_back(new char[bytes]);
      return reinterpret_cast<T*>(small_.back().get());
    }
    large_.push_back(empty_output({bytes}, at::kByte, at::MemoryFormat::Contiguous));
    return reinterpret_cast<T*>(large_.back().data_ptr());
  }

 private:
  static constexpr int64_t kPooledBytes = 1 << 20;  // the cache's smallest block
  std::vector<std::unique_ptr<char[]>> small_;
  std::vector<at::Tensor> large_;
};

// The parameters as float32 arrays, an absent one as its identity (weight 1, the rest 0), so that
// the per-channel loops have no branches.
struct Params {
  const float *w, *bias, *scale, *shift;  // [C], [C], [B, C], [B, C]

  Params(const GroupNormParams& p, int64_t B, int64_t C, Scratch& scratch)
      : w(or_filled(p.weight, C, 1.0f, scratch)), bias(or_filled(p.bias, C, 0.0f, scratch)),
        scale(or_filled(p.scale, B * C, 0.0f, scratch)),
        shift(or_filled(p.shift, B * C, 0.0f, scratch)) {}

  static const float* or_filled(const OptTensor& t, int64_t n, float value, Scratch& scratch) {
    if (t) return t->data_ptr<float>();
    float* filled = scratch.take<float>(n);
    std::fill(filled, filled + n, value);
    return filled;
  }
};

// z = a (x - m) + d for n channels of one group (see CoefTable::set_affine).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void affine_coefs(const float* __restrict__ w, const float* __restrict__ bias,
                  const float* __restrict__ scale, const float* __restrict__ shift, int64_t n,
                  double mean, float rstd, float* __restrict__ a, float* __restrict__ m,
                  float* __restrict__ d) {
  const float m_hi = static_cast<float>(mean), m_lo = static_cast<float>(mean - m_hi);
  for (int64_t c = 0; c < n; ++c) {
    const float gain = 1.0f + scale[c];
    a[c] = rstd * w[c] * gain;
    m[c] = m_hi;
    d[c] = bias[c] * gain + shift[c] - a[c] * m_lo;
  }
}

// m1 = sum_c k_c t1_c, m2 = sum_c k_c t2_c with k = (1 + scale) w, over n channels of a group
// (four independent sums: a single chain of float64 adds would bound small-S shapes).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void gain_weighted_sums(const float* __restrict__ w, const float* __restrict__ scale,
                        const double* __restrict__ t1, const double* __restrict__ t2, int64_t n,
                        double* m1, double* m2) {
  double a1[4] = {}, a2[4] = {};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int l = 0; l < 4; ++l) {
      const double k = (1.0 + scale[j + l]) * w[j + l];
      a1[l] += k * t1[j + l], a2[l] += k * t2[j + l];
    }
  }
  for (; j < n; ++j) {
    const double k = (1.0 + scale[j]) * w[j];
    a1[0] += k * t1[j], a2[0] += k * t2[j];
  }
  *m1 = (a1[0] + a1[1]) + (a1[2] + a1[3]), *m2 = (a2[0] + a2[1]) + (a2[2] + a2[3]);
}

// Per (b, c) constants of the elementwise passes, [B * C] each.
struct CoefTable {
  float *a, *m, *d, *alpha = nullptr, *beta = nullptr, *gamma = nullptr;
  CoefTable(Scratch& scratch, int64_t n, bool backward)
      : a(scratch.take<float>(n)), m(scratch.take<float>(n)), d(scratch.take<float>(n)) {
    if (backward) {
      alpha = scratch.take<float>(n), beta = scratch.take<float>(n);
      gamma = scratch.take<float>(n);
    }
  }
  Coefs at(int64_t i) const {
    return {a + i, m + i, d + i, alpha ? alpha + i : nullptr, beta ? beta + i : nullptr,
            gamma ? gamma + i : nullptr};
  }
  // z = a (x - m) + d for channels [c0, c1) of sample b, one group. m is the float32 mean; the
  // rest of the float64 mean goes into d, so that z keeps float32 precision when the mean is
  // large against the spread (x - m is then exact).
  void set_affine(const Params& p, const Plan& pl, int64_t b, int64_t c0, int64_t c1,
                  double mean, float rstd) {
    const int64_t i0 = b * pl.C + c0;
    affine_coefs(p.w + c0, p.bias + c0, p.scale + i0, p.shift + i0, c1 - c0, mean, rstd, a + i0,
                 m + i0, d + i0);
  }
};

// ---- forward ----

template <typename scalar_t>
void group_norm_kernel(const Plan& pl, Scratch& scratch, const scalar_t* x, const Params& p,
                       double eps, bool silu, scalar_t* y, float* mean_out, float* rstd_out) {
  // Segment partial sums: C-order [units * segments_per_unit][2]; channels-last
  // [B * blocks * G][2].
  double* partial = scratch.take<double>(
      2 * (pl.cl ? pl.B * pl.blocks * pl.G : pl.units * pl.segments_per_unit));
  CoefTable coefs(scratch, pl.B * pl.C, false);
  const int64_t seg = pl.segment_elements;
  const double n_group = static_cast<double>(pl.cpg * pl.S);
  auto pivot = [&](int64_t b, int64_t g) {  // the group's first element
    return static_cast<float>(pl.cl ? x[b * pl.C * pl.S + g * pl.cpg]
                                    : x[(b * pl.C + g * pl.cpg) * pl.S]);
  };
  auto phase1 = [&](int64_t unit, int64_t si, float* buffer) {
    const auto s = pl.segment(unit, si);
    const float* xf = staged(x + s.offset, s.rows * s.cols, buffer);
    if (!pl.cl) {
      return shifted_sums(xf, s.rows * s.cols, x[unit * pl.unit_elements],
                          &partial[2 * (unit * pl.segments_per_unit + si)]);
    }
    float* pivots = buffer + seg;
    float* acc = pivots + pl.C;
    for (int64_t g = 0; g < pl.G; ++g) {
      std::fill(pivots + g * pl.cpg, pivots + (g + 1) * pl.cpg, pivot(s.b, g));
    }
    shifted_sums_by_column(xf, s.rows, pl.C, pivots, acc);
    double* out = &partial[2 * (s.b * pl.blocks + si) * pl.G];
    for (int64_t g = 0; g < pl.G; ++g) {
      double t1 = 0, t2 = 0;
      for (int64_t c = g * pl.cpg; c < (g + 1) * pl.cpg; ++c) t1 += acc[c], t2 += acc[pl.C + c];
      out[2 * g] = t1, out[2 * g + 1] = t2;
    }
  };
  auto finish_group = [&](int64_t b, int64_t g, double t1, double t2) {
    const double mu = t1 / n_group;
    const double var = std::max(t2 / n_group - mu * mu, 0.0);
    const double mean = pivot(b, g) + mu;
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    mean_out[b * pl.G + g] = static_cast<float>(mean), rstd_out[b * pl.G + g] = rstd;
    coefs.set_affine(p, pl, b, g * pl.cpg, (g + 1) * pl.cpg, mean, rstd);
  };
  auto finish = [&](int64_t unit) {
    if (!pl.cl) {
      const int64_t b = unit / pl.G, g = unit - b * pl.G;
      const double* part = &partial[2 * unit * pl.segments_per_unit];
      double t1 = 0, t2 = 0;
      for (int64_t k = 0; k < pl.segments_per_unit; ++k) t1 += part[2 * k], t2 += part[2 * k + 1];
      return finish_group(b, g, t1, t2);
    }
    std::vector<double> t(2 * pl.G, 0.0);
    for (int64_t k = 0; k < pl.blocks; ++k) {
      const double* part = &partial[2 * (unit * pl.blocks + k) * pl.G];
      for (int64_t j = 0; j < 2 * pl.G; ++j) t[j] += part[j];
    }
    for (int64_t g = 0; g < pl.G; ++g) finish_group(unit, g, t[2 * g], t[2 * g + 1]);
  };
  auto phase2 = [&](int64_t unit, int64_t si, float* buffer) {
    const auto s = pl.segment(unit, si);
    const int64_t n = s.rows * s.cols;
    float* yf = result(y + s.offset, buffer + seg);
    forward_block(staged(x + s.offset, n, buffer), s.rows, s.cols, coefs.at(s.b * pl.C + s.c),
                  pl.cl, silu, yf);
    store(yf, n, y + s.offset);
  };
  const int64_t unit_bytes = pl.unit_elements * static_cast<int64_t>(sizeof(scalar_t));
  run_phases(pl, unit_bytes, 2 * seg + 3 * pl.C, phase1, finish, phase2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cpu(
    const at::Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, double eps, bool silu) {
  auto in = prepare_group_norm(x, num_groups, weight, bias, scale, shift);
  if (in.x.numel() == 0) {  // an empty group's statistics are NaN, as torch's mean and var
    in.mean.fill_(std::numeric_limits<float>::quiet_NaN());
    in.rstd.fill_(std::numeric_limits<float>::quiet_NaN());
    return {in.y, in.mean, in.rstd};
  }
  const Plan plan(in.g, num_groups);
  Scratch scratch;
  const Params p(in.p, plan.B, plan.C, scratch);
  dispatch_float(in.x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    group_norm_kernel<scalar_t>(plan, scratch, in.x.data_ptr<scalar_t>(), p, eps, silu,
                                in.y.data_ptr<scalar_t>(), in.mean.data_ptr<float>(),
                                in.rstd.data_ptr<float>());
  });
  return {in.y, in.mean, in.rstd};
}

// ---- backward ----

struct ParamGrads {
  float *w, *bias, *scale, *shift;  // null: not wanted
};

template <typename scalar_t>
void group_norm_backward_kernel(const Plan& pl, Scratch& scratch, const scalar_t* dy,
                                const scalar_t* x, const float* mean, const float* rstd,
                                const Params& p, bool silu, scalar_t* dx,
                                const ParamGrads& grads) {
  const int64_t n = pl.B * pl.C;
  // Segment partial sums: C-order [B * C * blocks][2]; channels-last [B * blocks][2][C].
  double* partial = scratch.take<double>(2 * n * pl.blocks);
  double* s1 = scratch.take<double>(n);  // per (b, c): sum g
  double* s2 = scratch.take<double>(n);  // per (b, c): sum g (x - mean)
  // g = dL/dz, x's size in float32, kept from the first pass to the second (SiLU only; else dy).
  float* g = silu ? scratch.take<float>(pl.B * pl.C * pl.S) : nullptr;
  CoefTable coefs(scratch, n, true);
  for (int64_t b = 0; b < pl.B; ++b) {
    for (int64_t g = 0; g < pl.G; ++g) {
      const int64_t bg = b * pl.G + g;
      coefs.set_affine(p, pl, b, g * pl.cpg, (g + 1) * pl.cpg, mean[bg], rstd[bg]);
    }
  }
  const int64_t seg = pl.segment_elements;
  const double n_group = static_cast<double>(pl.cpg * pl.S);
  auto phase1 = [&](int64_t unit, int64_t si, float* buffer) {
    const auto s = pl.segment(unit, si);
    const int64_t count = s.rows * s.cols;
    const float* xf = staged(x + s.offset, count, buffer);
    const float* dyf = staged(dy + s.offset, count, buffer + seg);
    if (!pl.cl) {
      for (int64_t r = 0; r < s.rows; ++r) {
        const int64_t k = (s.b * pl.C + s.c + r) * pl.blocks + si % pl.blocks, at = r * s.cols;
        grad_sums(xf + at, dyf + at, s.cols, coefs.at(s.b * pl.C + s.c + r), silu,
                  g ? g + s.offset + at : nullptr, &partial[2 * k]);
      }
      return;
    }
    float* acc = buffer + 2 * seg;
    grad_sums_by_column(xf, dyf, s.rows, pl.C, coefs.at(s.b * pl.C), silu, g + s.offset, acc);
    double* out = &partial[2 * (s.b * pl.blocks + si) * pl.C];
    for (int64_t c = 0; c < pl.C; ++c) out[c] = acc[c], out[pl.C + c] = acc[pl.C + c];
  };
  // grad_x = alpha g + beta (x - m) + gamma for the channels [c0, c1) of group (b, g).
  auto finish_group = [&](int64_t b, int64_t g) {
    const int64_t i0 = b * pl.C + g * pl.cpg;
    const double r = rstd[b * pl.G + g];
    const float *__restrict__ w = p.w + g * pl.cpg, *__restrict__ scale = p.scale + i0;
    double m1, m2;
    gain_weighted_sums(w, scale, s1 + i0, s2 + i0, pl.cpg, &m1, &m2);
    const float beta = static_cast<float>(-r * r * r * m2 / n_group);
    const float gamma = static_cast<float>(-r * m1 / n_group);
    float *__restrict__ alpha = coefs.alpha + i0;
    for (int64_t j = 0; j < pl.cpg; ++j) alpha[j] = static_cast<float>(r * (1.0 + scale[j]) * w[j]);
    std::fill(coefs.beta + i0, coefs.beta + i0 + pl.cpg, beta);
    std::fill(coefs.gamma + i0, coefs.gamma + i0 + pl.cpg, gamma);
  };
  auto finish = [&](int64_t unit) {
    if (!pl.cl) {
      const int64_t b = unit / pl.G, g = unit % pl.G;
      for (int64_t c = g * pl.cpg; c < (g + 1) * pl.cpg; ++c) {
        const double* part = &partial[2 * (b * pl.C + c) * pl.blocks];
        double t1 = 0, t2 = 0;
        for (int64_t k = 0; k < pl.blocks; ++k) t1 += part[2 * k], t2 += part[2 * k + 1];
        s1[b * pl.C + c] = t1, s2[b * pl.C + c] = t2;
      }
      return finish_group(b, g);
    }
    double *t1 = s1 + unit * pl.C, *t2 = s2 + unit * pl.C;
    std::fill(t1, t1 + pl.C, 0.0), std::fill(t2, t2 + pl.C, 0.0);
    for (int64_t k = 0; k < pl.blocks; ++k) {
      const double* part = &partial[2 * (unit * pl.blocks + k) * pl.C];
      for (int64_t c = 0; c < pl.C; ++c) t1[c] += part[c], t2[c] += part[pl.C + c];
    }
    for (int64_t g = 0; g < pl.G; ++g) finish_group(unit, g);
  };
  auto phase2 = [&](int64_t unit, int64_t si, float* buffer) {
    const auto s = pl.segment(unit, si);
    const int64_t count = s.rows * s.cols;
    float* dxf = result(dx + s.offset, buffer + 2 * seg);
    const float* gf = silu ? g + s.offset : staged(dy + s.offset, count, buffer + seg);
    grad_x_block(staged(x + s.offset, count, buffer), gf, s.rows, s.cols,
                 coefs.at(s.b * pl.C + s.c), pl.cl, dxf);
    store(dxf, count, dx + s.offset);
  };
  const int64_t unit_bytes = 2 * pl.unit_elements * static_cast<int64_t>(sizeof(scalar_t));
  run_phases(pl, unit_bytes, 3 * seg + 2 * pl.C, phase1, finish, phase2);

  // Parameter gradients, the batch summed in order.
  std::vector<double> gw(pl.C, 0.0), gb(pl.C, 0.0);
  for (int64_t bg = 0; bg < pl.B * pl.G; ++bg) {
    const double r = rstd[bg];
    const int64_t i0 = bg * pl.cpg, c0 = (bg % pl.G) * pl.cpg;
    const float *__restrict__ scale = p.scale + i0, *__restrict__ w = p.w + c0;
    const float* __restrict__ bias = p.bias + c0;
    const double *__restrict__ t1 = s1 + i0, *__restrict__ t2 = s2 + i0;
    double *__restrict__ gwc = gw.data() + c0, *__restrict__ gbc = gb.data() + c0;
    for (int64_t j = 0; j < pl.cpg; ++j) {
      gwc[j] += (1.0 + scale[j]) * r * t2[j], gbc[j] += (1.0 + scale[j]) * t1[j];
    }
    float* __restrict__ gs = grads.scale;
    if (gs) {
      for (int64_t j = 0; j < pl.cpg; ++j) gs[i0 + j] = w[j] * r * t2[j] + bias[j] * t1[j];
    }
    if (grads.shift) std::copy(t1, t1 + pl.cpg, grads.shift + i0);
  }
  for (int64_t c = 0; c < pl.C; ++c) {
    if (grads.w) grads.w[c] = static_cast<float>(gw[c]);
    if (grads.bias) grads.bias[c] = static_cast<float>(gb[c]);
  }
}

float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift, bool silu) {
  auto in = prepare_group_norm_backward(grad_y, x, mean, rstd, num_groups, weight, bias, scale,
                                        shift);
  const ParamGrads grads{data_or_null(in.grad_weight), data_or_null(in.grad_bias),
                         data_or_null(in.grad_scale), data_or_null(in.grad_shift)};
  if (in.x.numel() == 0) {
    for (auto* t : {&in.grad_weight, &in.grad_bias, &in.grad_scale, &in.grad_shift})
      if (t->defined()) t->zero_();
  } else {
    const Plan plan(in.g, num_groups);
    Scratch scratch;
    const Params p(in.p, plan.B, plan.C, scratch);
    dispatch_float(in.x.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      group_norm_backward_kernel<scalar_t>(plan, scratch, in.grad_y.data_ptr<scalar_t>(),
                                           in.x.data_ptr<scalar_t>(), in.mean.data_ptr<float>(),
                                           in.rstd.data_ptr<float>(), p, silu,
                                           in.grad_x.data_ptr<scalar_t>(), grads);
    });
  }
  return finish_group_norm_backward(in, weight, bias, scale, shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) {
  m.impl("group_norm", &group_norm_cpu);
  m.impl("group_norm_backward", &group_norm_backward_cpu);
}

}  // namespace cpu

#ifdef PYDIFFUSE_WITH_CUDA
namespace cuda {
namespace {

GroupNormParamPtrs group_norm_param_ptrs(const GroupNormParams& p) {
  auto ptr = [](const OptTensor& t) { return t ? t->const_data_ptr<float>() : nullptr; };
  return {ptr(p.weight), ptr(p.bias), ptr(p.scale), ptr(p.shift)};
}

// The CUDA kernels index a group's elements in 32 bits and (b, c, split) rows in 31.
void check_group_norm_size(const Geometry& g, int64_t num_groups) {
  TORCH_CHECK(g.per_sample / num_groups < (int64_t{1} << 31) && g.batch * g.channels < (1 << 26),
              "pydiffuse: group_norm on CUDA needs groups of fewer than 2^31 elements and "
              "B * C < 2^26");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cuda(
    const at::Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, double eps, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_group_norm(x, num_groups, weight, bias, scale, shift);
  if (in.x.numel() == 0) {  // an empty group's statistics are NaN, as on the CPU
    in.mean.fill_(std::numeric_limits<float>::quiet_NaN());
    in.rstd.fill_(std::numeric_limits<float>::quiet_NaN());
    return {in.y, in.mean, in.rstd};
  }
  check_group_norm_size(in.g, num_groups);
  const auto scratch = scratch_bytes(group_norm_scratch_bytes(in.g, num_groups), in.x);
  const GroupNormArgs args{in.g, dtype_of(in.x), num_groups, static_cast<float>(eps), silu,
                           group_norm_param_ptrs(in.p), in.x.const_data_ptr(),
                           in.y.mutable_data_ptr(), in.mean.mutable_data_ptr<float>(),
                           in.rstd.mutable_data_ptr<float>(), scratch.mutable_data_ptr()};
  C10_CUDA_CHECK(launch_group_norm(args, c10::cuda::getCurrentCUDAStream()));
  return {in.y, in.mean, in.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto in = prepare_group_norm_backward(grad_y, x, mean, rstd, num_groups, weight, bias, scale,
                                        shift);
  if (in.x.numel() == 0) {
    for (auto* t : {&in.grad_weight, &in.grad_bias, &in.grad_scale, &in.grad_shift})
      if (t->defined()) t->zero_();
    return finish_group_norm_backward(in, weight, bias, scale, shift);
  }
  check_group_norm_size(in.g, num_groups);
  auto grad = [](at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; };
  const auto scratch = scratch_bytes(group_norm_backward_scratch_bytes(in.g, num_groups), in.x);
  const GroupNormBackwardArgs args{
      in.g, dtype_of(in.x), num_groups, silu, group_norm_param_ptrs(in.p),
      in.grad_y.const_data_ptr(), in.x.const_data_ptr(), in.mean.const_data_ptr<float>(),
      in.rstd.const_data_ptr<float>(), in.grad_x.mutable_data_ptr(), grad(in.grad_weight),
      grad(in.grad_bias), grad(in.grad_scale), grad(in.grad_shift), scratch.mutable_data_ptr()};
  C10_CUDA_CHECK(launch_group_norm_backward(args, c10::cuda::getCurrentCUDAStream()));
  return finish_group_norm_backward(in, weight, bias, scale, shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) {
  m.impl("group_norm", &group_norm_cuda);
  m.impl("group_norm_backward", &group_norm_backward_cuda);
}

}  // namespace cuda
#endif  // PYDIFFUSE_WITH_CUDA

}  // namespace pydiffuse
