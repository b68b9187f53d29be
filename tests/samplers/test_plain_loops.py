"""Every fused sampler against its paper's update written out (``plain_loops.py``): the same
Gaussian-mixture oracle in float64, the same x_T and noise, and every step's x compared through
the sampler's ``callback``.

A float64 run computes in float64 throughout (issue 17, item 5): on the default backend of the
device (float64 data run the ops' reference path), with coefficient tables and continuous model
times in float64 (``pydiffuse.ops.compute_dtype``), so the loops agree to float64 rounding:
measured at most ~1e-13 here (TOL 1e-10). A broken variant (another eta, step size, snr, method,
noise draw) misses by 1e-3 or more.
"""

from functools import partial

import pytest
import torch

from pydiffuse import schedules, sde
from pydiffuse.ops import randn
from pydiffuse.samplers import SAMPLERS
from pydiffuse.samplers.ddim import ddim_schedule
from pydiffuse.samplers.edm import edm_sigmas

from . import plain_loops as plain
from .oracle_cases import mixture_2d

TOL = 1e-10
SEED, BATCH = 5, 16


class Oracle(torch.nn.Module):
    """The 2-D mixture's exact ``prediction`` at the time it is given (a float64 run passes its
    continuous times in float64, as the plain loops do)."""

    def __init__(self, process, prediction):
        super().__init__()
        self.mix = mixture_2d(process, prediction)

    def forward(self, x, t):
        assert not t.is_floating_point() or t.dtype == torch.float64, t.dtype
        return self.mix(x, t)


def x_T(process):
    return randn([BATCH, 2], SEED, 0, dtype=torch.float64) * process.prior_std


def denoiser(model, process):
    """EDM's D(x, sigma) in the VE coordinates x = x_0 + sigma n of an x0-predicting model: the
    model at the process's time of sigma and its own coordinates a(t) x."""
    def D(x, sigma):
        t = process.sigma_to_time(sigma)
        return model(process.marginal(t)[0] * x, t.expand(len(x)))

    return D


# each case returns (fused trajectory, plain trajectory); ``change``, keywords of the plain loop,
# makes a broken variant (test_a_broken_variant_is_caught)

def ddpm_case(variance, change):
    process = schedules.linear(1000)
    model, x, spaced = Oracle(process, "eps"), x_T(process), process.respace(20)
    fused = plain.trajectory(SAMPLERS["ddpm"], model, x, process, steps=20, variance=variance,
                             seed=SEED)
    return fused, plain.plain_trajectory(plain.ddpm, model, x, spaced.alphas_cumprod,
                                         spaced.timesteps, **{"variance": variance,
                                                              "seed": SEED, **change})


def ddim_case(eta, change):
    process = schedules.linear(1000)
    model, x, spaced = Oracle(process, "eps"), x_T(process), ddim_schedule(process, 20)
    fused = plain.trajectory(SAMPLERS["ddim"], model, x, process, steps=20, eta=eta, seed=SEED)
    return fused, plain.plain_trajectory(plain.ddim, model, x, spaced.alphas_cumprod,
                                         spaced.timesteps, **{"eta": eta, "seed": SEED, **change})


def ald_case(change):
    sigmas = schedules.geometric_sigmas(5.0, 0.05, 6)
    process = schedules.NoiseLadder(sigmas)
    model, x = Oracle(process, "score"), x_T(process)
    fused = plain.trajectory(SAMPLERS["ald"], model, x, sigmas, steps=3, step_lr=1e-3,
                             prediction="score", seed=SEED)
    return fused, plain.plain_trajectory(plain.ald, model, x, sigmas,
                                         **{"steps": 3, "step_lr": 1e-3, "seed": SEED, **change})


SDES = {"ve": lambda: sde.VESDE(0.01, 10.0, 30), "vp": lambda: sde.VPSDE(0.1, 8.0, 30)}


