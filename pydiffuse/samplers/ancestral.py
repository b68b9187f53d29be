"""k-diffusion's ancestral and SDE single-step samplers on the noise levels sigma = std / a of
any process: Euler ancestral, DPM-Solver-2 ancestral, DPM-Solver++(2S) ancestral and
DPM-Solver++ SDE (Lu et al. 2022; Crowson's k-diffusion).

Each step is an ancestral split of sigma -> sigma' (``ancestral_step``: down to sigma_down,
then sigma_up s_noise z) written in VE coordinates x_ve = x / a and run in the process's native
ones by ``euler_heun_loop``: the model's ``sample_step`` (with its noise), and for the
two-stage methods one ``lincomb`` of [x, x0, x_2, out_2, z]. z comes from the noise stream or a
user's ``noise_sampler(sigma, sigma_next)``.
"""

import torch

from ..predictions import x0_coefs
from ._common import StepNoise, start
from .edm import ancestral_step, at_sigmas, check_eta, edm_columns, start_grid
from .ode import euler_heun_loop
from .registry import PROCESS_KINDS, register


def _pairs(sig, draws) -> list:
    """(sigma_i, sigma_{i+1}) of the steps that draw (host booleans), None elsewhere."""
    return [(sig[i], sig[i + 1]) if d else None for i, d in enumerate(draws.tolist())]


def _run(name, model, x, process, grid, eta, s_noise, noise_sampler, prediction, seed,
         callback, progress, columns):
    """The ancestral samplers' shared body: checks, the grid, ``columns(process, prediction,
    sig, a)`` -> (table columns, second-stage times or None, second-stage steps, noise pairs
    per stage), the loop."""
    check_eta(eta, s_noise)
    run = start(name, model, x, process, prediction=prediction, seed=seed, callback=callback,
                noise=eta > 0 and s_noise > 0 and noise_sampler is None, progress=progress)
    times, sig, a, x = start_grid(run, x, *grid)
    cols, times2, second, at = columns(run.process, prediction, sig, a)
    noise = StepNoise(run, noise_sampler, *at)
    times2 = times if times2 is None else times2        # None: no second stage
    return euler_heun_loop(run, x, run.table(cols), (run.times(times), run.times(times2)),
                           second.tolist(), noise=noise)


def euler_ancestral_columns(prediction, sig, a, eta, s_noise):
    """x_ve' = x_ve + (sigma_down - sigma) (x_ve - D) / sigma + sigma_up s_noise z."""
    down, up = ancestral_step(sig[:-1], sig[1:], eta)
    cols = edm_columns(prediction, sig[:-1], a[:-1], down, a[1:])
    cols["s"] = a[1:] * up * s_noise
    return cols, _pairs(sig, cols["s"] > 0)


@register("euler_ancestral", title="Euler ancestral", paper="Ho et al. 2020; k-diffusion",
          processes=PROCESS_KINDS, stochastic="eta > 0", order=1, nfe_per_step=1,
          sigma_view=True, quick={"steps": 4})
def sample_euler_ancestral(model, x, process, *, steps=None, sigma_min=None, sigma_max=None,
                           rho=None, sigmas=None, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler=None, prediction: str = "eps", seed=None,
                           callback=None, progress=False):
    """Ancestral sampling with Euler steps (k-diffusion's sample_euler_ancestral; DDPM's
    ancestral step for eta = 1, Euler for eta = 0), in VE coordinates:

    sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),
    sigma_down = sqrt(sigma'^2 - sigma_up^2),
    x' = x + (sigma_down - sigma) (x - D(x, sigma)) / sigma + sigma_up s_noise z.

    One ``sample_step`` a step, its noise included.

    Args:
        model, x, process, steps, sigma_min, sigma_max, rho, sigmas: as ``sample_euler``.
        eta: the ancestral noise's scale (0: deterministic); s_noise: z's scale.
        noise_sampler: ``noise_sampler(sigma, sigma_next)`` -> z like x, instead of the noise
            stream of ``seed``.
        callback: callback({"i", "t", "x", "x0"}) after each step.

    Returns:
        x_0 [B, ...].
    """
    def columns(process, prediction, sig, a):
        cols, at = euler_ancestral_columns(prediction, sig, a, eta, s_noise)
        return cols, None, torch.zeros(len(at), dtype=torch.bool), [at]

    return _run("euler_ancestral", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas),
                eta, s_noise, noise_sampler, prediction, seed, callback, progress, columns)


