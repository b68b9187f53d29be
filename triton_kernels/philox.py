"""The noise stream N(seed, step, b, j) in Triton: the same function as csrc/common/philox.h and
``pydiffuse.ops.reference.noise``.

One Philox4x32-10 call (Salmon et al. 2011) with key = seed (k0 its low word, k1 its high word)
and counter (j // 4, counter_b, step, 0) gives the normals j = 4g .. 4g + 3: Box-Muller as
``tl.pair_uniform_to_normal`` on the words (w0, w1) -> (r cos, r sin) for j % 4 = 0, 1 and on
(w2, w3) for j % 4 = 2, 3; u = uint_to_uniform(w) (int32 reinterpret, x < 0 -> -x - 1, times
2^-31), r = sqrt(-2 log max(u_a, 1e-7)), theta = 2 pi u_b.
One seed for the batch: key = seeds[0], counter_b = b. Per-sample seeds: key = seeds[b],
counter_b = 0, so a sample's noise follows its own seed wherever it sits in the batch.

A kernel draws z for G consecutive C-order indices of one sample per Philox call (``GROUP``):
4 (the call's four normals) where 4 divides per_sample, 2 (one Box-Muller pair) where 2 does, so
a group never straddles two samples; else, and for channels-last data (whose consecutive
elements are S apart in j), 1: one call per element.
"""

import triton
import triton.language as tl

# Where a kernel's z comes from (a constexpr): none (z = 0), a given tensor, or the stream.
NOISE_NONE: tl.constexpr = tl.constexpr(0)
NOISE_TENSOR: tl.constexpr = tl.constexpr(1)
NOISE_STREAM: tl.constexpr = tl.constexpr(2)


def noise_group(per_sample: int, channels_last: bool = False) -> int:
    """GROUP: the elements drawn per Philox call, 4, 2 or 1."""
    return 1 if channels_last else 4 if per_sample % 4 == 0 else 2 if per_sample % 2 == 0 else 1


def noise_args(noise, seeds, per_sample: int, channels_last: bool) -> dict:
    """Kernel arguments that select the noise source: NOISE, PER_SAMPLE_SEEDS and GROUP."""
    mode = NOISE_TENSOR if noise is not None else NOISE_STREAM if seeds is not None else NOISE_NONE
    return {"NOISE": mode.value, "PER_SAMPLE_SEEDS": seeds is not None and seeds.numel() > 1,
            "GROUP": noise_group(per_sample, channels_last)}


@triton.jit
def logical_index(m, channels, spatial, CHANNELS_LAST: tl.constexpr):
    """C-order index j of in-sample memory offsets m: m, or (m % C) * S + m // C (channels-last)."""
    if CHANNELS_LAST:
        m = (m % channels) * spatial + m // channels
    return m


@triton.jit
def _words(seeds_ptr, b, batch, j, step, PER_SAMPLE_SEEDS: tl.constexpr):
    """The four words of Philox call j // 4 of sample b (b >= B, past the data: any words)."""
    if PER_SAMPLE_SEEDS:
        seed = tl.load(seeds_ptr + b, mask=b < batch)
        counter_b = 0
    else:
        seed = tl.load(seeds_ptr)
        counter_b = b.to(tl.uint32)
    return tl.philox(seed, (j >> 2).to(tl.uint32), counter_b, step.to(tl.uint32), 0)


@triton.jit
def _box_muller(wa, wb):
    """(r cos theta, r sin theta) of the words (wa, wb)."""
    return tl.pair_uniform_to_normal(tl.uint_to_uniform_float(wa), tl.uint_to_uniform_float(wb))


@triton.jit
def _pair(w0, w1, w2, w3, j):
    """The Box-Muller pair holding index j: of (w0, w1) for j % 4 < 2, else of (w2, w3)."""
    second = (j & 2) != 0
    return _box_muller(tl.where(second, w2, w0), tl.where(second, w3, w1))


@triton.jit
def stream_noise(seeds_ptr, b, j, batch, step, PER_SAMPLE_SEEDS: tl.constexpr,
                 GROUP: tl.constexpr):
    """z = N(seed, step, b, j + k), k < GROUP, for indices j % GROUP == 0 of samples b (any
    broadcastable shapes), one Philox call each: the k as a trailing dimension [2] (GROUP 2) or
    [2, 2] (GROUP 4) that a reshape puts in order; GROUP 1 adds none."""
    w0, w1, w2, w3 = _words(seeds_ptr, b, batch, j, step, PER_SAMPLE_SEEDS)
    if GROUP == 4:
        n0, n1 = _box_muller(w0, w1)
        n2, n3 = _box_muller(w2, w3)
        z = tl.join(tl.join(n0, n2), tl.join(n1, n3))
    else:
        cos, sin = _pair(w0, w1, w2, w3, j)
        if GROUP == 2:
            z = tl.join(cos, sin)
        else:
            z = tl.where((j & 1) != 0, sin, cos)
    return z


@triton.jit
def block_noise(noise_ptr, seeds_ptr, offset, mask, b, m, bg, jg, batch, channels, spatial, step,
                NOISE: tl.constexpr, PER_SAMPLE_SEEDS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                GROUP: tl.constexpr):
    """z in float32 at the elements (memory offsets ``offset``; samples b, in-sample offsets m)
    of a block: the given tensor, the stream, or 0 (by NOISE). With GROUP > 1 the stream is
    drawn per group, bg and jg the samples and first indices of the block's groups in order."""
    if NOISE == NOISE_TENSOR:
        z = tl.load(noise_ptr + offset, mask=mask).to(tl.float32)
    elif NOISE == NOISE_STREAM:
        if GROUP == 1:
            z = stream_noise(seeds_ptr, b, logical_index(m, channels, spatial, CHANNELS_LAST),
                             batch, step, PER_SAMPLE_SEEDS, GROUP)
        else:
            z = tl.reshape(stream_noise(seeds_ptr, bg, jg, batch, step, PER_SAMPLE_SEEDS, GROUP),
                           offset.shape)
    else:
        z = 0.0
    return z
