"""Score-SDE training on exact cases: for N(mu, s^2 I) data the oracle's loss at t is
D a^2 s^2 / (2 (a^2 s^2 + std^2)) for VE, VP and sub-VP (score or eps prediction), likelihood
weighting multiplies each example's loss by g^2 / std^2, the discrete SMLD / DDPM variants draw
the reference's ladders; and every variant lowers its loss on toy data."""

import pytest
import torch

from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.schedules import DiscreteSchedule
from pydiffuse.sde import SubVPSDE, VESDE, VPSDE
from pydiffuse.training import ScoreSDELoss
from tests.training.test_losses_diffusion import (DIM, GAUSS_S, Shifted, TinyMLP,
                                                  assert_closes_gap, gaussian_data,
                                                  gaussian_oracle, mean_gap, toy_data,
                                                  toy_mixture, train_and_compare)

SDES = {"ve": lambda: VESDE(0.01, 3.0), "vp": VPSDE, "subvp": SubVPSDE}


def optimum(scale, std):
    """The oracle's expected loss (half-sum reduction, lambda = std^2) at marginal (a, std)."""
    v = scale ** 2 * GAUSS_S ** 2
    return 0.5 * DIM * v / (v + std ** 2)


@pytest.mark.parametrize("kind", list(SDES))
def test_oracle_is_the_minimum(kind):
    sde = SDES[kind]()
    x0 = gaussian_data(20000)
    loss = ScoreSDELoss(sde)
    torch.manual_seed(0)
    out = loss(gaussian_oracle(sde, "score"), x0)
    t = out["t"].double()
    assert t.min() >= 1e-5 and t.max() <= 1
    scale, std = sde.marginal(t)
    gap, se = mean_gap(out["per_example"] - optimum(scale, std))
    assert abs(gap) < 5 * se, (gap, se)
    # the eps-predicting oracle gives the same losses
    torch.manual_seed(0)
    eps = ScoreSDELoss(sde, "eps")(gaussian_oracle(sde, "eps"), x0)
    torch.testing.assert_close(eps["per_example"], out["per_example"], rtol=1e-3, atol=1e-5)
    # a shift c of the score costs exactly D c^2 std^2 / 2 in expectation
    torch.manual_seed(0)
    worse = loss(Shifted(gaussian_oracle(sde, "score"), 0.3), x0)
    excess, se = mean_gap(worse["per_example"] - out["per_example"] - 0.5 * DIM * 0.09 * std ** 2)
    assert abs(excess) < 5 * se, (excess, se)
    assert float((worse["per_example"] - out["per_example"]).mean()) > 0.01


@pytest.mark.parametrize("kind", list(SDES))
def test_likelihood_weighting_and_reduction(kind):
    sde = SDES[kind]()
    model = Shifted(gaussian_oracle(sde, "score"), 0.1)
    x0 = gaussian_data(512)
    runs = {}
    for name, kwargs in [("default", {}), ("likelihood", {"likelihood_weighting": True}),
                         ("mean", {"reduce_mean": True})]:
        torch.manual_seed(1)
        runs[name] = ScoreSDELoss(sde, **kwargs)(model, x0)
    t = runs["default"]["t"]
    assert torch.equal(t, runs["likelihood"]["t"])
    g2_over_std2 = (sde.diffusion(t) ** 2 / sde.marginal(t)[1] ** 2).float()
    torch.testing.assert_close(runs["likelihood"]["per_example"],
                               runs["default"]["per_example"] * g2_over_std2, rtol=1e-4, atol=0)
    torch.testing.assert_close(runs["default"]["per_example"],
                               runs["mean"]["per_example"] * DIM / 2)
    assert torch.equal(runs["default"]["loss"], runs["default"]["per_example"].mean())


class Recorder(torch.nn.Module):
    def forward(self, x, t, y=None):
        self.x, self.t = x.clone(), t.clone()
        return 0.3 * x


