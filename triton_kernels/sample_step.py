"""pydiffuse_triton::sample_step: the step equation of every sampler (DESIGN.md, op 1) in one pass.

    o    = u + g (out - u)                    (GUIDED: classifier-free guidance)
    x0   = cx x + co o;  x0 = clamp(x0, -clip, clip)        (CLIPPED)
    eps  = ex x + e0 x0
    next = m0 x0 + me eps + mx x + s z,  s *= exp(0.5 (f log_hi + (1 - f) log_lo)),
           f = (v + 1) / 2                    (LEARNED_VAR: out has 2C channels, the second half v)
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from pydiffuse.ops._packing import COEF_INDEX

from .common import contiguous, geometry, kernel_format, launch_config, sample_block, split_offsets
from .philox import NOISE_NONE, block_noise, noise_args

# Rows of the packed coefficient table [NUM_STEP_COEFS, B] (pydiffuse/ops/_packing.py).
CX, CO, EX, E0, M0, ME, MX, S, GUIDANCE, CLIP, LOG_LO, LOG_HI = (
    tl.constexpr(COEF_INDEX[name]) for name in
    ("cx", "co", "ex", "e0", "m0", "me", "mx", "s", "guidance", "clip", "log_lo", "log_hi"))


@triton.jit(do_not_specialize=["step"])
def _sample_step_kernel(x_ptr, out_ptr, uncond_ptr, noise_ptr, seeds_ptr, coefs_ptr, next_ptr,
                        x0_ptr, batch, per_sample, channels, spatial, step,
                        GUIDED: tl.constexpr, CLIPPED: tl.constexpr, LEARNED_VAR: tl.constexpr,
                        NOISE: tl.constexpr, PER_SAMPLE_SEEDS: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr, RETURN_X0: tl.constexpr,
                        BLOCK: tl.constexpr):
    """One block of one sample; coefficient k of sample b is coefs[k * B + b]."""
    b, row, m, mask = sample_block(per_sample, BLOCK)
    coefs_ptr += b
    x = tl.load(x_ptr + row + m, mask=mask).to(tl.float32)
    if LEARNED_VAR:
        o_offset, v_offset = split_offsets(row, m, channels, per_sample, CHANNELS_LAST)
    else:
        o_offset = row + m
    o = tl.load(out_ptr + o_offset, mask=mask).to(tl.float32)
    if GUIDED:
        u = tl.load(uncond_ptr + o_offset, mask=mask).to(tl.float32)
        o = u + tl.load(coefs_ptr + GUIDANCE * batch) * (o - u)
    x0 = tl.load(coefs_ptr + CX * batch) * x + tl.load(coefs_ptr + CO * batch) * o
    if CLIPPED:
        clip = tl.load(coefs_ptr + CLIP * batch)
        x0 = tl.minimum(tl.maximum(x0, -clip, propagate_nan=tl.PropagateNan.ALL), clip,
                        propagate_nan=tl.PropagateNan.ALL)
    eps = tl.load(coefs_ptr + EX * batch) * x + tl.load(coefs_ptr + E0 * batch) * x0
    nxt = (tl.load(coefs_ptr + M0 * batch) * x0 + tl.load(coefs_ptr + ME * batch) * eps
           + tl.load(coefs_ptr + MX * batch) * x)
    if NOISE != NOISE_NONE:
        s = tl.load(coefs_ptr + S * batch)
        if LEARNED_VAR:
            f = 0.5 * (tl.load(out_ptr + v_offset, mask=mask).to(tl.float32) + 1.0)
            s *= tl.exp(0.5 * (f * tl.load(coefs_ptr + LOG_HI * batch)
                               + (1.0 - f) * tl.load(coefs_ptr + LOG_LO * batch)))
        nxt += s * block_noise(noise_ptr, seeds_ptr, b, row, m, mask, channels, spatial, step,
                               NOISE, PER_SAMPLE_SEEDS, CHANNELS_LAST, BLOCK)
    tl.store(next_ptr + row + m, nxt.to(next_ptr.dtype.element_ty), mask=mask)
    if RETURN_X0:
        tl.store(x0_ptr + row + m, x0.to(x0_ptr.dtype.element_ty), mask=mask)


@triton_op("pydiffuse_triton::sample_step", mutates_args=())
def sample_step(x: torch.Tensor, out: torch.Tensor, out_uncond: torch.Tensor | None,
                coefs: torch.Tensor, noise: torch.Tensor | None, seeds: torch.Tensor | None,
                step: int, has_clip: bool, learned_var: bool,
                return_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = kernel_format(x)
    x, out, out_uncond, noise = (contiguous(t, fmt) for t in (x, out, out_uncond, noise))
    nxt = torch.empty_like(x, memory_format=fmt)
    x0 = torch.empty_like(x, memory_format=fmt) if return_x0 else x.new_empty(0)
    if x.numel() == 0:
        return nxt, x0
    geo = geometry(x, fmt)
    cfg = launch_config(x.shape[0], geo["per_sample"])
    wrap_triton(_sample_step_kernel)[cfg.pop("grid")](
        x, out, out_uncond, noise, contiguous(seeds), coefs.contiguous(), nxt, x0, x.shape[0],
        **geo,
        step=step, GUIDED=out_uncond is not None, CLIPPED=has_clip, LEARNED_VAR=learned_var,
        **noise_args(noise, seeds), RETURN_X0=return_x0, **cfg)
    return nxt, x0
