"""k-diffusion's family on every process kind, against the exact Gaussian-mixture oracle (their
parity with k-diffusion itself is tests/samplers/test_kdiffusion.py), the explicit sigmas= grid,
the noise stream and a user's noise_sampler, and bad input."""

import math

import pytest
import torch

import pydiffuse
from pydiffuse import schedules, sde
from pydiffuse.samplers import SAMPLERS

from .oracle_cases import flow_map, gaussian, mixture_distance, mixture_2d, x_T
from .test_edm import PROCESSES, THRESHOLD

# name: recommended steps on the mixture
STEPS = {"euler_ancestral": 60, "dpm_2": 15, "dpm_2_ancestral": 25, "dpmpp_2s_ancestral": 25,
         "dpmpp_sde": 40, "lms": 20, "dpmpp_2m_sde": 30, "dpmpp_3m_sde": 30}


def distance(name, process_name, mixture_name="2d", prediction="eps", **kwargs):
    return mixture_distance(SAMPLERS[name], PROCESSES[process_name](), mixture_name, prediction,
                            **{"steps": STEPS[name], "seed": 7, **kwargs})


@pytest.mark.parametrize("name", STEPS)
@pytest.mark.parametrize("process_name,mixture_name,prediction", [
    ("linear", "2d", "eps"), ("vp", "8d", "v"), ("ve", "2d", "x0"), ("ladder", "2d", "eps")])
def test_samples_mixture(name, process_name, mixture_name, prediction):
    assert distance(name, process_name, mixture_name, prediction) < THRESHOLD


@pytest.mark.parametrize("name", STEPS)
def test_wrong_score_fails(name):
    """A score 50% too large misses the mixture (the ancestral noise forgives smaller errors)."""
    assert distance(name, "vp", scale=1.5) > THRESHOLD


@pytest.mark.parametrize("name", [n for n in STEPS if n not in ("dpm_2", "lms")])
def test_wrong_noise_fails(name):
    """The ancestral / SDE noise must be exact: s_noise = 1.6 misses."""
    assert distance(name, "ve", s_noise=1.6) > THRESHOLD


def test_explicit_grid_equals_karras_options():
    """sigmas= the Karras grid of (steps, sigma_min, sigma_max, rho) gives the same samples."""
    process = schedules.NoiseLadder(schedules.geometric_sigmas(20.0, 0.01, 10))
    mix, x = mixture_2d(process, "eps"), x_T(process, 2, n=64)
    for name in ("heun", "dpmpp_2m", "lms", "dpmpp_3m_sde"):
        grid = schedules.append_zero(schedules.karras_sigmas(8, 0.05, 20.0, 5.0))
        a = SAMPLERS[name](mix, x, process, steps=8, sigma_min=0.05, sigma_max=20.0, rho=5.0,
                           seed=1)
        torch.testing.assert_close(SAMPLERS[name](mix, x, process, sigmas=grid, seed=1), a,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("grid", ["exponential", "polyexponential", "schedule"])
def test_grid_helpers_sample(grid):
    process = schedules.linear(1000)
    lo, hi = min(process.sigma_range), max(process.sigma_range)
    levels = {"exponential": lambda: schedules.exponential_sigmas(20, lo, hi),
              "polyexponential": lambda: schedules.polyexponential_sigmas(20, lo, hi, 2.0),
              "schedule": lambda: schedules.schedule_sigmas(process, 20)}[grid]()
    assert len(levels) == 20 and (levels.diff() < 0).all()
    torch.testing.assert_close(levels[[0, -1]], torch.tensor([hi, lo], dtype=torch.float64))
    assert mixture_distance(SAMPLERS["dpmpp_2m"], process, sigmas=schedules.append_zero(levels)) \
        < THRESHOLD


@pytest.mark.parametrize("name", [n for n in STEPS if n not in ("dpm_2", "lms")])
def test_noise_stream_split_and_seed(name):
    """One seed per sample: a sample is the same in any batch split; another seed differs."""
    process = sde.VPSDE()
    mix, x = mixture_2d(process, "eps"), x_T(process, 2, n=8)

    def run(x, seeds):
        return pydiffuse.sample(mix, x_T=x, process=process, sampler=name, steps=6, seed=seeds)

    whole = run(x, list(range(8)))
    torch.testing.assert_close(torch.cat([run(x[:3], [0, 1, 2]), run(x[3:], list(range(3, 8)))]),
                               whole, rtol=1e-6, atol=1e-6)
    assert not torch.equal(run(x, list(range(10, 18))), whole)


def test_eta_zero_is_deterministic_and_ancestral_euler_is_euler():
    process = sde.VESDE()
    mix, x = mixture_2d(process, "eps"), x_T(process, 2, n=32)
    plain = SAMPLERS["euler"](mix, x, process, steps=8)
    torch.testing.assert_close(SAMPLERS["euler_ancestral"](mix, x, process, steps=8, eta=0.0),
                               plain, rtol=1e-6, atol=1e-6)
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_2_ancestral"):
        a, b = (SAMPLERS[name](mix, x, process, steps=8, eta=0.0, seed=s) for s in (1, 2))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["euler", "dpm_2", "lms", "euler_ancestral", "dpmpp_3m_sde"])
