"""pydiffuse_triton::randn: the noise stream N(seed, step, b, j) itself, C-order [B, ...]."""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .common import block_elements, launch_config
from .philox import noise_group, stream_noise


@triton.jit(do_not_specialize=["step"])
def _randn_kernel(seeds_ptr, out_ptr, numel, batch, per_sample, step,
                  PER_SAMPLE_SEEDS: tl.constexpr, ONE_SAMPLE: tl.constexpr, GROUP: tl.constexpr,
                  BLOCK: tl.constexpr):
    """out[b, j] = N(seed, step, b, j) over one block of elements, one Philox call per GROUP."""
    e, _, _ = block_elements(per_sample, ONE_SAMPLE, 1, BLOCK)
    _, bg, jg = block_elements(per_sample, ONE_SAMPLE, GROUP, BLOCK)
    z = tl.reshape(stream_noise(seeds_ptr, bg, jg, batch, step, PER_SAMPLE_SEEDS, GROUP), [BLOCK])
    tl.store(out_ptr + e, z.to(out_ptr.dtype.element_ty), mask=e < numel)


@triton_op("pydiffuse_triton::randn", mutates_args=())
def randn(seeds: torch.Tensor, shape: list[int], step: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=seeds.device)
    if out.numel() == 0:
        return out
    per_sample = out.numel() // shape[0]
    cfg = launch_config(out.numel(), per_sample)
    wrap_triton(_randn_kernel)[cfg.pop("grid")](
        seeds.contiguous(), out, out.numel(), shape[0], per_sample, step,
        PER_SAMPLE_SEEDS=seeds.numel() > 1, GROUP=noise_group(per_sample), **cfg)
    return out
