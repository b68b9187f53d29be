"""DDPM ancestral sampling (Ho et al. 2020; Nichol & Dhariwal 2021 for learned variances and
respacing; Dhariwal & Nichol 2021 for classifier guidance)."""

import torch

from ..ops import StepCoefs, lincomb, sample_step
from ..predictions import check_prediction, x0_coefs
from ..schedules import as_process
from ._common import (NoiseStream, StepTable, as_denoiser, batch_time, check_process_kind,
                      check_x, model_times, steps_bar)

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def ddpm_table(process, prediction: str, variance: str) -> dict:
    """Per-position columns of the ancestral step on a (respaced) schedule:

    x0 = cx x + co out;  x_{t-1} = c0 x0 + ct x_t + std z,
    c0 = sqrt(ab_prev) beta_t / (1 - ab_t), ct = sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t),
    std^2 = beta~_t ("fixed_small"), beta_t ("fixed_large"), or the learned range between
    log beta~_t (clipped) and log beta_t; std = 0 at the last step.
    """
    post = process.posterior()
    a, s = process.alphas_cumprod.sqrt(), (1 - process.alphas_cumprod).sqrt()
    cx, co = x0_coefs(prediction, a, s)
    if variance == "fixed_small":
        var = post["variance"]
    elif variance == "fixed_large":
        var = torch.cat([post["variance"][1:2], process.betas[1:]]) if len(process) > 1 \
            else process.betas.clone()
    else:
        var = torch.zeros_like(process.betas)         # per element: learned_variance()
    std = 1.0 if variance == "learned_range" else var.sqrt()
    nonzero = (torch.arange(len(process)) > 0).to(torch.float64)
    return {"cx": cx, "co": co, "m0": post["coef_x0"], "mx": post["coef_xt"],
            "s": std * nonzero, "var": var, "log_lo": post["log_variance_clipped"],
            "log_hi": process.betas.log(), "a": a, "sigma": s}


def learned_variance(out, c) -> torch.Tensor:
    """Sigma = exp(f log beta_t + (1 - f) log beta~_t), f = (v + 1) / 2, v = out's second half."""
    v = out[:, out.shape[1] // 2:].float()
    return torch.exp(c["log_lo"] + (v + 1) / 2 * (c["log_hi"] - c["log_lo"]))


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
    check_x(x)
    process = as_process(process)
    check_process_kind(process, ("discrete",), "ddpm")
    check_prediction(prediction)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if steps is not None and respacing is not None:
        raise ValueError("give steps or respacing, not both")
    spec = respacing if respacing is not None else steps
    full = spec is None or (isinstance(spec, int) and spec == len(process))
    sched = process if full else process.respace(spec)
    den = as_denoiser(model)
    noise = NoiseStream(seed, len(x), x.device)
    cols = ddpm_table(sched, prediction, variance)
    table = StepTable(cols, x.device)
    times = model_times(sched, sched.timesteps, x.device)
    learned = variance == "learned_range"
    for k in steps_bar(len(sched), progress, "ddpm"):
        i = len(sched) - 1 - k
        c, t = table.row(i), batch_time(times, i, len(x))
        grad = den.classifier_grad(x, t)
        out, uncond = den.pair(x, t, keep_variance=learned)
        x, x0 = sample_step(
            x, out, StepCoefs(cx=c["cx"], co=c["co"], m0=c["m0"], mx=c["mx"], s=c["s"]),
            clip=clip, learned_var=(c["log_lo"], c["log_hi"]) if learned else None,
            return_x0=True, **den.fused_cfg(uncond), **noise.take())
        if grad is not None:          # mu^ = mu + Sigma g
            x = (x + learned_variance(out, c) * grad).to(x.dtype) if learned else \
                lincomb([x, grad.to(x.dtype)], [1.0, c["var"]])
        if callback is not None:
            callback({"i": k, "t": t, "x": x, "x0": x0})
    return x
