"""Score-matching objectives on exact cases: NCSN's denoising score matching at its Gaussian
minimum D s^2 / (2 (s^2 + sigma^2)) per level, exact score matching's closed form for a linear
score, sliced score matching (SSM, SSM-VR; Gaussian and Rademacher projections) equal to exact
score matching in expectation; and every objective lowers its loss on toy data."""

import math

import pytest
import torch

from pydiffuse import schedules
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.training import DenoisingScoreMatching, ExactScoreMatching, SlicedScoreMatching
from tests.training.test_losses_diffusion import (DIM, GAUSS_MU, GAUSS_S, Shifted, TinyMLP,
                                                  assert_closes_gap, gaussian_data,
                                                  gaussian_oracle, mean_gap, toy_data,
                                                  toy_mixture, train_and_compare)

LADDER = schedules.NoiseLadder(schedules.geometric_sigmas(1.0, 0.01, 10))


def level_sigma(frac):
    """Each example's sigma from its time fraction (1 = the largest sigma)."""
    pos = ((1 - frac.double()) * (len(LADDER) - 1)).round().long()
    return LADDER.sigmas[pos]


def test_dsm_by_hand():
    x0 = gaussian_data(6)

    class Recorder(torch.nn.Module):
        def forward(self, x, t, y=None):
            self.x, self.t = x.clone(), t.clone()
            return -x

    model = Recorder()
    torch.manual_seed(0)
    out = DenoisingScoreMatching(LADDER)(model, x0)
    sigma = model.t.double()[:, None]
    torch.testing.assert_close(sigma[:, 0], level_sigma(out["t"]))
    z = (model.x.double() - x0) / sigma                        # x~ = x + sigma z
    expect = 0.5 * ((sigma * -model.x.double() + z) ** 2).sum(1)    # lambda = sigma^2
    torch.testing.assert_close(out["per_example"].double(), expect, rtol=1e-5, atol=1e-5)


def test_dsm_oracle_is_the_minimum():
    oracle = gaussian_oracle(LADDER, "score")
    x0 = gaussian_data(20000)
    loss = DenoisingScoreMatching(LADDER)
    torch.manual_seed(1)
    out = loss(oracle, x0)
    sigma2 = level_sigma(out["t"]) ** 2
    expect = 0.5 * DIM * GAUSS_S ** 2 / (GAUSS_S ** 2 + sigma2)
    gap, se = mean_gap(out["per_example"] - expect)
    assert abs(gap) < 5 * se, (gap, se)
    # a constant shift c of the optimal score costs exactly sigma^2 D c^2 / 2 in expectation
    torch.manual_seed(1)
    worse = loss(Shifted(oracle, 0.5), x0)
    excess, se = mean_gap(worse["per_example"] - out["per_example"] - 0.5 * DIM * 0.25 * sigma2)
    assert abs(excess) < 5 * se, (excess, se)
    assert float((worse["per_example"] - out["per_example"]).mean()) > 0.01


