"""The exact score of a Gaussian mixture under any diffusion process: the samplers' oracle.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = a x_0 + sigma eps, then x_t is the mixture
sum_k w_k N(a mu_k, C_k), C_k = a^2 Sigma_k + sigma^2 I, so

    grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - a mu_k),   r_k = softmax_k(log w_k + log N_k(x)),

and the eps, x0 (Tweedie: E[x_0 | x_t] = (x + sigma^2 grad log p_t) / a) and v predictions follow
(``pydiffuse.predictions``). Computed in float64 through each Sigma_k = U diag(lambda) U^T.
``mixture_2d`` / ``mixture_8d`` are the samplers' test oracles and ``distance_to_truth`` their
sliced Wasserstein distance to exact draws (the tests and ``benchmarks/plot_samplers.py``).
"""

import math

import torch

from ..predictions import check_prediction, target_coefs
from ..schedules import as_process
from ..stats import sliced_wasserstein


def _as_covariances(covs, k: int, d: int) -> torch.Tensor:
    """A float, [K], [K, D] (diagonal) or [K, D, D] covariance spec as float64 [K, D, D]."""
    c = torch.as_tensor(covs, dtype=torch.float64)
    if c.ndim == 0:
        c = c.expand(k)
    if c.shape == (k,):
        return c[:, None, None] * torch.eye(d, dtype=torch.float64)
    if c.shape == (k, d):
        return torch.diag_embed(c)
    if c.shape == (k, d, d):
        return c
    raise ValueError(f"covs must be a float, [K], [K, D] or [K, D, D] with K={k}, D={d}; "
                     f"got shape {list(c.shape)}")


