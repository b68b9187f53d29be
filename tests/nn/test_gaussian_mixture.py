"""The samplers' oracle: GaussianMixtureScore's log-density against torch.distributions, its score
against autograd, its predictions against one another, Tweedie's formula by Monte Carlo, and its
exact draws."""

import math

import pytest
import torch

from pydiffuse import schedules, sde
from pydiffuse.nn import GaussianMixtureScore

MEANS = torch.tensor([[-2.0, 0.5, 0.0], [1.5, 1.5, -1.0], [0.0, -2.0, 1.0]], dtype=torch.float64)
COVS = torch.tensor([[[0.30, 0.10, 0.0], [0.10, 0.20, 0.05], [0.0, 0.05, 0.4]],
                     [[0.15, 0.00, 0.0], [0.00, 0.40, 0.0], [0.0, 0.0, 0.1]],
                     [[0.25, -0.08, 0.02], [-0.08, 0.25, 0.0], [0.02, 0.0, 0.3]]],
                    dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)

# (process, times at which to test): a discrete schedule, a VP SDE, a VE ladder
PROCESSES = {
    "discrete": (schedules.linear(1000), [0, 50, 400, 999]),
    "vp": (sde.VPSDE(), [1e-3, 0.1, 0.5, 1.0]),
    "ladder": (schedules.geometric_sigmas(10.0, 0.01, 10), [0.01, 0.3, 2.0, 10.0]),
}


def _mixture(name, prediction="score"):
    return GaussianMixtureScore(MEANS, COVS, WEIGHTS * 7, process=PROCESSES[name][0],
                                prediction=prediction)


