"""Annealed importance sampling (Neal 2001; MATH.md section 3) on the geometric path

    f_j(x) = f_0(x)^(1 - beta_j) f_n(x)^beta_j,   0 = beta_0 < beta_1 < ... < beta_K = 1:

x_1 ~ p_0 = f_0 / Z_0; for j = 1..K, log w += log f_j(x_j) - log f_{j-1}(x_j), then
x_{j+1} ~ T_j(x_j, .) with T_j an MCMC kernel that leaves f_j invariant (random-walk MH, MALA
or HMC). E[w] = Z_n / Z_0, so log Z_n/Z_0 ~= log mean_i w_i. Also the AIS log-likelihood of a
decoder model p(x) = int p(z) p(x|z) dz (Wu et al. 2017), annealing from the prior p(z) to
p(z) p(x|z).
"""

import inspect
import math
from dataclasses import dataclass

import torch

from ..ops import langevin_step
from ..utils import steps_bar

TRANSITIONS = ("mh", "mala", "hmc")
TARGET_ACCEPT = {"mh": 0.3, "mala": 0.57, "hmc": 0.65}
SIGMOID_DELTA = 4.0


@dataclass
class AISResult:
    """log_z: log mean_i w_i, the estimate of log(Z_n / Z_0) (log Z_n when p_0 is normalized);
    stderr: its delta-method standard error sd(w) / (sqrt(n) mean(w)); log_w: [n] log-weights
    (float64); ess: (sum w)^2 / sum w^2 in [1, n]; accept_rate: mean acceptance probability over
    all transitions; step_size: the last transition's step size; step_sizes: [K - 1] the step
    size of each transition (pass it back with adapt=False for a run with a fixed schedule)."""

    log_z: float
    stderr: float
    log_w: torch.Tensor
    ess: float
    accept_rate: float
    step_size: float
    step_sizes: torch.Tensor


@dataclass
class DecoderLikelihood:
    """log_px, stderr, ess: [n_x] per data point (float64); ais: the run over all chains."""

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    ais: AISResult


def ais_schedule(schedule, n_steps=None) -> torch.Tensor:
    """The betas [K + 1] (float64, 0 to 1, non-decreasing) of ``schedule``: "linear" j / K,
    "sigmoid" (Grosse et al. 2013) s(delta (2j/K - 1)) rescaled to [0, 1] with delta = 4, or a
    1-D tensor of betas (then ``n_steps`` is None or len - 1)."""
    if isinstance(schedule, str):
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
        if schedule == "linear":
            return u
        if schedule == "sigmoid":
            s = torch.sigmoid(SIGMOID_DELTA * (2 * u - 1))
            return (s - s[0]) / (s[-1] - s[0])
        raise ValueError(f"schedule must be 'linear', 'sigmoid' or a tensor, got {schedule!r}")
    betas = torch.as_tensor(schedule, dtype=torch.float64).cpu()
    if betas.ndim != 1 or len(betas) < 2:
        raise ValueError(f"a beta schedule must be 1-D with >= 2 values, got {list(betas.shape)}")
    if n_steps is not None and n_steps != len(betas) - 1:
        raise ValueError(f"n_steps={n_steps} but the schedule has {len(betas) - 1} steps")
    if betas[0] != 0 or betas[-1] != 1 or (betas.diff() < 0).any():
        raise ValueError("a beta schedule must go from 0 to 1 without decreasing")
    return betas


def log_z_estimate(log_w: torch.Tensor):
    """(log mean exp, delta-method standard error, ESS) of log-weights along the last dim.

    With w~ = exp(log_w - max): stderr = sd(w~) / (sqrt(n) mean(w~)) (sd with n - 1), the
    first-order error of log mean(w); ESS = (sum w~)^2 / sum w~^2.
    """
    n = log_w.shape[-1]
    log_w = log_w.to(torch.float64)
    w = torch.exp(log_w - log_w.max(-1, keepdim=True).values)
    log_z = torch.logsumexp(log_w, -1) - math.log(n)
    sd = w.std(-1) if n > 1 else torch.full_like(w[..., 0], float("inf"))
    stderr = sd / (math.sqrt(n) * w.mean(-1))
    ess = w.sum(-1) ** 2 / (w * w).sum(-1)
    return log_z, stderr, ess