def pc_case(kind, change):
    process = SDES[kind]()
    model, x = Oracle(process, "score"), x_T(process)
    fused = plain.trajectory(SAMPLERS["pc"], model, x, process, prediction="score", seed=SEED)
    return fused, plain.plain_trajectory(plain.pc, model, x, process,
                                         **{"eps": process.sampling_eps, "seed": SEED, **change})


def pc_inpaint_case(kind, change):
    """score_sde's pc_inpainter (its eps = 1e-5; no denoise: its x_mean keeps the predictor's
    noise in the unknown part) at its one corrector step a level: coordinate 0 known."""
    process = SDES[kind]()
    model, x = Oracle(process, "score"), x_T(process)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    known = randn([BATCH, 2], SEED + 1, 0, dtype=torch.float64) * 0.5
    options = {"denoise": False, "mask": mask, "known": known}
    fused = plain.trajectory(SAMPLERS["pc"], model, x, process, prediction="score", seed=SEED,
                             **options)
    return fused, plain.plain_trajectory(plain.pc, model, x, process,
                                         **{"eps": 1e-5, "seed": SEED, **options, **change})


def discrete_case(name, change):
    """A DDPM eps model (the oracle at the chain's step index) on its chain's SDE: the sampler
    against the plain loop on score_sde's ``get_score_fn(continuous=False)``."""
    chain = schedules.linear(30)
    model, process = Oracle(chain, "eps"), sde.VPSDE.from_discrete(chain)
    plain_sde, x = sde.VPSDE(process.beta_min, process.beta_max, 30), x_T(chain)
    score = plain.score_sde_discrete(model, plain_sde)
    if name == "pc":
        fused = plain.trajectory(SAMPLERS["pc"], model, x, process, prediction="eps",
                                 seed=SEED)
        return fused, plain.plain_trajectory(plain.pc, score, x, plain_sde, **{
            "eps": process.sampling_eps, "seed": SEED, **change})
    fused = plain.trajectory(SAMPLERS["ode"], model, x, process, method="heun", steps=10)
    return fused, plain.plain_trajectory(plain.probability_flow, score, x, plain_sde, **{
        "steps": 10, "eps": process.sampling_eps, "method": "heun", **change})


def ode_case(kind, method, change):
    process = SDES[kind]()
    model, x = Oracle(process, "score"), x_T(process)
    fused = plain.trajectory(SAMPLERS["ode"], model, x, process, method=method, steps=10,
                             prediction="score")
    return fused, plain.plain_trajectory(plain.probability_flow, model, x, process, **{
        "steps": 10, "eps": process.sampling_eps, "method": method, **change})


PROCESSES = {"linear": lambda: schedules.linear(1000), "vp": sde.VPSDE,
             "ve": lambda: sde.VESDE(0.01, 10.0),
             "ladder": lambda: schedules.NoiseLadder(schedules.geometric_sigmas(5.0, 0.05, 6))}


def sigma_case(name, kind, churn, change):
    """EDM's Euler / Heun and DPM-Solver++(2M): the plain loop in VE coordinates x / a on the
    sampler's grid (``edm_sigmas``), its steps compared in the process's, a_{i+1} x."""
    process = PROCESSES[kind]()
    model, x = Oracle(process, "x0"), x_T(process)
    options = {} if name == "dpmpp_2m" else {"churn": churn, "seed": SEED}
    fused = plain.trajectory(SAMPLERS[name], model, x, process, steps=8, prediction="x0",
                             **options)
    _, sigmas, scale = edm_sigmas(process, 8)
    loop = plain.dpmpp_2m if name == "dpmpp_2m" else plain.edm
    if name != "dpmpp_2m":
        options["heun"] = name == "heun"
    steps = plain.plain_trajectory(loop, denoiser(model, process),
                                   x * sigmas[0] / process.prior_std, sigmas,
                                   **{**options, **change})
    return fused, [scale[i + 1] * x_ve for i, x_ve in enumerate(steps)]


