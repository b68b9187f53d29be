"""LSGM's importance-weighted objectives (``iw_times``, ``LSGMLoss(iw_sample_p=, iw_sample_q=)``):
each weighting's estimate is unbiased for its integral (against quadrature of the closed-form
error of an exact Gaussian eps model, and against the uniform-t estimate of the same objective
on the LSGM prior network), the sampled times follow the proposal density (Kolmogorov-Smirnov),
and the former weightings stay available exactly."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pydiffuse import config
from pydiffuse.data import digits
from pydiffuse.nn import build_lsgm
from pydiffuse.nn.lsgm import diffuse
from pydiffuse.sde import SubVPSDE, VPSDE
from pydiffuse.training import LSGMLoss
from pydiffuse.training.lsgm_loss import MODES, iw_lambda, iw_times

SDE, EPS = VPSDE(), 1e-3
MU = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)       # q(z_0) = N(MU, SQ^2)
SQ = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
M_P, S_P = 0.4, 0.8                                            # the model: p_0 = N(M_P, S_P^2 I)
IW = [m for m, (_, proposal) in MODES.items() if proposal != "uniform"]
UNIFORM_OF = {"ll_iw": "ll_uniform", "ll_logsnr_iw": "ll_uniform",
              "drop_all_iw": "drop_all_uniform", "drop_sigma2t_iw": "drop_sigma2t_uniform"}


def gaussian_error(t):
    """E|n - eps_theta(z_t, t)|^2 in closed form, eps_theta the exact eps of p_t: eps_theta(z) =
    c (z - a M_P), c = s / (a^2 S_P^2 + s^2), so n - eps_theta = (1 - c s) n - c a (z_0 - M_P)."""
    a, s = (v[:, None] for v in SDE.marginal(t))
    c = s / (a * a * S_P ** 2 + s * s)
    return ((1 - c * s) ** 2 + (c * a) ** 2 * ((MU - M_P) ** 2 + SQ ** 2)).sum(1)


def mean_se(v):
    return float(v.mean()), float(v.std()) / math.sqrt(len(v))


@pytest.mark.parametrize("mode", list(MODES))
def test_weighting_is_unbiased_for_its_integral(mode):
    """E[w err(t)] = int_eps^1 lambda(t) err(t) dt (trapezoid on a 2e5-point log grid) within 4
    standard errors (measured with 2e5 draws: all within 0.4 SE); with the proposal's times but
    the uniform density's weight (1 - eps) lambda(t) the estimate is > 10 SE off."""
    kind, proposal = MODES[mode]
    grid = torch.logspace(math.log10(EPS), 0, 200_001, dtype=torch.float64)
    exact = float(torch.trapezoid(iw_lambda(SDE, kind, grid) * gaussian_error(grid), grid))
    torch.manual_seed(0)
    t, w = iw_times(SDE, mode, 50_000, EPS)
    err = gaussian_error(t)
    mean, se = mean_se(w * err)
    assert abs(mean - exact) < 4 * se
    if proposal != "uniform":
        wrong, _ = mean_se((1 - EPS) * iw_lambda(SDE, kind, t) * err)
        assert abs(wrong - exact) > 10 * se


@pytest.mark.parametrize("mode", list(UNIFORM_OF))
def test_importance_sampled_matches_uniform_on_the_prior_network(mode):
    """On the LSGM prior (an MLP mixed score, untrained, z_0 ~ N(MU', SQ')), the importance-
    sampled estimate of int lambda E|n - eps_theta|^2 agrees with the uniform-t one within 4
    combined standard errors; the proposal's times with the uniform weight do not."""
    torch.manual_seed(0)
    prior = build_lsgm(SDE, latent_shape=[4], vae={"channels": 8},
                       prior={"hidden": 32, "depth": 1})[0].prior
    z0 = torch.cat([MU, MU[:1]]) + torch.cat([SQ, SQ[:1]]) * torch.randn(40_000, 4,
                                                                         dtype=torch.float64)

    def estimate(m, reweight=False):
        t, w = iw_times(SDE, m, len(z0), EPS)
        if reweight:
            w = (1 - EPS) * iw_lambda(SDE, MODES[m][0], t)
        z_t, noise = diffuse(SDE, z0.float(), t)
        with torch.no_grad():
            err = (noise - prior(z_t, t)).double().pow(2).sum(1)
        return mean_se(w * err)

    (iw, se_iw), (uni, se_uni) = estimate(mode), estimate(UNIFORM_OF[mode])
    bound = 4 * math.hypot(se_iw, se_uni)
    assert abs(iw - uni) < bound
    assert abs(estimate(mode, reweight=True)[0] - uni) > 2.5 * bound