@dataclass
class _State:
    """Chains [n, D] with log f_0, log f_n ([n], float64) and their gradients (or None)."""

    x: torch.Tensor
    lf0: torch.Tensor
    lfn: torch.Tensor
    g0: torch.Tensor = None
    gn: torch.Tensor = None

    def log_f(self, beta):
        return (1 - beta) * self.lf0 + beta * self.lfn

    def score(self, beta):
        return (1 - beta) * self.g0 + beta * self.gn

    def where(self, keep_new, new):
        """The new state where ``keep_new`` [n] is True, else this one."""
        pick = [torch.where(keep_new.reshape(-1, *[1] * (a.ndim - 1)), b, a) if a is not None
                else None for a, b in zip(self._fields(), new._fields())]
        return _State(*pick)

    def _fields(self):
        return (self.x, self.lf0, self.lfn, self.g0, self.gn)


def _evaluate(fns, x, with_grad, strict) -> _State:
    """log f_0, log f_n at x (and their gradients by autograd). ``strict``: raise on a
    non-finite value; else non-finite values become -inf (a rejected proposal)."""
    x = x.detach()
    if with_grad:
        x = x.requires_grad_(True)
    values, grads = [], []
    with torch.enable_grad() if with_grad else torch.no_grad():
        for name, fn in fns:
            v = fn(x)
            if not isinstance(v, torch.Tensor) or v.shape != (x.shape[0],):
                shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{name} must return [n] = [{x.shape[0]}] log-densities for "
                                 f"[n, D] input, got {shape}")
            g = None
            if with_grad:
                g = (torch.autograd.grad(v.sum(), x, allow_unused=True)[0]
                     if v.requires_grad else None)
                g = torch.zeros_like(x) if g is None else g.detach()
            v = v.detach().to(torch.float64)
            bad = ~torch.isfinite(v)
            if g is not None:
                bad |= ~torch.isfinite(g).all(1)
            if bad.any():
                if strict:
                    raise ValueError(f"{name} (or its gradient) is not finite at "
                                     f"{int(bad.sum())} of the samples of p_0")
                v = v.masked_fill(bad, -math.inf)
                g = None if g is None else g.masked_fill(bad[:, None], 0.0)
            values.append(v)
            grads.append(g)
    return _State(x.detach(), values[0], values[1], grads[0], grads[1])


def _mh(fns, s, beta, eps, gen):
    """Random-walk Metropolis: x' = x + eps z."""
    z = torch.randn(s.x.shape, generator=gen, dtype=s.x.dtype, device=s.x.device)
    new = _evaluate(fns, s.x + eps * z, False, False)
    return new, new.log_f(beta) - s.log_f(beta)


def _mala(fns, s, beta, eps, gen):
    """MALA (Roberts & Tweedie 1996): x' = x + eps grad log f(x) + sqrt(2 eps) z, accepted with
    the MH ratio f(x') q(x | x') / (f(x) q(x' | x)), q(b | a) = N(b; a + eps grad log f(a),
    2 eps I)."""
    z = torch.randn(s.x.shape, generator=gen, dtype=s.x.dtype, device=s.x.device)
    score = s.score(beta).to(s.x.dtype)
    new = _evaluate(fns, langevin_step(s.x, score, eps, noise=z), True, False)

    def log_q(to, frm, frm_score):
        diff = (to - frm - eps * frm_score).to(torch.float64)
        return -(diff * diff).sum(1) / (4 * eps)

    log_ratio = (new.log_f(beta) - s.log_f(beta) + log_q(s.x, new.x, new.score(beta))
                 - log_q(new.x, s.x, score))
    return new, log_ratio


def _hmc(fns, s, beta, eps, gen, n_leapfrog):
    """HMC (Duane et al. 1987; Neal 2011): momentum p ~ N(0, I), ``n_leapfrog`` leapfrog steps
    of H(x, p) = -log f(x) + |p|^2 / 2, accepted with probability min(1, exp(H - H'))."""
    p0 = torch.randn(s.x.shape, generator=gen, dtype=s.x.dtype, device=s.x.device)
    new = s
    p = p0 + 0.5 * eps * new.score(beta)
    for step in range(n_leapfrog):
        new = _evaluate(fns, new.x + eps * p, True, False)
        p = p + (eps if step < n_leapfrog - 1 else 0.5 * eps) * new.score(beta)
    kinetic = (p0.to(torch.float64) ** 2).sum(1) - (p.to(torch.float64) ** 2).sum(1)
    return new, new.log_f(beta) - s.log_f(beta) + 0.5 * kinetic


