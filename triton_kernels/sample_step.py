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

from .common import (block_elements, contiguous, geometry, kernel_format, launch_config,
                     per_sample_value, split_offsets)
from .philox import NOISE_NONE, block_noise, noise_args

# Rows of the packed coefficient table [NUM_STEP_COEFS, B] (pydiffuse/ops/_packing.py).
CX, CO, EX, E0, M0, ME, MX, S, GUIDANCE, CLIP, LOG_LO, LOG_HI = (
    tl.constexpr(COEF_INDEX[name]) for name in
    ("cx", "co", "ex", "e0", "m0", "me", "mx", "s", "guidance", "clip", "log_lo", "log_hi"))


@triton.jit(do_not_specialize=["step"])
def _sample_step_kernel(x_ptr, out_ptr, uncond_ptr, noise_ptr, seeds_ptr, coefs_ptr, rs, cs,
                        next_ptr, x0_ptr, numel, batch, per_sample, channels,
                        spatial, step,
                        GUIDED: tl.constexpr, CLIPPED: tl.constexpr, LEARNED_VAR: tl.constexpr,
                        NOISE: tl.constexpr, PER_SAMPLE_SEEDS: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr, ONE_SAMPLE: tl.constexpr,
                        GROUP: tl.constexpr, RETURN_X0: tl.constexpr, BLOCK: tl.constexpr):
    """One block of elements; coefficient k of element e's sample b is coefs[k, b], at
    coefs_ptr + k rs + b cs (common.per_sample_value)."""
    e, b, m = block_elements(per_sample, ONE_SAMPLE, 1, BLOCK)
    _, bg, jg = block_elements(per_sample, ONE_SAMPLE, GROUP, BLOCK)  # the noise's groups
    mask = e < numel
    x = tl.load(x_ptr + e, mask=mask).to(tl.float32)
    if LEARNED_VAR:
        o_offset, v_offset = split_offsets(e - m, m, channels, per_sample, CHANNELS_LAST)
    else:
        o_offset = e
    o = tl.load(out_ptr + o_offset, mask=mask).to(tl.float32)
    if GUIDED:
        u = tl.load(uncond_ptr + o_offset, mask=mask).to(tl.float32)
        o = u + per_sample_value(coefs_ptr, GUIDANCE, batch, b, rs, cs) * (o - u)
    x0 = (per_sample_value(coefs_ptr, CX, batch, b, rs, cs) * x
          + per_sample_value(coefs_ptr, CO, batch, b, rs, cs) * o)
    if CLIPPED:
        clip = per_sample_value(coefs_ptr, CLIP, batch, b, rs, cs)
        x0 = tl.minimum(tl.maximum(x0, -clip, propagate_nan=tl.PropagateNan.ALL), clip,
                        propagate_nan=tl.PropagateNan.ALL)
    eps = (per_sample_value(coefs_ptr, EX, batch, b, rs, cs) * x
           + per_sample_value(coefs_ptr, E0, batch, b, rs, cs) * x0)
    nxt = (per_sample_value(coefs_ptr, M0, batch, b, rs, cs) * x0
           + per_sample_value(coefs_ptr, ME, batch, b, rs, cs) * eps
           + per_sample_value(coefs_ptr, MX, batch, b, rs, cs) * x)
    if NOISE != NOISE_NONE:
        s = per_sample_value(coefs_ptr, S, batch, b, rs, cs)
        if LEARNED_VAR:
            f = 0.5 * (tl.load(out_ptr + v_offset, mask=mask).to(tl.float32) + 1.0)
            s *= tl.exp(0.5 * (f * per_sample_value(coefs_ptr, LOG_HI, batch, b, rs, cs)
                               + (1.0 - f) * per_sample_value(coefs_ptr, LOG_LO, batch, b, rs, cs)))
        nxt += s * block_noise(noise_ptr, seeds_ptr, e, mask, b, m, bg, jg, batch, channels,
                               spatial, step, NOISE, PER_SAMPLE_SEEDS, CHANNELS_LAST, GROUP)
    tl.store(next_ptr + e, nxt.to(next_ptr.dtype.element_ty), mask=mask)
    if RETURN_X0:
        tl.store(x0_ptr + e, x0.to(x0_ptr.dtype.element_ty), mask=mask)


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
    zargs = noise_args(noise, seeds, geo["per_sample"], geo["CHANNELS_LAST"])
    cfg = launch_config(x.numel(), geo["per_sample"])
    wrap_triton(_sample_step_kernel)[cfg.pop("grid")](
        x, out, out_uncond, noise, contiguous(seeds), coefs, *coefs.stride(), nxt, x0, x.numel(),
        x.shape[0], **geo, step=step, GUIDED=out_uncond is not None, CLIPPED=has_clip,
        LEARNED_VAR=learned_var, **zargs, RETURN_X0=return_x0, **cfg)
    return nxt, x0