def proposal_cdf(mode, t):
    """The proposal's CDF from its defining quantity g: F = (g(t) - g(eps)) / (g(1) - g(eps)),
    g = log sigma^2 (ll_iw), sigma^2 (drop_sigma2t_iw), -log SNR (ll_logsnr_iw), int_0^t m^2
    (drop_all_iw: cumulative trapezoid on a fine grid)."""
    def g(u):
        m, s = SDE.marginal(u)
        return {"ll_iw": lambda: 2 * s.log(), "drop_sigma2t_iw": lambda: s * s,
                "ll_logsnr_iw": lambda: 2 * (s / m).log()}[mode]()
    if mode == "drop_all_iw":
        grid = torch.linspace(EPS, 1, 400_001, dtype=torch.float64)
        cum = torch.cumulative_trapezoid(SDE.marginal(grid)[0] ** 2, grid)
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), cum]) / cum[-1]
        return torch.from_numpy(np.interp(t.numpy(), grid.numpy(), cum.numpy()))
    lo, hi = g(EPS), g(1.0)
    return (g(t) - lo) / (hi - lo)


@pytest.mark.parametrize("mode", IW)
def test_sampled_times_follow_the_proposal(mode):
    """Kolmogorov-Smirnov: sup |F_n - F| < 1.95 / sqrt(n) (the 0.1% level) against the
    proposal's CDF, and > 10 / sqrt(n) against the uniform CDF and the other proposals'."""
    n = 20_000
    torch.manual_seed(0)
    t = iw_times(SDE, mode, n, EPS)[0].sort().values
    assert EPS <= float(t[0]) and float(t[-1]) <= 1

    def ks(cdf):
        f = cdf(t)
        i = torch.arange(1, n + 1, dtype=torch.float64)
        return float(torch.maximum(i / n - f, f - (i - 1) / n).max())

    assert ks(lambda u: proposal_cdf(mode, u)) < 1.95 / math.sqrt(n)
    assert ks(lambda u: (u - EPS) / (1 - EPS)) > 10 / math.sqrt(n)
    for other in IW:
        if other != mode:
            assert ks(lambda u: proposal_cdf(other, u)) > 10 / math.sqrt(n), other


def tiny():
    torch.manual_seed(0)
    return build_lsgm(VPSDE(), latent_shape=[4], vae={"channels": 8},
                      prior={"hidden": 32, "depth": 1})[0]


def test_defaults_are_lsgm_and_the_former_weightings_stay_exact():
    """LSGMLoss's defaults are LSGM's (drop_sigma2t_iw for the prior, ll_iw for the VAE); the
    shipped model's record (prior_weighting: eps, deprecated) is configs/lsgm.yaml's explicit
    pair, with the same gradients; the prior's weight is exactly 1, so its loss is the former
    unweighted mean |n - eps_theta|^2 (and the VAE's log-SNR draw is ``likelihood_times``')."""
    loss = LSGMLoss()
    assert (loss.iw_sample_p, loss.iw_sample_q) == ("drop_sigma2t_iw", "ll_iw")
    objective = config.load_config("configs/lsgm.yaml")["objective"]
    record = json.loads(Path("pydiffuse/weights/lsgm/config.json").read_text())
    assert record["objective"]["prior_weighting"] == "eps"
    with pytest.warns(DeprecationWarning, match="iw_sample_p='drop_all_uniform'"):
        legacy = config.build_objective(record, VPSDE())
    assert (legacy.iw_sample_p, legacy.iw_sample_q) == (objective["iw_sample_p"],
                                                       objective["iw_sample_q"])
    x = digits("train").tensors[0][:8]
    model = tiny()
    torch.manual_seed(3)
    t, w = iw_times(model.sde, "drop_all_uniform", 8, model.eps)
    assert torch.equal(w / (1 - model.eps), torch.ones(8, dtype=torch.float64))
    grads = []
    for kw in ({"iw_sample_p": "drop_all_uniform", "iw_sample_q": "ll_logsnr_iw"},
               {"prior_weighting": "eps"}):
        model.zero_grad()
        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            LSGMLoss(**kw)(model, x)["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_refused_processes():
    """LSGM's formulas are the VP SDE's: the sub-VP SDE is refused, and drop_all_iw's inverse
    CDF needs beta_max > beta_min."""
    with pytest.raises(ValueError, match="VP SDE"):
        iw_times(SubVPSDE(), "ll_iw", 4, EPS)
    with pytest.raises(ValueError, match="drop_all_iw"):
        iw_times(VPSDE(5.0, 5.0), "drop_all_iw", 4, EPS)
    with pytest.raises(ValueError, match="unknown LSGM weighting"):
        iw_times(SDE, "ll", 4, EPS)