def _points(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 2.5 * torch.randn(n, 3, dtype=torch.float64, generator=gen)


def _time(name, t):
    return torch.tensor([t], dtype=torch.long if name == "discrete" else torch.float64)


def _marginal(name, t):
    a, s = schedules.as_process(PROCESSES[name][0]).marginal(_time(name, t))
    return float(a), float(s)


def _torch_mixture(a, s):
    cov = a * a * COVS + s * s * torch.eye(3, dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(a * MEANS, cov)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(WEIGHTS), comps)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_log_prob_matches_torch_distributions(name):
    mix = _mixture(name)
    x = _points()
    for t in PROCESSES[name][1]:
        a, s = _marginal(name, t)
        tt = _time(name, t).expand(len(x))
        torch.testing.assert_close(mix.log_prob(x, tt), _torch_mixture(a, s).log_prob(x),
                                   rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mix.log_prob(x), _torch_mixture(1.0, 0.0).log_prob(x),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_score_is_grad_log_prob(name):
    mix = _mixture(name)
    for t in PROCESSES[name][1]:
        x = _points(seed=int(t * 10)).requires_grad_(True)
        tt = _time(name, t)
        grad, = torch.autograd.grad(mix.log_prob(x, tt).sum(), x)
        torch.testing.assert_close(mix.score(x.detach(), tt), grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(mix(x.detach(), tt), grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_predictions_follow_the_score(name):
    x = _points()
    for t in PROCESSES[name][1]:
        tt = _time(name, t)
        a, s = _marginal(name, t)
        score = _mixture(name)(x, tt)
        eps, x0, v = (_mixture(name, p)(x, tt) for p in ("eps", "x0", "v"))
        torch.testing.assert_close(eps, -s * score, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(x0, (x + s * s * score) / a, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(v, a * eps - s * x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(a * x0 + s * eps, x, rtol=1e-10, atol=1e-10)


def test_per_sample_times():
    mix = _mixture("discrete", "eps")
    x = _points(4)
    t = torch.tensor([0, 10, 500, 999])
    rows = torch.cat([mix(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(mix(x, t), rows, rtol=1e-12, atol=1e-12)


def test_tweedie_by_monte_carlo():
    """x0 prediction = E[x_0 | x_t]: self-normalized importance sampling over exact draws of x_0
    weighted by N(x_t; a x_0, sigma^2 I)."""
    mix = _mixture("vp", "x0")
    t = torch.tensor([0.3], dtype=torch.float64)
    a, s = _marginal("vp", 0.3)
    x0 = mix.sample(400_000, seed=3, dtype=torch.float64)
    xt = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.7, 0.2], [0.8, -1.2, 0.9]], dtype=torch.float64)
    log_w = -((xt[:, None, :] - a * x0[None]) ** 2).sum(-1) / (2 * s * s)       # [3, N]
    w = torch.softmax(log_w, 1)
    mc = w @ x0
    ess = 1 / (w ** 2).sum(1)
    assert (ess > 2000).all()
    torch.testing.assert_close(mix(xt, t), mc, rtol=0, atol=4 * 1.5 / ess.min().sqrt())


def test_tweedie_one_component_closed_form():
    """One Gaussian: E[x_0 | x_t] = mu + a Sigma (a^2 Sigma + sigma^2 I)^-1 (x_t - a mu)."""
    one = GaussianMixtureScore(MEANS[:1], COVS[:1], process=sde.VPSDE(), prediction="x0")
    t = torch.tensor([0.4], dtype=torch.float64)
    a, s = _marginal("vp", 0.4)
    x = _points(8)
    cov_t = a * a * COVS[0] + s * s * torch.eye(3, dtype=torch.float64)
    gain = a * COVS[0] @ torch.linalg.inv(cov_t)
    expect = MEANS[0] + (x - a * MEANS[0]) @ gain.T
    torch.testing.assert_close(one(x, t), expect, rtol=1e-10, atol=1e-10)


def test_sample_moments():
    mix = GaussianMixtureScore(MEANS, COVS, WEIGHTS)
    x = mix.sample(400_000, seed=0, dtype=torch.float64)
    mean = WEIGHTS @ MEANS
    second = (WEIGHTS[:, None, None] * (COVS + MEANS[:, :, None] * MEANS[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=0.01)
    torch.testing.assert_close(x.T.cov(), cov, rtol=0, atol=0.02)
    y = mix.sample(10, seed=0)
    assert y.dtype == torch.float32 and y.shape == (10, 3)
    torch.testing.assert_close(y, mix.sample(10, seed=0))
    assert not torch.equal(y, mix.sample(10, seed=1))


def test_covariance_specs_agree():
    means = MEANS[:2]
    diag = torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.6, 0.7]], dtype=torch.float64)
    specs = [
        (0.3, torch.full((2, 3), 0.3, dtype=torch.float64)),
        (torch.tensor([0.3, 0.6], dtype=torch.float64),
         torch.tensor([[0.3] * 3, [0.6] * 3], dtype=torch.float64)),
        (diag, diag),
    ]
    x = _points(16)
    for spec, as_diag in specs:
        mix = GaussianMixtureScore(means, spec, process=sde.VPSDE())
        full = GaussianMixtureScore(means, torch.diag_embed(as_diag), process=sde.VPSDE())
        t = torch.tensor([0.2], dtype=torch.float64)
        torch.testing.assert_close(mix.log_prob(x, t), full.log_prob(x, t), rtol=1e-12, atol=0)
        torch.testing.assert_close(mix.score(x, t), full.score(x, t), rtol=1e-12, atol=1e-12)


def test_image_shaped_events():
    gen = torch.Generator().manual_seed(5)
    means = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=gen)
    img = GaussianMixtureScore(means, 0.2, [0.3, 0.7], process=schedules.linear(100),
                               prediction="eps")
    flat = GaussianMixtureScore(means.reshape(2, -1), 0.2, [0.3, 0.7],
                                process=schedules.linear(100), prediction="eps")
    x = torch.randn(5, 2, 3, 3, generator=gen)
    t = torch.tensor([30])
    out = img(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, flat(x.reshape(5, -1), t).reshape(x.shape))
    assert img.sample(7).shape == (7, 2, 3, 3)
    assert img.dim == 18


def test_degenerate_component_still_has_a_score():
    """A zero covariance (a point mass) is fine once sigma > 0."""
    mix = GaussianMixtureScore(MEANS[:1], 0.0, process=sde.VPSDE())
    x = _points(4)
    t = torch.tensor([0.5], dtype=torch.float64)
    a, s = _marginal("vp", 0.5)
    torch.testing.assert_close(mix.score(x, t), -(x - a * MEANS[0]) / (s * s))


@pytest.mark.parametrize("kwargs,match", [
    (dict(means=torch.zeros(3), covs=1.0), "means must be"),
    (dict(means=MEANS, covs=torch.ones(2)), "covs must be"),
    (dict(means=MEANS, covs=torch.ones(3, 2)), "covs must be"),
    (dict(means=MEANS, covs=torch.ones(3, 3, 3).triu()), "symmetric"),
    (dict(means=MEANS, covs=-COVS), "semi-definite"),
    (dict(means=MEANS, covs=COVS, weights=[1.0, 2.0]), "weights"),
    (dict(means=MEANS, covs=COVS, weights=[1.0, -2.0, 1.0]), "weights"),
    (dict(means=MEANS, covs=COVS, weights=[0.0, 0.0, 0.0]), "weights"),
    (dict(means=MEANS, covs=COVS, prediction="epsilon"), "prediction"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureScore(**kwargs)


def test_bad_calls():
    mix = GaussianMixtureScore(MEANS, COVS)
    with pytest.raises(ValueError, match="no process"):
        mix(_points(2), torch.tensor([3]))
    with pytest.raises(ValueError, match="event shape"):
        _mixture("vp").score(torch.zeros(2, 4), torch.tensor([0.5]))
    with pytest.raises(TypeError, match="process must be"):
        GaussianMixtureScore(MEANS, COVS, process="vp")
    assert math.isfinite(float(mix.log_prob(_points(1))))
