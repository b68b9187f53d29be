// pydiffuse::group_norm(_backward) on the GPU: y = act(xhat A + B), xhat = (x - mean) rstd,
// A = w (1 + scale), B = bias (1 + scale) + shift, act = SiLU when silu.
//
// Group (b, g) is a [rows, cols] view with unit column stride ([C/G, S] C-order, [S, C/G]
// channels-last), walked by N-element vectors (one 128-bit access where cols % N == 0 and the
// pointers are aligned). Forward: a group of at most kFusedVecs vectors is one block, in
// registers; larger groups take a statistics pass (per-split Welford summaries, each thread's
// vectors folded by Chan et al.'s combination, then warp shuffles and the block, in a fixed
// order) and a normalize pass whose blocks combine their group's summaries first; statistics of
// x minus the group's first element, so that a large mean costs no precision. Backward:
// per-(b, c) sums ds = sum g xhat, db = sum g (g = dL/d pre) over spatial splits, a parameter
// pass (fixed-order sums over splits and the batch: deterministic), and a grad_x pass
//   grad_x = rstd (A g - m1 - xhat m2),  m1 = sum_c A db / n,  m2 = sum_c A ds / n (per group).
// Statistics and sums in float32; element offsets in int64, in-group indices in 32 bits.
#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr int kVecsPerThread = 4;  // vectors in flight per thread in the streaming passes
constexpr int64_t kChunkVecs = int64_t{kThreads} * kVecsPerThread;  // vectors per block
constexpr int64_t kFusedVecs = kChunkVecs;  // a group this small is one block, in registers
// Splits aim at this many blocks, a fixed count (4 per SM of an H100) rather than the device's,
// so that results do not depend on the device; split boundaries fall on multiples of 8.
constexpr int64_t kTargetBlocks = 4 * 132;
constexpr int64_t kMaxSplit = 32;

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up8(int64_t a) { return cdiv(a, 8) * 8; }

// n / d for 0 <= n < 2^31 by a multiply-high and a shift (Granlund & Montgomery 1994).
struct FastDiv {
  uint32_t d, magic, shift;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor), shift(0) {
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, magic) + n) >> shift;
  }
};

// One group as a [rows, cols] view: element e sits at base + (e / cols) row_stride + e % cols.
struct GroupView {
  int64_t channels, cpg, per_sample, group_stride, row_stride;
  uint32_t rows, cols, elems;
  FastDiv cols_div, groups_div;
  bool channels_last;

  __device__ __forceinline__ int64_t base(uint32_t bg, uint32_t& b, uint32_t& g) const {
    b = groups_div.div(bg);
    g = bg - b * groups_div.d;
    return int64_t{b} * per_sample + int64_t{g} * group_stride;
  }
  // Offset of group element e and its channel's index j within the group.
  __device__ __forceinline__ int64_t at(int64_t base, uint32_t e, uint32_t& j) const {
    const uint32_t row = cols_div.div(e), col = e - row * cols;
    j = channels_last ? col : row;
    return base + int64_t{row} * row_stride + col;
  }
};

GroupView group_view(const Geometry& g, int64_t groups, bool flat) {
  GroupView v;
  v.channels = g.channels;
  v.cpg = g.channels / groups;
  v.per_sample = g.per_sample;
  v.channels_last = g.channels_last;
  v.group_stride = g.channels_last ? v.cpg : v.cpg * g.spatial;
  v.rows = static_cast<uint32_t>(g.channels_last ? g.spatial : v.cpg);
  v.cols = static_cast<uint32_t>(g.channels_last ? v.cpg : g.spatial);
  v.row_stride = g.channels_last ? g.channels : g.spatial;
  v.elems = v.rows * v.cols;
  if (flat && !g.channels_last) v.rows = 1, v.cols = v.elems;  // a C-order group is contiguous
  v.cols_div = FastDiv(v.cols);
  v.groups_div = FastDiv(static_cast<uint32_t>(groups));
  return v;
}

// ---- reductions: fixed shuffle trees, so every run sums in the same order ----

struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford combine(const Welford& a, const Welford& b) {
  const float n = a.n + b.n;
  const float w = n > 0.0f ? __fdividef(b.n, n) : 0.0f;
  const float delta = b.mean - a.mean;
  return {n, a.mean + delta * w, a.m2 + b.m2 + delta * delta * a.n * w};
}

