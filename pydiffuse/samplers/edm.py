"""EDM's Euler and Heun samplers with churn (Karras et al. 2022, Algorithms 1-2), DPM-Solver-2
and DPM-Solver++(2M) (Lu et al. 2022) on the noise levels sigma = std / a of any process, and
the sigma view every such sampler shares: the grid (Karras, or an explicit ``sigmas=``), the
levels at the process's times, the ancestral split of a step.

Every process here has marginals x = a (x0 + sigma eps): the samplers step in the VE coordinates
x_ve = x / a of the papers, written in the process's native coordinates, and call the model with
the process's own time ``process.sigma_to_time(sigma)``.
"""

import math
import numbers

import torch

from ..ops import lincomb
from ..predictions import x0_coefs
from ..schedules import karras_sigmas
from ._common import guided_pair, model_marginal, start
from .ode import euler_heun_loop, output_terms
from .registry import PROCESS_KINDS, register

EDM_SIGMA_RANGE = (0.002, 80.0)       # NVlabs/edm generate.py's sigma_min, sigma_max defaults


def check_sigmas(sigmas) -> torch.Tensor:
    """An explicit ``sigmas=`` grid as host float64 [n + 1]: 1-D, positive and strictly
    decreasing, ending in 0 (k-diffusion's convention; ``schedules.append_zero``)."""
    grid = (sigmas.detach() if isinstance(sigmas, torch.Tensor)
            else torch.tensor(sigmas, dtype=torch.float64))   # numbers: not torch's float32
    if grid.ndim != 1 or len(grid) < 2 or grid.is_complex():
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 levels ending in 0, got shape "
                         f"{tuple(grid.shape)}")
    grid = grid.to("cpu", torch.float64)
    if not bool(torch.isfinite(grid).all()) or grid[-1] != 0:
        raise ValueError("sigmas must be finite and end in 0 (k-diffusion's convention: "
                         "schedules.append_zero(levels))")
    if not bool((grid[:-1] > 0).all() and (grid.diff() < 0).all()):
        raise ValueError("sigmas must be strictly decreasing and positive before the final 0")
    return grid


def at_sigmas(process, sigmas):
    """The model time t = ``process.sigma_to_time(sigma)`` of each level (host float64), and
    sigma and a recomputed from the marginal at t (``model_marginal``) so they agree with the
    time the model sees (a discrete schedule rounds to the nearest step index).

    Returns:
        (times [n], sigmas [n], scales a [n]).
    """
    times = process.sigma_to_time(sigmas)
    a, std = model_marginal(process, times)
    return times, std / a, a


def edm_sigmas(process, steps=None, sigma_min=None, sigma_max=None, rho=None, sigmas=None,
               spacing=None):
    """The noise levels a sigma-view run steps through, host float64.

    sigma_i = karras_sigmas(steps, sigma_min, sigma_max, rho) (Karras et al. eq. 5; default 50
    steps, rho 7, range NVlabs/edm's [max(0.002, model min), min(80, model max)] of
    ``process.sigma_range``, ``EDM_SIGMA_RANGE``: sigma > 80 carries no information for data in
    [-1, 1] and a grid up to the cosine chain's 20291 wastes most of a short run; explicit values
    are taken as given), or ``spacing(steps, sigma_min, sigma_max, rho)``
    (rho as given, None by default) instead, or the explicit grid ``sigmas`` (ending in 0,
    ``check_sigmas``); then ``at_sigmas``. A discrete schedule quantizes t_i to the nearest step
    index, and steps quantized to the same index are merged (fewer steps). sigma_n = 0 with
    a_n = 1 (the data) is appended.

    Returns:
        (times [n], sigmas [n + 1], scales a [n + 1]).
    """
    if sigmas is not None:
        given = {k: v for k, v in dict(steps=steps, sigma_min=sigma_min, sigma_max=sigma_max,
                                       rho=rho).items() if v is not None}
        if given:
            raise ValueError(f"give sigmas= or the Karras grid's {', '.join(given)}, not both")
        levels = check_sigmas(sigmas)[:-1]
    else:
        steps, given_rho = 50 if steps is None else steps, rho
        rho = 7.0 if rho is None else rho
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        lo = max(EDM_SIGMA_RANGE[0], min(process.sigma_range)) if sigma_min is None \
            else float(sigma_min)
        hi = min(EDM_SIGMA_RANGE[1], max(process.sigma_range)) if sigma_max is None \
            else float(sigma_max)
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {lo}, {hi}")
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        levels = (karras_sigmas(int(steps), lo, hi, rho) if spacing is None
                  else spacing(int(steps), lo, hi, given_rho))
    times = process.sigma_to_time(levels)
    if process.kind == "discrete":
        times = torch.unique_consecutive(times)
    a, std = model_marginal(process, times)
    zero = torch.zeros(1, dtype=torch.float64)
    return times, torch.cat([std / a, zero]), torch.cat([a, zero + 1])


