// pydiffuse::attention and attention_backward, their host side: the schemas and Meta kernels,
// the kernels' input invariants, the CPU kernels and the CPU and CUDA bindings (the CUDA kernel:
// csrc/cuda/attention.cu, the forward only; on CUDA tensors attention_backward is the Triton
// kernel, attached by pydiffuse/ops/_dispatch.py after its CAPABILITIES).
// The CPU kernels: FlashAttention's tiling (Dao et al. 2022). A block of queries meets the keys block by block with a running max and sum (base 2:
// the scale times log2(e) rides in the GEMM's alpha), so no [Nq, Nk] matrix is stored; the
// backward pass recomputes each tile's probabilities from the saved log-sum-exp. Tile products
// run on cpu/tile_gemm.h (K and V transposed per head beforehand, so that every product reads
// its right operand row by row); the softmax passes are loops over 16 independent lanes that
// GCC vectorizes per target. float16/bfloat16 run the float32 kernel on float32 copies (the
// copies are O(N D), the work O(N^2 D)). Any head dim D runs; Nq, Nk >= 1.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/tile_gemm.h"
#include "torch_utils.h"
#ifdef PYDIFFUSE_WITH_CUDA
#include "cuda_binding.h"
#endif

namespace pydiffuse {

// out = softmax(q k^T scale) v for [B, H, N, D]; also returns lse [B, H, Nq] fp32 (natural log
// of the softmax denominator of the scaled scores).
TORCH_LIBRARY_FRAGMENT(pydiffuse, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

namespace {

// out [B, H, Nq, D] C-order in q's dtype; lse [B, H, Nq] float32 (every backend returns these).
std::tuple<at::Tensor, at::Tensor> attention_meta(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiffuse: attention needs q, k, v of shape [B, H, N, D]");
  auto lse = at::empty_symint({q.sym_size(0), q.sym_size(1), q.sym_size(2)},
                              q.options().dtype(at::kFloat));
  return {at::empty_symint(q.sym_sizes(), q.options()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_meta(
    const at::Tensor&, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor&, const at::Tensor&, double) {
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options())};
}

// q [B, H, Nq, D], k and v [B, H, Nk, D] of one float dtype and device, Nk >= 1.
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_float(q, "q");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "pydiffuse: attention needs q, k, v of shape [B, H, N, D], got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  check_like(v, k, "v");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && k.device() == q.device(),
              "pydiffuse: k and v must match q's dtype and device");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "pydiffuse: attention's k, v ", k.sizes(), " do not match q ", q.sizes(),
              " in B, H or D");
  TORCH_CHECK(k.size(2) >= 1, "pydiffuse: attention needs at least one key");
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, Meta, m) {
  m.impl("attention", &attention_meta);
  m.impl("attention_backward", &attention_backward_meta);
}

namespace cpu {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int64_t kLanes = 16;
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 256;

// 2^x for x <= 0 to about 1e-7 relative (0 below 2^-127): x = i + f, |f| <= 1/2, 2^f by a
// minimax polynomial, 2^i through the exponent bits. Branch-free, so loops of it vectorize.
inline __attribute__((always_inline)) float exp2_neg(float x) {
  x = x < -127.0f ? -127.0f : x;
  const float shifted = x + 12582912.0f;  // 1.5 * 2^23: rounds x to an integer in the mantissa
  const float xi = shifted - 12582912.0f;
  const float f = x - xi;
  float p = 1.5345812e-4f;
  p = p * f + 1.3399931e-3f;
  p = p * f + 9.6184891e-3f;
  p = p * f + 5.5503286e-2f;
  p = p * f + 2.4022646e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  int32_t bits;
  __builtin_memcpy(&bits, &shifted, 4);
  bits = (bits - 0x4B400000 + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  return p * scale;
}

inline __attribute__((always_inline)) float row_max(const float* s, int64_t n) {
  float lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = s[j + l] > lanes[l] ? s[j + l] : lanes[l];
  float m = lanes[0];
  for (int64_t l = 1; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// s[j] = 2^(s[j] - shift); returns the sum.
inline __attribute__((always_inline)) float exp2_row(float* s, int64_t n, float shift) {
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const float p = exp2_neg(s[j + l] - shift);
      s[j + l] = p;
      lanes[l] += p;
    }
  float sum = 0.0f;
  for (; j < n; ++j) s[j] = exp2_neg(s[j] - shift), sum += s[j];
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

inline __attribute__((always_inline)) void scale_row(float* o, int64_t n, float c) {
  for (int64_t j = 0; j < n; ++j) o[j] *= c;
}

// Online softmax of one tile (scores in base 2, rows x cols, row stride ld): the tile becomes
// 2^(s - m_new), m and l (running max and sum) are updated and O's rows rescaled. The first
// tile of a task starts the state afresh (m and l are scratch reused across tasks: nothing of
// another row may leak in). While a row has seen only -inf scores its max stays -inf and the
// shift is 0 (FlashAttention's Check_inf), so 2^(-inf - -inf) = NaN never arises.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void softmax_tile(float* s, int64_t rows, int64_t cols, int64_t ld, float* m, float* l, float* o,
                  int64_t d, bool first) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ld;
    const float m_old = first ? kNegInf : m[r];
    const float m_new = std::max(m_old, row_max(row, cols));
    const float shift = m_new == kNegInf ? 0.0f : m_new;
    const float sum = exp2_row(row, cols, shift);
    if (first) {
      l[r] = sum;
    } else {
      const float corr = exp2_neg(m_old - shift);
      l[r] = l[r] * corr + sum;
      if (corr != 1.0f) scale_row(o + r * d, d, corr);
    }
    m[r] = m_new;
  }
}

// Backward tiles: P = 2^(s - lse2) in s; then, with dP in dp, dS = P (dP - delta) in dp.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void probs_tile(float* s, int64_t rows, int64_t cols, int64_t ld, const float* lse2) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ld;
    const float shift = lse2[r];
    for (int64_t j = 0; j < cols; ++j) row[j] = exp2_neg(row[j] - shift);
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void dscores_tile(const float* p, float* dp, int64_t rows, int64_t cols, int64_t ld,
                  const float* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = p + r * ld;
    float* dr = dp + r * ld;
    const float dl = delta[r];
    for (int64_t j = 0; j < cols; ++j) dr[j] = pr[j] * (dr[j] - dl);
  }
}

struct Dims {
  int64_t heads, nq, nk, d;  // heads: B * H
  float scale;
};

inline int64_t num_blocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

// Float32 scratch from the output cache (no fresh pages per call).
at::Tensor scratch(at::IntArrayRef sizes) {
  return cpu::empty_output(sizes, at::kFloat, at::MemoryFormat::Contiguous);
}

// kt: k transposed per head, [heads, D, Nk], so that the score tile Q K^T is a plain product.
void attention_forward_f32(const Dims& g, const float* q, const float* kt, const float* v,
                           float* out, float* lse) {
  const int64_t q_blocks = num_blocks(g.nq, kBlockQ);
  const float alpha = g.scale * kLog2e;
  const TileGemm gemm = choose_tile_gemm();
  at::parallel_for(0, g.heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(kBlockQ * kBlockK), m(kBlockQ), l(kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / q_blocks, q0 = (task % q_blocks) * kBlockQ;
      const int64_t rows = std::min(kBlockQ, g.nq - q0);
      const StridedA qb{q + (h * g.nq + q0) * g.d, g.d, 1};
      const float* kth = kt + h * g.d * g.nk;
      const float* vh = v + h * g.nk * g.d;
      float* ob = out + (h * g.nq + q0) * g.d;
      for (int64_t k0 = 0; k0 < g.nk; k0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, g.nk - k0);
        const bool first = k0 == 0;
        gemm(rows, cols, g.d, alpha, qb, kth + k0, g.nk, false, tile.data(), kBlockK);
        softmax_tile(tile.data(), rows, cols, kBlockK, m.data(), l.data(), ob, g.d, first);
        gemm(rows, g.d, cols, 1.0f, {tile.data(), kBlockK, 1}, vh + k0 * g.d, g.d, !first, ob,
             g.d);
      }
      float* lb = lse + h * g.nq + q0;
      for (int64_t r = 0; r < rows; ++r) {
        scale_row(ob + r * g.d, g.d, 1.0f / l[r]);
        lb[r] = (m[r] + std::log2(l[r])) * kLn2;
      }
    }
  });
}

