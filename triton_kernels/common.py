"""Launch geometry shared by the Triton kernels (csrc/common/layout.h, csrc/torch_utils.h).

Data is B samples of ``per_sample`` elements, each sample C-order or channels-last ([S, C]).
Every program covers one block of one sample, so the sample index b and the per-sample
coefficients are scalars; element offsets are int64, so tensors past 2^31 elements are fine.
"""

import torch
import triton
import triton.language as tl

# 1024 elements (4 warps) per program; small samples get smaller blocks, not idle lanes.
MIN_BLOCK, MAX_BLOCK = 128, 1024


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


def launch_config(batch: int, per_sample: int) -> dict:
    """Grid (one program per block of each sample), BLOCK and num_warps for [B, per_sample] data."""
    block = min(MAX_BLOCK, max(MIN_BLOCK, triton.next_power_of_2(per_sample)))
    return {"grid": (batch * triton.cdiv(per_sample, block),), "BLOCK": block,
            "num_warps": max(1, block // 256)}


@triton.jit
def block_start(per_sample, BLOCK: tl.constexpr):
    """(b, start): this program's sample and the in-sample offset (int64) of its first element."""
    blocks = tl.cdiv(per_sample, BLOCK)
    pid = tl.program_id(0)
    return pid // blocks, (pid % blocks).to(tl.int64) * BLOCK


@triton.jit
def sample_block(per_sample, BLOCK: tl.constexpr):
    """(b, row, m, mask): this program's sample b, the offset row = b * per_sample of its first
    element, and the in-sample offsets m (int64) of its block with their bounds mask."""
    b, start = block_start(per_sample, BLOCK)
    m = start + tl.arange(0, BLOCK)
    return b, b.to(tl.int64) * per_sample, m, m < per_sample


@triton.jit
def split_offsets(row, m, channels, per_sample, CHANNELS_LAST: tl.constexpr):
    """Offsets of the prediction and variance elements paired with x's (b, m) in a model output
    of 2C channels (learned variance; csrc/common/step.h split_output_offset): 2 row + m and
    that + per_sample (C-order), or 2 row + m + (m // C) * C and that + C (channels-last)."""
    o = 2 * row + m
    shift = per_sample
    if CHANNELS_LAST:
        o += (m // channels) * channels
        shift = channels
    return o, o + shift
