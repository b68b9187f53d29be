"""Stochastic gradient Langevin dynamics (Welling & Teh 2011; MATH.md section 3): posterior
sampling from minibatch gradients, each update one fused ``langevin_step``."""

import math
import numbers
import torch

from ..data.batches import StepBatches
from ..ops import langevin_step
from ..utils import steps_bar
from ._common import NoiseStream


def sgld_step_sizes(n_iter: int, a: float, b: float, gamma: float) -> torch.Tensor:
    """epsilon_t = a (b + t)^(-gamma) for t = 1..n_iter, [n_iter] float64; gamma in (0.5, 1]
    makes sum eps_t = inf and sum eps_t^2 < inf (Welling & Teh 2011, eq. 2)."""
    for name, value in (("a", a), ("b", b), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if a <= 0:
        raise ValueError(f"a (the step-size scale) must be > 0, got {a}")
    if b < 0:
        raise ValueError(f"b (the step-size offset) must be >= 0, got {b}")
    if not 0.5 < gamma <= 1:
        raise ValueError(f"gamma must lie in (0.5, 1] (Welling & Teh's decay), got {gamma}")
    t = torch.arange(1, n_iter + 1, dtype=torch.float64)
    return a * (b + t) ** -gamma


def _count(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_data(data) -> tuple:
    """``data`` as a tuple of tensors of one length (its N), and that N."""
    fields = data if isinstance(data, (tuple, list)) else (data,)
    if not fields or not all(isinstance(f, torch.Tensor) and f.ndim >= 1 for f in fields):
        raise TypeError("data must be a tensor [N, ...] or a tuple of tensors indexed on dim 0, "
                        f"got {type(data).__name__}")
    sizes = {len(f) for f in fields}
    if len(sizes) != 1:
        raise ValueError(f"data's tensors differ in length on dim 0: {[len(f) for f in fields]}")
    return tuple(fields), sizes.pop()


def _gradient(fn, name: str, theta: torch.Tensor, *args) -> torch.Tensor:
    grad = fn(theta, *args)
    if not isinstance(grad, torch.Tensor) or grad.shape != theta.shape:
        got = list(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
        raise ValueError(f"{name} must return theta's shape {list(theta.shape)}, got {got}")
    return grad.detach().to(theta.dtype)


def sgld(grad_log_prior, grad_log_lik, data, theta0, *, n_iter: int, batch_size: int, a: float,
         b: float, gamma: float, burn_in: int = 0, thin: int = 1, seed: int = 0, progress=None,
         callback=None, return_info: bool = False):
    """SGLD (Welling & Teh 2011, eq. 4), for t = 1..n_iter:

        theta <- theta + (eps_t / 2) (grad log p(theta) + (N / n) sum_{i in batch} grad log
                 p(x_i | theta)) + eta,   eta ~ N(0, eps_t I),   eps_t = a (b + t)^(-gamma),

    one ``langevin_step(theta, drift, eps_t / 2)`` (x + e s + sqrt(2 e) z with e = eps_t / 2).
    Minibatches of n = ``batch_size`` are read without replacement within each epoch, in an order
    drawn from ``seed`` (the Trainer's ``StepBatches``, ``pydiffuse.data.batches``); the noise is
    the ops' stream of ``seed``, independent across the elements of theta. Parallel chains are a
    leading dimension of theta0 that the gradient functions handle ([C, P] theta): they share
    each minibatch.

    Convention: ``grad_log_lik(theta, batch)`` returns the SUM over the minibatch of the
    per-example gradients (not the mean); sgld scales it by N / n.

    Args:
        grad_log_prior: theta -> grad log p(theta), theta0's shape.
        grad_log_lik: (theta, batch) -> sum_i grad log p(x_i | theta), theta0's shape, batch
            being data's tensors at the minibatch's rows (a tensor, or a tuple like data).
        data: a tensor [N, ...] or a tuple of tensors [N, ...] (e.g. (X, y)), rows = examples.
        theta0: the start, any shape [...] (e.g. [P]; [C, P] for C parallel chains); float32,
            or float64 (computed in float64 on the default backend).
        n_iter: iterations; batch_size: n in [1, N].
        a, b, gamma: the step schedule, a > 0, b >= 0, gamma in (0.5, 1].
        burn_in: iterations discarded first; thin: keep every thin-th iteration after it.
        seed: the minibatch order's and the noise's seed.
        progress: tqdm bar (None: only on a terminal).
        callback: callback({"t", "theta", "step_size"}) after each iteration.
        return_info: also return {"step_sizes": [S] float64 epsilon_t of each kept sample (for
            Welling & Teh's step-weighted average sum eps_t theta_t / sum eps_t), "iterations":
            [S] their 1-based t, "theta": the final state}.

    Returns:
        the chain: samples [S, ...theta0's shape], S = (n_iter - burn_in) // thin (and the info).
    """
    for name, fn in (("grad_log_prior", grad_log_prior), ("grad_log_lik", grad_log_lik)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if not isinstance(theta0, torch.Tensor) or not theta0.is_floating_point() or theta0.ndim < 1:
        got = list(theta0.shape) if isinstance(theta0, torch.Tensor) else type(theta0).__name__
        raise ValueError(f"theta0 must be a floating tensor of at least one dimension, got {got}")
    fields, n_data = _check_data(data)
    n_iter = _count(n_iter, "n_iter", 1)
    batch_size = _count(batch_size, "batch_size", 1)
    if batch_size > n_data:
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of examples ({n_data})")
    burn_in, thin = _count(burn_in, "burn_in", 0), _count(thin, "thin", 1)
    n_kept = (n_iter - burn_in) // thin
    if n_kept < 1:
        raise ValueError(f"no sample kept: n_iter={n_iter}, burn_in={burn_in}, thin={thin}")
    eps = sgld_step_sizes(n_iter, a, b, gamma)
    scale = n_data / batch_size
    order = StepBatches(n_data, batch_size, seed, 0, n_iter)
    # the op works on [B, ...]: a 1-D theta is one row
    rows_of = (lambda v: v[None]) if theta0.ndim == 1 else (lambda v: v)
    noise = NoiseStream(seed, len(rows_of(theta0)), theta0.device)
    theta = theta0.detach().clone()
    samples = theta.new_empty((n_kept, *theta.shape))
    kept = torch.arange(burn_in + thin, n_iter + 1, thin)[:n_kept]        # 1-based t
    for i in steps_bar(n_iter, progress, "sgld"):
        rows = order.indices(i).to(fields[0].device)
        batch = tuple(f[rows] for f in fields)
        drift = _gradient(grad_log_prior, "grad_log_prior", theta) + scale * _gradient(
            grad_log_lik, "grad_log_lik", theta, batch if len(batch) > 1 else batch[0])
        theta = langevin_step(rows_of(theta), rows_of(drift), float(eps[i]) / 2,
                              **noise.take()).reshape(theta.shape)
        k = i + 1 - burn_in
        if k > 0 and k % thin == 0:
            samples[k // thin - 1] = theta
        if callback is not None:
            callback({"t": i + 1, "theta": theta, "step_size": float(eps[i])})
    if not torch.isfinite(samples).all():
        raise FloatingPointError("SGLD diverged (non-finite theta): lower a or raise b")
    if return_info:
        return samples, {"step_sizes": eps[kept - 1], "iterations": kept, "theta": theta}
    return samples