def test_discrete_smld_ladder():
    sde = VESDE(0.01, 3.0, N=50)
    x0 = gaussian_data(20000)
    torch.manual_seed(2)
    model = Recorder()
    ScoreSDELoss(sde, discrete=True)(model, x0[:64])
    j = model.t.double() * 49
    torch.testing.assert_close(j, j.round())                       # t = j / (N - 1)
    sigma = sde.discrete_sigmas[j.round().long()]
    z = (model.x.double() - x0[:64]) / sigma[:, None]
    assert (z.std() - 1).abs() < 0.3
    torch.manual_seed(2)
    out = ScoreSDELoss(sde, discrete=True)(gaussian_oracle(sde, "score"), x0)
    sigma = sde.discrete_sigmas[(out["t"].double() * 49).round().long()]
    gap, se = mean_gap(out["per_example"] - optimum(1.0, sigma))
    assert abs(gap) < 5 * se, (gap, se)


class ChainTime:
    """The VP chain of ``sde.discrete_betas`` with the SDE's time t = j / (N - 1): the oracle's
    process for the discrete DDPM loss."""

    kind = "sde"

    def __init__(self, sde):
        self.chain, self.n = DiscreteSchedule(sde.discrete_betas), sde.N

    def marginal(self, t):
        return self.chain.marginal((torch.as_tensor(t).double() * (self.n - 1)).round().long())


def test_discrete_ddpm_chain():
    sde = VPSDE(N=50)
    chain = DiscreteSchedule(sde.discrete_betas)
    x0 = gaussian_data(20000)
    model = Recorder()
    torch.manual_seed(3)
    out = ScoreSDELoss(sde, "eps", discrete=True, reduce_mean=True)(model, x0[:64])
    j = (model.t.double() * 49).round().long()
    scale, std = (c[:, None] for c in chain.marginal(j))
    z = (model.x.double() - scale * x0[:64]) / std                  # the chain's alpha_bar
    expect = ((z - 0.3 * model.x.double()) ** 2).mean(1)            # eps target, mean reduction
    torch.testing.assert_close(out["per_example"].double(), expect, rtol=1e-4, atol=1e-5)
    torch.manual_seed(3)
    oracle = GaussianMixtureScore(torch.full((1, DIM), 0.2), GAUSS_S ** 2, process=ChainTime(sde),
                                  prediction="eps")
    out = ScoreSDELoss(sde, "eps", discrete=True)(oracle, x0)
    scale, std = chain.marginal((out["t"].double() * 49).round().long())
    gap, se = mean_gap(out["per_example"] - optimum(scale, std))
    assert abs(gap) < 5 * se, (gap, se)


def test_discrete_refusals():
    with pytest.raises(ValueError, match="discrete"):
        ScoreSDELoss(SubVPSDE(), discrete=True)
    with pytest.raises(ValueError, match="discrete"):
        ScoreSDELoss(VESDE(), discrete=True, likelihood_weighting=True)
    with pytest.raises(ValueError, match="prediction"):
        ScoreSDELoss(VPSDE(), "x0")


# -- every variant trains -----------------------------------------------------------------------

def toy_objectives():
    """name -> (objective, the exact optimum)."""
    means = torch.cat([g.means for g in toy_mixture()])

    def mixture(process, prediction="score"):
        return GaussianMixtureScore(means, GAUSS_S ** 2, process=process, prediction=prediction)

    ve, vp, subvp = VESDE(0.01, 3.0, N=100), VPSDE(N=100), SubVPSDE()
    return {
        "ve": (ScoreSDELoss(ve), mixture(ve)),
        "vp": (ScoreSDELoss(vp), mixture(vp)),
        "subvp": (ScoreSDELoss(subvp), mixture(subvp)),
        "vp-eps-likelihood": (ScoreSDELoss(vp, "eps", likelihood_weighting=True),
                              mixture(vp, "eps")),
        "smld": (ScoreSDELoss(ve, discrete=True), mixture(ve)),
        "ddpm": (ScoreSDELoss(vp, "eps", discrete=True), mixture(ChainTime(vp), "eps")),
    }


@pytest.mark.parametrize("name", list(toy_objectives()))
def test_trains_on_toy_data(name):
    torch.manual_seed(0)
    objective, oracle = toy_objectives()[name]
    before, after, floor = train_and_compare(objective, TinyMLP(time="unit"), toy_data(),
                                             oracle=oracle, lr=1e-2)
    assert_closes_gap(before, after, floor)