def ancestral_step(sigma, sigma_next, eta):
    """The ancestral split of a step (k-diffusion's get_ancestral_step), host float64:
    sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),
    sigma_down = sqrt(sigma'^2 - sigma_up^2); eta = 0 gives (sigma', 0)."""
    up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (1 - (sigma_next / sigma) ** 2))
                       .clamp(min=0).sqrt())
    return (sigma_next ** 2 - up ** 2).clamp(min=0).sqrt(), up


def check_eta(eta, s_noise):
    if not (eta >= 0 and s_noise >= 0 and math.isfinite(eta) and math.isfinite(s_noise)):
        raise ValueError(f"need finite eta >= 0 and s_noise >= 0, got eta={eta}, "
                         f"s_noise={s_noise}")


def edm_columns(prediction: str, sigma, a, sigma_next, a_next) -> dict:
    """The Euler step from sigma to sigma' (Karras et al. Alg. 1, line 5) in native coordinates:

    x_ve' = x_ve + (sigma' - sigma) (x_ve - D) / sigma  =>  x' = mx x + m0 D,
    mx = a' sigma' / (a sigma), m0 = a' (1 - sigma' / sigma), D = x0 = cx x + co out.
    """
    cx, co = x0_coefs(prediction, a, a * sigma)
    ratio = sigma_next / sigma
    return {"cx": cx, "co": co, "mx": a_next * ratio / a, "m0": a_next * (1 - ratio), "a": a,
            "std": a * sigma}


def start_grid(run, x, steps, sigma_min, sigma_max, rho, sigmas=None, spacing=None):
    """The grid (``edm_sigmas``), and x_T rescaled as pure noise to the grid's first level: x *
    a_0 sigma_0 / prior_std (exact when sigma_0 is the prior's; an approximation, of order
    data scale / sigma_0, when sigma_max is overridden)."""
    times, sig, a = edm_sigmas(run.process, steps, sigma_min, sigma_max, rho, sigmas, spacing)
    factor = float(a[0] * sig[0]) / run.process.prior_std
    return times, sig, a, x if math.isclose(factor, 1, rel_tol=1e-9) else lincomb([x], [factor])


def _check_churn(churn, s_tmin, s_tmax, s_noise):
    if not (churn >= 0 and s_noise >= 0 and 0 <= s_tmin <= s_tmax):
        raise ValueError(f"need churn >= 0, s_noise >= 0 and 0 <= s_tmin <= s_tmax; got "
                         f"churn={churn}, s_noise={s_noise}, s_tmin={s_tmin}, s_tmax={s_tmax}")


