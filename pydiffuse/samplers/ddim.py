"""DDIM sampling and its deterministic encoding (Song, Meng & Ermon 2021; MATH.md section 2)."""

from dataclasses import replace

import torch

from ..ops import StepCoefs, lincomb, sample_step
from ..ops._checks import check_number
from ..predictions import eps_coefs, x0_coefs
from ._common import start
from .registry import register


def ddim_schedule(process, steps: int, spacing: str = "uniform", steps_offset: int = 0,
                  set_alpha_to_one: bool = True):
    """The respaced schedule a DDIM run steps through: alpha_bar kept at the chosen positions,
    alpha_bar_prev of the first = 1 (or alpha_bar_0 with set_alpha_to_one=False)."""
    positions = process.subsequence(steps, spacing, steps_offset)
    final = 1.0 if set_alpha_to_one else float(process.alphas_cumprod[0])
    spaced = process.respace(positions)
    if final == 1.0:
        return spaced
    return type(spaced)(1 - spaced.alphas_cumprod / torch.cat(
        [torch.tensor([final], dtype=torch.float64), spaced.alphas_cumprod[:-1]]),
        spaced.timesteps, final)


def ddim_table(sched, prediction: str, eta: float) -> dict:
    """x0 = cx x + co out; eps = ex x + e0 x0;
    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z,
    s = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)."""
    ab, ab_prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    a, sd = ab.sqrt(), (1 - ab).sqrt()
    cx, co = x0_coefs(prediction, a, sd)
    ex, e0 = eps_coefs(a, sd)
    s = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
    return {"cx": cx, "co": co, "ex": ex, "e0": e0, "m0": ab_prev.sqrt(),
            "me": (1 - ab_prev - s * s).clamp(min=0).sqrt(), "s": s, "shift": sd * sd / a}


def condition_score(den, x, t, out, c, clip):
    """Classifier guidance as guided-diffusion's ddim_sample applies it (gaussian_diffusion.py,
    p_mean_variance then condition_score): x0 = clip(cx x + co out), its eps shifted by
    -sigma g (g = ``den.classifier_grad``), x0 recomputed from that eps and not clipped again:
    x0^ = x0 + sigma^2 / a g (returned)."""
    x0 = sample_step(x, out, StepCoefs(cx=c["cx"], co=c["co"], m0=1.0), clip=clip)
    return lincomb([x0, den.classifier_grad(x, t).to(x0.dtype)], [1.0, c["shift"]])


@register("ddim", title="DDIM", paper="Song, Meng & Ermon 2021", processes=("discrete",),
          stochastic="eta > 0", order=1, nfe_per_step=1, quick={"steps": 5})
def sample_ddim(model, x, process, *, steps: int = 50, eta: float = 0.0, prediction: str = "eps",
                clip=None, spacing: str = "uniform", steps_offset: int = 0,
                set_alpha_to_one: bool = True, seed=None, callback=None, progress=False):
    """DDIM: x_{t-1} = sqrt(ab_{t-1}) x0^ + sqrt(1 - ab_{t-1} - s_t^2) eps^ + s_t z.

    eta = 0 is deterministic (an ODE solver); eta = 1 over every step is DDPM's fixed-small
    sampler. With ``clip``, eps^ is recomputed from the clipped x0^. Classifier guidance (a
    ``Denoiser`` with a classifier) uses eps^ = eps - sqrt(1 - ab_t) g in guided-diffusion's
    order (``condition_score``: the eps of the clipped x0, and x0^ from eps^ unclipped).

    Args:
        model: ``model(x, t)`` (t: [B] step indices) or a ``Denoiser``.
        x: x_T [B, ...]; process: the training ``DiscreteSchedule``.
        steps: K model calls; spacing: "uniform", "ddim_uniform" (ermongroup/ddim's, K or
            more calls), "quad", "leading", "trailing", "linspace" (``steps_offset``,
            ``set_alpha_to_one`` as diffusers).
        seed: the noise stream's seed (used when eta > 0).
        callback: callback({"i", "t", "x", "x0"}) after each step.

    Returns:
        x_0 [B, ...].
    """
    check_number(eta, "eta", minimum=0)
    run = start("ddim", model, x, process, prediction=prediction, seed=seed, noise=eta > 0,
                callback=callback, progress=progress)
    sched = ddim_schedule(run.process, steps, spacing, steps_offset, set_alpha_to_one)
    table = run.table(ddim_table(sched, prediction, eta))
    times, den = run.times(sched.timesteps, sched), run.den
    n = len(sched)
    for k in run.steps(n):
        i = n - 1 - k
        c, t = table.row(i), run.t(times, i)
        out, uncond = den.pair(x, t)
        coefs = StepCoefs(cx=c["cx"], co=c["co"], ex=c["ex"], e0=c["e0"], m0=c["m0"],
                          me=c["me"], s=c["s"] if run.noise is not None else 0.0)
        if den.classifier is None:
            x, x0 = sample_step(x, out, coefs, clip=clip, return_x0=True,
                                **den.fused_cfg(uncond), **run.draw())
        else:                               # the guided x0^ read as an x0, not clipped again
            x0 = condition_score(den, x, t, den.combine(out, uncond), c, clip)
            x = sample_step(x, x0, replace(coefs, cx=0.0, co=1.0), **run.draw())
        run.report(k, t, x, x0=x0)
    return x


def ddim_invert(model, x0, process, *, steps: int = 50, prediction: str = "eps",
                spacing: str = "uniform", steps_offset: int = 0, set_alpha_to_one: bool = True,
                callback=None, progress=False):
    """Deterministic DDIM encoding x_0 -> x_T, the eta = 0 sampler run forwards:

    eps^ = the model's eps at (x, t_{i+1});  x_{i+1} = sqrt(ab_{i+1}) x0^ + sqrt(1 - ab_{i+1}) eps^,
    x0^ = (x_i - sqrt(1 - ab_i) eps^) / sqrt(ab_i) (ab = 1 before the first step, or alpha_bar_0
    with set_alpha_to_one=False, as diffusers' DDIMInverseScheduler).

    Args:
        x0: data [B, ...]; the other arguments as ``sample_ddim``.

    Returns:
        x_T [B, ...], which ``sample_ddim`` (eta = 0, same steps) maps back to about x0.
    """
    run = start("ddim_invert", model, x0, process, prediction=prediction, noise=False,
                callback=callback, progress=progress, kinds=("discrete",))
    sched = ddim_schedule(run.process, steps, spacing, steps_offset, set_alpha_to_one)
    if run.den.classifier is not None:
        raise ValueError("ddim_invert does not take classifier guidance")
    ab, ab_prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    a, sd, a_prev, sd_prev = ab.sqrt(), (1 - ab).sqrt(), ab_prev.sqrt(), (1 - ab_prev).sqrt()
    cx, co = x0_coefs(prediction, a, sd)
    ex, e0 = eps_coefs(a, sd)
    table = run.table({"cx": cx, "co": co, "ex": ex, "e0": e0, "mx": a / a_prev,
                       "me": sd - a * sd_prev / a_prev})
    times = run.times(sched.timesteps, sched)
    x = x0
    for i in run.steps(len(sched)):
        c, t = table.row(i), run.t(times, i)
        x = sample_step(x, run.den(x, t), StepCoefs(cx=c["cx"], co=c["co"], ex=c["ex"],
                                                    e0=c["e0"], mx=c["mx"], me=c["me"]))
        run.report(i, t, x)
    return x

