"""pydiffuse_triton::randn: the noise stream N(seed, step, b, j) itself, C-order [B, ...]."""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .common import block_start, launch_config
from .philox import noise_run


@triton.jit(do_not_specialize=["step"])
def _randn_kernel(seeds_ptr, out_ptr, per_sample, step, PER_SAMPLE_SEEDS: tl.constexpr,
                  BLOCK: tl.constexpr):
    """out[b, j] = N(seed, step, b, j)."""
    b, start = block_start(per_sample, BLOCK)
    m = start + tl.arange(0, BLOCK)
    z = noise_run(seeds_ptr, b, start, step, PER_SAMPLE_SEEDS, BLOCK)
    tl.store(out_ptr + b.to(tl.int64) * per_sample + m, z.to(out_ptr.dtype.element_ty),
             mask=m < per_sample)


@triton_op("pydiffuse_triton::randn", mutates_args=())
def randn(seeds: torch.Tensor, shape: list[int], step: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=seeds.device)
    if out.numel() == 0:
        return out
    per_sample = out.numel() // shape[0]
    cfg = launch_config(shape[0], per_sample)
    wrap_triton(_randn_kernel)[cfg.pop("grid")](
        seeds.contiguous(), out, per_sample, step, PER_SAMPLE_SEEDS=seeds.numel() > 1, **cfg)
    return out