// Statistics are taken of x - pivot, pivot the group's first element: the differences are
// exact near a large mean, whose rounding then no longer costs the variance its precision.
template <int N>
__device__ __forceinline__ void shift_by(float (&f)[N], float pivot) {
#pragma unroll
  for (int k = 0; k < N; ++k) f[k] -= pivot;
}

// The summary of N values: two passes in registers.
template <int N>
__device__ __forceinline__ Welford summary(const float (&f)[N]) {
  float s = 0.0f, m2 = 0.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) s += f[k];
  const float mean = s * (1.0f / N);
#pragma unroll
  for (int k = 0; k < N; ++k) m2 += (f[k] - mean) * (f[k] - mean);
  return {static_cast<float>(N), mean, m2};
}

__device__ __forceinline__ Welford shfl_down(const Welford& w, int offset) {
  return {__shfl_down_sync(0xffffffffu, w.n, offset),
          __shfl_down_sync(0xffffffffu, w.mean, offset),
          __shfl_down_sync(0xffffffffu, w.m2, offset)};
}
__device__ __forceinline__ float2 shfl_down(const float2& v, int offset) {
  return {__shfl_down_sync(0xffffffffu, v.x, offset), __shfl_down_sync(0xffffffffu, v.y, offset)};
}
__device__ __forceinline__ float2 combine(const float2& a, const float2& b) {
  return {a.x + b.x, a.y + b.y};
}

// The warp's total in lane 0.
template <typename V>
__device__ __forceinline__ V warp_reduce(V v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = combine(v, shfl_down(v, offset));
  return v;
}

// The block's total, returned to every thread (blockDim.x == kThreads).
template <typename V>
__device__ __forceinline__ V block_reduce(V v, const V& zero) {
  __shared__ V partial[kWarps];
  __shared__ V total;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = warp_reduce(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_reduce(lane < kWarps ? partial[lane] : zero);
    if (lane == 0) total = v;
  }
  __syncthreads();
  v = total;
  __syncthreads();  // total and partial are free for the next call
  return v;
}

// ---- per-channel coefficients ----

struct Params {
  const float *weight, *bias, *scale, *shift;  // float32, null when absent
};

// (A, B) of channel c of sample b: pre = xhat A + B.
__device__ __forceinline__ float2 channel_coefs(const Params& p, int64_t channels, int64_t b,
                                                int64_t c) {
  float a = p.weight ? p.weight[c] : 1.0f, bb = p.bias ? p.bias[c] : 0.0f;
  if (p.scale) {
    const float s1 = 1.0f + p.scale[b * channels + c];
    a *= s1, bb *= s1;
  }
  if (p.shift) bb += p.shift[b * channels + c];
  return {a, bb};
}

// The coefficients (A a_scale, B) of group (b, g)'s channels, into the block's shared table
// (all threads; synchronizes). The table is launched as cpg float2 of dynamic shared memory.
__device__ __forceinline__ const float2* group_coefs(float2* table, const Params& p,
                                                     const GroupView& v, int64_t b, int64_t g,
                                                     float a_scale) {
  for (int64_t j = threadIdx.x; j < v.cpg; j += kThreads) {
    const float2 ab = channel_coefs(p, v.channels, b, g * v.cpg + j);
    table[j] = {ab.x * a_scale, ab.y};
  }
  __syncthreads();
  return table;
}

__device__ __forceinline__ float silu(float z) { return z / (1.0f + __expf(-z)); }

// dy silu'(pre) = dy sig (1 + pre (1 - sig)).
__device__ __forceinline__ float silu_grad(float dy, float pre) {
  const float sig = 1.0f / (1.0f + __expf(-pre));
  return dy * sig * (1.0f + pre * (1.0f - sig));
}

// ---- forward ----

struct ForwardKernelArgs {
  GroupView v;
  Params p;
  float eps;
  const void* x;
  void* y;
  float *mean, *rstd;
};

// y of the N elements at offset o (channel j of the group), from pre = (x - mean) A rstd + B
// (x and mean shifted by the group's pivot).
template <typename T, int N, bool kSilu>
__device__ __forceinline__ void normalize_store(T* y, int64_t o, uint32_t j, const float (&xv)[N],
                                                float mean, const float2* coefs,
                                                bool channels_last) {
  float out[N];
  float2 ab = coefs[j];
#pragma unroll
  for (int k = 0; k < N; ++k) {
    if (channels_last && k > 0) ab = coefs[j + k];
    const float pre = (xv[k] - mean) * ab.x + ab.y;
    out[k] = kSilu ? silu(pre) : pre;
  }
  store(y + o, out);
}

