# SGLD (pydiffuse.samplers.sgld) on Bayesian logistic regression of scikit-learn's breast-cancer
# data, against a MAP point estimate: test accuracy and log-likelihood, and a PNG of the traces
# and posterior marginals.  Run from the repo root:
#     .venv/bin/python examples/bayesian_logistic_regression.py --out /tmp/blr.png [--iters 4000]
"""Bayesian logistic regression by stochastic gradient Langevin dynamics (Welling & Teh 2011).

Model: theta ~ N(0, alpha^-1 I), y_i ~ Bernoulli(sigmoid(x_i^T theta)), x_i the 30 standardized
features and a constant 1. The posterior predictive p(y | x, D) ~ mean_s sigmoid(x^T theta_s) over
the SGLD samples (step-weighted, as the paper does) is compared with sigmoid(x^T theta_MAP). The
chains start at theta_MAP (found by Newton's method) and drop the first fifth as burn-in.
"""

import argparse

import matplotlib
import torch
from sklearn.datasets import load_breast_cancer

from pydiffuse.samplers import sgld

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ALPHA = 1.0                      # prior precision
SHOWN = 3                        # coefficients drawn in the figure
EPS1 = 1e-2                      # the first step size eps_1


def load(seed: int):
    """Standardized features with an intercept column, split 80/20 by a seeded permutation."""
    x, y = load_breast_cancer(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(x))
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def grad_log_prior(theta):
    return -ALPHA * theta


def grad_log_lik(theta, batch):
    """sum_i x_i (y_i - sigmoid(x_i^T theta)) for each chain: [C, P] (the sum over the batch)."""
    x, y = batch
    return (y[None] - torch.sigmoid(theta @ x.T)) @ x


def neg_hessian(x, theta):
    """-grad^2 log p(theta | D) = alpha I + sum_i p_i (1 - p_i) x_i x_i^T, p_i = sigmoid(x_i^T
    theta)."""
    p = torch.sigmoid(x @ theta)
    return x.T @ (x * (p * (1 - p))[:, None]) + ALPHA * torch.eye(len(theta), dtype=x.dtype)


def map_estimate(x, y, iters: int = 50):
    """theta_MAP by Newton's method on log p(theta) + sum_i log p(y_i | x_i, theta) (concave)."""
    theta = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(iters):
        grad = x.T @ (y - torch.sigmoid(x @ theta)) - ALPHA * theta
        step = torch.linalg.solve(neg_hessian(x, theta), grad)
        theta = theta + step
        if step.norm() < 1e-10:
            break
    return theta


def scores(prob, y):
    """(accuracy, mean test log-likelihood) of predicted probabilities p(y = 1 | x)."""
    prob = prob.clamp(1e-12, 1 - 1e-12)
    log_lik = (y * prob.log() + (1 - y) * (-prob).log1p()).mean()
    return float(((prob > 0.5) == (y > 0.5)).double().mean()), float(log_lik)


def plot(samples, iterations, theta_map, path):
    samples = samples.double()                              # [S, C, P]
    fig, axes = plt.subplots(2, SHOWN, figsize=(4 * SHOWN, 6))
    for j in range(SHOWN):
        axes[0, j].plot(iterations, samples[:, :, j], lw=0.6)
        axes[0, j].axhline(theta_map[j], color="k", ls="--", lw=1, label="MAP")
        axes[0, j].set(title=f"trace of theta[{j}]", xlabel="iteration t")
        axes[1, j].hist(samples[:, :, j].reshape(-1), bins=40, density=True, color="tab:blue",
                        alpha=0.7, label="SGLD samples")
        axes[1, j].axvline(theta_map[j], color="k", ls="--", lw=1, label="MAP")
        axes[1, j].set(title=f"posterior marginal of theta[{j}]")
    axes[1, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bayesian_logistic_regression.png", help="PNG path")
    parser.add_argument("--iters", type=int, default=4000, help="SGLD iterations per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (x, y), (x_test, y_test) = load(args.seed)
    theta_map = map_estimate(x, y)
    # eps_t = a (b + t)^-0.55 from EPS1 (eps * the largest posterior curvature stays < 1)
    b = 1000.0
    samples, info = sgld(grad_log_prior, grad_log_lik, (x.float(), y.float()),
                         theta_map.float().expand(args.chains, -1).clone(), n_iter=args.iters,
                         batch_size=args.batch_size, a=EPS1 * (b + 1) ** 0.55, b=b, gamma=0.55,
                         burn_in=args.iters // 5, seed=args.seed, return_info=True)
    w = info["step_sizes"] / info["step_sizes"].sum()          # Welling & Teh's step weights
    prob = torch.sigmoid(samples.double() @ x_test.T)          # [S, C, N_test]
    bayes = torch.einsum("s,scn->n", w, prob) / samples.shape[1]
    for name, p in (("MAP", torch.sigmoid(x_test @ theta_map)), ("SGLD predictive", bayes)):
        acc, log_lik = scores(p, y_test)
        print(f"{name:>20}: test accuracy {acc:.3f}, test log-likelihood {log_lik:.4f} nats")
    spread = samples.double().reshape(-1, x.shape[1]).std(0)
    laplace = torch.linalg.inv(neg_hessian(x, theta_map)).diagonal().sqrt()
    print(f"posterior std of the coefficients: median {spread.median():.3f}, max "
          f"{spread.max():.3f} (Laplace approximation: {laplace.median():.3f}, "
          f"{laplace.max():.3f}); {samples.shape[0]} kept x {args.chains} chains")
    plot(samples, info["iterations"], theta_map, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