def midpoint_ancestral_columns(process, prediction, sig, a, eta, s_noise, exponential):
    """The two-stage ancestral step through sigma_mid = sqrt(sigma sigma_down): the Euler step
    to sigma_mid (x_2 = (sigma_mid / sigma) x_ve + (1 - sigma_mid / sigma) D), then in VE

    DPM-Solver-2:       x' = x_ve + (sigma_down - sigma) (x_2 - D_2) / sigma_mid + sigma_up z
    DPM-Solver++(2S):   x' = (sigma_down / sigma) x_ve + (1 - sigma_down / sigma) D_2 + sigma_up z
    (``exponential``), D_2 = D(x_2, sigma_mid); ``euler_ancestral_columns`` where
    sigma_down = 0.
    """
    cols, _ = euler_ancestral_columns(prediction, sig, a, eta, s_noise)
    down, up = ancestral_step(sig[:-1], sig[1:], eta)
    second = down > 0
    times2, s2, a2 = at_sigmas(process, torch.where(second, (sig[:-1] * down).sqrt(), sig[:-1]))
    mid = edm_columns(prediction, sig[:-1], a[:-1], s2, a2)
    cols = {k: torch.where(second, mid[k], v) if k in mid else v for k, v in cols.items()}
    cx2, co2 = x0_coefs(prediction, a2, a2 * s2)
    a1, ratio = a[1:], down / sig[:-1]
    if exponential:
        two = dict(hx=a1 * ratio / a[:-1], he=a1 * (1 - ratio) * cx2, ho=a1 * (1 - ratio) * co2)
    else:
        h = down - sig[:-1]
        two = dict(hx=a1 / a[:-1], he=a1 * h / s2 * (1 / a2 - cx2), ho=-a1 * h / s2 * co2)
    hz = cols["s"]
    cols.update(two, hd=torch.zeros_like(hz), hz=hz, s=torch.where(second, 0.0, hz), a2=a2,
                std2=a2 * s2, co2=co2)
    return (cols, times2, second,
            [_pairs(sig, ~second & (hz > 0)), _pairs(sig, second & (hz > 0))])


@register("dpm_2_ancestral", title="DPM-Solver-2 ancestral",
          paper="Lu et al. 2022; k-diffusion", processes=PROCESS_KINDS, stochastic="eta > 0",
          order=2, nfe_per_step=2, sigma_view=True, quick={"steps": 4})
def sample_dpm_2_ancestral(model, x, process, *, steps=None, sigma_min=None, sigma_max=None,
                           rho=None, sigmas=None, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler=None, prediction: str = "eps", seed=None,
                           callback=None, progress=False):
    """Ancestral sampling with DPM-Solver-2 steps (k-diffusion's sample_dpm_2_ancestral):
    ``sample_euler_ancestral``'s split, the step to sigma_down taken by ``sample_dpm_2``'s
    midpoint method (VE coordinates):

    sigma_mid = sqrt(sigma sigma_down),  x_2 = x + (sigma_mid - sigma) (x - D) / sigma,
    x' = x + (sigma_down - sigma) (x_2 - D(x_2, sigma_mid)) / sigma_mid + sigma_up s_noise z,

    an Euler step where sigma_down = 0 (and there the noise too, where k-diffusion adds none:
    only with eta > 1). Two model calls a step (one on the last); arguments as
    ``sample_euler_ancestral``.
    """
    def columns(process, prediction, sig, a):
        return midpoint_ancestral_columns(process, prediction, sig, a, eta, s_noise, False)

    return _run("dpm_2_ancestral", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas),
                eta, s_noise, noise_sampler, prediction, seed, callback, progress, columns)


@register("dpmpp_2s_ancestral", title="DPM-Solver++(2S) ancestral",
          paper="Lu et al. 2022 (DPM-Solver++); k-diffusion", processes=PROCESS_KINDS,
          stochastic="eta > 0", order=2, nfe_per_step=2, sigma_view=True, quick={"steps": 4})
