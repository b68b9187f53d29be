"""Discrete-diffusion objectives on exact cases: DDPM's simple loss by hand and at its Gaussian
minimum (eps, x0, v), the VLB pieces against closed forms (Gaussian KL, discretized Gaussian,
L_T, the whole bound of the exact posterior-mean model), iDDPM's stop-gradient, the noisy
classifier's cross-entropy, label dropout; and every objective lowers its loss on toy data.

The tiny MLP and ``train_and_compare`` here are shared with the score and SDE loss tests."""

import math

import pytest
import torch

from pydiffuse import schedules
from pydiffuse.config import build_objective
from pydiffuse.likelihood import (discretized_gaussian_log_likelihood, normal_kl, p_mean_logvar,
                                  prior_kl, vlb)
from pydiffuse.likelihood.vlb import gather_rows, vlb_columns
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.training import ClassifierLoss, DDPMLoss, HybridLoss, VLBLoss, label_dropout
from pydiffuse.training.timestep_samplers import UniformSampler

# -- shared: a tiny MLP, toy data, a short training run -----------------------------------------


class TinyMLP(torch.nn.Module):
    """x [B, D] and a time feature -> [B, out_mult D] (or [B, classes] logits).

    time: "index" (t / scale), "unit", "log" (log sigma), or None (unconditional in time);
    inv_sigma: divide the output by t (NCSNv2's s(x) / sigma)."""

    def __init__(self, dim=2, out=None, time="unit", scale=1.0, num_classes=None,
                 inv_sigma=False, width=64):
        super().__init__()
        self.time, self.scale, self.inv_sigma = time, scale, inv_sigma
        feats = dim + (9 if time else 0)
        self.inp = torch.nn.Linear(feats, width)
        self.embed = None if num_classes is None else torch.nn.Embedding(num_classes + 1, width)
        self.body = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(width, width),
                                        torch.nn.SiLU(), torch.nn.Linear(width, out or dim))

    def forward(self, x, t, y=None):
        h = [x]
        if self.time is not None:
            s = t.float() / self.scale if self.time != "log" else t.float().log() / 5
            k = torch.arange(1, 5, device=x.device) * math.pi
            h += [s[:, None], torch.sin(s[:, None] * k), torch.cos(s[:, None] * k)]
        h = self.inp(torch.cat(h, 1))
        if self.embed is not None and y is not None:
            h = h + self.embed(y)
        out = self.body(h)
        return out / t[:, None] if self.inv_sigma else out


def toy_mixture():
    """Two well-separated 2-D components inside [-1, 1], with class labels."""
    return [GaussianMixtureScore([[-0.5, -0.4]], 0.15 ** 2), GaussianMixtureScore(
        [[0.5, 0.4]], 0.15 ** 2)]