// One group a block, its vectors in registers: statistics, then y.
template <typename T, int N, bool kSilu>
__global__ void __launch_bounds__(kThreads) gn_fused_kernel(const ForwardKernelArgs a) {
  extern __shared__ float2 coef_table[];
  const GroupView& v = a.v;
  uint32_t b, g;
  const int64_t base = v.base(blockIdx.x, b, g);
  const float pivot = to_float(static_cast<const T*>(a.x)[base]);
  float xv[kVecsPerThread][N];
  int64_t offs[kVecsPerThread];
  uint32_t js[kVecsPerThread];
  Welford w{0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) {
    const uint32_t e = (threadIdx.x + i * kThreads) * N;
    if (e < v.elems) {
      offs[i] = v.at(base, e, js[i]);
      load(static_cast<const T*>(a.x) + offs[i], xv[i]);
      shift_by(xv[i], pivot);
      w = combine(w, summary(xv[i]));
    }
  }
  w = block_reduce(w, Welford{0.0f, 0.0f, 0.0f});
  const float rstd = rsqrtf(w.m2 / w.n + a.eps);
  if (threadIdx.x == 0) a.mean[blockIdx.x] = pivot + w.mean, a.rstd[blockIdx.x] = rstd;
  const float2* coefs = group_coefs(coef_table, a.p, v, b, g, rstd);
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) {
    if ((threadIdx.x + i * kThreads) * N < v.elems)
      normalize_store<T, N, kSilu>(static_cast<T*>(a.y), offs[i], js[i], xv[i], w.mean, coefs,
                                   v.channels_last);
  }
}

// summaries[bg, split] = Welford summary of the group's elements [split, split + 1) * per_split.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    gn_stats_kernel(const ForwardKernelArgs a, int split, uint32_t per_split, Welford* summaries) {
  const GroupView& v = a.v;
  const uint32_t bg = blockIdx.x / split, begin = (blockIdx.x % split) * per_split;
  const uint32_t end = min(begin + per_split, v.elems);
  uint32_t b, g, j;
  const int64_t base = v.base(bg, b, g);
  const float pivot = to_float(static_cast<const T*>(a.x)[base]);
  Welford w{0.0f, 0.0f, 0.0f};
  for (uint32_t e0 = begin + threadIdx.x * N; e0 < end; e0 += kChunkVecs * N) {
    float xv[kVecsPerThread][N];
#pragma unroll
    for (int i = 0; i < kVecsPerThread; ++i) {
      const uint32_t e = e0 + i * kThreads * N;
      if (e < end) load(static_cast<const T*>(a.x) + v.at(base, e, j), xv[i]);
    }
#pragma unroll
    for (int i = 0; i < kVecsPerThread; ++i) {
      if (e0 + i * kThreads * N < end) {
        shift_by(xv[i], pivot);
        w = combine(w, summary(xv[i]));
      }
    }
  }
  w = block_reduce(w, Welford{0.0f, 0.0f, 0.0f});
  if (threadIdx.x == 0) summaries[blockIdx.x] = w;
}