def sample_dpmpp_2s_ancestral(model, x, process, *, steps=None, sigma_min=None, sigma_max=None,
                              rho=None, sigmas=None, eta: float = 1.0, s_noise: float = 1.0,
                              noise_sampler=None, prediction: str = "eps", seed=None,
                              callback=None, progress=False):
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022, "DPM-Solver++", Alg. 1
    with r = 1/2; k-diffusion's sample_dpmpp_2s_ancestral), in VE coordinates:

    sigma_mid = sqrt(sigma sigma_down),
    x_2 = (sigma_mid / sigma) x - expm1(-h / 2) D,  h = log(sigma / sigma_down),
    x' = (sigma_down / sigma) x - expm1(-h) D(x_2, sigma_mid) + sigma_up s_noise z,

    an Euler step where sigma_down = 0. Two model calls a step (one on the last); arguments as
    ``sample_euler_ancestral``.
    """
    def columns(process, prediction, sig, a):
        return midpoint_ancestral_columns(process, prediction, sig, a, eta, s_noise, True)

    return _run("dpmpp_2s_ancestral", model, x, process,
                (steps, sigma_min, sigma_max, rho, sigmas), eta, s_noise, noise_sampler,
                prediction, seed, callback, progress, columns)


def dpmpp_sde_stage_columns(process, prediction, sig, a, eta, s_noise, r):
    """DPM-Solver++ SDE's step (k-diffusion's sample_dpmpp_sde) in VE coordinates, with
    sigma_r = sigma^(1 - r) sigma'^r and the splits (d1, u1) of sigma -> sigma_r and (d2, u2) of
    sigma -> sigma':

    x_2 = (d1 / sigma) x + (1 - d1 / sigma) D + u1 s_noise z_1,
    x'  = (d2 / sigma) x + (1 - d2 / sigma) ((1 - 1/(2r)) D + 1/(2r) D(x_2, sigma_r))
          + u2 s_noise z_2;   x' = D on the last step.
    """
    second = sig[1:] > 0
    log = sig.clamp(min=torch.finfo(torch.float64).tiny).log()
    times2, s2, a2 = at_sigmas(process, torch.where(second, (log[:-1] + r * (log[1:] - log[:-1]))
                                                    .exp(), sig[:-1]))
    down1, up1 = ancestral_step(sig[:-1], s2, eta)
    down2, up2 = ancestral_step(sig[:-1], sig[1:], eta)
    cols = edm_columns(prediction, sig[:-1], a[:-1], torch.where(second, down1, 0.0),
                       torch.where(second, a2, 1.0))
    cols["s"] = torch.where(second, a2 * up1 * s_noise, 0.0)
    cx2, co2 = x0_coefs(prediction, a2, a2 * s2)
    a1, ratio, fac = a[1:], down2 / sig[:-1], 1 / (2 * r)
    cols.update(hx=a1 * ratio / a[:-1], hd=a1 * (1 - ratio) * (1 - fac),
                he=a1 * (1 - ratio) * fac * cx2, ho=a1 * (1 - ratio) * fac * co2,
                hz=a1 * up2 * s_noise, a2=a2, std2=a2 * s2, co2=co2)
    at = [[(s, m) if d else None for s, m, d in zip(sig[:-1].tolist(), s2.tolist(),
                                                     (cols["s"] > 0).tolist())],
          _pairs(sig, second & (cols["hz"] > 0))]
    return cols, times2, second, at


@register("dpmpp_sde", title="DPM-Solver++ SDE", paper="Lu et al. 2022 (DPM-Solver++); "
          "k-diffusion", processes=PROCESS_KINDS, stochastic="eta > 0", order=2,
          nfe_per_step=2, sigma_view=True, quick={"steps": 4})
def sample_dpmpp_sde(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                     sigmas=None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
                     noise_sampler=None, prediction: str = "eps", seed=None, callback=None,
                     progress=False):
    """DPM-Solver++ (stochastic) (k-diffusion's sample_dpmpp_sde: DPM-Solver++(2S), Lu et al.
    2022, with an ancestral split in each of its two stages; ``dpmpp_sde_stage_columns``). Two model
    calls a step (one on the last). k-diffusion draws its z from a Brownian tree by default;
    here from the noise stream, independent draws (pass its BrownianTreeNoiseSampler as
    ``noise_sampler`` to reproduce its runs).

    Args:
        as ``sample_euler_ancestral``; r: where the second model call is, sigma^(1-r) sigma'^r,
            in (0, 1].
    """
    if not 0 < r <= 1:
        raise ValueError(f"r must be in (0, 1], got {r}")

    def columns(process, prediction, sig, a):
        return dpmpp_sde_stage_columns(process, prediction, sig, a, eta, s_noise, r)

    return _run("dpmpp_sde", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas), eta,
                s_noise, noise_sampler, prediction, seed, callback, progress, columns)
