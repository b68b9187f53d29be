// Parallel traversal of [B, per_sample] data for the CPU kernels, in spans of at most kChunk
// consecutive elements: as many whole samples as fit when a sample has at most kChunk elements,
// else kChunk-aligned pieces of one sample. The work follows the elements, not the samples:
// 2^24 one-element samples cost what 16 samples of 2^20 elements cost. Float32 staging buffers
// of a span stay in L1; no sample straddles two spans, and the spans are fixed by the shape,
// not by the thread count, so per-sample partial sums reduce deterministically.
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

// How the spans cut the data: `samples` whole samples per span, or `pieces` spans per sample.
struct SpanLayout {
  int64_t samples = 1, pieces = 1, count = 0;
  explicit SpanLayout(const Geometry& g) {
    if (g.per_sample <= kChunk) {
      samples = kChunk / std::max<int64_t>(g.per_sample, 1);
      count = (g.batch + samples - 1) / samples;
    } else {
      pieces = (g.per_sample + kChunk - 1) / kChunk;
      count = g.batch * pieces;
    }
  }
};

// Consecutive elements [base, base + count) of the flattened data: from offset m_begin of
// sample b on; either one piece of sample b or whole samples b, b + 1, ... (m_begin = 0).
struct Span {
  int64_t b, m_begin, count, base;
};

// fn(span) for every span, in parallel.
template <typename Fn>
void for_each_span(const Geometry& g, const Fn& fn) {
  const SpanLayout layout(g);
  const int64_t total = g.batch * g.per_sample;
  at::parallel_for(0, layout.count, kChunksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t id = begin; id < end; ++id) {
      const int64_t b = id / layout.pieces * layout.samples;
      const int64_t m_begin = id % layout.pieces * kChunk;
      const int64_t base = b * g.per_sample + m_begin;
      fn(Span{b, m_begin, std::min({kChunk, total - base, g.per_sample * layout.samples - m_begin}),
              base});
    }
  });
}

// fn(b, m_begin, offset, count) for the pieces of span s inside one sample each: sample b's
// elements m_begin .. m_begin + count - 1 sit at s.base + offset .. in memory.
template <typename Fn>
inline void for_each_segment(const Geometry& g, const Span& s, const Fn& fn) {
  if (s.count <= g.per_sample) return fn(s.b, s.m_begin, int64_t{0}, s.count);
  for (int64_t offset = 0, b = s.b; offset < s.count; offset += g.per_sample, ++b)
    fn(b, int64_t{0}, offset, g.per_sample);
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
