"""VE, VP and sub-VP SDEs: marginals against the SDE itself (moment ODEs by finite differences, a
simulated Euler-Maruyama path), inverses, priors, the reference discretizations, the tensor API."""

import math

import pytest
import torch

from pydiffuse import sde as sdes
from pydiffuse.ops import randn

SDES = {
    "ve": lambda: sdes.VESDE(0.01, 50.0),
    "ve_small": lambda: sdes.VESDE(0.1, 5.0, N=100),
    "vp": lambda: sdes.VPSDE(0.1, 20.0),
    "vp_const": lambda: sdes.VPSDE(2.0, 2.0, N=50),
    "subvp": lambda: sdes.SubVPSDE(0.1, 20.0),
}
TIMES = torch.tensor([1e-3, 0.05, 0.3, 0.5, 0.8, 0.99], dtype=torch.float64)


def _close(a, b, rtol=1e-12, atol=0.0):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), rtol=rtol, atol=atol)


@pytest.fixture(params=list(SDES))
def process(request):
    return SDES[request.param]()


def test_marginal_solves_the_moment_odes(process):
    """da/dt = f a and dVar/dt = 2 f Var + g^2 (Sarkka & Solin eq. 5.51), central differences."""
    h = 1e-6
    a, s = process.marginal(TIMES)
    a_p, s_p = process.marginal(TIMES + h)
    a_m, s_m = process.marginal(TIMES - h)
    f, g = process.drift_coef(TIMES), process.diffusion(TIMES)
    _close((a_p - a_m) / (2 * h), f * a, rtol=1e-6, atol=1e-9)
    _close((s_p ** 2 - s_m ** 2) / (2 * h), 2 * f * s ** 2 + g ** 2, rtol=1e-6, atol=1e-9)


def test_marginal_at_time_zero(process):
    a, s = process.marginal(0.0)
    _close(a, [1.0])
    # VE follows the reference code: std(t) = sigma(t), so Var(0) = sigma_min^2, not 0
    _close(s, [process.sigma_min if isinstance(process, sdes.VESDE) else 0.0])


def test_closed_forms():
    ve, vp, sub = sdes.VESDE(0.01, 50.0), sdes.VPSDE(0.1, 20.0), sdes.SubVPSDE(0.1, 20.0)
    t = TIMES
    _close(ve.marginal(t)[1], 0.01 * 5000 ** t)
    _close(ve.diffusion(t) ** 2, 2 * math.log(5000) * (0.01 * 5000 ** t) ** 2)   # g^2 = dsigma^2/dt
    m = torch.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1)
    _close(vp.marginal(t)[0], m)
    _close(vp.marginal(t)[1], (1 - m * m).sqrt())
    _close(vp.drift_coef(t), -0.5 * (0.1 + t * 19.9))
    _close(vp.diffusion(t), (0.1 + t * 19.9).sqrt())
    _close(sub.marginal(t)[1], 1 - m * m)
    integral = 0.1 * t + 0.5 * t ** 2 * 19.9
    _close(sub.diffusion(t), ((0.1 + t * 19.9) * (1 - torch.exp(-2 * integral))).sqrt())


def test_sigma_to_time_inverts_sigma(process):
    t = torch.linspace(process.sampling_eps, 1, 50, dtype=torch.float64)
    _close(process.sigma_to_time(process.sigma(t)), t, rtol=1e-9, atol=1e-12)
    a, s = process.marginal(t)
    _close(process.sigma(t), s / a)
    assert process.sigma_range == pytest.approx(
        (float(process.sigma(1.0)), float(process.sigma(process.sampling_eps))))


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3)])
def test_prior_logp_and_sampling(process, shape):
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    std = torch.tensor(process.prior_std, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, std).log_prob(z).flatten(1).sum(1)
    _close(process.prior_logp(z), ref, rtol=1e-12)
    x = process.prior_sampling(shape, seed=4)
    torch.testing.assert_close(x, randn(list(shape), 4, 0) * process.prior_std)


def test_ve_discretization_is_the_smld_ladder():
    ve = sdes.VESDE(0.01, 50.0, N=10)
    ladder = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), 10, dtype=torch.float64))
    _close(ve.discrete_sigmas, ladder)
    t = torch.arange(10, dtype=torch.float64) / 9
    f, g = ve.discretize_coefs(t)
    _close(f, torch.zeros(10, dtype=torch.float64))
    below = torch.cat([torch.zeros(1, dtype=torch.float64), ladder[:-1]])
    _close(g, (ladder ** 2 - below ** 2).sqrt(), rtol=1e-9)


