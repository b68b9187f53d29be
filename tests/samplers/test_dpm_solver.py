"""DPM-Solver-fast and adaptive against their peer, k-diffusion's sample_dpm_fast /
sample_dpm_adaptive (its DPMSolver class, in t = -log sigma), against the exact Gaussian-mixture
oracle on every process kind, and bad input.

k-diffusion stops at sigma_min; pydiffuse takes the step to sigma = 0 after it, x = D(x,
sigma_min): the peer's final sample is compared through the same denoiser. Both run in float64
(k-diffusion with float64 as torch's default dtype, so its time grid, a linspace, is float64
too): the agreement is float64 rounding, to 1e-10 (issue 17, item 5)."""

import pytest
import torch

from pydiffuse import schedules, sde
from pydiffuse.samplers import SAMPLERS

from .kdiffusion import load_sampling
from .oracle_cases import mixture_2d, mixture_8d, mixture_distance
from .test_edm import PROCESSES, THRESHOLD, flow_errors
from .test_kdiffusion import Noise, default_dtype

K = load_sampling()
SIGMA_MIN = 0.03


def vp_mixture():
    """The 8-D mixture's exact x0 on a VP SDE, and k-diffusion's D(x_ve, sigma) of it."""
    process = sde.VPSDE()
    mix = mixture_8d(process, "x0")

    def denoiser(x, sigma):
        t = process.sigma_to_time(sigma.double())
        a = process.marginal(t)[0][:, None]
        return mix(x * a, t)

    return process, mix, denoiser, "x0", 8


def ladder_net():
    """A smooth float64 eps model on a noise ladder (t = sigma)."""
    process = schedules.NoiseLadder(schedules.geometric_sigmas(10.0, 0.02, 10))

    def model(x, sigma):
        return torch.tanh(x).flip(1) * 0.5 + 0.1 * sigma.log()[:, None]

    def denoiser(x, sigma):
        return x - sigma[:, None] * model(x, sigma)

    return process, model, denoiser, "eps", 2


