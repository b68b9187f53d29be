// pydiffuse::attention on the GPU: the forward pass of FlashAttention-2 (Dao 2023). A block of
// 4 warps owns a block of queries and streams tiles of K and V through shared memory (cp.async,
// double-buffered, zero-filled past Nk); scores, softmax statistics and the output accumulate in
// float32 registers with an online softmax in base 2, so no Nq x Nk matrix exists anywhere.
//  - float16/bfloat16: tensor cores (mma.sync m16n8k16, float32 accumulators), 16 queries per
//    warp, 64-key tiles; the score accumulators become the A operand of P V in registers.
//  - float32: full float32 precision on the FMA units (no TF32), 4 lanes per query.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>

#include "cuda/device_utils.cuh"

namespace pydiffuse::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockThreads = kWarps * 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- Shared-memory tiles: kRows rows of D elements (+16 bytes of padding, so the 8 rows an
// ldmatrix or a quad of lanes touches fall in distinct banks), K then V, two stages.
template <typename T, int D, int kRows>
struct Tiles {
  static constexpr int kChunk = 16 / sizeof(T);  // elements per 16-byte copy
  static constexpr int kStride = D + kChunk;     // elements per shared row
  static constexpr int kElems = kRows * kStride;
  static constexpr int kBytes = 2 * 2 * kElems * sizeof(T);
};

// The online softmax's shift for a running max m: m, or 0 while a row has met only -inf
// scores (keys masked to -inf), so that 2^(s - m) never computes -inf - -inf = NaN
// (FlashAttention's Check_inf).
__device__ __forceinline__ float softmax_shift(float m) { return m == kNegInf ? 0.0f : m; }

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without a register round trip; valid == false writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Rows [n0, n0 + kRows) of one head's [N, D] matrix (row stride `stride` elements) into a tile;
// rows at or past n are zeros (so 0-probability padding never multiplies garbage).
template <typename T, int D, int kRows>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t stride, int n0, int n) {
  using Tile = Tiles<T, D, kRows>;
  constexpr int kPerRow = D / Tile::kChunk;
  static_assert(kRows * kPerRow % kBlockThreads == 0, "the tile splits evenly over the block");
#pragma unroll
  for (int i = 0; i < kRows * kPerRow / kBlockThreads; ++i) {
    const int c = i * kBlockThreads + threadIdx.x;
    const int r = c / kPerRow, col = (c % kPerRow) * Tile::kChunk;
    const bool valid = n0 + r < n;
    cp_async16(tile + r * Tile::kStride + col, valid ? src + (n0 + r) * stride + col : src, valid);
  }
}

// Both tiles (K, V) of key block `tile` into stage tile % 2, as one cp.async group.
template <typename T, int D, int kRows>
__device__ __forceinline__ void load_kv(T* smem, const T* k, const T* v, const AttentionArgs& a,
                                        int tile) {
  using Tile = Tiles<T, D, kRows>;
  T* stage = smem + (tile & 1) * 2 * Tile::kElems;
  load_tile<T, D, kRows>(stage, k, a.k_strides[2], tile * kRows, a.n_k);
  load_tile<T, D, kRows>(stage + Tile::kElems, v, a.v_strides[2], tile * kRows, a.n_k);
  cp_async_commit();
}

// This block's head: (b h, query block), and the head's q, k, v.
struct HeadOf {
  int64_t bh;
  int block;
};

__device__ __forceinline__ HeadOf head_of_block(int m_blocks) {
  return {blockIdx.x / m_blocks, static_cast<int>(blockIdx.x % m_blocks)};
}

template <typename T>
__device__ __forceinline__ const T* head_ptr(const void* p, const int64_t (&strides)[3],
                                             int64_t bh, int64_t heads) {
  return static_cast<const T*>(p) + (bh / heads) * strides[0] + (bh % heads) * strides[1];
}

// ---- Tensor-core path (float16 / bfloat16).

// Two floats as the 16-bit pair of an mma operand register (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t bits;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    memcpy(&bits, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &h, 4);
  }
  return bits;
}

// d += a b: a 16x16 (row-major fragment), b 16x8 (column-major fragment), float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four 8x8 16-bit matrices from shared memory; lanes 8i..8i+7 address the rows of matrix i.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
  }
}

constexpr int kMmaBlockM = 16 * kWarps;  // queries per block: 16 per warp
constexpr int kMmaBlockN = 64;           // keys per tile

