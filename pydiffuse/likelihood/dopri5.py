"""A batched float64 Dormand-Prince 5(4) integrator with a step size per sample, for ODEs whose
right-hand side is any function (the likelihood's augmented state (x, log p) needs autograd in
every stage).

The probability-flow sampler (``pydiffuse.samplers.ode``) has its own RK45: its stages are fused
``sample_step`` / ``lincomb`` passes in float32 with host-side coefficient tables, built for
speed without autograd. This one shares its Butcher tableau and step-size rule
(``pydiffuse.ode_solvers``) and runs the stages as plain float64 tensor arithmetic on the
state's device.
"""

import torch

from ..ode_solvers import DP_A, DP_C, DP_E, controlled_step, initial_step_from_norms
from ..utils import steps_bar


def _rms(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square of v / scale, [B]."""
    return (v / scale).square().mean(1).sqrt()


def _initial_step(fn, t, y, k1, span, rtol, atol):
    """Hairer, Norsett & Wanner's starting step (scipy's select_initial_step), per sample:
    h0 = 0.01 |y| / |f|, h1 = (0.01 / max(|f|, |f(t + h0, y + h0 f) - f| / h0))^(1/5),
    h = min(100 h0, h1, span), norms scaled by atol + rtol |y|."""
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y, scale), _rms(k1, scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, span)
    d2 = _rms(fn(t + h0, y + h0[:, None] * k1) - k1, scale) / h0
    return initial_step_from_norms(h0, d1, d2, span)


def dopri5(fn, y0: torch.Tensor, t0: float, t1: float, *, rtol: float, atol: float,
           max_steps: int = 10000, progress=None, desc: str = "dopri5"):
    """Solve dy/dt = fn(t, y) from t0 to t1 > t0 with adaptive Dormand-Prince 5(4) (Dormand &
    Prince 1980; FSAL), each sample with its own t and h: error norm RMS(err / (atol + rtol
    max(|y|, |y_new|))) per sample, a step accepted when <= 1, the next h = h clamp(0.9
    norm^(-1/5), 0.2, 10) (at most h right after a rejection), the first h from Hairer's
    heuristic. A sample's solution does not depend on its batch-mates; a finished sample idles
    with h = 0 until all are done.

    Args:
        fn: fn(t, y) -> dy/dt, t float64 [B], y and the result [B, N].
        y0: [B, N] float64, the state at t0.
        t0, t1: the interval.
        rtol, atol: tolerances (scipy's meaning); max_steps: attempted steps before giving up.

    Returns:
        (y(t1) [B, N], stats) with stats {"nfe": calls of fn, "steps": accepted steps [B],
        "rejected": rejected steps [B]}.
    """
    if y0.dtype != torch.float64 or y0.ndim != 2:
        raise TypeError(f"y0 must be float64 [B, N], got {y0.dtype} {list(y0.shape)}")
    batch, dev = len(y0), y0.device
    t = torch.full((batch,), float(t0), dtype=torch.float64, device=dev)
    end = torch.full_like(t, float(t1))
    y, k1 = y0, fn(t, y0)
    h = _initial_step(fn, t, y, k1, end - t, rtol, atol)
    nfe = 2
    accepted = torch.zeros(batch, dtype=torch.long, device=dev)
    rejected = torch.zeros_like(accepted)
    retry = torch.zeros(batch, dtype=torch.bool, device=dev)   # no growth right after a rejection
    for _ in steps_bar(max_steps, progress, desc):
        active = t < end
        if not bool(active.any()):
            break
        h = torch.minimum(h, end - t)                # land on t1; 0 once a sample is there
        ks = [k1]
        for s in range(1, len(DP_C)):
            y_s = y + sum(w * h[:, None] * k for w, k in zip(DP_A[s], ks) if w != 0.0)
            ks.append(fn(t + DP_C[s] * h, y_s))
        nfe += len(DP_C) - 1
        err = h[:, None] * sum(w * k for w, k in zip(DP_E, ks) if w != 0.0)
        norm = _rms(err, atol + rtol * torch.maximum(y.abs(), y_s.abs()))
        t, h, ok = controlled_step(t, h, norm, retry, end)
        y, k1 = torch.where(ok[:, None], y_s, y), torch.where(ok[:, None], ks[-1], k1)
        accepted += ok & active
        rejected += ~ok & active
        retry = ~ok
    else:
        if bool((t < end).any()):
            raise RuntimeError(f"dopri5 did not reach t = {t1} within max_steps={max_steps} "
                               "steps; raise max_steps or loosen rtol/atol")
    return y, {"nfe": nfe, "steps": accepted, "rejected": rejected}
