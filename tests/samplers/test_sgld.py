"""SGLD (Welling & Teh 2011) against the closed-form posterior of Bayesian linear regression."""

import pytest
import torch

from pydiffuse.ops import randn
from pydiffuse.samplers import sgld, sgld_step_sizes
from tests.conftest import DEVICE

P, N, ALPHA, SIGMA, CHAINS = 3, 300, 1.0, 1.0, 8
# eps_t from 3.1e-4 down to 8.4e-5, so eps_t * lambda_max(posterior precision) <= 0.1: the
# discretization and minibatch-noise biases of the covariance are a few percent.
SCHEDULE = {"a": 0.02, "b": 1000.0, "gamma": 0.55}
RUN = {"n_iter": 20_000, "batch_size": 30, "burn_in": 1000, **SCHEDULE}
# Measured over seeds 0-4 (8 chains, step-weighted averages): Mahalanobis error of the mean
# |L^-1 (m - mu)| <= 0.045 (L L^T = Sigma) and eigenvalues of L^-1 C L^-T in [0.94, 1.07].
# Forgetting the N/n scaling (seed 0): mean error 0.79, covariance eigenvalues 8.0-9.8 (~N/n).
MEAN_TOL, COV_LOW, COV_HIGH = 0.15, 0.85, 1.15


def regression(seed: int = 0):
    """X [N, P], y [N] and the exact posterior N(mu, Sigma): Sigma = (alpha I + X^T X /
    sigma^2)^-1, mu = Sigma X^T y / sigma^2, under the prior N(0, alpha^-1 I)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, P, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64) \
        + SIGMA * torch.randn(N, generator=gen, dtype=torch.float64)
    cov = torch.linalg.inv(ALPHA * torch.eye(P, dtype=torch.float64) + x.T @ x / SIGMA ** 2)
    return x.float(), y.float(), cov @ x.T @ y / SIGMA ** 2, cov


def grad_log_prior(theta):
    return -ALPHA * theta


def grad_log_lik(theta, batch):
    """sum_i x_i (y_i - x_i^T theta) / sigma^2 for each chain: [C, P]."""
    x, y = batch
    return (y[None] - theta @ x.T) @ x / SIGMA ** 2


def weighted_moments(samples, info):
    """The step-weighted mean and covariance over every chain's kept samples."""
    s = samples.double().cpu().reshape(-1, P)
    w = info["step_sizes"].repeat_interleave(CHAINS)[:, None]
    mean = (w * s).sum(0) / w.sum()
    d = s - mean
    return mean, (w * d).T @ d / w.sum()


def posterior_errors(lik=grad_log_lik, seed=0):
    x, y, mu, cov = regression()
    mean, c = weighted_moments(*sgld(grad_log_prior, lik, (x.to(DEVICE), y.to(DEVICE)),
                                     torch.zeros(CHAINS, P, device=DEVICE), seed=seed,
                                     return_info=True, **RUN))
    inv_l = torch.linalg.inv(torch.linalg.cholesky(cov))
    return (inv_l @ (mean - mu)).norm().item(), torch.linalg.eigvalsh(inv_l @ c @ inv_l.T)


def test_sgld_matches_linear_regression_posterior():
    mean_err, cov_eigs = posterior_errors()
    assert mean_err < MEAN_TOL
    assert COV_LOW < cov_eigs.min() and cov_eigs.max() < COV_HIGH, cov_eigs


def test_sgld_without_n_over_n_scaling_is_caught():
    def unscaled(theta, batch):          # what sgld would do if it forgot the N / n factor
        return grad_log_lik(theta, batch) * RUN["batch_size"] / N

    mean_err, cov_eigs = posterior_errors(unscaled)
    assert mean_err > MEAN_TOL and cov_eigs.max() > COV_HIGH


def test_step_schedule_and_kept_iterations():
    x, y, _, _ = regression()
    samples, info = sgld(grad_log_prior, grad_log_lik, (x, y), torch.zeros(2, P), n_iter=23,
                         batch_size=7, burn_in=5, thin=4, return_info=True, **SCHEDULE)
    t = torch.tensor([9, 13, 17, 21])
    assert info["iterations"].tolist() == t.tolist()
    expected = SCHEDULE["a"] * (SCHEDULE["b"] + t.double()) ** -SCHEDULE["gamma"]
    torch.testing.assert_close(info["step_sizes"], expected, rtol=1e-12, atol=0)
    assert samples.shape == (4, 2, P)
    torch.testing.assert_close(sgld_step_sizes(3, 2.0, 0.0, 1.0),
                               torch.tensor([2.0, 1.0, 2 / 3], dtype=torch.float64))