// Fragment layout of mma.m16n8k16 (PTX ISA), lane = 4 g + t: accumulator c0, c1 are row g,
// columns 2t, 2t+1 and c2, c3 row g + 8; A register i holds row g + 8 (i & 1), columns
// 2t + 8 (i >> 1) and + 1; B registers hold k = 2t (+8), n = g.
template <typename T, int D>
__global__ void __launch_bounds__(kBlockThreads)
    attention_mma_kernel(const AttentionArgs a, int m_blocks) {
  using Tile = Tiles<T, D, kMmaBlockN>;
  constexpr int kSTiles = kMmaBlockN / 8, kOTiles = D / 8;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  T* smem = reinterpret_cast<T*>(smem_bytes);

  const HeadOf head = head_of_block(m_blocks);
  const T* q = head_ptr<T>(a.q, a.q_strides, head.bh, a.heads);
  const T* k = head_ptr<T>(a.k, a.k_strides, head.bh, a.heads);
  const T* v = head_ptr<T>(a.v, a.v_strides, head.bh, a.heads);
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = head.block * kMmaBlockM + (threadIdx.x / 32) * 16 + g;  // and row0 + 8
  const int tiles = (a.n_k + kMmaBlockN - 1) / kMmaBlockN;
  load_kv<T, D, kMmaBlockN>(smem, k, v, a, 0);

  // This warp's 16 queries as A fragments, straight from global memory (zeros past Nq).
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = row0 + 8 * (i & 1), col = 16 * kk + 8 * (i >> 1) + 2 * t;
      qf[kk][i] = row < a.n_q
                      ? *reinterpret_cast<const uint32_t*>(q + row * a.q_strides[2] + col)
                      : 0u;
    }
  }
  float o[kOTiles][4] = {};
  float m[2] = {kNegInf, kNegInf};  // running max of rows row0, row0 + 8 (log2 units)
  float l[2] = {0.0f, 0.0f};        // this lane's part of the running sum
  const float scale_log2 = a.scale * kLog2e;

  for (int it = 0; it < tiles; ++it) {
    if (it + 1 < tiles) {
      load_kv<T, D, kMmaBlockN>(smem, k, v, a, it + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* ks = smem + (it & 1) * 2 * Tile::kElems;
    const T* vs = ks + Tile::kElems;

    // S = Q K^T: ldmatrix i covers keys 8 (j + i / 2) .., head dims 16 kk + 8 (i % 2) ..
    float s[kSTiles][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < kSTiles; j += 2) {
        uint32_t b[4];
        const int key = 8 * j + 8 * (lane >> 4) + (lane & 7);
        ldmatrix_x4<false>(b, ks + key * Tile::kStride + 16 * kk + 8 * ((lane >> 3) & 1));
        mma16816<T>(s[j], qf[kk], b[0], b[1]);
        mma16816<T>(s[j + 1], qf[kk], b[2], b[3]);
      }
    }

    // Online softmax, base 2: scale, mask keys past Nk, new max over the quad sharing a row.
    const int n0 = it * kMmaBlockN;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int key = n0 + 8 * j + 2 * t + (c & 1);
        s[j][c] = key < a.n_k ? s[j][c] * scale_log2 : kNegInf;
        mx[c >> 1] = fmaxf(mx[c >> 1], s[j][c]);
      }
    }
    float alpha[2], shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], 2));
      shift[r] = softmax_shift(mx[r]);
      alpha[r] = exp2f(m[r] - shift[r]);  // 0 until the row has met a finite score
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[j][c] = exp2f(s[j][c] - shift[c >> 1]);
        l[c >> 1] += s[j][c];
      }
    }
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) o[j][c] *= alpha[c >> 1];
    }

    // O += P V: P's accumulators are the A fragments of 16-key steps; V through ldmatrix.trans
    // (matrix i covers keys 16 kk + 8 (i % 2) .., head dims 8 (j + i / 2) ..).
