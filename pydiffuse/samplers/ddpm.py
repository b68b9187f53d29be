"""DDPM ancestral sampling (Ho et al. 2020; Nichol & Dhariwal 2021 for learned variances and
respacing; Dhariwal & Nichol 2021 for classifier guidance)."""

import torch

from ..ops import StepCoefs, lincomb, sample_step
from ..schedules import VARIANCES
from ._common import start
from .registry import register


def ddpm_table(process, prediction: str, variance: str) -> dict:
    """Per-position columns of the ancestral step on a (respaced) schedule:
    ``DiscreteSchedule.reverse_table`` (x0 = cx x + co out; x_{t-1} = c0 x0 + ct x_t + std z)."""
    return process.reverse_table(prediction, variance)


def learned_variance(out, c) -> torch.Tensor:
    """Sigma = exp(f log beta_t + (1 - f) log beta~_t), f = (v + 1) / 2, v = out's second half."""
    v = out[:, out.shape[1] // 2:].float()
    return torch.exp(c["log_lo"] + (v + 1) / 2 * (c["log_hi"] - c["log_lo"]))


@register("ddpm", title="DDPM ancestral sampling", paper="Ho, Jain & Abbeel 2020; Nichol & "
          "Dhariwal 2021", processes=("discrete",), stochastic=True, order=1, nfe_per_step=1,
          quick={"steps": 5})
def sample_ddpm(model, x, process, *, steps=None, respacing=None, prediction: str = "eps",
                variance: str = "fixed_small", clip=None, seed=None, callback=None,
                progress=False):
    """DDPM ancestral sampling: x_{t-1} = mu~_t(x0^, x_t) + sigma_t z (MATH.md section 1).

    Args:
        model: ``model(x, t)`` with t the [B] step indices, or a ``Denoiser`` (guidance).
        x: x_T, [B, ...].
        process: the training ``DiscreteSchedule``.
        steps: respace to this many steps (uniform sections); or ``respacing`` ("ddimK",
            "10,15,20", positions). Default: every step.
        variance: "fixed_small" (beta~_t), "fixed_large" (beta_t) or "learned_range" (iDDPM: the
            model returns 2C channels, the second half v interpolates the log variances).
        clip: clamp x0^ to [-clip, clip] (1.0 for images in [-1, 1]).
        seed: int or one per sample: the noise stream's seed.
        callback: called as callback({"i", "t", "x", "x0"}) after each step.

    Returns:
        x_0, [B, ...].
    """
    run = start("ddpm", model, x, process, prediction=prediction, seed=seed, callback=callback,
                progress=progress)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if steps is not None and respacing is not None:
        raise ValueError("give steps or respacing, not both")
    spec = respacing if respacing is not None else steps
    full = spec is None or (isinstance(spec, int) and spec == len(run.process))
    sched = run.process if full else run.process.respace(spec)
    table = run.table(ddpm_table(sched, prediction, variance))
    times = run.times(sched.timesteps, sched)
    learned, den = variance == "learned_range", run.den
    n = len(sched)
    for k in run.steps(n):
        i = n - 1 - k
        c, t = table.row(i), run.t(times, i)
        grad = den.classifier_grad(x, t)
        out, uncond = den.pair(x, t, keep_variance=learned)
        x, x0 = sample_step(
            x, out, StepCoefs(cx=c["cx"], co=c["co"], m0=c["m0"], mx=c["mx"], s=c["s"]),
            clip=clip, learned_var=(c["log_lo"], c["log_hi"]) if learned else None,
            return_x0=True, **den.fused_cfg(uncond), **run.draw())
        if grad is not None:          # mu^ = mu + Sigma g
            x = (x + learned_variance(out, c) * grad).to(x.dtype) if learned else \
                lincomb([x, grad.to(x.dtype)], [1.0, c["var"]])
        run.report(k, t, x, x0=x0)
    return x