def toy_data(n=2048, labels=False):
    parts = [g.sample(n // 2, seed=i) for i, g in enumerate(toy_mixture())]
    x = torch.cat(parts)
    y = torch.arange(2).repeat_interleave(n // 2)
    return (x, y) if labels else x


def train_and_compare(objective, model, data, *, oracle=None, evaluate=None, steps=150,
                      lr=3e-3, batch=256):
    """``steps`` Adam steps on random batches of ``data``; returns (before, after, floor): the
    loss of the model before and after, and of ``oracle`` (the exact optimum; 0 if None), all
    measured on the whole data with one fixed seed (the same times and noise), by ``evaluate``
    (another objective) if given."""
    evaluate = evaluate or objective

    def measure(m):
        state = torch.get_rng_state()
        torch.manual_seed(1234)
        loss = float(evaluate(m, data)["loss"].detach())
        torch.set_rng_state(state)
        return loss

    torch.manual_seed(0)
    before = measure(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data[0]) if isinstance(data, tuple) else len(data)
    for _ in range(steps):
        idx = torch.randint(n, (batch,))
        part = tuple(d[idx] for d in data) if isinstance(data, tuple) else data[idx]
        out = objective(model, part)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return before, measure(model), 0.0 if oracle is None else measure(oracle)


def assert_closes_gap(before, after, floor, share=0.5):
    """Training closed at least ``share`` of the gap between the start and the optimum."""
    assert before - floor > 0.05 * abs(before) + 1e-3, (before, floor)   # there was a gap
    assert after - floor < (1 - share) * (before - floor), (before, after, floor)


def mean_gap(values: torch.Tensor) -> tuple:
    """(mean, standard error) of a Monte Carlo sample."""
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


# -- DDPM's simple loss -------------------------------------------------------------------------

class Recorder(torch.nn.Module):
    """Returns 0.5 x_t + 0.1 and keeps what it was called with."""

    def forward(self, x, t, y=None):
        self.x, self.t, self.y = x.clone(), t.clone(), y
        return 0.5 * x + 0.1


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_simple_by_hand(prediction):
    sched = schedules.from_betas([0.1, 0.5, 0.3])
    ab = torch.tensor([0.9, 0.45, 0.315], dtype=torch.float64)     # 0.9, 0.9 * 0.5, 0.45 * 0.7
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.25], [-1.0, 0.0], [2.0, 3.0]])
    model = Recorder()
    torch.manual_seed(0)
    out = DDPMLoss(sched, prediction)(model, x0)
    assert model.t.dtype == torch.long
    a, s = ab[model.t].sqrt()[:, None], (1 - ab[model.t]).sqrt()[:, None]
    eps = (model.x.double() - a * x0) / s
    target = {"eps": eps, "x0": x0.double(), "v": a * eps - s * x0}[prediction]
    per = ((0.5 * model.x.double() + 0.1 - target) ** 2).mean(1)
    torch.testing.assert_close(out["per_example"].double(), per, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"].double(), per.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["t"], model.t.float() / 2)


GAUSS_MU, GAUSS_S, DIM = 0.2, 0.15, 2


def gaussian_oracle(process, prediction):
    return GaussianMixtureScore(torch.full((1, DIM), GAUSS_MU), GAUSS_S ** 2, process=process,
                                prediction=prediction)


def gaussian_data(n, seed=0):
    return GAUSS_MU + GAUSS_S * torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def ddpm_minimum(prediction, ab):
    """The per-dimension minimum of E (target - optimum)^2 at alpha_bar for N(mu, s^2) data:
    eps: a^2 s^2 / V, x0: s^2 sigma^2 / V = Var(x0 | x_t), v: s^2 / V; V = a^2 s^2 + sigma^2."""
    s2 = GAUSS_S ** 2
    v = ab * s2 + (1 - ab)
    return {"eps": ab * s2 / v, "x0": s2 * (1 - ab) / v, "v": s2 / v}[prediction]


class Shifted(torch.nn.Module):
    """A model's output plus a constant."""

    def __init__(self, model, shift):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x, t, y=None):
        return self.model(x, t) + self.shift


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_oracle_is_the_minimum(prediction):
    sched = schedules.linear(100)
    oracle = gaussian_oracle(sched, prediction)
    x0 = gaussian_data(20000)
    loss = DDPMLoss(sched, prediction)
    torch.manual_seed(1)
    out = loss(oracle, x0)
    pos = (out["t"].double() * 99).round().long()
    expect = ddpm_minimum(prediction, sched.alphas_cumprod[pos])
    gap, se = mean_gap(out["per_example"] - expect)
    assert abs(gap) < 5 * se, (gap, se)
    torch.manual_seed(1)
    worse = loss(Shifted(oracle, 0.05), x0)
    excess, se = mean_gap(worse["per_example"] - out["per_example"])
    # at the optimum the cross term vanishes: a shift c costs exactly c^2 in expectation
    assert abs(excess - 0.05 ** 2) < 5 * se and excess > 10 * se, (excess, se)


# -- the VLB pieces -----------------------------------------------------------------------------

def test_normal_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    m1, m2, l1, l2 = (torch.randn(1000, dtype=torch.float64, generator=g) for _ in range(4))
    expect = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * l1).exp()),
                                               torch.distributions.Normal(m2, (0.5 * l2).exp()))
    torch.testing.assert_close(normal_kl(m1, l1, m2, l2), expect)


def direct_bin_log_prob(x, mean, std):
    """log of the normal mass of x's bin by the CDF, outer bins to +-inf, float64 (-inf where
    the difference of CDFs underflows)."""
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64),
                                        torch.tensor(std, dtype=torch.float64))
    hi = 1.0 if x > 0.999 else float(normal.cdf(torch.tensor(x + 1 / 255, dtype=torch.float64)))
    lo = 0.0 if x < -0.999 else float(normal.cdf(torch.tensor(x - 1 / 255, dtype=torch.float64)))
    return math.log(hi - lo) if hi > lo else -math.inf