def test_one_update_is_welling_teh_eq4():
    # grad_log_lik sums a constant c per example, so (N / n) * sum = N c whatever the batch
    data = torch.zeros(N, 1, device=DEVICE)
    c = torch.tensor([0.5, -1.0, 2.0], device=DEVICE)
    theta0 = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]], device=DEVICE)
    samples, info = sgld(grad_log_prior, lambda th, batch: len(batch) * c.expand_as(th), data,
                         theta0, n_iter=1, batch_size=40, seed=3, return_info=True, **SCHEDULE)
    eps = SCHEDULE["a"] * (SCHEDULE["b"] + 1) ** -SCHEDULE["gamma"]
    expected = theta0 + eps / 2 * (-ALPHA * theta0 + N * c) \
        + eps ** 0.5 * randn([2, P], 3, step=1, device=DEVICE)
    torch.testing.assert_close(info["theta"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(samples[0], info["theta"])


def test_reproducible_with_seed():
    x, y, _, _ = regression()
    run = {"n_iter": 50, "batch_size": 16, **SCHEDULE}
    first, again, other = (sgld(grad_log_prior, grad_log_lik, (x, y), torch.zeros(3, P),
                                seed=s, **run) for s in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_one_chain_of_a_vector():
    """theta0 [P] is one chain with grads on [P]; it runs exactly as the chain [1, P] does."""
    x, y, _, _ = regression()
    run = {"n_iter": 30, "batch_size": 16, "seed": 4, **SCHEDULE}
    vector = sgld(grad_log_prior, lambda th, b: grad_log_lik(th[None], b)[0], (x, y),
                  torch.zeros(P), **run)
    rows = sgld(grad_log_prior, grad_log_lik, (x, y), torch.zeros(1, P), **run)
    assert vector.shape == (30, P)
    torch.testing.assert_close(vector, rows[:, 0], rtol=0, atol=0)


def test_minibatches_cover_each_epoch_once():
    seen = []
    data = torch.arange(N, dtype=torch.float32)[:, None]

    def record(theta, batch):
        seen.append(batch[:, 0].long())
        return torch.zeros_like(theta)

    sgld(grad_log_prior, record, data, torch.zeros(1, 1), n_iter=N // 30, batch_size=30,
         **SCHEDULE)
    assert sorted(torch.cat(seen).tolist()) == list(range(N))


@pytest.mark.parametrize("change, match", [
    ({"gamma": 0.5}, "gamma"), ({"gamma": 1.2}, "gamma"), ({"a": 0.0}, "a "),
    ({"b": -1.0}, "b "), ({"batch_size": N + 1}, "batch_size"), ({"n_iter": 0}, "n_iter"),
    ({"thin": 0}, "thin"), ({"burn_in": 10}, "no sample kept"),
    ({"theta0": torch.zeros(())}, "theta0"), ({"data": (torch.zeros(N, P), torch.zeros(N - 1))},
                                             "differ in length"),
    ({"prior": lambda th: th[:, :1]}, "grad_log_prior must return"),
])
def test_bad_input(change, match):
    x, y, _, _ = regression()
    args = {"n_iter": 10, "batch_size": 10, **SCHEDULE, **change}
    prior, theta0 = args.pop("prior", grad_log_prior), args.pop("theta0", torch.zeros(2, P))
    data = args.pop("data", (x, y))
    with pytest.raises((ValueError, TypeError), match=match):
        sgld(prior, grad_log_lik, data, theta0, **args)


def test_divergence_is_reported():
    x, y, _, _ = regression()
    with pytest.raises(FloatingPointError, match="diverged"):
        sgld(grad_log_prior, grad_log_lik, (x, y), torch.zeros(2, P), n_iter=200,
             batch_size=30, a=1.0, b=0.0, gamma=0.6)
