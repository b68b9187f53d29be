"""Launch geometry shared by the Triton kernels (csrc/common/layout.h, csrc/torch_utils.h).

Data is B samples of ``per_sample`` elements, each sample C-order or channels-last ([S, C]).
The elementwise kernels follow the elements: a program covers BLOCK consecutive elements of the
flat [B * per_sample] data, across sample boundaries, so [2^20, 16], [N, 2] or [N] data launches
one program per BLOCK elements, not one per sample. Each element finds its sample
b = e // per_sample and reads the per-sample coefficients at b (a gather; one scalar where the
block lies in one sample). Element offsets are int64, so tensors past 2^31 elements are fine.
"""

import torch
import triton
import triton.language as tl

# Elements per program (4 warps, 8 per thread): whole 128-bit accesses for every dtype.
BLOCK = 1024
# Per-sample reductions ([ROWS, COLS] tiles of whole samples) take at most this many elements.
TILE = 1024


def kernel_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format a kernel works in: channels-last where x is (and not also C-order)."""
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return torch.contiguous_format


def contiguous(t: torch.Tensor | None, fmt=torch.contiguous_format) -> torch.Tensor | None:
    """t laid out densely in ``fmt``; None stays None."""
    return None if t is None else t.contiguous(memory_format=fmt)


def geometry(x: torch.Tensor, fmt: torch.memory_format) -> dict:
    """Sizes and layout flag the kernels take: per_sample = C * spatial, channels, spatial."""
    per_sample = x[0].numel() if x.shape[0] else 0
    channels = x.shape[1] if x.dim() >= 2 else 1
    return {"per_sample": per_sample, "channels": channels,
            "spatial": per_sample // channels if channels else 0,
            "CHANNELS_LAST": fmt != torch.contiguous_format}


def launch_config(numel: int, per_sample: int) -> dict:
    """Grid (one program per BLOCK elements), BLOCK, num_warps and ONE_SAMPLE (per_sample is a
    multiple of BLOCK: every block lies in one sample) for [B, per_sample] data."""
    return {"grid": (triton.cdiv(numel, BLOCK),), "BLOCK": BLOCK, "num_warps": 4,
            "ONE_SAMPLE": per_sample % BLOCK == 0}


def tile_config(batch: int, per_sample: int) -> dict:
    """Grid, ROWS and COLS of a per-sample reduction: each program reduces [ROWS, COLS] tiles,
    ROWS samples by COLS = next_power_of_2(per_sample) (at most TILE) of their elements, so
    small samples share a program instead of idling its lanes; ``chunks`` tiles per sample."""
    cols = min(TILE, triton.next_power_of_2(per_sample))
    rows = TILE // cols
    chunks = triton.cdiv(per_sample, cols)
    return {"grid": (triton.cdiv(batch, rows) * chunks,), "ROWS": rows, "COLS": cols,
            "num_warps": 4}


@triton.jit
def block_elements(per_sample, ONE_SAMPLE: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr):
    """(e, b, m) of every G-th element of this program's BLOCK consecutive elements of the flat
    data (G = 1: all of them): flat offsets e (int64), samples b = e // per_sample and in-sample
    offsets m = e - b per_sample. With ONE_SAMPLE the block lies in one sample: b is a scalar."""
    first = tl.program_id(0).to(tl.int64) * BLOCK
    e = first + G * tl.arange(0, BLOCK // G)
    if ONE_SAMPLE:
        b = first // per_sample
    else:
        b = e // per_sample
    return e, b, e - b * per_sample


@triton.jit
def sample_tile(batch, per_sample, ROWS: tl.constexpr, COLS: tl.constexpr):
    """(b, chunk, m, mask) of this program's tile: samples b [ROWS, 1] (int64), the tile's
    chunk of each sample, in-sample offsets m = chunk COLS + arange(COLS) as [1, COLS], and the
    bounds mask [ROWS, COLS]."""
    chunks = tl.cdiv(per_sample, COLS)
    pid = tl.program_id(0)
    chunk = pid % chunks
    b = ((pid // chunks).to(tl.int64) * ROWS + tl.arange(0, ROWS))[:, None]
    m = (chunk.to(tl.int64) * COLS + tl.arange(0, COLS))[None, :]
    return b, chunk, m, (b < batch) & (m < per_sample)


@triton.jit
def per_sample_value(table_ptr, row, batch, b, row_stride, col_stride):
    """table[row, b] of a float32 [rows, B] table with strides (row_stride, col_stride) at
    samples b (a scalar or one per element); col_stride 0: one row shared by the batch, read in
    place (pydiffuse/ops/_packing.py); b >= B (elements past the data) reads nothing."""
    return tl.load(table_ptr + row * tl.cast(row_stride, tl.int64) + b * col_stride,
                   mask=b < batch)


@triton.jit
def split_offsets(row, m, channels, per_sample, CHANNELS_LAST: tl.constexpr):
    """Offsets of the prediction and variance elements paired with x's (b, m) in a model output
    of 2C channels (learned variance; csrc/common/step.h split_output_offset): 2 row + m and
    that + per_sample (C-order), or 2 row + m + (m // C) * C and that + C (channels-last);
    row = b * per_sample."""
    o = 2 * row + m
    shift = per_sample
    if CHANNELS_LAST:
        o += (m // channels) * channels
        shift = channels
    return o, o + shift