def test_vp_discretization_is_the_ddpm_chain():
    vp = sdes.VPSDE(0.1, 20.0, N=1000)
    betas = torch.linspace(0.1 / 1000, 20.0 / 1000, 1000, dtype=torch.float64)
    _close(vp.discrete_betas, betas)
    i = torch.tensor([0, 1, 500, 999])
    f, g = vp.discretize_coefs(i.double() / 999)
    _close(f, (1 - betas[i]).sqrt() - 1, rtol=1e-9)
    _close(g, betas[i].sqrt(), rtol=1e-9)
    # the chain's betas sum to int_0^1 beta(t) dt = -2 log m(1)
    assert betas.sum().item() == pytest.approx(-2 * math.log(float(vp.marginal(1.0)[0])),
                                               rel=1e-12)


def test_subvp_discretization_is_euler_maruyama():
    sub = sdes.SubVPSDE(0.1, 20.0, N=250)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    f, g = sub.discretize_coefs(t)
    _close(f, sub.drift_coef(t) / 250)
    _close(g, sub.diffusion(t) / math.sqrt(250))


def test_tensor_api(process):
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.9])
    drift, g = process.sde(x, t)
    coef = process.drift_coef(t).float()[:, None, None]
    torch.testing.assert_close(drift, coef * x)
    torch.testing.assert_close(g, process.diffusion(t).float())
    mean, std = process.marginal_prob(x, t)
    a, s = process.marginal(t)
    torch.testing.assert_close(mean, a.float()[:, None, None] * x)
    torch.testing.assert_close(std, s.float())
    fx, big_g = process.discretize(x, t)
    f_i, g_i = process.discretize_coefs(t)
    torch.testing.assert_close(fx, f_i.float()[:, None, None] * x)
    torch.testing.assert_close(big_g, g_i.float())
    drift, g = process.sde(x, 0.5)                          # a float time broadcasts
    assert drift.shape == x.shape and g.shape == (1,)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse(process, probability_flow):
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.1, 0.4, 0.95])

    def score_fn(x_in, t_in):
        assert t_in.shape == (3,) and t_in.dtype == torch.float32
        return -x_in * (1 + t_in[:, None])

    rev = process.reverse(score_fn, probability_flow)
    weight = 0.5 if probability_flow else 1.0
    drift, g = rev.sde(x, t)
    f, g_fwd = process.sde(x, t)
    torch.testing.assert_close(drift, f - weight * g_fwd[:, None] ** 2 * score_fn(x, t))
    torch.testing.assert_close(g, torch.zeros(3) if probability_flow else g_fwd)
    rev_f, rev_g = rev.discretize(x, t)
    fd, gd = process.discretize(x, t)
    torch.testing.assert_close(rev_f, fd - weight * gd[:, None] ** 2 * score_fn(x, t))
    torch.testing.assert_close(rev_g, torch.zeros(3) if probability_flow else gd)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve_small"])
def test_simulated_forward_sde_matches_marginal(name):
    """Euler-Maruyama of dx = f x dt + g dw from x_0 ~ N(mu, v) against N(a mu, a^2 v + std^2)
    (VE: the path starts with the reference's Var(0) = sigma_min^2 added)."""
    process = SDES[name]()
    gen = torch.Generator().manual_seed(0)
    n, steps, mu, v = 32_000, 500, 1.5, 0.3
    x = mu + math.sqrt(v) * torch.randn(n, dtype=torch.float64, generator=gen)
    if name.startswith("ve"):
        x = x + process.sigma_min * torch.randn(n, dtype=torch.float64, generator=gen)
    dt = 1.0 / steps
    checks = {steps // 2: 0.5, steps: 1.0}
    for i in range(steps):
        t = (i + 0.5) * dt                         # midpoint coefficients: O(dt^2) bias
        f, g = float(process.drift_coef(t)), float(process.diffusion(t))
        x = x + f * x * dt + g * math.sqrt(dt) * torch.randn(n, dtype=torch.float64, generator=gen)
        if i + 1 in checks:
            a, s = (float(c) for c in process.marginal(checks[i + 1]))
            var = a * a * v + s * s
            assert float(x.mean()) == pytest.approx(a * mu, abs=5 * math.sqrt(var / n))
            assert float(x.var()) == pytest.approx(var, rel=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("make", [
    lambda: sdes.VESDE(1.0, 0.5), lambda: sdes.VESDE(0.0, 1.0), lambda: sdes.VPSDE(1.0, 0.5),
    lambda: sdes.VPSDE(-0.1, 1.0), lambda: sdes.VPSDE(0.0, 0.0), lambda: sdes.VPSDE(N=0),
])
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()
