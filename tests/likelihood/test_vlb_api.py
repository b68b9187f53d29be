"""``pydiffuse.likelihood.vlb`` term by term against closed forms, for fixed and learned
variances, eps / x0 / v predictions, full and respaced schedules and 256 or 17 data levels.

The exact approach: the model is the Gaussian oracle (one-component ``GaussianMixtureScore``,
data N(mu, s^2 I)), wrapped to record every x_t and t it is called with. Given x_0 and the
recorded x_t, each term is a closed form, computed here from the schedule's alpha_bar alone:

    x0^ = E[x_0 | x_t] = mu + k (x_t - a mu),  k = a s^2 / (a^2 s^2 + sigma^2)   (the oracle),
    L_{i} (i > 0) = sum_d 1/2 (log Sigma_i - log beta~_i + beta~_i / Sigma_i - 1)
                    + c0_i^2 (x_0 - x0^)^2 / (2 Sigma_i),
    L_0 = -sum_d log(Phi((x_0 + w - x0^) / sd_0) - Phi((x_0 - w - x0^) / sd_0)), w = 1/(bins-1),
          the outer levels' bins open to +-inf (at position 0 the posterior mean is x0^),
    L_T = sum_d 1/2 (alpha_bar_K x_0^2 - alpha_bar_K - log(1 - alpha_bar_K)),

so the comparison is exact (float64) for whatever noise ``vlb`` drew; the noise itself is checked
separately to be standard normal and fresh per term. The oracle reads the model time as an index
into the *full* schedule, so a respaced run that called the model with positions instead of the
original indices would give a different x0^ and fail the comparison.
"""

import math

import pytest
import torch

from pydiffuse import schedules
from pydiffuse.likelihood import VLBResult, vlb
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.sde import VPSDE

MU, S, D = 0.2, 0.3, 3


class Recorder(torch.nn.Module):
    """The oracle, recording (x_t, t, y); with ``learned`` it appends v = tanh(x_t) (2C)."""

    def __init__(self, oracle, learned=False):
        super().__init__()
        self.oracle, self.learned, self.calls = oracle, learned, []

    def forward(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone(), y))
        out = self.oracle(x, t)
        return torch.cat([out, torch.tanh(x)], 1) if self.learned else out


def gaussian_oracle(process, prediction="score"):
    """The exact model of N(MU, S^2 I) data on ``process`` (float64 throughout)."""
    return GaussianMixtureScore(torch.full((1, D), MU, dtype=torch.float64), S ** 2,
                                process=process, prediction=prediction)


def grid_data(n, bins, seed=0):
    """N(MU, S^2) draws rounded to ``bins`` levels of [-1, 1], float64 [n, D], with the outer
    levels -1 and 1 present."""
    g = torch.Generator().manual_seed(seed)
    x = (MU + S * torch.randn(n, D, generator=g, dtype=torch.float64)).clamp(-1, 1)
    x = ((x + 1) / 2 * (bins - 1)).round() / (bins - 1) * 2 - 1
    x[0, 0], x[1, 1] = -1.0, 1.0
    return x


def closed_form_terms(sched, x0, calls, variance, bins):
    """[B, K] terms and [B] prior from the recorded x_t (see the module docstring)."""
    ab = sched.alphas_cumprod
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    beta = 1 - ab / ab_prev
    post_var = beta * (1 - ab_prev) / (1 - ab)
    log_post = post_var.log()
    log_post[0] = log_post[1]                                # the clipped log beta~ at position 0
    c0 = ab_prev.sqrt() * beta / (1 - ab)
    w = 1 / (bins - 1)
    terms = []
    for i, (x_t, _, _) in enumerate(calls):
        a, sig2 = ab[i].sqrt(), 1 - ab[i]
        x0_hat = MU + a * S ** 2 / (a * a * S ** 2 + sig2) * (x_t - a * MU)
        if variance == "fixed_small":
            log_var = log_post[i].expand_as(x0)
        elif variance == "fixed_large":      # iDDPM: beta~_1 at position 0, beta_i after
            log_var = (post_var[1] if i == 0 else beta[i]).log().expand_as(x0)
        else:
            f = (torch.tanh(x_t) + 1) / 2
            log_var = f * beta[i].log() + (1 - f) * log_post[i]
        if i == 0:
            normal = torch.distributions.Normal(x0_hat, (0.5 * log_var).exp())
            hi = torch.where(x0 > 1 - w, torch.ones_like(x0), normal.cdf(x0 + w))
            lo = torch.where(x0 < -1 + w, torch.zeros_like(x0), normal.cdf(x0 - w))
            terms.append(-(hi - lo).log().sum(1))
        else:
            var = log_var.exp()
            kl = 0.5 * (log_var - log_post[i] + post_var[i] / var - 1) \
                + c0[i] ** 2 * (x0 - x0_hat) ** 2 / (2 * var)
            terms.append(kl.sum(1))
    a2 = ab[-1]
    prior = 0.5 * (a2 * x0 ** 2 - a2 - (1 - a2).log()).sum(1)
    return torch.stack(terms, 1), prior


CASES = [("fixed_small", "eps", None, 256), ("fixed_large", "v", 10, 256),
         ("learned_range", "x0", "5,3", 17), ("fixed_small", "score", 8, 17)]