// delta = rowsum(dO * O) and lse in base 2, per query row.
void backward_rows(const Dims& g, const float* grad_out, const float* out, const float* lse,
                   float* delta, float* lse2) {
  at::parallel_for(0, g.heads * g.nq, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* a = grad_out + i * g.d;
      const float* b = out + i * g.d;
      float sum = 0.0f;
      for (int64_t j = 0; j < g.d; ++j) sum += a[j] * b[j];
      delta[i] = sum;
      lse2[i] = lse[i] * kLog2e;
    }
  });
}

struct BackwardInputs {
  const float *grad_out, *q, *k, *kt, *vt, *delta, *lse2;  // kt, vt: [heads, D, Nk]
};

// Tasks are (head, split of the key blocks): each owns its keys' dK and dV; dQ goes straight to
// dq when a head is one task, else to a partial of its own, summed afterwards.
void attention_backward_f32(const Dims& g, const BackwardInputs& in, float* dq, float* dk,
                            float* dv) {
  const int64_t k_blocks = num_blocks(g.nk, kBlockK);
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::min(k_blocks, num_blocks(2 * threads, g.heads));
  at::Tensor partials;
  if (splits > 1) partials = scratch({g.heads * splits * g.nq * g.d}).zero_();
  else std::fill(dq, dq + g.heads * g.nq * g.d, 0.0f);
  const float alpha = g.scale * kLog2e;
  const TileGemm gemm = choose_tile_gemm();
  at::parallel_for(0, g.heads * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(kBlockQ * kBlockK), ds(kBlockQ * kBlockK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / splits, split = task % splits;
      const int64_t kb_begin = k_blocks * split / splits, kb_end = k_blocks * (split + 1) / splits;
      const int64_t hq = h * g.nq * g.d, hk = h * g.nk * g.d;
      float* dqh = splits > 1 ? partials.data_ptr<float>() + task * g.nq * g.d : dq + hq;
      for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
        const int64_t k0 = kb * kBlockK, cols = std::min(kBlockK, g.nk - k0);
        const float* kj = in.k + hk + k0 * g.d;
        const float* ktj = in.kt + hk + k0;
        const float* vtj = in.vt + hk + k0;
        float* dkj = dk + hk + k0 * g.d;
        float* dvj = dv + hk + k0 * g.d;
        for (int64_t q0 = 0; q0 < g.nq; q0 += kBlockQ) {
          const int64_t rows = std::min(kBlockQ, g.nq - q0);
          const float* qi = in.q + hq + q0 * g.d;
          const float* doi = in.grad_out + hq + q0 * g.d;
          const int64_t row0 = h * g.nq + q0;
          const bool acc = q0 > 0;
          gemm(rows, cols, g.d, alpha, {qi, g.d, 1}, ktj, g.nk, false, p.data(), kBlockK);
          probs_tile(p.data(), rows, cols, kBlockK, in.lse2 + row0);
          gemm(cols, g.d, rows, 1.0f, {p.data(), 1, kBlockK}, doi, g.d, acc, dvj, g.d);
          gemm(rows, cols, g.d, 1.0f, {doi, g.d, 1}, vtj, g.nk, false, ds.data(), kBlockK);
          dscores_tile(p.data(), ds.data(), rows, cols, kBlockK, in.delta + row0);
          gemm(rows, g.d, cols, g.scale, {ds.data(), kBlockK, 1}, kj, g.d, true, dqh + q0 * g.d,
               g.d);
          gemm(cols, g.d, rows, g.scale, {ds.data(), 1, kBlockK}, qi, g.d, acc, dkj, g.d);
        }
      }
    }
  });
  if (splits > 1) {
    const float* part = partials.data_ptr<float>();
    at::parallel_for(0, g.heads * g.nq * g.d, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t h = i / (g.nq * g.d), j = i % (g.nq * g.d);
        float sum = 0.0f;
        for (int64_t s = 0; s < splits; ++s) sum += part[(h * splits + s) * g.nq * g.d + j];
        dq[i] = sum;
      }
    });
  }
}