def _edm_loop(run, method, x, grid, churn, s_tmin, s_tmax, s_noise, prediction):
    """Karras et al. Algorithm 2 with churn; method "euler" (without its second-order
    correction), "heun" (Algorithm 2) or "dpm_2" (its correction at the midpoint)."""
    times, sig, a, x = start_grid(run, x, *grid)
    process, n = run.process, len(times)
    # churn: gamma_i = min(S_churn / N, sqrt 2 - 1) on [s_tmin, s_tmax], sigma^_i = sigma_i (1 +
    # gamma_i) (quantized, then recomputed), x^ = x + sqrt(sigma^2 - sigma_i^2) s_noise z in VE
    inside = (sig[:-1] >= s_tmin) & (sig[:-1] <= s_tmax)
    gamma = inside.to(sig.dtype) * min(churn / n, math.sqrt(2) - 1)   # (float64, as the grid)
    t_hat = torch.where(gamma > 0, process.sigma_to_time(sig[:-1] * (1 + gamma)), times)
    a_hat, std_hat = model_marginal(process, t_hat)
    s_hat = std_hat / a_hat
    last = sig[1:] == 0
    h = sig[1:] - s_hat
    if method == "dpm_2":
        # the Euler step to sigma_mid = sqrt(sigma^ sigma') (geometric mean), then in VE
        # x_ve' = x_ve + (sigma' - sigma^) (x_mid - D(x_mid, sigma_mid)) / sigma_mid
        times2, s2, a2 = at_sigmas(process, torch.where(last, s_hat, (s_hat * sig[1:]).sqrt()))
        cols = edm_columns(prediction, s_hat, a_hat, torch.where(last, 0.0, s2),
                           torch.where(last, 1.0, a2))
        cx2, co2 = x0_coefs(prediction, a2, a2 * s2)
        cols.update(hx=a[1:] / a_hat, hd=torch.zeros_like(h), he=a[1:] * h / s2 * (1 / a2 - cx2),
                    ho=-a[1:] * h / s2 * co2)
    else:
        # Heun's correction at sigma_{i+1} > 0, in VE: x_ve' = x_ve + (sigma' - sigma^) (d + d')/2
        cols = edm_columns(prediction, s_hat, a_hat, sig[1:], a[1:])
        times2, a2, s2 = torch.cat([times[1:], times[-1:]]), a[1:], torch.where(last, 1.0, sig[1:])
        cx2, co2 = x0_coefs(prediction, a2, a2 * s2)
        cols.update(hx=a2 / a_hat * (1 + h / (2 * s_hat)), hd=-a2 * h / (2 * s_hat),
                    he=h / (2 * s2) * (1 - a2 * cx2), ho=-a2 * h / (2 * s2) * co2)
    cols.update(a2=a2, std2=a2 * s2, co2=co2, pre_mx=a_hat / a[:-1],
                pre_s=a_hat * (s_hat ** 2 - sig[:-1] ** 2).clamp(min=0).sqrt() * s_noise)
    pre = ((cols["pre_mx"] != 1) | (cols["pre_s"] > 0)).tolist()
    if not bool((cols["pre_s"] > 0).any()):
        run.noise = None                  # no churn noise on this grid: no draws
    dev_times = (run.times(t_hat), run.times(times2))   # the last step has no second call
    return euler_heun_loop(run, x, run.table(cols), dev_times,
                           (~last & (method != "euler")).tolist(), pre=pre)


@register("euler", title="EDM Euler with churn", paper="Karras et al. 2022",
          processes=PROCESS_KINDS, stochastic="churn > 0", order=1, nfe_per_step=1,
          sigma_view=True, quick={"steps": 4})