@pytest.mark.parametrize("setup", [vp_mixture, ladder_net])
@pytest.mark.parametrize("steps,eta", [(10, 0.0), (11, 0.0), (14, 0.0), (12, 1.0), (10, 0.5)])
def test_dpm_fast_same_samples_as_k_diffusion(setup, steps, eta):
    process, model, denoiser, prediction, dim = setup()
    hi = max(process.sigma_range)
    z = torch.randn(32, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours_noise, kd_noise = Noise((32, dim), dtype=torch.float64), Noise((32, dim),
                                                                         dtype=torch.float64)
    ours = SAMPLERS["dpm_fast"](model, z * process.prior_std, process, steps=steps,
                                sigma_min=SIGMA_MIN, sigma_max=hi, prediction=prediction,
                                eta=eta, noise_sampler=ours_noise)
    with default_dtype(torch.float64):
        theirs = K.sample_dpm_fast(denoiser, z * hi, SIGMA_MIN, hi, steps, disable=True, eta=eta,
                                   noise_sampler=kd_noise)
    theirs = denoiser(theirs, torch.full((len(z),), SIGMA_MIN, dtype=torch.float64))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # k-diffusion draws on every step, times sigma_up = 0 without eta and on its last step
    assert len(ours_noise.calls) == (steps // 3 if eta else 0)
    if eta:
        torch.testing.assert_close(torch.tensor(ours_noise.calls),
                                   torch.tensor(kd_noise.calls[:-1]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("setup", [ladder_net, vp_mixture])
@pytest.mark.parametrize("order,rtol,eta", [(3, 0.05, 0.0), (2, 0.05, 0.0), (3, 0.01, 0.0),
                                            (3, 0.05, 1.0)])
def test_dpm_adaptive_same_samples_as_k_diffusion(setup, order, rtol, eta):
    """The same steps (accepted and rejected) and samples."""
    process, model, denoiser, prediction, dim = setup()
    hi = max(process.sigma_range)
    z = torch.randn(32, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours_noise, kd_noise = (Noise((32, dim), dtype=torch.float64) for _ in range(2))
    accepted = []
    ours = SAMPLERS["dpm_adaptive"](model, z * process.prior_std, process,
                                    sigma_min=SIGMA_MIN, sigma_max=hi, order=order,
                                    rtol=rtol, eta=eta, noise_sampler=ours_noise,
                                    prediction=prediction, callback=accepted.append)
    with default_dtype(torch.float64):
        theirs, info = K.sample_dpm_adaptive(denoiser, z * hi, SIGMA_MIN, hi, disable=True,
                                             order=order, rtol=rtol, eta=eta, return_info=True,
                                             noise_sampler=kd_noise)
    theirs = denoiser(theirs, torch.full((len(z),), SIGMA_MIN, dtype=torch.float64))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert len(accepted) == info["n_accept"] > 5
    if eta:     # k-diffusion draws on every step, times sigma_up = 0 on its last
        assert len(ours_noise.calls) == len(kd_noise.calls) - 1
        torch.testing.assert_close(torch.tensor(ours_noise.calls),
                                   torch.tensor(kd_noise.calls[:-1]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_dpm_fast_is_third_order(process_name):
    """DPM-Solver-fast (orders 3, ..., 3, 2, 1) against a Gaussian's exact flow: from 30 to 60
    model calls the error falls by more than 2^3 (measured: 47x on VP, 13x on VE)."""
    err = flow_errors(PROCESSES[process_name](), "dpm_fast", (30, 60))
    assert err[0] / err[1] > 2 ** 3


STEPS = {"dpm_fast": {"steps": 30}, "dpm_adaptive": {}}


@pytest.mark.parametrize("name", STEPS)
@pytest.mark.parametrize("process_name,mixture_name,prediction,eta", [
    ("linear", "2d", "eps", 0.0), ("vp", "8d", "v", 0.0), ("ve", "2d", "x0", 1.0),
    ("ladder", "2d", "eps", 0.0)])
def test_samples_mixture(name, process_name, mixture_name, prediction, eta):
    assert mixture_distance(SAMPLERS[name], PROCESSES[process_name](), mixture_name, prediction,
                            eta=eta, seed=7, **STEPS[name]) < THRESHOLD


@pytest.mark.parametrize("name", STEPS)
@pytest.mark.parametrize("kwargs", [{"scale": 1.25}, {"eta": 1.0, "s_noise": 1.6}])
def test_wrong_model_or_noise_fails(name, kwargs):
    assert mixture_distance(SAMPLERS[name], PROCESSES["vp"](), seed=7, **STEPS[name],
                            **kwargs) > THRESHOLD


def test_dpm_fast_explicit_grid():
    """sigmas= with m + 1 positive levels runs as steps = 3 (m - 1) on those levels."""
    process = PROCESSES["ladder"]()
    mix = mixture_2d(process, "eps")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(2)) * process.prior_std
    levels = schedules.exponential_sigmas(6, 0.05, 50.0)
    a = SAMPLERS["dpm_fast"](mix, x, process, steps=12, sigma_min=0.05, sigma_max=50.0)
    b = SAMPLERS["dpm_fast"](mix, x, process, sigmas=schedules.append_zero(levels))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,kwargs,match", [
    *((name, kwargs, match) for name in STEPS for kwargs, match in [
        ({"eta": -1.0}, "eta"), ({"s_noise": -1.0}, "s_noise"),
        ({"sigmas": torch.tensor([3.0, 1.0, 2.0, 0.0])}, "decreasing"),
        ({"sigmas": torch.tensor([3.0, 1.0, 0.5])}, "end in 0")]),
    ("dpm_fast", {"steps": 0}, "steps"),
    ("dpm_fast", {"sigmas": torch.tensor([3.0, 1.0, 0.0]), "steps": 5}, "not both"),
    ("dpm_adaptive", {"steps": 5}, "own steps"), ("dpm_adaptive", {"rho": 7.0}, "own steps"),
    ("dpm_adaptive", {"sigmas": torch.tensor([3.0, 2.0, 1.0, 0.0])}, "only its range"),
    ("dpm_adaptive", {"sigmas": torch.tensor([3.0, 1.0, 0.0]), "sigma_min": 0.5}, "not both"),
    ("dpm_adaptive", {"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
    ("dpm_adaptive", {"order": 1}, "order"), ("dpm_adaptive", {"order": 4}, "order"),
    ("dpm_adaptive", {"rtol": -0.1}, "rtol"), ("dpm_adaptive", {"h_init": 0.0}, "h_init")])
def test_bad_input(name, kwargs, match):
    process = PROCESSES["ve"]()
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](mixture_2d(process), torch.zeros(4, 2), process, **kwargs)


def test_dpm_adaptive_range_and_max_steps():
    """sigmas=[sigma_max, sigma_min, 0] is the range's options; too few attempts raise."""
    process = PROCESSES["ladder"]()
    mix, x = mixture_2d(process, "eps"), torch.randn(8, 2) * process.prior_std
    torch.testing.assert_close(
        SAMPLERS["dpm_adaptive"](mix, x, process, sigmas=torch.tensor([20.0, 0.05, 0.0])),
        SAMPLERS["dpm_adaptive"](mix, x, process, sigma_max=20.0, sigma_min=0.05),
        rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="max_steps"):
        SAMPLERS["dpm_adaptive"](mix, x, process, max_steps=3)