class LinearScore(torch.nn.Module):
    """s(x) = A x + b, called at time 0."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(a), torch.nn.Parameter(b)

    def forward(self, x, t, y=None):
        assert t.shape == (len(x),) and not t.any()
        return x @ self.a.T + self.b


def gaussian_score(scale=1.0):
    """c s*(x) = -c (x - mu) / s^2 of the Gaussian data, as a LinearScore."""
    a = -scale / GAUSS_S ** 2 * torch.eye(DIM)
    return LinearScore(a, -a @ torch.full((DIM,), GAUSS_MU))


def test_exact_sm_closed_form():
    x0 = gaussian_data(20000)
    out = ExactScoreMatching()(gaussian_score(), x0)
    s = -(x0.double() - GAUSS_MU) / GAUSS_S ** 2
    # per example: tr(grad s) = -D / s^2 exactly, plus ||s||^2 / 2
    expect = -DIM / GAUSS_S ** 2 + 0.5 * (s ** 2).sum(1)
    torch.testing.assert_close(out["per_example"].double(), expect, rtol=1e-5, atol=1e-3)
    assert out["t"] is None
    # E J = -D / s^2 + D / (2 s^2) = -D / (2 s^2)
    gap, se = mean_gap(out["per_example"] + DIM / (2 * GAUSS_S ** 2))
    assert abs(gap) < 5 * se, (gap, se)
    # J(c s*) = -c D / s^2 + c^2 D / (2 s^2): the true score (c = 1) is the minimum, by
    # (c - 1)^2 D / (2 s^2) in expectation
    for c in (0.8, 1.25):
        worse = ExactScoreMatching()(gaussian_score(c), x0)["per_example"]
        excess, se = mean_gap(worse - out["per_example"])
        expect = (c - 1) ** 2 * DIM / (2 * GAUSS_S ** 2)
        assert abs(excess - expect) < 5 * se and excess > 10 * se, (c, excess, expect, se)


def test_exact_sm_refuses_high_dimensions():
    with pytest.raises(ValueError, match="SlicedScoreMatching"):
        ExactScoreMatching(max_dim=4)(LinearScore(torch.eye(8), torch.zeros(8)),
                                      torch.randn(2, 8))


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
def test_sliced_sm_expectation_is_exact_sm(projection):
    g = torch.Generator().manual_seed(0)
    model = LinearScore(torch.randn(DIM, DIM, generator=g), torch.randn(DIM, generator=g))
    x0 = gaussian_data(40000)
    exact = ExactScoreMatching()(model, x0)["per_example"]
    for vr in (False, True):
        torch.manual_seed(1)
        sliced = SlicedScoreMatching(projection=projection, variance_reduction=vr)(model, x0)
        gap, se = mean_gap(sliced["per_example"] - exact)
        assert abs(gap) < 5 * se, (vr, gap, se)


def test_sliced_sm_particles():
    model = gaussian_score()                   # A = -I / s^2: v^T A v = -||v||^2 / s^2
    x0 = gaussian_data(8)
    exact = ExactScoreMatching()(model, x0)["per_example"]
    # Rademacher ||v||^2 = D: SSM-VR is exact for every draw
    torch.manual_seed(2)
    rad = SlicedScoreMatching(projection="rademacher", variance_reduction=True, particles=3)
    torch.testing.assert_close(rad(model, x0)["per_example"], exact)
    # Gaussian: the mean of P draws of ||v||^2 has standard error sqrt(2 D / P)
    torch.manual_seed(2)
    many = SlicedScoreMatching(particles=4000, variance_reduction=True)(model, x0)
    se = math.sqrt(2 * DIM / 4000) / GAUSS_S ** 2
    assert ((many["per_example"] - exact).abs() < 5 * se).all()
    assert many["per_example"].shape == (8,)


# -- every objective trains ---------------------------------------------------------------------

def toy_objectives():
    """name -> (objective, model, the exact optimum)."""
    # the mixture's exact score under the ladder: sigma = t; at t = 0 the data's own score
    oracle = GaussianMixtureScore(torch.cat([g.means for g in toy_mixture()]), GAUSS_S ** 2,
                                  process=LADDER)
    return {
        "ncsn": (DenoisingScoreMatching(LADDER), TinyMLP(time="log"), oracle),
        "ncsnv2": (DenoisingScoreMatching(LADDER), TinyMLP(time=None, inv_sigma=True), oracle),
        "esm": (ExactScoreMatching(), TinyMLP(time=None), oracle),
        "ssm": (SlicedScoreMatching(), TinyMLP(time=None), oracle),
        "ssm-vr": (SlicedScoreMatching(variance_reduction=True, projection="rademacher"),
                   TinyMLP(time=None), oracle),
    }


@pytest.mark.parametrize("name", list(toy_objectives()))
def test_trains_on_toy_data(name):
    torch.manual_seed(0)
    objective, model, oracle = toy_objectives()[name]
    before, after, floor = train_and_compare(objective, model, toy_data(), oracle=oracle,
                                             lr=1e-2)
    assert_closes_gap(before, after, floor)