// y over chunk blockIdx.x % chunks of group blockIdx.x / chunks, the group's statistics from its
// `split` summaries (combined by warp 0 in a fixed order; chunk 0 writes mean and rstd).
template <typename T, int N, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    gn_apply_kernel(const ForwardKernelArgs a, uint32_t chunks, int split,
                    const Welford* __restrict__ summaries) {
  extern __shared__ float2 coef_table[];
  __shared__ float2 stats;
  const GroupView& v = a.v;
  const uint32_t bg = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  uint32_t b, g;
  const int64_t base = v.base(bg, b, g);
  const float pivot = to_float(static_cast<const T*>(a.x)[base]);
  if (threadIdx.x < 32) {
    Welford w = threadIdx.x < split ? summaries[int64_t{bg} * split + threadIdx.x]
                                    : Welford{0.0f, 0.0f, 0.0f};
    w = warp_reduce(w);
    if (threadIdx.x == 0) {
      stats = {w.mean, rsqrtf(w.m2 / w.n + a.eps)};
      if (chunk == 0) a.mean[bg] = pivot + stats.x, a.rstd[bg] = stats.y;
    }
  }
  __syncthreads();
  const float2 st = stats;
  const float2* coefs = group_coefs(coef_table, a.p, v, b, g, st.y);
  const uint32_t e0 = static_cast<uint32_t>(chunk * kChunkVecs + threadIdx.x) * N;
  float xv[kVecsPerThread][N];
  int64_t offs[kVecsPerThread];
  uint32_t js[kVecsPerThread];
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) {
    const uint32_t e = e0 + i * kThreads * N;
    if (e < v.elems) {
      offs[i] = v.at(base, e, js[i]);
      load(static_cast<const T*>(a.x) + offs[i], xv[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) {
    if (e0 + i * kThreads * N < v.elems) {
      shift_by(xv[i], pivot);
      normalize_store<T, N, kSilu>(static_cast<T*>(a.y), offs[i], js[i], xv[i], st.x, coefs,
                                   v.channels_last);
    }
  }
}

// ---- backward ----

struct BackwardKernelArgs {
  GroupView v;
  Params p;
  int64_t batch, groups, spatial;
  const void *grad_y, *x;
  const float *mean, *rstd;
  void* grad_x;
  float *grad_weight, *grad_bias, *grad_scale, *grad_shift;  // null when absent
};

// The splits of the backward sums: the float32 scratch is ds, db [B, split, C], then the totals
// ds, db [B, C].
struct BackwardPlan {
  int64_t split, per_split;  // spatial positions per split (a multiple of 8)
};

BackwardPlan backward_plan(const Geometry& g) {
  // C-order: one warp per (b, c, split); channels-last: blocks of 64 channels and a split.
  const int64_t units = g.channels_last ? g.batch * cdiv(g.channels, 64)
                                        : cdiv(g.batch * g.channels, kWarps);
  int64_t split = std::max<int64_t>(1, std::min(kMaxSplit, cdiv(kTargetBlocks, units)));
  split = std::min(split, std::max<int64_t>(1, g.spatial / 256));
  const int64_t per_split = round_up8(cdiv(g.spatial, split));
  return {cdiv(g.spatial, per_split), per_split};
}

__device__ __forceinline__ float grad_pre(float dy, float xhat, float2 ab, bool silu) {
  return silu ? silu_grad(dy, xhat * ab.x + ab.y) : dy;
}

// C-order sums: warp w of the grid takes row (b, c) and split w % split; lanes walk the split's
// spatial positions by vectors.
template <typename T, int N, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    gn_sums_rows_kernel(const BackwardKernelArgs a, BackwardPlan plan, float* __restrict__ ds,
                        float* __restrict__ db) {
  // 32-bit indices: B C split < 2^31 (valid_groups).
  const uint32_t unit = blockIdx.x * kWarps + threadIdx.x / 32, split = plan.split;
  const int lane = threadIdx.x % 32;
  if (unit >= a.batch * a.v.channels * split) return;  // whole warps: no block sync below
  const uint32_t row = unit / split, sp = unit % split;
  const uint32_t channels = a.v.channels, b = row / channels, c = row % channels;
  const int64_t stat = int64_t{b} * a.groups + c / static_cast<uint32_t>(a.v.cpg);
  const float mean = a.mean[stat], rstd = a.rstd[stat];
  const float2 ab = channel_coefs(a.p, a.v.channels, b, c);
  const int64_t begin = sp * plan.per_split, end = min(begin + plan.per_split, a.spatial);
  const T* x = static_cast<const T*>(a.x) + int64_t{row} * a.spatial;
  const T* dy = static_cast<const T*>(a.grad_y) + int64_t{row} * a.spatial;
  float2 acc{0.0f, 0.0f};
  for (int64_t s = begin + lane * N; s < end; s += 32 * N) {
    float xv[N], gv[N];
    load(x + s, xv);
    load(dy + s, gv);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float xhat = (xv[k] - mean) * rstd, gy = grad_pre(gv[k], xhat, ab, kSilu);
      acc.x += gy * xhat, acc.y += gy;
    }
  }
  acc = warp_reduce(acc);
  if (lane == 0) {
    const int64_t out = int64_t{row / channels * split + sp} * channels + c;
    ds[out] = acc.x, db[out] = acc.y;
  }
}

// Channels-last sums: a block takes sample b, kCols vectors of channels (thread column) and a
// split of spatial rows, walked kThreads / kCols rows at a time; columns summed in smem.
template <typename T, int N, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    gn_sums_cols_kernel(const BackwardKernelArgs a, BackwardPlan plan, int cols,
                        int64_t col_tiles, float* __restrict__ ds, float* __restrict__ db) {
  __shared__ float2 partial[kThreads][N];
  const int64_t channels = a.v.channels;
  const uint32_t tiles = col_tiles, split = plan.split;  // 32-bit: the grid is B tiles split
  const uint32_t b = blockIdx.x / (tiles * split), rest = blockIdx.x % (tiles * split);
  const uint32_t sp = rest % split;
  const int tx = threadIdx.x % cols, ty = threadIdx.x / cols, rows = kThreads / cols;
  const int64_t c0 = int64_t{(rest / split) * cols + tx} * N;
  float2 acc[N];
  for (int k = 0; k < N; ++k) acc[k] = {0.0f, 0.0f};
  if (c0 < channels) {
    float mean[N], rstd[N];
    float2 ab[N];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const int64_t stat =
          int64_t{b} * a.groups + static_cast<uint32_t>(c0 + k) / static_cast<uint32_t>(a.v.cpg);
      mean[k] = a.mean[stat], rstd[k] = a.rstd[stat];
      ab[k] = channel_coefs(a.p, channels, b, c0 + k);
    }
    const int64_t begin = sp * plan.per_split, end = min(begin + plan.per_split, a.spatial);
    const int64_t base = int64_t{b} * a.v.per_sample + c0;
    for (int64_t s = begin + ty; s < end; s += rows) {
      float xv[N], gv[N];
      load(static_cast<const T*>(a.x) + base + s * channels, xv);
      load(static_cast<const T*>(a.grad_y) + base + s * channels, gv);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float xhat = (xv[k] - mean[k]) * rstd[k], gy = grad_pre(gv[k], xhat, ab[k], kSilu);
        acc[k].x += gy * xhat, acc[k].y += gy;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < N; ++k) partial[threadIdx.x][k] = acc[k];
  __syncthreads();
  if (ty == 0 && c0 < channels) {
    for (int r = 1; r < rows; ++r) {
#pragma unroll
      for (int k = 0; k < N; ++k) acc[k] = combine(acc[k], partial[r * cols + tx][k]);
    }
    const int64_t out = int64_t{b * split + sp} * channels + c0;
#pragma unroll
    for (int k = 0; k < N; ++k) ds[out + k] = acc[k].x, db[out + k] = acc[k].y;
  }
}

// One thread a channel, in a fixed order: the totals ds, db [B, C] over the splits;
// grad_shift = db, grad_scale = w ds + bias db, grad_weight = sum_b (1 + scale) ds,
// grad_bias = sum_b (1 + scale) db.
__global__ void __launch_bounds__(kThreads)
    gn_params_kernel(const BackwardKernelArgs a, int64_t split, const float* __restrict__ ds,
                     const float* __restrict__ db, float* __restrict__ ds_total,
                     float* __restrict__ db_total) {
  const int64_t channels = a.v.channels;
  const int64_t c = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (c >= channels) return;
  const float w = a.p.weight ? a.p.weight[c] : 1.0f, bias = a.p.bias ? a.p.bias[c] : 0.0f;
  float gw = 0.0f, gb = 0.0f;
  for (int64_t b = 0; b < a.batch; ++b) {
    float s = 0.0f, t = 0.0f;
    for (int64_t sp = 0; sp < split; ++sp) {
      const int64_t i = (b * split + sp) * channels + c;
      s += ds[i], t += db[i];
    }
    const int64_t bc = b * channels + c;
    ds_total[bc] = s, db_total[bc] = t;
    if (a.grad_shift) a.grad_shift[bc] = t;
    if (a.grad_scale) a.grad_scale[bc] = w * s + bias * t;
    const float s1 = a.p.scale ? 1.0f + a.p.scale[bc] : 1.0f;
    gw += s1 * s, gb += s1 * t;
  }
  if (a.grad_weight) a.grad_weight[c] = gw;
  if (a.grad_bias) a.grad_bias[c] = gb;
}

// grad_x over chunk blockIdx.x % chunks of group blockIdx.x / chunks.
template <typename T, int N, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    gn_grad_x_kernel(const BackwardKernelArgs a, uint32_t chunks,
                     const float* __restrict__ ds_total, const float* __restrict__ db_total) {
  extern __shared__ float2 coef_table[];
  const GroupView& v = a.v;
  const uint32_t bg = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  uint32_t b, g;
  const int64_t base = v.base(bg, b, g);
  const float mean = a.mean[bg], rstd = a.rstd[bg];
  const float2* coefs = group_coefs(coef_table, a.p, v, b, g, 1.0f);
  float2 m{0.0f, 0.0f};  // sum_c A db, sum_c A ds
  for (int64_t j = threadIdx.x; j < v.cpg; j += kThreads) {
    const int64_t bc = int64_t{b} * v.channels + int64_t{g} * v.cpg + j;
    const float aj = coefs[j].x;
    m.x += aj * db_total[bc], m.y += aj * ds_total[bc];
  }
  m = block_reduce(m, float2{0.0f, 0.0f});
  const float m1 = m.x / v.elems, m2 = m.y / v.elems;
  const uint32_t e0 = static_cast<uint32_t>(chunk * kChunkVecs + threadIdx.x) * N;
  float xv[kVecsPerThread][N], gv[kVecsPerThread][N];
  int64_t offs[kVecsPerThread];
  uint32_t js[kVecsPerThread];
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) {
    const uint32_t e = e0 + i * kThreads * N;
    if (e < v.elems) {
      offs[i] = v.at(base, e, js[i]);
      load(static_cast<const T*>(a.x) + offs[i], xv[i]);
      load(static_cast<const T*>(a.grad_y) + offs[i], gv[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) {
    if (e0 + i * kThreads * N >= v.elems) continue;
    float dx[N];
    float2 ab = coefs[js[i]];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (v.channels_last && k > 0) ab = coefs[js[i] + k];
      const float xhat = (xv[i][k] - mean) * rstd;
      dx[k] = (grad_pre(gv[i][k], xhat, ab, kSilu) * ab.x - m1 - xhat * m2) * rstd;
    }
    store(static_cast<T*>(a.grad_x) + offs[i], dx);
  }
}

// ---- host ----

struct ForwardPlan {
  int64_t split, per_split;  // group elements per split (a multiple of 8)
};

ForwardPlan forward_plan(const Geometry& g, int64_t groups) {
  const int64_t elems = g.per_sample / groups, bgs = g.batch * groups;
  int64_t split = std::max<int64_t>(1, std::min(kMaxSplit, cdiv(kTargetBlocks, bgs)));
  split = std::min(split, std::max<int64_t>(1, elems / (kChunkVecs * 4)));
  const int64_t per_split = round_up8(cdiv(elems, split));
  return {cdiv(elems, per_split), per_split};
}

Params params_of(const GroupNormParamPtrs& p) { return {p.weight, p.bias, p.scale, p.shift}; }

// N-element vectors when every group row of cols elements starts aligned: cols % N == 0.
template <typename T>
bool vectorize(const GroupView& v, std::initializer_list<const void*> pointers) {
  return v.channels_last ? vectorizable<T>(v.cpg, pointers)
                         : vectorizable<T>(v.cols, pointers);
}

// Launches kernel with the group's coefficient table in dynamic shared memory (past 48 KiB,
// C / G > 6144, only where the device allows it).
template <typename... KernelArgs, typename... Args>
cudaError_t launch_with_table(void (*kernel)(KernelArgs...), const GroupView& v, int64_t blocks,
                              cudaStream_t stream, const Args&... args) {
  const size_t smem = static_cast<size_t>(v.cpg) * sizeof(float2);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(args...);
  return cudaGetLastError();
}

bool valid_groups(const Geometry& g, int64_t groups) {
  return groups > 0 && g.channels % groups == 0 && g.per_sample / groups < (int64_t{1} << 31) &&
         g.batch * g.channels * kMaxSplit < (int64_t{1} << 31);
}

}  // namespace

size_t group_norm_scratch_bytes(const Geometry& g, int64_t groups) {
  if (g.batch * g.per_sample == 0 || !valid_groups(g, groups)) return 0;
  return static_cast<size_t>(g.batch * groups * forward_plan(g, groups).split) * sizeof(Welford);
}

cudaError_t launch_group_norm(const GroupNormArgs& a, cudaStream_t stream) {
  const Geometry& g = a.g;
  if (g.batch * g.per_sample == 0) return cudaSuccess;
  if (!valid_groups(g, a.groups)) return cudaErrorInvalidValue;
  const GroupView v = group_view(g, a.groups, false);
  const ForwardKernelArgs k{v, params_of(a.p), a.eps, a.x, a.y, a.mean, a.rstd};
  const unsigned bgs = static_cast<unsigned>(g.batch * a.groups);
  return dispatch_dtype(a.dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    return dispatch_flags(
        [&](auto vec, auto silu) {
          constexpr int N = decltype(vec)::value ? kVecWidth<T> : 1;
          constexpr bool kSilu = decltype(silu)::value;
          if (v.elems <= kFusedVecs * N)
            return launch_with_table(gn_fused_kernel<T, N, kSilu>, v, bgs, stream, k);
          const ForwardPlan plan = forward_plan(g, a.groups);
          ForwardKernelArgs stats_args = k;
          stats_args.v = group_view(g, a.groups, true);
          auto* summaries = static_cast<Welford*>(a.scratch);
          gn_stats_kernel<T, N><<<static_cast<unsigned>(bgs * plan.split), kThreads, 0, stream>>>(
              stats_args, static_cast<int>(plan.split), static_cast<uint32_t>(plan.per_split),
              summaries);
          const int64_t chunks = cdiv(v.elems, kChunkVecs * N);
          return launch_with_table(gn_apply_kernel<T, N, kSilu>, v, bgs * chunks, stream, k,
                                   static_cast<uint32_t>(chunks), static_cast<int>(plan.split),
                                   static_cast<const Welford*>(summaries));
        },
        vectorize<T>(v, {a.x, a.y}), a.silu);
  });
}

