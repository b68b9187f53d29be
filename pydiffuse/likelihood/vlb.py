"""The variational bound of discrete Gaussian diffusion (Sohl-Dickstein et al. 2015; Ho et al.
2020; Nichol & Dhariwal 2021), in nats (MATH.md section 1):

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  L_0 = -log p(x_0 | x_1),
    L_T = KL(q(x_T | x_0) || N(0, I)),

with p(x_{t-1} | x_t) = N(mu~_t(x0^, x_t), Sigma) and L_0 a discretized Gaussian over the 256
bins of [-1, 1]. The model's mean and variance come from ``ddpm_table``'s columns (the DDPM
sampler's: x0^ = cx x_t + co out, mu = m0 x0^ + mx x_t; log_lo = log beta~_t clipped, log_hi =
log beta_t, var = fixed_large's beta).
"""

import math

import torch

from ..samplers.ddpm import VARIANCES, ddpm_table
from ..sde import _per_sample

BIN_HALF_WIDTH = 1 / 255


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise (broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log P(bin of x) under N(mean, exp(log_scale)^2), elementwise: the bin [x - 1/255,
    x + 1/255] of 8-bit data in [-1, 1], the outer bins extended to -inf (x < -0.999) and +inf
    (x > 0.999) (Ho et al. 2020, eq. 13).

    Computed in log space, log(Phi(b) - Phi(a)) = log Phi(b) + log(-expm1(log Phi(a) - log
    Phi(b))) on the lower-tail side of the bin, so far-tail bins keep their true (tiny) mass;
    improved-diffusion uses a tanh approximation of Phi and clamps the mass at 1e-12.
    """
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + BIN_HALF_WIDTH) * inv_std
    lower = (x - mean - BIN_HALF_WIDTH) * inv_std
    flip = lower > 0                          # Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    log_hi = torch.special.log_ndtr(torch.where(flip, -lower, upper))
    log_lo = torch.special.log_ndtr(torch.where(flip, -upper, lower))
    inner = log_hi + torch.log(-torch.expm1(log_lo - log_hi))
    return torch.where(x < -0.999, torch.special.log_ndtr(upper),
                       torch.where(x > 0.999, torch.special.log_ndtr(-lower), inner))


def vlb_columns(schedule, prediction: str, variance: str) -> dict:
    """``ddpm_table``'s float64 [K] columns of a schedule, checked."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    return ddpm_table(schedule, prediction, variance)


def gather_rows(columns: dict, pos: torch.Tensor, x: torch.Tensor) -> dict:
    """Each column at each example's position, broadcast over x's trailing dimensions."""
    return {k: _per_sample(v[pos.cpu()], x) for k, v in columns.items()}


def p_mean_logvar(rows: dict, out, x_t, variance: str, clip=None):
    """The model's reverse kernel p(x_{t-1} | x_t) = N(mean, exp(log_var)).

    Args:
        rows: ``gather_rows`` of ``vlb_columns``.
        out: [B, C, ...] the model output, [B, 2C, ...] for "learned_range" (second half v:
            log Sigma = f log beta_t + (1 - f) log beta~_t, f = (v + 1) / 2).
        x_t: [B, C, ...].
        clip: clamp x0^ to [-clip, clip].

    Returns:
        (mean, log_var, x0^), each x_t's shape.
    """
    c = x_t.shape[1]
    pred = out[:, :c] if variance == "learned_range" else out
    x0 = rows["cx"] * x_t + rows["co"] * pred
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    mean = rows["m0"] * x0 + rows["mx"] * x_t
    if variance == "learned_range":
        log_var = rows["log_lo"] + (out[:, c:] + 1) / 2 * (rows["log_hi"] - rows["log_lo"])
    elif variance == "fixed_small":
        log_var = rows["log_lo"].expand_as(x_t)
    else:
        log_var = rows["var"].log().expand_as(x_t)
    return mean, log_var, x0


def vlb_terms(rows: dict, x0, x_t, pos, mean, log_var) -> torch.Tensor:
    """L_{t-1} (t > 1: the Gaussian KL to the true posterior) or L_0 (position 0: the
    discretized-Gaussian NLL of x_0), summed over dimensions: [B] nats."""
    true_mean = rows["m0"] * x0 + rows["mx"] * x_t
    kl = normal_kl(true_mean, rows["log_lo"], mean, log_var).flatten(1).sum(1)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).sum(1)
    return torch.where(pos.to(x0.device) == 0, nll, kl)


def prior_kl(schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dimensions, [B] nats."""
    a, s = schedule.marginal(schedule.timesteps[-1:])
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    kl = normal_kl(float(a) * x0, torch.full_like(x0, math.log(float(s) ** 2)), zero, zero)
    return kl.flatten(1).sum(1)


@torch.no_grad()
def total_vlb(model, schedule, x0: torch.Tensor, *, prediction: str = "eps",
              variance: str = "learned_range", clip=None, model_kwargs=None) -> dict:
    """The whole bound L of x_0 under a model, one fresh x_t per term (improved-diffusion's
    calc_bpd_loop).

    Args:
        model: ``model(x_t, t, **model_kwargs)``, t the [B] step indices.
        schedule: the model's ``DiscreteSchedule``.
        x0: [B, C, ...] data in [-1, 1].

    Returns:
        dict of "total" [B] nats, "terms" [B, K] (L_0, L_1, ..., L_{K-1}), "prior" [B] (L_T),
        "bpd" [B] bits per dimension = total / (D ln 2).
    """
    columns = vlb_columns(schedule, prediction, variance)
    terms = []
    for i in range(len(schedule)):
        pos = torch.full((len(x0),), i)
        t = schedule.timesteps[pos].to(x0.device)
        x_t = schedule.q_sample(x0, t, torch.randn_like(x0))
        rows = gather_rows(columns, pos, x0)
        out = model(x_t, t, **(model_kwargs or {})).to(x0.dtype)
        mean, log_var, _ = p_mean_logvar(rows, out, x_t, variance, clip)
        terms.append(vlb_terms(rows, x0, x_t, pos, mean, log_var))
    terms = torch.stack(terms, 1)
    prior = prior_kl(schedule, x0)
    total = prior + terms.sum(1)
    return {"total": total, "terms": terms, "prior": prior,
            "bpd": total / (x0[0].numel() * math.log(2))}
