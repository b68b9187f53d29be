"""The kernel Stein discrepancy and its goodness-of-fit test (Liu, Lee & Jordan 2016; Chwialkowski,
Strathmann & Gretton 2016; MATH.md section 3): with s = grad log p the model's score and k a
kernel, the Stein kernel

    u(x, y) = s(x)^T k(x, y) s(y) + s(x)^T grad_y k + grad_x k^T s(y) + tr(grad_x grad_y k)

has E_{x, y ~ q} u(x, y) = KSD(q, p)^2, zero iff q = p (for the IMQ kernel with -1 < beta < 0,
Gorham & Mackey 2017; for the RBF kernel under tail conditions). Only the score is needed, so a
sampler's output can be checked against the very score it was run with.
"""

from dataclasses import dataclass

import torch

KERNELS = ("imq", "rbf")


@dataclass
class KSDTestResult:
    """stat: the U-statistic S_u (an estimate of KSD^2); pvalue: the bootstrap p-value; reject:
    pvalue < alpha; bandwidth: the kernel's length scale (h of the RBF kernel, c of the IMQ);
    n_boot: the bootstrap draws."""

    stat: float
    pvalue: float
    reject: bool
    bandwidth: float
    n_boot: int


def _check_inputs(samples, score_fn):
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        raise TypeError("samples must be a floating tensor [n, D]")
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must be [n, D] with n >= 2, got {list(samples.shape)}")
    score = score_fn(samples)
    if not isinstance(score, torch.Tensor) or score.shape != samples.shape:
        shape = list(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"score_fn must return [n, D] = {list(samples.shape)}, got {shape}")
    x = samples.detach().to(torch.float64)
    s = score.detach().to(torch.float64)
    if not (torch.isfinite(x).all() and torch.isfinite(s).all()):
        raise ValueError("samples and their scores must be finite")
    return x, s


def median_bandwidth(x: torch.Tensor) -> float:
    """The median heuristic: h = median of the pairwise distances |x_i - x_j|, i < j."""
    i, j = torch.triu_indices(len(x), len(x), 1)
    h = float((x[i] - x[j]).norm(dim=1).median())
    if h <= 0:
        raise ValueError("the median pairwise distance is 0 (too many repeated samples); "
                         "give bandwidth=")
    return h


def stein_kernel(x: torch.Tensor, s: torch.Tensor, kernel: str = "imq", bandwidth=None,
                 c: float = 1.0, beta: float = -0.5):
    """The Stein kernel matrix u(x_i, x_j) [n, n] in float64, kernel derivatives in closed form.

    With r = x_i - x_j, d2 = |r|^2, D the dimension:
      rbf  k = exp(-d2 / (2 h^2)):   u = k (s_i.s_j + (s_i - s_j).r / h^2 + D / h^2 - d2 / h^4)
      imq  k = (c^2 + d2)^beta = q^beta:
           u = q^beta s_i.s_j - 2 beta q^(beta-1) ((s_i - s_j).r + D)
               - 4 beta (beta - 1) d2 q^(beta-2)

    Args:
        x, s: [n, D] points and scores grad log p(x).
        kernel: "imq" | "rbf"; bandwidth: the RBF h (None: ``median_bandwidth``); c, beta: IMQ.

    Returns:
        (u [n, n], the length scale: h for rbf, c for imq).
    """
    x, s = x.to(torch.float64), s.to(torch.float64)
    dim = x.shape[1]
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=0)
    ss = s @ s.T
    rs = (s * x).sum(1)
    # (s_i - s_j).(x_i - x_j) = s_i.x_i - s_i.x_j - s_j.x_i + s_j.x_j
    sr = rs[:, None] + rs[None, :] - s @ x.T - x @ s.T
    if kernel == "rbf":
        h = median_bandwidth(x) if bandwidth is None else float(bandwidth)
        if not h > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
        h2 = h * h
        k = torch.exp(-d2 / (2 * h2))
        return k * (ss + sr / h2 + dim / h2 - d2 / (h2 * h2)), h
    if kernel == "imq":
        if not c > 0:
            raise ValueError(f"c must be positive, got {c!r}")
        if not -1 < beta < 0:
            raise ValueError(f"beta must be in (-1, 0) (Gorham & Mackey 2017), got {beta!r}")
        q = c * c + d2
        u = (q ** beta * ss - 2 * beta * q ** (beta - 1) * (sr + dim)
             - 4 * beta * (beta - 1) * d2 * q ** (beta - 2))
        return u, float(c)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _u_statistic(u: torch.Tensor) -> float:
    n = len(u)
    return float((u.sum() - u.diagonal().sum()) / (n * (n - 1)))


