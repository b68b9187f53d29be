"""Annealed Langevin dynamics over a noise ladder (NCSN: Song & Ermon 2019; NCSNv2: Song & Ermon
2020; MATH.md section 4)."""

import math
import numbers

from ..ops import StepCoefs, sample_step
from ..predictions import x0_coefs
from ._common import start
from .registry import register


def ald_table(sigmas, step_lr: float, prediction: str, sigma_scaled: bool) -> dict:
    """Per-level columns of the Langevin step written for ``sample_step``:

    x0 = cx x + co out = x + sigma_i^2 s (Tweedie, a = 1), so s = (x0 - x) / sigma_i^2 and
    x + alpha_i s + sqrt(2 alpha_i) z = (1 - m) x + m x0 + sqrt(2 alpha_i) z,
    m = alpha_i / sigma_i^2 = step_lr / sigma_L^2, alpha_i = step_lr sigma_i^2 / sigma_L^2.
    ``sigma_scaled`` (out = sigma s): co is divided by sigma_i.
    """
    cx, co = x0_coefs(prediction, 1.0 + 0 * sigmas, sigmas)
    if sigma_scaled:
        co = co / sigmas
    alpha = step_lr * sigmas ** 2 / sigmas[-1] ** 2
    m = alpha / sigmas ** 2
    return {"cx": cx, "co": co, "m0": m, "mx": 1 - m, "s": (2 * alpha).sqrt()}


@register("ald", title="annealed Langevin dynamics", paper="Song & Ermon 2019, 2020",
          processes=("ladder",), stochastic=True, order=None, nfe_per_step=1, quick={"steps": 1})
def sample_ald(model, x, process, *, steps: int = 100, step_lr: float = 2e-5,
               sigma_scaled: bool = False, denoise: bool = True, prediction: str = "score",
               seed=None, callback=None, progress=False):
    """Annealed Langevin dynamics (NCSN, Alg. 1; NCSNv2, Alg. 1): for each level i = 1..L,
    alpha_i = step_lr sigma_i^2 / sigma_L^2 and ``steps`` times

        x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z,

    then, with ``denoise`` (NCSNv2), x <- x + sigma_L^2 s(x, sigma_L) (Tweedie's x0, one more
    model call). Convention: this is the reference code's update (``langevin_step`` with
    step_size = alpha_i); the NCSN paper writes it x + (a_i/2) s + sqrt(a_i) z with a_i =
    2 alpha_i (MATH.md section 4), so the paper's epsilon is 2 ``step_lr`` (its reference code
    runs step_lr = 2e-5).

    Each Langevin step is one fused ``sample_step`` whatever the model predicts: the score is
    read through x0 = x + sigma^2 s, which absorbs an eps/x0/v output and NCSNv2's
    ``sigma_scaled`` network (technique 3: the model returns sigma s(x, sigma)) in its
    coefficients.

    Args:
        model: ``model(x, t)`` with t the [B] float32 noise level sigma_i, or a ``Denoiser``.
        x: the start [B, ...] (NCSNv2: x ~ N(0, sigma_1^2 I); NCSN: uniform).
        process: the ladder sigma_1 > ... > sigma_L (a ``NoiseLadder`` or decreasing sigmas).
        steps: Langevin steps per level (NCSN's T).
        step_lr: epsilon of alpha_i = epsilon sigma_i^2 / sigma_L^2 (NCSN: 2e-5; NCSNv2's
            technique 4: ``pydiffuse.schedules.ald_step_size``).
        sigma_scaled: the model returns sigma s(x, sigma) (prediction "score" only).
        denoise: add the final denoising step.
        prediction: what the model returns: "score", "eps", "x0" or "v" (x = x0 + sigma eps).
        seed: the noise stream's seed (int or one per sample).
        callback: callback({"i", "t", "x", "x0"}) after each level's last step.

    Returns:
        samples [B, ...].
    """
    run = start("ald", model, x, process, prediction=prediction, seed=seed, classifier=False,
                callback=callback, progress=progress, hint=" (sigmas, e.g. geometric_sigmas(...))")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps (Langevin steps per level) must be an int >= 1, got {steps!r}")
    sigmas = run.process.sigmas
    limit = 2 * float(sigmas[-1]) ** 2
    if not (math.isfinite(step_lr) and 0 < step_lr < limit):
        raise ValueError(f"step_lr must lie in (0, 2 sigma_L^2 = {limit:.4g}); the chain diverges "
                         f"beyond, got {step_lr}")
    if sigma_scaled and prediction != "score":
        raise ValueError("sigma_scaled=True means the model returns sigma * score: it needs "
                         f"prediction='score', got {prediction!r}")
    table = run.table(ald_table(sigmas, step_lr, prediction, sigma_scaled))
    times, den = run.times(sigmas), run.den
    for i in run.steps(len(sigmas)):
        c, t = table.row(i), run.t(times, i)
        coefs = StepCoefs(cx=c["cx"], co=c["co"], m0=c["m0"], mx=c["mx"], s=c["s"])
        for j in range(steps):            # x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z
            out, uncond = den.pair(x, t)
            last = j == steps - 1 and callback is not None
            x = sample_step(x, out, coefs, return_x0=last, **den.fused_cfg(uncond), **run.draw())
            if last:
                x, x0 = x
                run.report(i, t, x, x0=x0)
    if denoise:                           # x <- x + sigma_L^2 s(x, sigma_L)
        out, uncond = den.pair(x, t)
        x = sample_step(x, out, StepCoefs(cx=c["cx"], co=c["co"], m0=1.0),
                        **den.fused_cfg(uncond))
    return x
