"""pydiffuse_triton::langevin_step: mean = x + e score;  next = mean + sqrt(2 e) z.

e = step_size, or when adaptive (score-SDE corrector, Song et al. 2021, Alg. 4-5)
e = 2 step_size (snr |z| / |score|)^2, |.| the L2 norm of each sample, averaged over the batch
unless per_sample_norm. Adaptive runs two passes: per-block sums of |score|^2 and |z|^2 (z
regenerated, never stored), reduced per sample on the device in a fixed order; then the update.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from pydiffuse.ops._packing import LANGEVIN_SNR, LANGEVIN_STEP_SIZE

from .common import contiguous, geometry, kernel_format, launch_config, sample_block
from .philox import block_noise, noise_args


@triton.jit(do_not_specialize=["step"])
def _sum_squares_kernel(score_ptr, noise_ptr, seeds_ptr, partial_ptr, per_sample, channels,
                        spatial, step, NOISE: tl.constexpr, PER_SAMPLE_SEEDS: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """partial[program] = (sum score^2, sum z^2) over the program's block."""
    b, row, m, mask = sample_block(per_sample, BLOCK)
    score = tl.load(score_ptr + row + m, mask=mask).to(tl.float32)
    z = block_noise(noise_ptr, seeds_ptr, b, row, m, mask, channels, spatial, step, NOISE,
                    PER_SAMPLE_SEEDS, CHANNELS_LAST, BLOCK)
    z = tl.where(mask, z, 0.0)
    pid = tl.program_id(0)
    tl.store(partial_ptr + 2 * pid, tl.sum(score * score))
    tl.store(partial_ptr + 2 * pid + 1, tl.sum(z * z))


@triton.jit(do_not_specialize=["step"])
def _langevin_kernel(x_ptr, score_ptr, noise_ptr, seeds_ptr, e_ptr, next_ptr, mean_ptr,
                     per_sample, channels, spatial, step, NOISE: tl.constexpr,
                     PER_SAMPLE_SEEDS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     RETURN_MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """mean = x + e[b] score;  next = mean + sqrt(2 e[b]) z."""
    b, row, m, mask = sample_block(per_sample, BLOCK)
    e = tl.load(e_ptr + b)
    x = tl.load(x_ptr + row + m, mask=mask).to(tl.float32)
    score = tl.load(score_ptr + row + m, mask=mask).to(tl.float32)
    z = block_noise(noise_ptr, seeds_ptr, b, row, m, mask, channels, spatial, step, NOISE,
                    PER_SAMPLE_SEEDS, CHANNELS_LAST, BLOCK)
    mean = x + e * score
    tl.store(next_ptr + row + m, (mean + tl.sqrt(2.0 * e) * z).to(next_ptr.dtype.element_ty),
             mask=mask)
    if RETURN_MEAN:
        tl.store(mean_ptr + row + m, mean.to(mean_ptr.dtype.element_ty), mask=mask)


@triton_op("pydiffuse_triton::langevin_step", mutates_args=())
def langevin_step(x: torch.Tensor, score: torch.Tensor, coefs: torch.Tensor, adaptive: bool,
                  per_sample_norm: bool, noise: torch.Tensor | None,
                  seeds: torch.Tensor | None, step: int,
                  return_mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = kernel_format(x)
    x, score, noise = (contiguous(t, fmt) for t in (x, score, noise))
    seeds = contiguous(seeds)
    nxt = torch.empty_like(x, memory_format=fmt)
    mean = torch.empty_like(x, memory_format=fmt) if return_mean else x.new_empty(0)
    if x.numel() == 0:
        return nxt, mean
    batch, geo, zargs = x.shape[0], geometry(x, fmt), noise_args(noise, seeds)
    cfg = launch_config(batch, geo["per_sample"])
    grid = cfg.pop("grid")
    e = coefs[LANGEVIN_STEP_SIZE].contiguous()
    if adaptive:
        partial = torch.empty(grid[0], 2, dtype=torch.float32, device=x.device)
        wrap_triton(_sum_squares_kernel)[grid](score, noise, seeds, partial, **geo, step=step,
                                               **zargs, **cfg)
        norms = partial.view(batch, -1, 2).sum(dim=1).sqrt()  # [B, (|score|, |z|)]
        if not per_sample_norm:
            norms = norms.mean(dim=0, keepdim=True)
        e = 2 * e * (coefs[LANGEVIN_SNR] * norms[:, 1] / norms[:, 0]) ** 2
    wrap_triton(_langevin_kernel)[grid](x, score, noise, seeds, e, nxt, mean, **geo, step=step,
                                        **zargs, RETURN_MEAN=return_mean, **cfg)
    return nxt, mean
