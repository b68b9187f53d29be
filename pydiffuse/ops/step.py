"""``sample_step`` (the step equation of every sampler) and ``lincomb`` (ODE stages)."""

from collections.abc import Sequence

import torch

from . import _dispatch
from ._checks import (check_data, check_dtype_backend, check_number, check_same,
                      check_step_index, check_stream_size, is_nonzero)
from ._packing import STEP_COEF_NAMES, StepCoefs, pack_rows, pack_seeds


def sample_step(x, out, coefs, *, out_uncond=None, guidance=None, clip=None, learned_var=None,
                noise=None, seed=None, step=0, return_x0=False):
    """One sampler step, fused: one read of x and the model output(s), one write of the result.

    o    = out_uncond + guidance (out - out_uncond)       (classifier-free guidance, Ho & Salimans)
    x0   = cx x + co o;  x0 = clamp(x0, -clip, clip)      (any parameterization -> x0)
    eps  = ex x + e0 x0                                   (eps implied by the clipped x0)
    next = m0 x0 + me eps + mx x + s z                    (DDPM, DDIM, ancestral, Euler, ...)

    Args:
        x: [B, ...] current sample, float32/float16/bfloat16 (arithmetic in float32).
        out: model output, x's shape; [B, 2C, ...] with ``learned_var`` (second half: v).
        coefs: ``StepCoefs``; each field a float or a [B] tensor.
        out_uncond: unconditional output (out's shape), with ``guidance`` (float or [B]).
        clip: clamp x0 to [-clip, clip] (float or [B]).
        learned_var: (log_lo, log_hi): s *= exp(0.5 (f log_hi + (1 - f) log_lo)), f = (v+1)/2
            (iDDPM learned range; log_lo = clipped log beta~_t, log_hi = log beta_t).
        noise: z given as a tensor of x's shape; or ``seed`` (int, or one per sample) and
            ``step`` to draw z from the noise stream (``pydiffuse.ops.randn(x.shape, seed, step)``).
        return_x0: also return the (clipped) x0.

    Returns:
        next [x's shape], or (next, x0).
    """
    check_data(x, "x")
    if not isinstance(coefs, StepCoefs):
        raise TypeError(f"coefs must be a pydiffuse.ops.StepCoefs, got {type(coefs).__name__}")
    if learned_var is not None:
        if x.ndim < 2:
            raise ValueError("learned_var needs x of shape [B, C, ...]")
        if not (isinstance(learned_var, Sequence) and len(learned_var) == 2):
            raise TypeError("learned_var must be a pair (log_lo, log_hi)")
    out_shape = list(x.shape)
    if learned_var is not None:
        out_shape[1] *= 2
    check_same(out, x, "out", out_shape)
    if (out_uncond is None) != (guidance is None):
        raise ValueError("out_uncond and guidance go together: give both or neither")
    if out_uncond is not None:
        check_same(out_uncond, x, "out_uncond", out_shape)
        check_number(guidance, "guidance")
    if clip is not None:
        check_number(clip, "clip", positive=True)
    if noise is not None and seed is not None:
        raise ValueError("give noise or seed, not both")
    if noise is not None:
        check_same(noise, x, "noise")
    step = check_step_index(step)
    if noise is None and seed is None and is_nonzero(coefs.s):
        raise ValueError("coefs.s multiplies the noise z: pass noise= or seed= (or s=0.0)")

    batch, device = x.shape[0], x.device
    lo, hi = learned_var if learned_var is not None else (0.0, 0.0)
    rows = [(n, getattr(coefs, n)) for n in STEP_COEF_NAMES]
    rows += [("guidance", 0.0 if guidance is None else guidance),
             ("clip", 0.0 if clip is None else clip), ("log_lo", lo), ("log_hi", hi)]
    table = pack_rows(rows, batch, device)
    seeds = None
    if seed is not None:
        check_stream_size(x.shape)
        seeds = pack_seeds(seed, batch, device)
    name = _dispatch.current_backend(device)
    check_dtype_backend(x, name)
    nxt, x0 = _dispatch.implementation("sample_step", device)(
        x, out, out_uncond, table, noise, seeds, step, clip is not None, learned_var is not None,
        return_x0)
    return (nxt, x0) if return_x0 else nxt


def lincomb(tensors, coefs):
    """sum_i coefs[i] * tensors[i] in one pass (Runge-Kutta stages, multistep solvers).

    Args:
        tensors: n >= 1 tensors of one shape [B, ...], dtype and device.
        coefs: n coefficients, each a float or a [B] tensor; or a tensor [n] or [n, B].

    Returns:
        [B, ...] in the tensors' dtype (accumulated in float32).
    """
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence) or not tensors:
        raise TypeError("tensors must be a non-empty list of tensors")
    first = check_data(tensors[0], "tensors[0]")
    for i, t in enumerate(tensors[1:], start=1):
        check_same(t, first, f"tensors[{i}]")
    if isinstance(coefs, torch.Tensor):
        coefs = list(coefs.unbind(0)) if coefs.ndim >= 1 else [coefs]
    if not isinstance(coefs, Sequence):
        raise TypeError("coefs must be a list of floats / [B] tensors, or a tensor [n] or [n, B]")
    if len(coefs) != len(tensors):
        raise ValueError(f"coefs has {len(coefs)} entries for {len(tensors)} tensors")
    batch, device = first.shape[0], first.device
    table = pack_rows([(f"coefs[{i}]", c) for i, c in enumerate(coefs)], batch, device)
    check_dtype_backend(first, _dispatch.current_backend(device))
    return _dispatch.implementation("lincomb", device)(list(tensors), table)
