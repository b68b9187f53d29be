"""``randn``: the noise stream N(seed, step, b, j) itself."""

import numbers

import torch

from . import _dispatch
from ._checks import DATA_DTYPE_NAMES, DATA_DTYPES, check_step_index, check_stream_size
from ._packing import pack_seeds


def randn(shape, seed, step=0, *, device=None, dtype=torch.float32):
    """Standard normal noise, element j of sample b equal to N(seed, step, b, j) on every backend.

    Philox4x32-10 keyed by the seed, counter (j, b, step, 0); Box-Muller on the first two words.
    One ``seed`` for the batch, or one per sample (then sample b uses key seeds[b], counter
    b = 0, so its noise follows its own seed wherever it sits in a batch). Independent of the
    batch size, of memory layout and of the device.

    Args:
        shape: [B, ...]; j runs over the trailing dimensions in C order.
        seed: int, or B ints (list or integer tensor).
        step: the sampler step (a non-negative int).

    Returns:
        [shape] tensor of ``dtype`` on ``device``: the stream is defined in float32 (the
        reference's Box-Muller); float64 is that draw cast (on the reference backend).
    """
    if isinstance(shape, torch.Size):
        shape = list(shape)
    if not isinstance(shape, (list, tuple)) or not shape or not all(
            (type(d) is int or isinstance(d, numbers.Integral) and not isinstance(d, bool))
            and d >= 0 for d in shape):
        raise ValueError(f"shape must be a non-empty list of non-negative ints, got {shape!r}")
    if dtype not in DATA_DTYPES:
        raise TypeError(f"dtype must be {DATA_DTYPE_NAMES}, got {dtype}")
    check_stream_size(shape)
    step = check_step_index(step)
    device = torch.device("cpu" if device is None else device)
    seeds = pack_seeds(seed, shape[0], device)
    return _dispatch.select("randn", device, dtype)(seeds, list(shape), step, dtype)