def sample_euler(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                 sigmas=None, churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0, prediction: str = "eps",
                 seed=None, callback=None, progress=False):
    """EDM's Euler sampler with churn (Karras et al. 2022, Alg. 2 without the correction;
    k-diffusion's sample_euler):

    sigma^ = sigma_i (1 + gamma_i), x^ = x + sqrt(sigma^2 - sigma_i^2) s_noise z,
    x_{i+1} = x^ + (sigma_{i+1} - sigma^) (x^ - D(x^, sigma^)) / sigma^     (VE coordinates)

    on the grid of ``edm_sigmas``, one ``sample_step`` per step (plus one for the churn noise).
    gamma_i = min(churn / N, sqrt(2) - 1) for sigma_i in [s_tmin, s_tmax], else 0; churn = 0 is
    the deterministic probability-flow ODE in sigma.

    Args:
        model: ``model(x, t)`` with t the process's [B] time (step index, t, or sigma), or a
            ``Denoiser``.
        x: x_T [B, ...] at the prior (prior_std * z); process: any (discrete, SDE, noise ladder).
        steps: grid size N (model calls; a discrete schedule may merge a few; default 50).
        sigma_min, sigma_max, rho: the Karras grid (default: the process's ``sigma_range``
            clamped to NVlabs/edm's [0.002, 80], 7).
        sigmas: an explicit grid instead, [N + 1] decreasing to 0 (``check_sigmas``), e.g.
            ``schedules.append_zero`` of ``karras_sigmas``, ``exponential_sigmas``,
            ``polyexponential_sigmas`` or ``schedule_sigmas``.
        churn, s_tmin, s_tmax, s_noise: S_churn, S_tmin, S_tmax, S_noise of Algorithm 2.
        seed: the noise stream's seed (churn only).
        callback: callback({"i", "t", "x", "x0"}) after each step.

    Returns:
        x_0 [B, ...].
    """
    _check_churn(churn, s_tmin, s_tmax, s_noise)
    run = start("euler", model, x, process, prediction=prediction, seed=seed,
                noise=churn > 0 and s_noise > 0, callback=callback, progress=progress)
    return _edm_loop(run, "euler", x, (steps, sigma_min, sigma_max, rho, sigmas), churn, s_tmin,
                     s_tmax, s_noise, prediction)


@register("heun", title="EDM Heun with churn", paper="Karras et al. 2022",
          processes=PROCESS_KINDS, stochastic="churn > 0", order=2, nfe_per_step=2,
          sigma_view=True, quick={"steps": 4})
def sample_heun(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                sigmas=None, churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0, prediction: str = "eps",
                seed=None, callback=None, progress=False):
    """EDM's Heun sampler (Karras et al. 2022, Algorithms 1-2; k-diffusion's sample_heun):
    ``sample_euler``'s step, then

    x_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2,  d = (x^ - D^) / sigma^,
    d' = (x_e - D(x_e, sigma_{i+1})) / sigma_{i+1}, x_e the Euler step's result,

    skipped on the last step to sigma = 0: 2N - 1 model calls. Native coordinates: the Euler
    ``sample_step`` (returning D^), then one ``lincomb`` of [x^, D^, x_e, out'] (D' folded in).
    Arguments as ``sample_euler``.
    """
    _check_churn(churn, s_tmin, s_tmax, s_noise)
    run = start("heun", model, x, process, prediction=prediction, seed=seed,
                noise=churn > 0 and s_noise > 0, callback=callback, progress=progress)
    return _edm_loop(run, "heun", x, (steps, sigma_min, sigma_max, rho, sigmas), churn, s_tmin,
                     s_tmax, s_noise, prediction)


@register("dpm_2", title="DPM-Solver-2 in sigma, with churn",
          paper="Lu et al. 2022; Karras et al. 2022", processes=PROCESS_KINDS,
          stochastic="churn > 0", order=2, nfe_per_step=2, sigma_view=True, quick={"steps": 4})
def sample_dpm_2(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                 sigmas=None, churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0, prediction: str = "eps",
                 seed=None, callback=None, progress=False):
    """DPM-Solver-2's midpoint step (Lu et al. 2022) in Karras et al.'s Algorithm 2
    (k-diffusion's sample_dpm_2): ``sample_euler``'s churn, then in VE coordinates

    sigma_mid = sqrt(sigma^ sigma_{i+1}),  x_mid = x^ + (sigma_mid - sigma^) d,
    x_{i+1} = x^ + (sigma_{i+1} - sigma^) (x_mid - D(x_mid, sigma_mid)) / sigma_mid,

    an Euler step to sigma = 0 on the last step: 2N - 1 model calls; the Euler ``sample_step``
    to sigma_mid, then one ``lincomb`` of [x^, x_mid, out_mid]. Arguments as ``sample_euler``.
    """
    _check_churn(churn, s_tmin, s_tmax, s_noise)
    run = start("dpm_2", model, x, process, prediction=prediction, seed=seed,
                noise=churn > 0 and s_noise > 0, callback=callback, progress=progress)
    return _edm_loop(run, "dpm_2", x, (steps, sigma_min, sigma_max, rho, sigmas), churn, s_tmin,
                     s_tmax, s_noise, prediction)


