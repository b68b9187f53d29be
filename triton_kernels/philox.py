"""The noise stream N(seed, step, b, j) in Triton: the same function as csrc/common/philox.h and
``pydiffuse.ops.reference.noise``.

One Philox4x32-10 call (Salmon et al. 2011) with key = seed (k0 its low word, k1 its high word)
and counter (j // 4, counter_b, step, 0) gives the normals j = 4g .. 4g + 3: Box-Muller as
``tl.pair_uniform_to_normal`` on the words (w0, w1) -> (r cos, r sin) for j % 4 = 0, 1 and on
(w2, w3) for j % 4 = 2, 3; u = uint_to_uniform(w) (int32 reinterpret, x < 0 -> -x - 1, times
2^-31), r = sqrt(-2 log max(u_a, 1e-7)), theta = 2 pi u_b.
One seed for the batch: key = seeds[0], counter_b = b. Per-sample seeds: key = seeds[b],
counter_b = 0, so a sample's noise follows its own seed wherever it sits in the batch.
"""

import triton
import triton.language as tl

from .common import block_start

# Where a kernel's z comes from (a constexpr): none (z = 0), a given tensor, or the stream.
NOISE_NONE: tl.constexpr = tl.constexpr(0)
NOISE_TENSOR: tl.constexpr = tl.constexpr(1)
NOISE_STREAM: tl.constexpr = tl.constexpr(2)


def noise_args(noise, seeds) -> dict:
    """Kernel arguments that select the noise source: NOISE and PER_SAMPLE_SEEDS."""
    mode = NOISE_TENSOR if noise is not None else NOISE_STREAM if seeds is not None else NOISE_NONE
    return {"NOISE": mode.value, "PER_SAMPLE_SEEDS": seeds is not None and seeds.numel() > 1}


@triton.jit
def logical_index(m, channels, spatial, CHANNELS_LAST: tl.constexpr):
    """C-order index j of in-sample memory offsets m: m, or (m % C) * S + m // C (channels-last)."""
    if CHANNELS_LAST:
        m = (m % channels) * spatial + m // channels
    return m


@triton.jit
def _key(seeds_ptr, b, PER_SAMPLE_SEEDS: tl.constexpr):
    """(seed, counter_b) of sample b."""
    if PER_SAMPLE_SEEDS:
        return tl.load(seeds_ptr + b), 0
    return tl.load(seeds_ptr), b.to(tl.uint32)


@triton.jit
def _normals4(seed, group, counter_b, step):
    """The four normals of Philox call `group` (elements 4 group .. 4 group + 3)."""
    w0, w1, w2, w3 = tl.philox(seed, group.to(tl.uint32), counter_b, step.to(tl.uint32), 0)
    n0, n1 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(w0), tl.uint_to_uniform_float(w1))
    n2, n3 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(w2), tl.uint_to_uniform_float(w3))
    return n0, n1, n2, n3


@triton.jit
def noise_at(seeds_ptr, b, j, step, PER_SAMPLE_SEEDS: tl.constexpr):
    """z = N(seed, step, b, j) for any block of logical indices j of sample b."""
    seed, counter_b = _key(seeds_ptr, b, PER_SAMPLE_SEEDS)
    n0, n1, n2, n3 = _normals4(seed, j >> 2, counter_b, step)
    k = j & 3
    return tl.where(k == 0, n0, tl.where(k == 1, n1, tl.where(k == 2, n2, n3)))


@triton.jit
def noise_run(seeds_ptr, b, j_start, step, PER_SAMPLE_SEEDS: tl.constexpr, BLOCK: tl.constexpr):
    """z for the consecutive indices j_start + arange(BLOCK), j_start % 4 == 0: one Philox call
    per four elements, interleaved back into order."""
    seed, counter_b = _key(seeds_ptr, b, PER_SAMPLE_SEEDS)
    group = (j_start >> 2) + tl.arange(0, BLOCK // 4)
    n0, n1, n2, n3 = _normals4(seed, group, counter_b, step)
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), [BLOCK])


@triton.jit
def block_noise(noise_ptr, seeds_ptr, b, row, m, mask, channels, spatial, step,
                NOISE: tl.constexpr, PER_SAMPLE_SEEDS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                BLOCK: tl.constexpr):
    """z at x's elements (b, m) of this program's block (common.sample_block) in float32: the
    given tensor, the stream, or 0 (by NOISE)."""
    if NOISE == NOISE_TENSOR:
        z = tl.load(noise_ptr + row + m, mask=mask).to(tl.float32)
    elif NOISE == NOISE_STREAM:
        if CHANNELS_LAST:
            z = noise_at(seeds_ptr, b, logical_index(m, channels, spatial, CHANNELS_LAST), step,
                         PER_SAMPLE_SEEDS)
        else:
            _, start = block_start(channels * spatial, BLOCK)
            z = noise_run(seeds_ptr, b, start, step, PER_SAMPLE_SEEDS, BLOCK)
    else:
        z = 0.0
    return z
