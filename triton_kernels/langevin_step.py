"""pydiffuse_triton::langevin_step: mean = x + e score;  next = mean + sqrt(2 e) z.

e = step_size, or when adaptive (score-SDE corrector, Song et al. 2021, Alg. 4-5)
e = 2 step_size (snr |z| / |score|)^2, |.| the L2 norm of each sample, averaged over the batch
unless per_sample_norm. Adaptive runs two passes: sums of |score|^2 and |z|^2 over [ROWS, COLS]
tiles of whole samples (z regenerated, never stored; common.tile_config), reduced per sample on
the device in a fixed order; then the update over blocks of elements.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from pydiffuse.ops._packing import LANGEVIN_SNR, LANGEVIN_STEP_SIZE

from .common import (block_elements, contiguous, geometry, kernel_format, launch_config,
                     per_sample_value, sample_tile, tile_config)
from .philox import block_noise, noise_args


@triton.jit(do_not_specialize=["step"])
def _sum_squares_kernel(score_ptr, noise_ptr, seeds_ptr, partial_ptr, batch, per_sample,
                        channels, spatial, step, NOISE: tl.constexpr,
                        PER_SAMPLE_SEEDS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        GROUP: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """partial[b, chunk] = (sum score^2, sum z^2) over chunk `chunk` (COLS elements) of each
    sample b of this program's tile."""
    b, chunk, m, mask = sample_tile(batch, per_sample, ROWS, COLS)
    offset = b * per_sample + m
    score = tl.load(score_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    jg = chunk.to(tl.int64) * COLS + GROUP * tl.arange(0, COLS // GROUP)[None, :]
    z = block_noise(noise_ptr, seeds_ptr, offset, mask, b, m, b, jg, batch, channels, spatial,
                    step, NOISE, PER_SAMPLE_SEEDS, CHANNELS_LAST, GROUP)
    z = tl.where(mask, z, 0.0)
    at = partial_ptr + 2 * (b * tl.cdiv(per_sample, COLS) + chunk)
    rows = b < batch
    tl.store(at, tl.sum(score * score, axis=1)[:, None], mask=rows)
    tl.store(at + 1, tl.sum(z * z, axis=1)[:, None], mask=rows)


@triton.jit(do_not_specialize=["step"])
def _langevin_kernel(x_ptr, score_ptr, noise_ptr, seeds_ptr, e_ptr, e_stride, next_ptr, mean_ptr,
                     numel, batch, per_sample, channels, spatial, step, NOISE: tl.constexpr,
                     PER_SAMPLE_SEEDS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     ONE_SAMPLE: tl.constexpr, GROUP: tl.constexpr, RETURN_MEAN: tl.constexpr,
                     BLOCK: tl.constexpr):
    """mean = x + e[b] score;  next = mean + sqrt(2 e[b]) z, for one block of elements (e[b] at
    e_ptr + b e_stride)."""
    i, b, m = block_elements(per_sample, ONE_SAMPLE, 1, BLOCK)
    _, bg, jg = block_elements(per_sample, ONE_SAMPLE, GROUP, BLOCK)  # the noise's groups
    mask = i < numel
    e = per_sample_value(e_ptr, 0, batch, b, 0, e_stride)
    x = tl.load(x_ptr + i, mask=mask).to(tl.float32)
    score = tl.load(score_ptr + i, mask=mask).to(tl.float32)
    z = block_noise(noise_ptr, seeds_ptr, i, mask, b, m, bg, jg, batch, channels, spatial, step,
                    NOISE, PER_SAMPLE_SEEDS, CHANNELS_LAST, GROUP)
    mean = x + e * score
    tl.store(next_ptr + i, (mean + tl.sqrt(2.0 * e) * z).to(next_ptr.dtype.element_ty),
             mask=mask)
    if RETURN_MEAN:
        tl.store(mean_ptr + i, mean.to(mean_ptr.dtype.element_ty), mask=mask)


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
    batch, geo = x.shape[0], geometry(x, fmt)
    zargs = noise_args(noise, seeds, geo["per_sample"], geo["CHANNELS_LAST"])
    e = coefs[LANGEVIN_STEP_SIZE]  # [B], stride 0 when shared by the batch
    if adaptive:
        tile = tile_config(batch, geo["per_sample"])
        chunks = triton.cdiv(geo["per_sample"], tile["COLS"])
        partial = torch.empty(batch, chunks, 2, dtype=torch.float32, device=x.device)
        wrap_triton(_sum_squares_kernel)[tile.pop("grid")](
            score, noise, seeds, partial, batch, **geo, step=step, **zargs, **tile)
        norms = partial.sum(dim=1).sqrt()  # [B, (|score|, |z|)]
        if not per_sample_norm:
            norms = norms.mean(dim=0, keepdim=True)
        e = 2 * e * (coefs[LANGEVIN_SNR] * norms[:, 1] / norms[:, 0]) ** 2
    cfg = launch_config(x.numel(), geo["per_sample"])
    wrap_triton(_langevin_kernel)[cfg.pop("grid")](
        x, score, noise, seeds, e, e.stride(0), nxt, mean, x.numel(), batch, **geo, step=step,
        **zargs, RETURN_MEAN=return_mean, **cfg)
    return nxt, mean