@pytest.mark.parametrize("variance,prediction,steps,bins", CASES)
def test_each_term_is_its_closed_form(variance, prediction, steps, bins):
    full = schedules.linear(40, beta_start=1e-3, beta_end=0.2)
    oracle = gaussian_oracle(full, prediction)
    model = Recorder(oracle, learned=variance == "learned_range")
    x0 = grid_data(64, bins)
    r = vlb(model, full, x0, prediction=prediction, variance=variance, steps=steps, bins=bins,
            seed=3, progress=False)
    sched = full if steps is None else full.respace(steps)
    assert isinstance(r, VLBResult) and r.terms.shape == (64, len(sched))
    assert len(model.calls) == len(sched)
    for i, (_, t, _) in enumerate(model.calls):        # the model sees the original indices
        assert torch.equal(t, sched.timesteps[i].expand(64))
    terms, prior = closed_form_terms(sched, x0, model.calls, variance, bins)
    torch.testing.assert_close(r.terms, terms, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(r.prior, prior, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r.total, prior + terms.sum(1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(r.bpd, r.total / (D * math.log(2)))
    assert (r.terms[:, 1:] >= 0).all() and (r.terms[:, 0] > 0).all()


def test_the_noise_is_standard_normal_and_fresh_per_term():
    """z = (x_t - a x_0) / sigma over 40 terms x 64 examples x 3 dims: mean and variance of a
    standard normal (measured: mean 0.015, var 1.008; the bounds 0.1 are > 6 standard errors),
    and no two terms share their noise (measured: the largest of the 780 correlations, each of
    192 values (sd 0.07), is 0.23; shared noise would give 1)."""
    sched = schedules.linear(40, beta_start=1e-3, beta_end=0.2)
    model = Recorder(gaussian_oracle(sched, "eps"))
    x0 = grid_data(64, 256)
    vlb(model, sched, x0, variance="fixed_small", seed=0, progress=False)
    a, s = sched.alphas_cumprod.sqrt(), (1 - sched.alphas_cumprod).sqrt()
    z = torch.stack([(x_t - a[i] * x0) / s[i] for i, (x_t, _, _) in enumerate(model.calls)])
    assert abs(z.mean().item()) < 0.1 and abs(z.var().item() - 1) < 0.1
    corr = torch.corrcoef(z.reshape(40, -1))
    assert (corr - torch.eye(40, dtype=torch.float64)).abs().max() < 0.4


def test_batches_labels_and_seeds():
    """batch_size splits x_0 and the per-example labels and changes nothing; respacing by
    ``steps`` equals passing the respaced schedule; the seed sets the draws."""
    full = schedules.linear(40, beta_start=1e-3, beta_end=0.2)
    oracle = gaussian_oracle(full)
    x0 = grid_data(10, 256)
    y = torch.arange(10)
    whole = vlb(Recorder(oracle), full, x0, prediction="score", steps=6, seed=1, progress=False,
                model_kwargs={"y": y})
    model = Recorder(oracle)
    parts = vlb(model, full.respace(6), x0, prediction="score", variance="fixed_small",
                batch_size=4, seed=1, progress=False, model_kwargs={"y": y})
    torch.testing.assert_close(parts.terms, whole.terms, rtol=0, atol=1e-12)
    assert [len(c[0]) for c in model.calls] == [4] * 6 + [4] * 6 + [2] * 6
    assert torch.equal(torch.cat([c[2] for c in model.calls[::6]]), y)
    other = vlb(Recorder(oracle), full, x0, prediction="score", steps=6, seed=2, progress=False)
    assert not torch.allclose(other.terms, whole.terms)


def test_the_variance_follows_the_model_output_by_default():
    """variance=None reads the model: 2C channels give the learned-range bound, C the fixed-small
    one (a 2C model must not silently get a fixed variance)."""
    sched = schedules.linear(12, beta_start=1e-3, beta_end=0.3)
    x0 = grid_data(6, 256)
    auto = {}
    for learned, expected in ((True, "learned_range"), (False, "fixed_small")):
        model = Recorder(gaussian_oracle(sched, "eps"), learned=learned)
        auto[learned] = vlb(model, sched, x0, seed=3, progress=False).terms
        explicit = vlb(model, sched, x0, variance=expected, seed=3, progress=False)
        torch.testing.assert_close(auto[learned], explicit.terms, rtol=0, atol=0)
    fixed = vlb(Recorder(gaussian_oracle(sched, "eps"), learned=True), sched, x0,
                variance="fixed_small", seed=3, progress=False)
    assert not torch.allclose(fixed.terms, auto[True])


def test_bad_input():
    sched = schedules.linear(10, beta_start=1e-3, beta_end=0.3)
    oracle = gaussian_oracle(sched)
    x0 = grid_data(4, 256)
    with pytest.raises(ValueError, match="2C"):
        vlb(oracle, sched, x0, prediction="score", variance="learned_range", progress=False)
    with pytest.raises(ValueError, match="variance"):
        vlb(oracle, sched, x0, variance="fixed", progress=False)
    with pytest.raises(ValueError, match="prediction"):
        vlb(oracle, sched, x0, prediction="noise", progress=False)
    with pytest.raises(ValueError, match="discrete schedule"):
        vlb(oracle, VPSDE(), x0, progress=False)
    with pytest.raises(TypeError, match="floating"):
        vlb(oracle, sched, torch.zeros(4, D, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        vlb(oracle, sched, x0, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="bins"):
        vlb(oracle, sched, x0, prediction="score", bins=1, progress=False)