CASES = {
    "ddpm fixed_small": partial(ddpm_case, "fixed_small"),
    "ddpm fixed_large": partial(ddpm_case, "fixed_large"),
    "ddim eta=0": partial(ddim_case, 0.0),
    "ddim eta=0.5": partial(ddim_case, 0.5),
    "ald": ald_case,
    **{f"pc {kind}": partial(pc_case, kind) for kind in SDES},
    **{f"pc inpaint {kind}": partial(pc_inpaint_case, kind) for kind in SDES},
    "pc ddpm model": partial(discrete_case, "pc"),
    "ode heun ddpm model": partial(discrete_case, "ode"),
    **{f"ode {method} {kind}": partial(ode_case, kind, method)
       for kind in SDES for method in ("euler", "heun")},
    **{f"{name} {kind}": partial(sigma_case, name, kind, 0.0)
       for name in ("euler", "heun", "dpmpp_2m") for kind in PROCESSES},
    **{f"{name} {kind} churn": partial(sigma_case, name, kind, 4.0)
       for name in ("euler", "heun") for kind in ("vp", "ve", "ladder")},
}


@pytest.mark.parametrize("case", CASES)
def test_fused_sampler_follows_the_paper_step_by_step(case):
    """On the default backend: a float64 run needs no forced backend."""
    fused, loop = CASES[case]({})
    assert len(fused) == len(loop) > 1 and fused[0].dtype == torch.float64
    assert plain.step_difference(fused, loop) < TOL


def test_every_paper_sampler_has_its_plain_loop():
    """The samplers of the papers (issue 14's families) are all compared above."""
    compared = {case.split()[0] for case in CASES}
    assert compared == {"ddpm", "ddim", "ald", "pc", "ode", "euler", "heun", "dpmpp_2m"}
    assert compared <= set(SAMPLERS)


@pytest.mark.parametrize("case,change", [
    ("ddpm fixed_small", {"variance": "fixed_large"}),
    ("ddim eta=0.5", {"eta": 0.45}),
    ("ddim eta=0.5", {"seed": SEED + 1}),
    ("ald", {"step_lr": 1.01e-3}),
    ("pc vp", {"snr": 0.17}),
    ("pc ve", {"n_corrector": 2}),
    ("pc inpaint vp", {"eps": 1e-3}),
    ("ode heun vp", {"method": "euler"}),
    ("heun ve", {"heun": False}),
    ("euler vp churn", {"s_noise": 1.01}),
    ("heun ladder churn", {"churn": 3.0}),
])
def test_a_broken_variant_is_caught(case, change):
    """The comparison has teeth: the plain loop changed in one place misses by far more than
    the tolerance."""
    fused, loop = CASES[case](change)
    assert plain.step_difference(fused, loop) > 100 * TOL


def test_dpmpp_2m_first_order_is_caught():
    """DPM-Solver++(2M) without its second-order history (every step DPM-Solver++(1), i.e. DDIM
    in sigma) misses."""
    def first_order(denoiser_fn, x, sigmas, callback=None):
        for i in range(len(sigmas) - 1):
            x = sigmas[i + 1] / sigmas[i] * x - torch.expm1(sigmas[i + 1].log()
                                                            - sigmas[i].log()) * denoiser_fn(
                x, sigmas[i])
            callback(i, x)
        return x

    process = sde.VPSDE()
    model, x = Oracle(process, "x0"), x_T(process)
    fused = plain.trajectory(SAMPLERS["dpmpp_2m"], model, x, process, steps=8,
                             prediction="x0")
    _, sigmas, scale = edm_sigmas(process, 8)
    steps = plain.plain_trajectory(first_order, denoiser(model, process),
                                   x * sigmas[0] / process.prior_std, sigmas)
    assert plain.step_difference(fused, [scale[i + 1] * s for i, s in enumerate(steps)]) \
        > 100 * TOL
