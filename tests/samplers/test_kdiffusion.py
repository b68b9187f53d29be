"""The sigma-view samplers against their peer, k-diffusion's sampling module: the same
denoiser (the exact mixture on a VP SDE, a random MLP on a noise ladder), the same sigmas and the
same noise (one ``noise_sampler``, called with the same arguments) give the same samples: to
float32 rounding in float32, and to 1e-10 in float64 (issue 17, item 5: coefficients and model
times follow the data's dtype; k-diffusion runs with float64 as torch's default dtype)."""

import contextlib

import pytest
import torch

from pydiffuse import samplers, schedules, sde

from .kdiffusion import load_sampling
from .oracle_cases import mixture_8d

K = load_sampling()

# name: (k-diffusion's function name, options of both, stochastic)
CASES = {
    "euler": ("sample_euler", {}, False),
    "heun": ("sample_heun", {}, False),
    "dpm_2": ("sample_dpm_2", {}, False),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, False),
    "lms": ("sample_lms", {}, False),
    "lms-2": ("sample_lms", {"order": 2}, False),
    "euler_ancestral": ("sample_euler_ancestral", {"eta": 1.0, "s_noise": 0.9}, True),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {"eta": 0.8}, True),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {"eta": 1.0}, True),
    "dpmpp_sde": ("sample_dpmpp_sde", {"eta": 1.0, "s_noise": 1.1}, True),
    "dpmpp_sde-r": ("sample_dpmpp_sde", {"eta": 0.5, "r": 0.3}, True),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {"eta": 1.0}, True),
    "dpmpp_2m_sde-heun": ("sample_dpmpp_2m_sde", {"eta": 0.7, "solver_type": "heun"}, True),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {"eta": 1.0}, True),
    "dpmpp_3m_sde-eta0": ("sample_dpmpp_3m_sde", {"eta": 0.0}, False),
}


@contextlib.contextmanager
def default_dtype(dtype):
    """torch's default dtype in the block (the dtype k-diffusion makes its tensors in)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class Noise:
    """A noise_sampler handing out pre-drawn z in order, logging its arguments."""

    def __init__(self, shape, seed=5, dtype=torch.float32):
        gen = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(64)]
        self.calls = []

    def __call__(self, sigma, sigma_next):
        self.calls.append((float(sigma), float(sigma_next)))
        return self.draws[len(self.calls) - 1]


def vp_oracle(dtype=torch.float32):
    """The 8-D mixture's exact x0 on a VP SDE; k-diffusion's D(x_ve, sigma) of the same (both
    computing in ``dtype``)."""
    process = sde.VPSDE()
    mix = mixture_8d(process, "x0")

    def denoiser(x, sigma):
        t = process.sigma_to_time(sigma.double())
        a = process.marginal(t)[0].to(dtype)[:, None]
        return mix(x * a, t.to(dtype))

    return process, mix, denoiser, "x0", 8


def ladder_mlp(dtype=torch.float32):
    """A small random MLP (in ``dtype``) predicting eps from (x, log sigma) on a noise ladder
    (t = sigma)."""
    process = schedules.NoiseLadder(schedules.geometric_sigmas(10.0, 0.02, 10))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    net = net.to(dtype)

    @torch.no_grad()
    def model(x, sigma):
        return net(torch.cat([x.to(dtype), sigma.to(dtype).log()[:, None] / 4], 1))

    def denoiser(x, sigma):
        return x - sigma.to(dtype)[:, None] * model(x, sigma)

    return process, model, denoiser, "eps", 2


TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", TOLERANCE)
@pytest.mark.parametrize("setup", [vp_oracle, ladder_mlp])
@pytest.mark.parametrize("case", CASES)
def test_same_samples_as_k_diffusion(case, setup, dtype):
    kd_name, options, stochastic = CASES[case]
    name = case.split("-")[0]
    process, model, denoiser, prediction, dim = setup(dtype)
    sigma_max = max(process.sigma_range)
    grid = schedules.append_zero(schedules.karras_sigmas(12, 0.02, sigma_max))
    levels = schedules.NoiseLadder(grid[:-1]).sigmas                   # as the process sees them
    _, sig, a = samplers.edm.at_sigmas(process, levels)
    z = torch.randn(64, dim, generator=torch.Generator().manual_seed(1), dtype=dtype)
    x_T = z * process.prior_std
    extra = {}
    if stochastic:
        ours_noise, kd_noise = Noise((64, dim), dtype=dtype), Noise((64, dim), dtype=dtype)
        extra = {"noise_sampler": ours_noise}
    ours = samplers.SAMPLERS[name](model, x_T, process, sigmas=grid, prediction=prediction,
                                   **options, **extra)
    kd_grid = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    if stochastic:
        extra = {"noise_sampler": kd_noise}
    with default_dtype(dtype):
        theirs = getattr(K, kd_name)(denoiser, z * float(sig[0]), kd_grid, disable=True,
                                     **options, **extra)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs.to(dtype), rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])
    if stochastic:
        assert len(ours_noise.calls) == len(kd_noise.calls) > 5
        torch.testing.assert_close(torch.tensor(ours_noise.calls), torch.tensor(kd_noise.calls),
                                   rtol=1e-9, atol=0)


def test_grid_helpers_match_k_diffusion():
    args = (9, 0.03, 40.0)
    for ours, theirs in [(schedules.karras_sigmas(*args, 5.0), K.get_sigmas_karras(*args, 5.0)),
                         (schedules.exponential_sigmas(*args), K.get_sigmas_exponential(*args)),
                         (schedules.polyexponential_sigmas(*args, 2.0),
                          K.get_sigmas_polyexponential(*args, 2.0))]:
        torch.testing.assert_close(schedules.append_zero(ours).float(), theirs.float())