def ksd(samples: torch.Tensor, score_fn, kernel: str = "imq", bandwidth=None, c: float = 1.0,
        beta: float = -0.5) -> float:
    """The KSD^2 U-statistic S_u = 1 / (n (n - 1)) sum_{i != j} u(x_i, x_j) (Liu, Lee & Jordan
    2016, eq. 14), unbiased for KSD(q, p)^2 with x_i ~ q and score_fn = grad log p.

    Args:
        samples: [n, D] (any float dtype; computed in float64).
        score_fn: [n, D] -> [n, D], grad log p of the model.
        kernel, bandwidth, c, beta: see ``stein_kernel``.

    Returns:
        S_u (a float; can be slightly negative).
    """
    x, s = _check_inputs(samples, score_fn)
    return _u_statistic(stein_kernel(x, s, kernel, bandwidth, c, beta)[0])


def ksd_test(samples: torch.Tensor, score_fn, kernel: str = "imq", n_boot: int = 1000,
             seed: int = 0, alpha: float = 0.05, bandwidth=None, c: float = 1.0,
             beta: float = -0.5) -> KSDTestResult:
    """Goodness-of-fit test of H0: samples ~ p, from the score of p alone (Liu, Lee & Jordan
    2016, section 4, the bootstrap of Huskova & Janssen 1993 / Arcones & Gine 1992).

    Bootstrap: S* = sum_{i != j} (w_i - 1/n)(w_j - 1/n) u(x_i, x_j), w ~ Mult(n; 1/n, ..., 1/n)
    / n; p-value = share of the n_boot draws with S* >= S_u.

    The use that matters here: check a sampler's output against the model's own score, e.g. the
    Gaussian-mixture oracle's exact score at the data time t0,

        x = pydiffuse.sample(oracle, ...)                                   # [n, D]
        r = ksd_test(x, lambda x: oracle.score(x, t0), kernel="imq")
        r.pvalue, r.reject                                                  # reject: not p

    (or a trained net's score: a small p-value says the sampler does not sample the model).
    A caveat of every score-based test: it is nearly blind to the weights of well-separated
    modes (Wenliang & Kanagawa 2020), since the score there hardly depends on them.

    Args:
        samples: [n, D]; score_fn: [n, D] -> [n, D] grad log p.
        kernel, bandwidth, c, beta: see ``stein_kernel`` (RBF: median heuristic by default).
        n_boot: bootstrap draws; seed: their torch.Generator seed; alpha: the level.

    Returns:
        KSDTestResult(stat, pvalue, reject, bandwidth, n_boot).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    x, s = _check_inputs(samples, score_fn)
    u, scale = stein_kernel(x, s, kernel, bandwidth, c, beta)
    stat = _u_statistic(u)
    n = len(u)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64))
    xi = (counts - 1) / n                                  # w_i - 1/n, w = counts / n
    u_off = u.cpu() - torch.diag_embed(u.diagonal().cpu())
    boot = ((xi @ u_off) * xi).sum(1)
    # Scale: S_u = (1/(n(n-1))) sum_{i!=j} u_ij and S* = (1/n^2) sum_{i!=j} (m_i-1)(m_j-1) u_ij,
    # m = counts. Under H0 u is degenerate and n S_u -> sum_k lambda_k (Z_k^2 - 1); the
    # multipliers m_i - 1 have mean 0, variance 1 - 1/n, so n S* has the same limit. Comparing
    # n S* >= n S_u is comparing S* >= S_u: both sides on the same (the paper's) scale.
    pvalue = float((boot >= stat).double().mean())
    return KSDTestResult(stat, pvalue, pvalue < alpha, scale, n_boot)