@pytest.mark.parametrize("kwargs,match", [
    ({"sigmas": torch.tensor([3.0, 1.0, 2.0, 0.0])}, "decreasing"),
    ({"sigmas": torch.tensor([3.0, 1.0, 0.5])}, "end in 0"),
    ({"sigmas": torch.ones(2, 3)}, "1-D"),
    ({"sigmas": torch.tensor([3.0, 1.0, 0.0]), "steps": 5}, "not both"),
    ({"sigmas": torch.tensor([3.0, 1.0, 0.0]), "sigma_max": 5.0}, "not both")])
def test_bad_sigmas(name, kwargs, match):
    process = sde.VESDE()
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](mixture_2d(process), torch.zeros(4, 2), process, **kwargs)


@pytest.mark.parametrize("name,kwargs,match", [
    ("euler_ancestral", {"eta": -0.5}, "eta"), ("dpmpp_2m_sde", {"eta": -1.0}, "eta"),
    ("dpmpp_sde", {"s_noise": -1.0}, "s_noise"), ("dpmpp_sde", {"r": 0.0}, "r must"),
    ("lms", {"order": 5}, "order"), ("lms", {"order": 0}, "order"),
    ("dpmpp_2m_sde", {"solver_type": "rk"}, "solver_type")])
def test_bad_options(name, kwargs, match):
    process = sde.VESDE()
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](mixture_2d(process), torch.zeros(4, 2), process, **kwargs)


def test_bad_noise_sampler():
    process = sde.VESDE()
    with pytest.raises(ValueError, match="noise_sampler"):
        SAMPLERS["euler_ancestral"](mixture_2d(process), torch.zeros(4, 2), process, steps=3,
                                    noise_sampler=lambda s, s2: torch.zeros(4, 3))
    with pytest.raises(TypeError, match="noise_sampler"):
        SAMPLERS["euler_ancestral"](mixture_2d(process), torch.zeros(4, 2), process,
                                    noise_sampler=3)


def test_dpmpp_3m_sde_at_eta_0_is_second_order_as_written():
    """DPM-Solver++(3M) as DPM-Solver, diffusers and k-diffusion write it (and pydiffuse, equal
    to k-diffusion to 1e-10): its d2 = h^2 D'' / 2 takes the coefficient of h^2 D'', so on a
    Gaussian's exact flow (VE, steps uniform in log sigma, the error at sigma_min) halving the
    step divides the error by 4, as a second-order method's; the same loop with 2 d2 (the
    Taylor term) falls by more than 8. Registered as order 2."""
    process = sde.VESDE(0.01, 50.0)
    g = gaussian(process, "x0")
    x = x_T(process, 2, n=256, seed=5).double()

    def sampler(n):
        sig = schedules.append_zero(schedules.exponential_sigmas(n, 0.01, 50.0))
        seen = {}
        SAMPLERS["dpmpp_3m_sde"](g, x, process, sigmas=sig, eta=0.0, prediction="x0",
                                 callback=lambda d: seen.__setitem__(d["i"], d["x"]))
        return seen[n - 2]

    def loop(n, d2_scale):
        sig = schedules.append_zero(schedules.exponential_sigmas(n, 0.01, 50.0))
        h_prev, d_prev, y = [], [], x.clone()
        for i in range(n - 1):                      # the 3M loop, in VE, from sig[0] to sig[-2]
            t = process.sigma_to_time(sig[i:i + 1]).expand(len(y))
            d, h = g(y, t), float(torch.log(sig[i] / sig[i + 1]))
            y = math.exp(-h) * y - math.expm1(-h) * d
            phi2 = math.expm1(-h) / h + 1
            if len(h_prev) >= 2:
                r0, r1 = h_prev[-1] / h, h_prev[-2] / h
                d10, d11 = (d - d_prev[-1]) / r0, (d_prev[-1] - d_prev[-2]) / r1
                d1, d2 = d10 + (d10 - d11) * r0 / (r0 + r1), (d10 - d11) / (r0 + r1)
                y = y + phi2 * d1 - d2_scale * (phi2 / h - 0.5) * d2
            elif h_prev:
                y = y + phi2 * (d - d_prev[-1]) * h / h_prev[-1]
            h_prev, d_prev = h_prev + [h], d_prev + [d]
        return y

    def error(y, n):
        sig = schedules.exponential_sigmas(n, 0.01, 50.0)
        return float((y - flow_map(g, x, 1.0, float(sig[0]), 1.0, float(sig[-1])))
                     .pow(2).mean().sqrt())

    assert SAMPLERS["dpmpp_3m_sde"].order == 2
    torch.testing.assert_close(sampler(64), loop(64, 1.0), rtol=1e-10, atol=1e-10)
    as_written = error(sampler(64), 64) / error(sampler(128), 128)
    assert 3.5 < as_written < 4.8, as_written
    assert error(loop(64, 2.0), 64) / error(loop(128, 2.0), 128) > 8