def _step_sizes(step_size, adapt, n_transitions):
    if isinstance(step_size, torch.Tensor):
        if adapt:
            raise ValueError("a per-transition step_size tensor needs adapt=False")
        sizes = step_size.detach().to(torch.float64).cpu().reshape(-1)
        if len(sizes) != n_transitions:
            raise ValueError(f"step_size has {len(sizes)} values, expected one per transition "
                             f"({n_transitions} = len(betas) - 2)")
    else:
        sizes = torch.full((n_transitions,), float(step_size), dtype=torch.float64)
    if (sizes <= 0).any() or not torch.isfinite(sizes).all():
        raise ValueError("step_size must be positive and finite")
    return sizes


def _takes_generator(fn) -> bool:
    """Whether ``fn`` accepts a second positional argument (the generator)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):                 # a builtin without a signature
        return True
    kinds = [p.kind for p in params]
    return inspect.Parameter.VAR_POSITIONAL in kinds or sum(
        k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for k in kinds) >= 2


def _draw_p0(sample_p0, n: int, gen: torch.Generator, seed: int):
    """sample_p0(n, gen), or sample_p0(n) under the global RNG seeded with ``seed`` (restored
    afterwards), so either form is reproducible."""
    if _takes_generator(sample_p0):
        return sample_p0(n, gen)
    cuda = [gen.device] if gen.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return sample_p0(n)


def ais(log_f0, log_fn, sample_p0, *, n_samples: int, n_steps=None, schedule="linear",
        transition: str = "hmc", step_size=0.1, n_leapfrog: int = 5, target_accept=None,
        adapt: bool = True, seed: int = 0, device=None, progress=None) -> AISResult:
    """Annealed importance sampling estimate of log(Z_n / Z_0) (Neal 2001).

    Geometric path f_j = f_0^(1 - beta_j) f_n^beta_j; x_1 ~ p_0; for j = 1..K:
    log w += (beta_j - beta_{j-1}) (log f_n(x_j) - log f_0(x_j)), then (j < K) one transition
    T_j leaving f_j invariant: "mh" (x' = x + e z), "mala" (the Langevin proposal
    x' = x + e grad log f_j + sqrt(2 e) z through ``pydiffuse.ops.langevin_step``, with the MH
    correction by the proposal densities both ways) or "hmc" (``n_leapfrog`` leapfrog steps of
    size e). log Z = log mean_i w_i; if p_0 is normalized (Z_0 = 1) it estimates log Z_n.

    Step size: with ``adapt`` the transition's step size follows the constant-gain
    Robbins-Monro update log e_{j+1} = log e_j + (a_j - target_accept), a_j the chains' mean
    acceptance probability at step j. e_j is fixed before T_j runs, so each T_j is a valid MCMC
    kernel leaving f_j invariant; but e_j depends (through the mean over the n chains, 1/n
    each) on the chains' own past, which makes E[w] = Z_n / Z_0 hold only as n grows. For a
    strictly unbiased estimate, rerun with ``step_size=result.step_sizes, adapt=False``.

    Args:
        log_f0, log_fn: [n, D] -> [n] unnormalized log-densities, differentiable for "mala" and
            "hmc" (gradients by autograd); each row must depend on its own x only. They must be
            finite at the samples of p_0; a proposal where they are not is rejected.
        sample_p0: (n, generator) or (n) -> [n, D] draws of p_0 = f_0 / Z_0 (the chains'
            dtype and device; "mala" on float64 chains needs the reference backend of the ops);
            a one-argument sample_p0 runs under the global RNG seeded with ``seed``.
        n_samples: n, the number of chains.
        n_steps, schedule: K and "linear" | "sigmoid", or a tensor of K + 1 betas from 0 to 1.
        transition: "mh" | "mala" | "hmc".
        step_size: float, or [K - 1] one per transition (with adapt=False).
        n_leapfrog: leapfrog steps per HMC transition.
        target_accept: the adaptation's target (default 0.3 mh, 0.57 mala, 0.65 hmc).
        seed, device: the torch.Generator's seed and device (all randomness).
        progress: tqdm bar over the K steps (None: only on a terminal).

    Returns:
        AISResult(log_z, stderr, log_w [n], ess, accept_rate, step_size, step_sizes [K - 1]).
    """
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {TRANSITIONS}, got {transition!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if isinstance(n_leapfrog, bool) or not isinstance(n_leapfrog, int) or n_leapfrog < 1:
        raise ValueError(f"n_leapfrog must be a positive int, got {n_leapfrog!r}")
    target = TARGET_ACCEPT[transition] if target_accept is None else float(target_accept)
    if not 0 < target < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target}")
    betas = ais_schedule(schedule, n_steps).tolist()
    sizes = _step_sizes(step_size, adapt, len(betas) - 2)
    gen = torch.Generator(device=device or "cpu").manual_seed(seed)

    x = _draw_p0(sample_p0, n_samples, gen, seed)
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] != n_samples:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"sample_p0 must return [n_samples, D] = [{n_samples}, D], got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"sample_p0 must return a floating tensor, got {x.dtype}")
    if x.device.type != gen.device.type:
        raise ValueError(f"sample_p0 returned {x.device} samples, the generator is on "
                         f"{gen.device} (pass device=)")
    fns = (("log_f0", log_f0), ("log_fn", log_fn))
    state = _evaluate(fns, x, transition != "mh", True)
    log_w = torch.zeros(n_samples, dtype=torch.float64, device=x.device)
    accepts = []
    for j in steps_bar(len(betas) - 1, progress, "ais"):
        beta = betas[j + 1]
        log_w = log_w + (beta - betas[j]) * (state.lfn - state.lf0)
        if j == len(betas) - 2:
            break
        eps = float(sizes[j])
        if transition == "hmc":
            new, log_ratio = _hmc(fns, state, beta, eps, gen, n_leapfrog)
        else:
            new, log_ratio = (_mh if transition == "mh" else _mala)(fns, state, beta, eps, gen)
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        u = torch.rand(n_samples, generator=gen, dtype=torch.float64, device=gen.device)
        state = state.where(u.log() < log_ratio, new)
        accept = float(log_ratio.clamp(max=0).exp().mean())
        accepts.append(accept)
        if adapt and j + 1 < len(sizes):
            sizes[j + 1] = eps * math.exp(accept - target)
    log_z, stderr, ess = log_z_estimate(log_w)
    return AISResult(float(log_z), float(stderr), log_w, float(ess),
                     sum(accepts) / len(accepts) if accepts else math.nan,
                     float(sizes[-1]) if len(sizes) else math.nan, sizes)


def ais_decoder_log_likelihood(log_lik_fn, x: torch.Tensor, latent_dim: int, *, n_samples: int,
                               n_steps=None, **ais_kwargs) -> DecoderLikelihood:
    """AIS log-likelihood log p(x) = log int N(z; 0, I) p(x | z) dz of a decoder model (Wu et
    al. 2017): per data point, anneal from the prior f_0 = N(z; 0, I) (normalized, so the
    estimate is log p(x)) to f_n = N(z; 0, I) p(x | z). All data points run at once as
    n_x * n_samples chains [n_x * n_samples, latent_dim] (one shared step size).

    Args:
        log_lik_fn: (z [m, latent_dim], x [m, ...]) -> [m] log p(x | z), differentiable in z.
        x: [n_x, ...] data points.
        latent_dim: d, the dimension of z.
        n_samples: chains per data point; n_steps and ``ais_kwargs`` go to ``ais``.

    Returns:
        DecoderLikelihood(log_px [n_x], stderr [n_x], ess [n_x], ais).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise TypeError("x must be a floating tensor [n_x, ...]")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
    n_x = x.shape[0]
    x_rep = x.repeat_interleave(n_samples, 0)
    half_log_2pi = 0.5 * latent_dim * math.log(2 * math.pi)

    def log_prior(z):
        return -0.5 * (z * z).sum(1) - half_log_2pi

    def log_joint(z):
        return log_prior(z) + log_lik_fn(z, x_rep)

    def sample_prior(n, gen):
        return torch.randn(n, latent_dim, generator=gen, dtype=x.dtype, device=x.device)

    result = ais(log_prior, log_joint, sample_prior, n_samples=n_x * n_samples, n_steps=n_steps,
                 device=x.device, **ais_kwargs)
    log_px, stderr, ess = log_z_estimate(result.log_w.reshape(n_x, n_samples))
    return DecoderLikelihood(log_px, stderr, ess, result)