def dpmpp_2m_columns(prediction: str, sig, a) -> dict:
    """DPM-Solver++(2M) per step as one lincomb of [x, out, x_prev, out_prev]:

    lambda = -log sigma, h = lambda' - lambda, k = h / (2 h_prev) (= 1/(2r); 0 on the first step
    and the step to sigma = 0), D_c = (1 + k) D - k D_prev,
    x_ve' = (sigma' / sigma) x_ve - expm1(-h) D_c, i.e. edm_columns' step with D_c for D:
    x' = mx x + m0 (1 + k) (cx x + co out) - m0 k (cx_prev x_prev + co_prev out_prev).
    """
    c = edm_columns(prediction, sig[:-1], a[:-1], sig[1:], a[1:])
    lam = -sig.log()
    h = lam[1:] - lam[:-1]
    k = torch.zeros_like(h)
    k[1:] = torch.where(sig[2:] > 0, h[1:] / (2 * h[:-1]), 0.0)
    m, cx_prev, co_prev = c["m0"] * (1 + k), c["cx"].roll(1), c["co"].roll(1)
    return dict(c, px=c["mx"] + m * c["cx"], po=m * c["co"], qx=-c["m0"] * k * cx_prev,
                qo=-c["m0"] * k * co_prev, k=k)


@register("dpmpp_2m", title="DPM-Solver++(2M)", paper="Lu et al. 2022", processes=PROCESS_KINDS,
          stochastic=False, order=2, nfe_per_step=1, sigma_view=True, quick={"steps": 4})
def sample_dpmpp_2m(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                    sigmas=None, prediction: str = "eps", seed=None, callback=None,
                    progress=False):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2; k-diffusion's sample_dpmpp_2m):
    the multistep second-order solver of the data-prediction ODE on the ``edm_sigmas`` grid,

    x_ve' = (sigma' / sigma) x_ve - expm1(-h) ((1 + 1/(2r)) D - 1/(2r) D_prev),
    h = log(sigma / sigma'), r = h_prev / h (first order on the first step and to sigma = 0).

    One pass a step: the step's ``lincomb`` reads x, the model output and the previous step's x
    and output (D and D_prev folded into the coefficients) and writes x'. N model calls.

    Args:
        as ``sample_euler`` (no churn); seed is unused (deterministic).
        callback: callback({"i", "t", "x", "x0"}) after each step (x0 costs one more pass).

    Returns:
        x_0 [B, ...].
    """
    run = start("dpmpp_2m", model, x, process, prediction=prediction, noise=False,
                callback=callback, progress=progress)
    times, sig, a, x = start_grid(run, x, steps, sigma_min, sigma_max, rho, sigmas)
    cols = dpmpp_2m_columns(prediction, sig, a)
    second = (cols.pop("k") > 0).tolist()
    table, dev_times, den = run.table(cols), run.times(times), run.den
    prev = None
    for i in run.steps(len(table)):
        c, t = table.row(i), run.t(dev_times, i)
        out, uncond = guided_pair(den, x, t, c["a"], c["std"], c["co"])
        # x' = px x + po D-part (+ qx x_prev + qo D_prev-part): D_c = (1 + k) D - k D_prev
        terms, coefs = output_terms(den, out, uncond, c["po"])
        terms, coefs = [x, *terms], [c["px"], *coefs]
        if second[i]:
            prev_terms, prev_coefs = output_terms(den, prev[1], prev[2], c["qo"])
            terms, coefs = terms + [prev[0], *prev_terms], coefs + [c["qx"], *prev_coefs]
        prev, x = (x, out, uncond), lincomb(terms, coefs)
        if callback is not None:
            terms, coefs = output_terms(den, out, uncond, c["co"])
            run.report(i, t, x, x0=lincomb([prev[0], *terms], [c["cx"], *coefs]))
    return x