class GaussianMixtureScore(torch.nn.Module):
    """sum_k w_k N(mu_k, Sigma_k) and its exact score under a diffusion process, as a model.

    ``model(x, t)`` returns the prediction ``prediction`` ("score", "eps", "x0" or "v") at the
    process's time t ([B]: step index, sigma, or t in [0, 1]), so
    ``pydiffuse.sample(GaussianMixtureScore(mu, cov, w, process=p, prediction="eps"), ...)``
    samples the mixture with any sampler; ``sample(n)`` draws true data, ``log_prob(x, t)`` is
    the exact log-density of the marginal at t.

    Args:
        means: [K, *event] component means (event: D, or C, H, W flattened to D).
        covs: float, [K], [K, D] or [K, D, D] covariances (positive definite for log_prob at t=0).
        weights: [K] (normalized here; default uniform).
        process: a DiscreteSchedule, SDE or noise ladder (sigmas); needed for forward/score.
        prediction: what forward returns.
    """

    def __init__(self, means, covs=1.0, weights=None, *, process=None, prediction: str = "score"):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError(f"means must be [K, D] or [K, *event], got shape {list(means.shape)}")
        k = means.shape[0]
        self.event_shape = tuple(means.shape[1:])
        d = math.prod(self.event_shape)
        cov = _as_covariances(covs, k, d)
        if not torch.allclose(cov, cov.mT):
            raise ValueError("covs must be symmetric")
        lam, vec = torch.linalg.eigh(cov)
        if (lam < 0).any():
            raise ValueError("covs must be positive semi-definite")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64).reshape(-1)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers, not all 0")
        self.register_buffer("means", means.reshape(k, d))
        self.register_buffer("eigvals", lam.clamp(min=0))
        self.register_buffer("eigvecs", vec)
        self.register_buffer("log_weights", (w / w.sum()).log())
        self.process = None if process is None else as_process(process)
        self.prediction = check_prediction(prediction)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _marginal(self, x: torch.Tensor, t):
        if t is None:
            one = torch.ones(len(x), dtype=torch.float64)
            return one, 0 * one
        if self.process is None:
            raise ValueError("this GaussianMixtureScore has no process: pass process= to it")
        t = torch.as_tensor(t).reshape(-1)
        a, s = self.process.marginal(t.expand(len(x)) if t.numel() == 1 else t)
        return a.to(torch.float64), s.to(torch.float64)

    def _terms(self, x: torch.Tensor, t):
        """Per-component log-densities [B, K] and C_k^{-1}(x - a mu_k) projections [B, K, D]."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {list(x.shape[1:])}, the mixture "
                             f"{list(self.event_shape)}")
        a, s = self._marginal(x, t)
        a, s = a.to(x.device)[:, None, None], s.to(x.device)[:, None, None]
        flat = x.reshape(len(x), -1).to(torch.float64)
        diff = flat[:, None, :] - a * self.means[None]                       # [B, K, D]
        proj = torch.einsum("kdj,bkd->bkj", self.eigvecs, diff)              # U^T (x - a mu)
        var = a * a * self.eigvals[None] + s * s                             # [B, K, D]
        log_n = -0.5 * (proj * proj / var + torch.log(2 * math.pi * var)).sum(-1)
        return log_n + self.log_weights, proj / var

    def log_prob(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """Exact log p_t(x) per sample [B] (t None: the data density), float64."""
        log_joint, _ = self._terms(x, t)
        return torch.logsumexp(log_joint, -1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """grad_x log p_t(x), x's shape and dtype."""
        log_joint, scaled = self._terms(x, t)
        r = torch.softmax(log_joint, -1)
        grad = -torch.einsum("kdj,bkj->bd", self.eigvecs, r[..., None] * scaled)
        return grad.reshape(x.shape).to(x.dtype)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The exact ``prediction`` at (x, t): score, eps = -sigma s, x0 = (x + sigma^2 s)/a, v."""
        score = self.score(x, t)
        if self.prediction == "score":
            return score
        a, s = (c.to(x.device, torch.float64).reshape(-1, *[1] * (x.ndim - 1))
                for c in self._marginal(x, t))
        x0 = (x.to(torch.float64) + s * s * score.to(torch.float64)) / a
        p, q = target_coefs(self.prediction, a, s)
        return (p * x.to(torch.float64) + q * x0).to(x.dtype)

    def sample(self, n: int, seed: int = 0, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """n exact draws of the data distribution, [n, *event]."""
        gen = torch.Generator().manual_seed(seed)
        comp = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=gen)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=gen)
        root = self.eigvecs.cpu() * self.eigvals.cpu().sqrt()[:, None, :]    # U diag(sqrt lam)
        x = self.means.cpu()[comp] + torch.einsum("bdj,bj->bd", root[comp], z)
        return x.reshape(n, *self.event_shape).to(device=device, dtype=dtype)


def mixture_2d(process=None, prediction: str = "score") -> GaussianMixtureScore:
    """The samplers' 2-D oracle: three anisotropic components, unequal weights."""
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])
    covs = torch.tensor([[[0.30, 0.10], [0.10, 0.20]],
                         [[0.15, 0.00], [0.00, 0.40]],
                         [[0.25, -0.08], [-0.08, 0.25]]])
    return GaussianMixtureScore(means, covs, [0.5, 0.3, 0.2], process=process,
                                prediction=prediction)


def mixture_8d(process=None, prediction: str = "score") -> GaussianMixtureScore:
    """The samplers' 8-D oracle: two components with diagonal covariances."""
    gen = torch.Generator().manual_seed(8)
    means = torch.randn(2, 8, generator=gen) * 1.5
    covs = 0.1 + 0.4 * torch.rand(2, 8, generator=gen)
    return GaussianMixtureScore(means, covs, [0.6, 0.4], process=process, prediction=prediction)


def distance_to_truth(samples: torch.Tensor, mixture: GaussianMixtureScore) -> float:
    """SW_2 between samples and as many fresh exact draws of the mixture (inf if not finite)."""
    if not torch.isfinite(samples).all():
        return float("inf")
    return sliced_wasserstein(samples, mixture.sample(len(samples), seed=12345))