@pytest.mark.parametrize("mean,std", [(0.1, 0.05), (-0.9, 0.3), (0.98, 0.01), (0.0, 10.0)])
def test_discretized_gaussian_matches_the_cdf(mean, std):
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)
    got = discretized_gaussian_log_likelihood(grid, torch.tensor(mean, dtype=torch.float64),
                                              torch.tensor(math.log(std), dtype=torch.float64))
    expect = torch.tensor([direct_bin_log_prob(float(x), mean, std) for x in grid],
                          dtype=torch.float64)
    near = expect > math.log(1e-8)          # where the direct difference of CDFs is accurate
    assert near.sum() >= 3
    torch.testing.assert_close(got[near], expect[near], rtol=0, atol=1e-7)
    assert (got[~near] < math.log(2e-8)).all()
    torch.testing.assert_close(got.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_discretized_gaussian_far_tail_is_exact():
    """The bin at 0.5 under N(0, 0.05^2) has mass ~1e-23: below 1 - Phi's resolution and the
    reference's 1e-12 clamp, exact in log space."""
    got = discretized_gaussian_log_likelihood(torch.tensor([0.5, -0.5], dtype=torch.float64),
                                              torch.zeros(2, dtype=torch.float64),
                                              torch.full((2,), math.log(0.05),
                                                         dtype=torch.float64))
    z_lo, z_hi = (0.5 - 1 / 255) / 0.05, (0.5 + 1 / 255) / 0.05
    expect = math.log(0.5 * (math.erfc(z_lo / math.sqrt(2)) - math.erfc(z_hi / math.sqrt(2))))
    torch.testing.assert_close(got, torch.full((2,), expect, dtype=torch.float64), rtol=1e-10,
                               atol=0)


def test_prior_kl_closed_form():
    sched = schedules.linear(50)
    x0 = torch.randn(8, 3, dtype=torch.float64)
    a, s = (float(c) for c in sched.marginal(torch.tensor([49])))
    expect = torch.distributions.kl_divergence(torch.distributions.Normal(a * x0, s),
                                               torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(prior_kl(sched, x0), expect)


def test_learned_range_ends_are_the_fixed_variances():
    sched = schedules.cosine(10)
    cols = vlb_columns(sched, "eps", "learned_range")
    pos = torch.arange(10)
    x = torch.randn(10, 2, dtype=torch.float64)
    rows = gather_rows(cols, pos, x)
    small = p_mean_logvar(rows, torch.cat([x, -torch.ones_like(x)], 1), x, "learned_range")[1]
    large = p_mean_logvar(rows, torch.cat([x, torch.ones_like(x)], 1), x, "learned_range")[1]
    post = sched.posterior()
    torch.testing.assert_close(small[:, 0], post["log_variance_clipped"])
    torch.testing.assert_close(large[:, 0], sched.betas.log())


def analytic_vlb_terms(sched, variance="fixed_small"):
    """E of each VLB term (nats) for N(mu, s^2 I) data and the exact posterior-mean model with a
    fixed variance Sigma_t: L_0 (a 1-D quadrature: the model mean at position 0 is E[x0 | x_1],
    so x0 - mean ~ N(0, Var(x0 | x_1))), L_{t-1} = D/2 (log(Sigma_t / beta~_t) + beta~_t /
    Sigma_t - 1) + D c0^2 Var(x0 | x_t) / (2 Sigma_t), L_T = D/2 (sigma_T^2 + a_T^2 (mu^2 + s^2)
    - 1 - log sigma_T^2)."""
    ab, post, s2 = sched.alphas_cumprod, sched.posterior(), GAUSS_S ** 2
    var_x0 = s2 * (1 - ab) / (ab * s2 + 1 - ab)
    true = post["log_variance_clipped"]
    model = true if variance == "fixed_small" else torch.cat([true[1:2], sched.betas[1:].log()])
    kl = 0.5 * DIM * (model - true + (true - model).exp() - 1) \
        + DIM * post["coef_x0"] ** 2 * var_x0 / (2 * model.exp())
    std, v = (0.5 * model[0]).exp(), var_x0[0]
    r = torch.linspace(-12, 12, 24001, dtype=torch.float64) * v.sqrt()
    log_mass = discretized_gaussian_log_likelihood(r, torch.zeros(()), torch.log(std))
    density = torch.exp(-r ** 2 / (2 * v)) / torch.sqrt(2 * math.pi * v)
    l0 = DIM * torch.trapezoid(-density * log_mass, r)
    a2, s2t = ab[-1], 1 - ab[-1]
    prior = 0.5 * DIM * (s2t + a2 * (GAUSS_MU ** 2 + s2) - 1 - s2t.log())
    return torch.cat([l0.reshape(1), kl[1:]]), prior


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_whole_vlb_of_the_exact_model(variance):
    sched = schedules.linear(20, beta_start=1e-3, beta_end=0.4)
    terms, prior = analytic_vlb_terms(sched, variance)
    x0 = gaussian_data(20000)
    oracle = gaussian_oracle(sched, "eps")
    got = vlb(oracle, sched, x0, variance=variance, seed=2, progress=False)
    mean, se = got.terms.double().mean(0), got.terms.double().std(0) / math.sqrt(len(x0))
    assert ((mean - terms).abs() < 5 * se + 1e-6).all(), (mean - terms) / se
    torch.testing.assert_close(got.prior.double().mean(), prior, rtol=2e-2, atol=0)
    gap, se = mean_gap(got.total - (terms.sum() + prior))
    assert abs(gap) < 5 * se, (gap, se)
    torch.testing.assert_close(got.bpd, got.total / (DIM * math.log(2)))
    # a model with a shifted mean has a visibly larger bound
    worse = vlb(Shifted(oracle, 0.1), sched, x0, variance=variance, seed=2, progress=False)
    excess, se = mean_gap(worse.total - got.total)
    assert excess > 10 * se, (excess, se)


class WithVariance(torch.nn.Module):
    """The model's output and a constant v (2C channels)."""

    def __init__(self, model, v=-1.0):
        super().__init__()
        self.model, self.v = model, v

    def forward(self, x, t, y=None):
        out = self.model(x, t)
        return torch.cat([out, torch.full_like(out, self.v)], 1)


@pytest.mark.parametrize("sampler", ["uniform", "loss-second-moment"])
def test_vlb_loss_expectation(sampler):
    """VLBLoss's per-example value is T L_{t-1} in bits/dim: its expectation at each t is the
    analytic term (v = -1: the clipped true posterior variance); once the importance sampler has
    its history, t follows p_t and the weighted loss still estimates sum_t L_{t-1} / (D ln 2)."""
    sched = schedules.linear(20, beta_start=1e-3, beta_end=0.4)
    terms, _ = analytic_vlb_terms(sched)
    loss = VLBLoss(sched, timestep_sampler=sampler)
    model = WithVariance(gaussian_oracle(sched, "eps"))
    torch.manual_seed(3)
    for _ in range(2):                     # the second call draws from the loss history
        out = loss(model, gaussian_data(20000))
        pos = (out["t"].double() * 19).round().long()
        expect = 20 * terms[pos] / (DIM * math.log(2))
        gap, se = mean_gap(out["per_example"] - expect)
        assert abs(gap) < 5 * se, (gap, se)
    p = loss.timestep_sampler.weights()
    p = p / p.sum()
    assert (p.max() > 2 / 20) == (sampler != "uniform")            # really importance-sampled
    torch.manual_seed(4)
    out = loss(model, gaussian_data(20000, seed=1))
    pos = (out["t"].double() * 19).round().long()
    estimate, se = mean_gap(out["per_example"].double() / (20 * p[pos]))       # weights 1/(T p_t)
    torch.testing.assert_close(out["loss"].double(), torch.tensor(estimate, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert abs(estimate - float(terms.sum()) / (DIM * math.log(2))) < 5 * se, (estimate, se)


def test_hybrid_stops_the_mean_gradient():
    sched = schedules.linear(50)
    x0 = gaussian_data(256)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([0.3, -0.2]))

        def forward(self, x, t, y=None):
            return torch.cat([self.w[0] * x, self.w[1] * torch.ones_like(x)], 1)

    grads = {}
    for name, loss in [("simple", DDPMLoss(sched)), ("hybrid", HybridLoss(sched))]:
        model = Linear()
        torch.manual_seed(4)

        def mean_only(x, t, m=model):
            return m(x, t)[:, :2]

        out = loss(mean_only if name == "simple" else model, x0)
        out["loss"].backward()
        grads[name] = model.w.grad.clone()
    assert grads["simple"][0] == grads["hybrid"][0]          # the mean sees only L_simple
    assert grads["hybrid"][1] != 0                             # the variance sees L_vlb


def test_hybrid_adds_t_over_1000_vlb():
    sched = schedules.linear(50)
    model = WithVariance(gaussian_oracle(sched, "eps"), v=0.3)
    x0 = gaussian_data(64)
    torch.manual_seed(5)
    simple = DDPMLoss(sched)(lambda x, t: model(x, t)[:, :2], x0)["per_example"]
    torch.manual_seed(5)
    vlb = VLBLoss(sched, timestep_sampler="uniform")(model, x0)["per_example"]
    torch.manual_seed(5)
    hybrid = HybridLoss(sched)(model, x0)["per_example"]
    torch.testing.assert_close(hybrid, simple + 0.001 * vlb, rtol=1e-5, atol=1e-6)


class FirstStep(UniformSampler):
    """Every example at position 0 (the decoder term L_0)."""

    def sample(self, batch_size: int):
        return torch.zeros(batch_size, dtype=torch.long), torch.ones(batch_size)


def test_decoder_term_on_17_levels():
    """With bins=17 (the digits) the losses' L_0 is the exact discretized Gaussian of 17-level
    data: -log(Phi((x + 1/16 - mu) / sigma) - Phi((x - 1/16 - mu) / sigma)), the outer bins to
    +-inf, mu the model's x0 (the posterior mean at position 0), sigma^2 the clipped beta~;
    the 256-level default differs (bin half-width 1/255)."""
    sched = schedules.linear(20, beta_start=0.05, beta_end=0.4)             # sigma ~ 0.2
    x0 = (torch.randint(0, 17, (64, DIM), generator=torch.Generator().manual_seed(0)) / 8 - 1)
    model = WithVariance(lambda x, t: torch.full_like(x, 0.1), v=-1.0)       # x0^ = 0.1
    sigma = math.exp(0.5 * float(sched.posterior()["log_variance_clipped"][0]))
    normal = torch.distributions.Normal(0.1, sigma)
    upper = torch.where(x0 > 0.99, 1.0, normal.cdf(x0.double() + 1 / 16))
    lower = torch.where(x0 < -0.99, 0.0, normal.cdf(x0.double() - 1 / 16))
    expect = -(upper - lower).log().sum(1) * 20 / (DIM * math.log(2))
    losses = {b: VLBLoss(sched, "x0", timestep_sampler=FirstStep(20), bins=b)(model, x0)
              for b in (17, 256)}
    torch.testing.assert_close(losses[17]["per_example"].double(), expect, rtol=1e-5, atol=0)
    assert (losses[256]["per_example"] - losses[17]["per_example"]).abs().min() > 1
    torch.manual_seed(5)
    hybrid = HybridLoss(sched, "x0", timestep_sampler=FirstStep(20), bins=17)(model, x0)
    simple = ((0.1 - x0) ** 2).mean(1)
    torch.testing.assert_close(hybrid["per_example"].double(), (simple + 0.001 * expect).double(),
                               rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="bins"):
        VLBLoss(sched, bins=1)
    for kind in ("hybrid", "vlb"):       # a run config takes the bins from its data
        config = {"objective": {"type": kind}, "data": {"type": "digits"}}
        assert build_objective(config, sched).bins == 17
        config["objective"]["bins"] = 9
        assert build_objective(config, sched).bins == 9


# -- the noisy classifier -----------------------------------------------------------------------

class BayesClassifier(torch.nn.Module):
    """log p(y | x_t) of the two-Gaussian toy data under the process, tempered by ``temp``."""

    def __init__(self, process, temp=1.0):
        super().__init__()
        self.parts = [GaussianMixtureScore(g.means, GAUSS_S ** 2, process=process)
                      for g in toy_mixture()]
        self.temp = temp

    def forward(self, x, t):
        self.x = x.clone()
        return self.temp * torch.stack([g.log_prob(x, t) for g in self.parts], 1).float()


def test_classifier_cross_entropy_on_x_t():
    sched = schedules.linear(100)
    x, y = toy_data(4000, labels=True)
    loss = ClassifierLoss(sched)
    torch.manual_seed(6)
    bayes = BayesClassifier(sched)
    out = loss(bayes, (x, y))
    logits = bayes(bayes.x, (out["t"].double() * 99).round().long())
    expect = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(out["per_example"], expect)
    # x_t really is drawn from q(x_t | x_0): the implied noise is standard normal
    pos = (out["t"].double() * 99).round().long()
    a, s = (c[:, None].float() for c in sched.marginal(pos))
    eps = (bayes.x - a * x) / s
    assert eps.mean().abs() < 0.05 and (eps.std() - 1).abs() < 0.05
    # the Bayes posterior is the minimum: tempering it in either direction costs
    for temp in (0.4, 2.5):
        torch.manual_seed(6)
        worse = loss(BayesClassifier(sched, temp), (x, y))
        excess, se = mean_gap(worse["per_example"] - out["per_example"])
        assert excess > 5 * se, (temp, excess, se)
    with pytest.raises(ValueError, match="labelled"):
        loss(bayes, x)


# -- labels --------------------------------------------------------------------------------------

def test_label_dropout_rate():
    y = torch.randint(10, (200000,))
    torch.manual_seed(7)
    dropped = label_dropout(y, 0.15, 10)
    null = dropped == 10
    assert abs(float(null.float().mean()) - 0.15) < 4 * math.sqrt(0.15 * 0.85 / len(y))
    assert torch.equal(dropped[~null], y[~null]) and not (y == 10).any()
    assert torch.equal(label_dropout(y, 0.0, 10), y)
    assert (label_dropout(y, 1.0, 10) == 10).all()


def test_objective_passes_dropped_labels_to_the_model():
    model = Recorder()
    x, y = toy_data(4000, labels=True)
    torch.manual_seed(8)
    DDPMLoss(schedules.cosine(10), p_uncond=0.2, null_class=2)(model, (x, y))
    null = model.y == 2
    assert abs(float(null.float().mean()) - 0.2) < 0.03
    assert torch.equal(model.y[~null], y[~null])
    DDPMLoss(schedules.cosine(10))(model, x)
    assert model.y is None
    with pytest.raises(ValueError, match="null_class"):
        DDPMLoss(schedules.cosine(10), p_uncond=0.1)


# -- every objective trains ---------------------------------------------------------------------

T_TOY = 50


def toy_objectives():
    """name -> (objective, model, labelled data, the exact optimum or None, evaluation)."""
    sched = schedules.linear(T_TOY)
    index = {"time": "index", "scale": T_TOY}

    def mixture(prediction):
        return GaussianMixtureScore(torch.cat([g.means for g in toy_mixture()]), GAUSS_S ** 2,
                                    process=sched, prediction=prediction)

    return {
        "ddpm-eps": (DDPMLoss(sched, "eps"), TinyMLP(**index), False, mixture("eps"), None),
        "ddpm-x0": (DDPMLoss(sched, "x0"), TinyMLP(**index), False, mixture("x0"), None),
        "ddpm-v": (DDPMLoss(sched, "v"), TinyMLP(**index), False, mixture("v"), None),
        "cfg": (DDPMLoss(sched, p_uncond=0.2, null_class=2),
                TinyMLP(num_classes=2, **index), True, None, None),
        "hybrid": (HybridLoss(sched), TinyMLP(out=4, **index), False, None, None),
        "vlb": (VLBLoss(sched), TinyMLP(out=4, **index), False, None,
                VLBLoss(sched, timestep_sampler="uniform")),
        "classifier": (ClassifierLoss(sched), TinyMLP(out=2, **index), True,
                       BayesClassifier(sched), None),
    }


@pytest.mark.parametrize("name", list(toy_objectives()))
def test_trains_on_toy_data(name):
    torch.manual_seed(0)
    objective, model, labels, oracle, evaluate = toy_objectives()[name]
    before, after, floor = train_and_compare(objective, model, toy_data(labels=labels),
                                             oracle=oracle, evaluate=evaluate)
    assert_closes_gap(before, after, floor)