size_t group_norm_backward_scratch_bytes(const Geometry& g, int64_t groups) {
  if (g.batch * g.per_sample == 0 || !valid_groups(g, groups)) return 0;
  const int64_t per_split = g.batch * g.channels;
  return static_cast<size_t>(2 * per_split * (backward_plan(g).split + 1)) * sizeof(float);
}

cudaError_t launch_group_norm_backward(const GroupNormBackwardArgs& a, cudaStream_t stream) {
  const Geometry& g = a.g;
  if (g.batch * g.per_sample == 0) return cudaSuccess;
  if (!valid_groups(g, a.groups)) return cudaErrorInvalidValue;
  const GroupView v = group_view(g, a.groups, false);
  const BackwardKernelArgs k{v,        params_of(a.p), g.batch,       a.groups,
                             g.spatial, a.grad_y,       a.x,           a.mean,
                             a.rstd,    a.grad_x,       a.grad_weight, a.grad_bias,
                             a.grad_scale, a.grad_shift};
  const BackwardPlan plan = backward_plan(g);
  const int64_t bc = g.batch * g.channels;
  float* ds = static_cast<float*>(a.scratch);
  float* db = ds + bc * plan.split;
  float* ds_total = db + bc * plan.split;
  float* db_total = ds_total + bc;
  return dispatch_dtype(a.dtype, [&](auto dtype) {
    using T = typename decltype(dtype)::type;
    const bool vec = vectorize<T>(v, {a.x, a.grad_y, a.grad_x});
    return dispatch_flags(
        [&](auto vec, auto silu) {
          constexpr int N = decltype(vec)::value ? kVecWidth<T> : 1;
          constexpr bool kSilu = decltype(silu)::value;
          if (g.channels_last) {
            int cols = 1;
            while (cols < 32 && cols * N < g.channels) cols *= 2;
            const int64_t col_tiles = cdiv(g.channels, int64_t{cols} * N);
            gn_sums_cols_kernel<T, N, kSilu>
                <<<static_cast<unsigned>(g.batch * col_tiles * plan.split), kThreads, 0,
                   stream>>>(k, plan, cols, col_tiles, ds, db);
          } else {
            gn_sums_rows_kernel<T, N, kSilu>
                <<<static_cast<unsigned>(cdiv(bc * plan.split, kWarps)), kThreads, 0, stream>>>(
                    k, plan, ds, db);
          }
          gn_params_kernel<<<static_cast<unsigned>(cdiv(g.channels, kThreads)), kThreads, 0,
                             stream>>>(k, plan.split, ds, db, ds_total, db_total);
          const int64_t chunks = cdiv(v.elems, kChunkVecs * N);
          return launch_with_table(gn_grad_x_kernel<T, N, kSilu>, v, g.batch * a.groups * chunks,
                                   stream, k, static_cast<uint32_t>(chunks),
                                   static_cast<const float*>(ds_total),
                                   static_cast<const float*>(db_total));
        },
        vec, a.silu);
  });
}

}  // namespace pydiffuse::cuda
