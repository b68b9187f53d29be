// Chunked, parallel traversal of [B, per_sample] data for the CPU kernels: each chunk lies in one
// sample and holds at most kChunk elements, so per-sample coefficients are loaded once per chunk
// and float32 staging buffers stay in L1. Chunk ids are fixed by the shape, not by the thread
// count, so per-chunk partial sums reduce deterministically.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "common/layout.h"

namespace pydiffuse::cpu {

constexpr int64_t kChunk = 2048;
constexpr int64_t kChunksPerTask = 16;

inline int64_t chunks_per_sample(const Geometry& g) { return (g.per_sample + kChunk - 1) / kChunk; }
inline int64_t num_chunks(const Geometry& g) { return g.batch * chunks_per_sample(g); }

// fn(chunk_id, b, m_begin, count) over every chunk, in parallel.
template <typename Fn>
void for_each_chunk(const Geometry& g, const Fn& fn) {
  const int64_t per_sample_chunks = chunks_per_sample(g);
  at::parallel_for(0, num_chunks(g), kChunksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t b = chunk / per_sample_chunks;
      const int64_t m_begin = (chunk % per_sample_chunks) * kChunk;
      fn(chunk, b, m_begin, std::min(kChunk, g.per_sample - m_begin));
    }
  });
}

// Contiguous elements as float32: the data itself for float32, else converted into `buffer`.
template <typename scalar_t>
inline const float* load_f32(const scalar_t* src, int64_t count, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    for (int64_t i = 0; i < count; ++i) buffer[i] = static_cast<float>(src[i]);
    return buffer;
  }
}

// Where a float32 result should be computed: straight into float32 outputs, else a buffer.
template <typename scalar_t>
inline float* result_f32(scalar_t* dst, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return dst;
  } else {
    return buffer;
  }
}

template <typename scalar_t>
inline void store_result(const float* result, int64_t count, scalar_t* dst) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<scalar_t>(result[i]);
  }
}

}  // namespace pydiffuse::cpu