Dims dims_of(const at::Tensor& q, const at::Tensor& k, double scale) {
  return {q.size(0) * q.size(1), q.size(2), k.size(2), q.size(3), static_cast<float>(scale)};
}

// A float32 C-order copy in one pass (the tensor itself when it already is one).
at::Tensor f32(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  return scratch(t.sizes()).copy_(t);
}

// [B, H, N, D] -> float32 [B, H, D, N], C-order.
at::Tensor transposed_f32(const at::Tensor& t) { return f32(t.transpose(-1, -2)); }

// The float32 buffer a kernel writes: the output itself for float32, else a scratch tensor.
at::Tensor f32_result(const at::Tensor& out) {
  return out.scalar_type() == at::kFloat ? out : scratch(out.sizes());
}

void finish(const at::Tensor& result, const at::Tensor& out) {
  if (!result.is_same(out)) out.copy_(result);
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, double scale) {
  check_attention_inputs(q, k, v);
  const auto g = dims_of(q, k, scale);
  auto out = cpu::empty_output(q.sizes(), q.scalar_type(), at::MemoryFormat::Contiguous);
  auto lse = cpu::empty_output({q.size(0), q.size(1), q.size(2)}, at::kFloat,
                               at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return {out, lse};
  const auto qf = f32(q), ktf = transposed_f32(k), vf = f32(v);
  auto result = f32_result(out);
  attention_forward_f32(g, qf.data_ptr<float>(), ktf.data_ptr<float>(), vf.data_ptr<float>(),
                        result.data_ptr<float>(), lse.data_ptr<float>());
  finish(result, out);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double scale) {
  check_attention_inputs(q, k, v);
  check_like(grad_out, q, "grad_out");
  check_like(out, q, "out");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 3 && lse.size(0) == q.size(0) &&
                  lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "pydiffuse: lse must be float32 [B, H, Nq], got ", lse.scalar_type(), " ",
              lse.sizes());
  const auto g = dims_of(q, k, scale);
  auto dq = cpu::empty_output(q.sizes(), q.scalar_type(), at::MemoryFormat::Contiguous);
  auto dk = cpu::empty_output(k.sizes(), k.scalar_type(), at::MemoryFormat::Contiguous);
  auto dv = cpu::empty_output(v.sizes(), v.scalar_type(), at::MemoryFormat::Contiguous);
  if (g.heads == 0 || g.d == 0) return {dq, dk, dv};
  if (g.nq == 0) return {dq, dk.zero_(), dv.zero_()};
  const auto gf = f32(grad_out), qf = f32(q), kf = f32(k), of = f32(out);
  const auto lsef = lse.contiguous();
  auto rows = scratch({2, g.heads * g.nq});
  float* delta = rows.data_ptr<float>();
  float* lse2 = delta + g.heads * g.nq;
  backward_rows(g, gf.data_ptr<float>(), of.data_ptr<float>(), lsef.data_ptr<float>(), delta,
                lse2);
  const auto ktf = transposed_f32(k), vtf = transposed_f32(v);
  auto dqf = f32_result(dq), dkf = f32_result(dk), dvf = f32_result(dv);
  const BackwardInputs in{gf.data_ptr<float>(),  qf.data_ptr<float>(), kf.data_ptr<float>(),
                          ktf.data_ptr<float>(), vtf.data_ptr<float>(), delta, lse2};
  attention_backward_f32(g, in, dqf.data_ptr<float>(), dkf.data_ptr<float>(),
                         dvf.data_ptr<float>());
  finish(dqf, dq), finish(dkf, dk), finish(dvf, dv);
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffuse, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace cpu

#ifdef PYDIFFUSE_WITH_CUDA
namespace cuda {
namespace {

// q, k or v as the attention kernel reads it: any strides in 16-byte steps over a dense last
// dimension (a packed qkv projection passes as it is); anything else is copied.
at::Tensor attention_operand(const at::Tensor& t) {
  const int64_t step = 16 / t.element_size();
  const bool ok = t.stride(3) == 1 && t.stride(0) % step == 0 && t.stride(1) % step == 0 &&
                  t.stride(2) % step == 0 &&
                  reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, double scale) {
  check_attention_inputs(q, k, v);
  // the kernel is instantiated for these head dims only
  TORCH_CHECK(attention_supports_head_dim(q.size(3)),
              "pydiffuse: attention on CUDA supports head dims 32, 64 and 128, got ", q.size(3));
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  const auto qc = attention_operand(q), kc = attention_operand(k), vc = attention_operand(v);
  AttentionArgs args{dtype_of(q), q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
                     qc.const_data_ptr(), kc.const_data_ptr(), vc.const_data_ptr(),
                     {qc.stride(0), qc.stride(1), qc.stride(2)},
                     {kc.stride(0), kc.stride(1), kc.stride(2)},
                     {vc.stride(0), vc.stride(1), vc.stride(2)}, static_cast<float>(scale),
                     out.mutable_data_ptr(), lse.mutable_data_ptr<float>()};
  C10_CUDA_CHECK(launch_attention(args, c10::cuda::getCurrentCUDAStream()));
  return {out, lse};
}

}  // namespace

// attention_backward on CUDA: not here (pydiffuse/ops/_dispatch.py CAPABILITIES["cuda"]).
TORCH_LIBRARY_IMPL(pydiffuse, CUDA, m) { m.impl("attention", &attention_cuda); }

}  // namespace cuda
#endif  // PYDIFFUSE_WITH_CUDA

}  // namespace pydiffuse