#pragma unroll
    for (int kk = 0; kk < kMmaBlockN / 16; ++kk) {
      const uint32_t p[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                             pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < kOTiles; j += 2) {
        uint32_t b[4];
        const int key = 16 * kk + (lane & 15);
        ldmatrix_x4<true>(b, vs + key * Tile::kStride + 8 * j + 8 * (lane >> 4));
        mma16816<T>(o[j], p, b[0], b[1]);
        mma16816<T>(o[j + 1], p, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }

  T* out = static_cast<T*>(a.out) + head.bh * a.n_q * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(kFullMask, l[r], 1);
    l[r] += __shfl_xor_sync(kFullMask, l[r], 2);
    const int row = row0 + 8 * r;
    if (row >= a.n_q) continue;
    const float inv = 1.0f / l[r];
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
      *reinterpret_cast<uint32_t*>(out + int64_t{row} * D + 8 * j + 2 * t) =
          pack2<T>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
    if (t == 0) a.lse[head.bh * a.n_q + row] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// ---- float32 path: a quad of lanes per query, lane c holding head dims 4 (c + 4 i) .. + 3, so
// a quad reads 64 contiguous bytes of a key row (the 8 quads of a warp read the same row).
constexpr int kSimtBlockM = kBlockThreads / 4;
constexpr int kSimtBlockN = 32;

template <int D>
__global__ void __launch_bounds__(kBlockThreads)
    attention_simt_kernel(const AttentionArgs a, int m_blocks) {
  using Tile = Tiles<float, D, kSimtBlockN>;
  constexpr int kVecs = D / 16;  // float4s per lane
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  float* smem = reinterpret_cast<float*>(smem_bytes);

  const HeadOf head = head_of_block(m_blocks);
  const float* q = head_ptr<float>(a.q, a.q_strides, head.bh, a.heads);
  const float* k = head_ptr<float>(a.k, a.k_strides, head.bh, a.heads);
  const float* v = head_ptr<float>(a.v, a.v_strides, head.bh, a.heads);
  const int c = threadIdx.x % 4;
  const int row = head.block * kSimtBlockM + threadIdx.x / 4;
  const int tiles = (a.n_k + kSimtBlockN - 1) / kSimtBlockN;
  load_kv<float, D, kSimtBlockN>(smem, k, v, a, 0);

  float4 qv[kVecs], acc[kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float* at = q + row * a.q_strides[2] + 4 * (c + 4 * i);
    qv[i] = row < a.n_q ? *reinterpret_cast<const float4*>(at) : acc[i];
  }
  float m = kNegInf, l = 0.0f;
  const float scale_log2 = a.scale * kLog2e;

  for (int it = 0; it < tiles; ++it) {
    if (it + 1 < tiles) {
      load_kv<float, D, kSimtBlockN>(smem, k, v, a, it + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* ks = smem + (it & 1) * 2 * Tile::kElems;
    const float* vs = ks + Tile::kElems;
    const int n0 = it * kSimtBlockN;

    float s[kSimtBlockN];
    float mx = m;
#pragma unroll
    for (int j = 0; j < kSimtBlockN; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const float4 kv =
            *reinterpret_cast<const float4*>(ks + j * Tile::kStride + 4 * (c + 4 * i));
        dot = fmaf(qv[i].x, kv.x, dot);
        dot = fmaf(qv[i].y, kv.y, dot);
        dot = fmaf(qv[i].z, kv.z, dot);
        dot = fmaf(qv[i].w, kv.w, dot);
      }
      dot += __shfl_xor_sync(kFullMask, dot, 1);
      dot += __shfl_xor_sync(kFullMask, dot, 2);
      s[j] = n0 + j < a.n_k ? dot * scale_log2 : kNegInf;
      mx = fmaxf(mx, s[j]);
    }
    const float shift = softmax_shift(mx);
    const float alpha = exp2f(m - shift);  // 0 until the row has met a finite score
    m = mx;
    l *= alpha;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      acc[i].x *= alpha;
      acc[i].y *= alpha;
      acc[i].z *= alpha;
      acc[i].w *= alpha;
    }
#pragma unroll
    for (int j = 0; j < kSimtBlockN; ++j) {
      const float p = exp2f(s[j] - shift);
      l += p;
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const float4 vv =
            *reinterpret_cast<const float4*>(vs + j * Tile::kStride + 4 * (c + 4 * i));
        acc[i].x = fmaf(p, vv.x, acc[i].x);
        acc[i].y = fmaf(p, vv.y, acc[i].y);
        acc[i].z = fmaf(p, vv.z, acc[i].z);
        acc[i].w = fmaf(p, vv.w, acc[i].w);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }

  if (row >= a.n_q) return;
  float* out = static_cast<float*>(a.out) + (head.bh * a.n_q + row) * D;
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    *reinterpret_cast<float4*>(out + 4 * (c + 4 * i)) =
        make_float4(acc[i].x * inv, acc[i].y * inv, acc[i].z * inv, acc[i].w * inv);
  }
  if (c == 0) a.lse[head.bh * a.n_q + row] = (m + log2f(l)) * kLn2;
}

// Launch kernel<<<query blocks x heads, 128 threads, its shared tiles>>>.
template <typename Kernel>
cudaError_t launch(Kernel kernel, int block_m, int smem_bytes, const AttentionArgs& a,
                   cudaStream_t stream) {
  const int64_t m_blocks = (a.n_q + block_m - 1) / block_m;
  const int64_t blocks = m_blocks * a.batch * a.heads;
  if (blocks > std::numeric_limits<int>::max()) return cudaErrorInvalidConfiguration;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(blocks), kBlockThreads, smem_bytes, stream>>>(
      a, static_cast<int>(m_blocks));
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_head_dim(const AttentionArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::kFloat16:
      return launch(attention_mma_kernel<__half, D>, kMmaBlockM,
                    Tiles<__half, D, kMmaBlockN>::kBytes, a, stream);
    case DType::kBFloat16:
      return launch(attention_mma_kernel<__nv_bfloat16, D>, kMmaBlockM,
                    Tiles<__nv_bfloat16, D, kMmaBlockN>::kBytes, a, stream);
    case DType::kFloat32:
      return launch(attention_simt_kernel<D>, kSimtBlockM, Tiles<float, D, kSimtBlockN>::kBytes,
                    a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool attention_supports_head_dim(int64_t head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 128;
}

cudaError_t launch_attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.batch * a.heads * a.n_q == 0) return cudaSuccess;
  if (a.n_k < 1 || a.n_q > std::numeric_limits<int>::max() ||
      a.n_k > std::numeric_limits<int>::max())
    return cudaErrorInvalidValue;
  switch (a.head_dim) {
    case 32: return launch_head_dim<32>(a, stream);
    case 64: return launch_head_dim<64>(a, stream);
    case 128: return launch_head_dim<128>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pydiffuse::cuda
