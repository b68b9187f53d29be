"""The variational bound of discrete Gaussian diffusion (Sohl-Dickstein et al. 2015; Ho et al.
2020; Nichol & Dhariwal 2021), in nats (MATH.md section 1):

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  L_0 = -log p(x_0 | x_1),
    L_T = KL(q(x_T | x_0) || N(0, I)),

with p(x_{t-1} | x_t) = N(mu~_t(x0^, x_t), Sigma) and L_0 a discretized Gaussian over the
``bins`` levels of [-1, 1] (256 for 8-bit data). The model's mean and variance come from
``ddpm_table``'s columns (the DDPM sampler's: x0^ = cx x_t + co out, mu = m0 x0^ + mx x_t;
log_lo = log beta~_t clipped, log_hi = log beta_t, var = fixed_large's beta).
"""

import math
import numbers
from dataclasses import dataclass

import torch

from ..ops import randn
from ..predictions import check_prediction
from ..samplers import Denoiser
from ..samplers._common import progress_bar
from ..samplers.ddpm import VARIANCES, ddpm_table
from ..schedules import as_process
from ..sde import _per_sample
from ._batch import batch_kwargs, batches, check_data, sample_seeds


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise (broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, mean, log_scale, bins: int = 256) -> torch.Tensor:
    """log P(bin of x) under N(mean, exp(log_scale)^2), elementwise: the bin [x - w, x + w],
    w = 1 / (bins - 1), of data on ``bins`` levels of [-1, 1] (8-bit: 256, w = 1/255; the
    digits: 17), the outer bins extended to -inf (the level -1) and +inf (the level 1)
    (Ho et al. 2020, eq. 13).

    Computed in log space, log(Phi(b) - Phi(a)) = log Phi(b) + log(-expm1(log Phi(a) - log
    Phi(b))) on the lower-tail side of the bin, so far-tail bins keep their true (tiny) mass;
    improved-diffusion uses a tanh approximation of Phi and clamps the mass at 1e-12.
    """
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"bins must be an int >= 2 (the data's levels), got {bins!r}")
    half = 1 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + half) * inv_std
    lower = (x - mean - half) * inv_std
    flip = lower > 0                          # Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    log_hi = torch.special.log_ndtr(torch.where(flip, -lower, upper))
    log_lo = torch.special.log_ndtr(torch.where(flip, -upper, lower))
    inner = log_hi + torch.log(-torch.expm1(log_lo - log_hi))
    return torch.where(x < -1 + half, torch.special.log_ndtr(upper),
                       torch.where(x > 1 - half, torch.special.log_ndtr(-lower), inner))


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


def vlb_terms(rows: dict, x0, x_t, pos, mean, log_var, bins: int = 256) -> torch.Tensor:
    """L_{t-1} (t > 1: the Gaussian KL to the true posterior) or L_0 (position 0: the
    discretized-Gaussian NLL of x_0 on ``bins`` levels), summed over dimensions: [B] nats."""
    true_mean = rows["m0"] * x0 + rows["mx"] * x_t
    kl = normal_kl(true_mean, rows["log_lo"], mean, log_var).flatten(1).sum(1)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, bins).flatten(1).sum(1)
    return torch.where(pos.to(x0.device) == 0, nll, kl)


def prior_kl(schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dimensions, [B] nats."""
    a, s = schedule.marginal(schedule.timesteps[-1:])
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    kl = normal_kl(float(a) * x0, torch.full_like(x0, math.log(float(s) ** 2)), zero, zero)
    return kl.flatten(1).sum(1)




@dataclass
class VLBResult:
    """The bound of each example (``vlb``): ``total`` [B] nats = ``prior`` [B] (L_T) + the sum of
    ``terms`` [B, K] (L_0, L_1, ..., L_{K-1}, nats); ``bpd`` [B] = total / (D ln 2)."""

    total: torch.Tensor
    terms: torch.Tensor
    prior: torch.Tensor
    bpd: torch.Tensor


def detect_variance(model, sched, x0: torch.Tensor, model_kwargs=None) -> str:
    """"learned_range" if the model answers x0[:1] with 2C channels (iDDPM's learned variance),
    else "fixed_small": one model call at the schedule's first step."""
    den = Denoiser(model, model_kwargs=batch_kwargs(model_kwargs, slice(0, 1), len(x0)))
    out = den(x0[:1], sched.timesteps[:1].to(x0.device), keep_variance=True)
    return "learned_range" if out.shape[1] == 2 * x0.shape[1] else "fixed_small"


@torch.no_grad()
def vlb(model, process, x0: torch.Tensor, *, prediction: str = "eps",
        variance: str | None = None, clip=None, steps=None, bins: int = 256, batch_size=None,
        seed=None, progress=None, model_kwargs=None) -> VLBResult:
    """The variational bound -log p(x_0) <= L of each example, term by term, with one fresh
    x_t ~ q(x_t | x_0) per term (Ho et al. 2020, eq. 5; improved-diffusion's calc_bpd_loop).

    L_{t-1} = KL(N(mu~_t(x_0, x_t), beta~_t) || N(mu~_t(x0^, x_t), Sigma_t)) for t > 1,
    L_0 = -log of the N(mu~_1(x0^, x_1), Sigma_1) mass of x_0's bin (``bins`` levels of [-1, 1],
    the outer bins to +-inf), L_T = KL(N(sqrt(alpha_bar_T) x_0, 1 - alpha_bar_T) || N(0, I));
    Sigma_t = beta~_t ("fixed_small"), beta_t ("fixed_large") or the iDDPM learned range
    (MATH.md section 1). On a respaced schedule the terms are those of the respaced chain
    (beta_i = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}) and the model sees the original
    indices S_i.

    Args:
        model: ``model(x_t, t, **model_kwargs)``, t the [B] long step indices (the schedule's
            ``timesteps``); it returns 2C channels for "learned_range".
        process: the model's ``DiscreteSchedule`` (possibly already respaced).
        x0: [B, C, ...] data in [-1, 1] on ``bins`` levels (any float dtype; float64 data are
            evaluated in float64).
        prediction: what the model predicts: "eps", "x0", "v" or "score".
        variance: "fixed_small", "fixed_large" or "learned_range"; None: "learned_range" for
            a model with 2C output channels, else "fixed_small" (``detect_variance``).
        clip: clamp x0^ to [-clip, clip] (None: no clamping).
        steps: respace ``process`` first: an int K or any ``DiscreteSchedule.respace`` spec.
        bins: the data's number of levels (8-bit: 256; the digits: 17).
        batch_size: examples per model call (None: all at once).
        seed: per-example noise seeds are drawn from it (None: from torch's generator); an
            example's x_t draws do not depend on the batch size.
        progress: a tqdm bar over the terms (None: only on a terminal).
        model_kwargs: keywords of every model call; tensors with B rows (labels) are split
            along with x0.

    Returns:
        ``VLBResult`` with total [B], terms [B, K], prior [B] in nats and bpd [B].
    """
    check_data(x0, "x0")
    process = as_process(process)
    if process.kind != "discrete":
        raise ValueError(f"vlb needs a discrete schedule (DiscreteSchedule), got {process!r}; "
                         "for a score SDE use ode_nll")
    check_prediction(prediction)
    sched = process if steps is None else process.respace(steps)
    if variance is None:
        variance = detect_variance(model, sched, x0, model_kwargs)
    columns = vlb_columns(sched, prediction, variance)
    learned = variance == "learned_range"
    seeds = sample_seeds(seed, len(x0))
    parts = batches(len(x0), batch_size)
    terms = torch.empty(len(x0), len(sched), dtype=x0.dtype, device=x0.device)
    with progress_bar(len(parts) * len(sched), progress, "vlb") as bar:
        for sl in parts:
            x = x0[sl]
            den = Denoiser(model, model_kwargs=batch_kwargs(model_kwargs, sl, len(x0)))
            for i in range(len(sched)):
                pos = torch.full((len(x),), i)
                rows = gather_rows(columns, pos, x)
                # float32 noise stream; x_t by plain arithmetic, so float64 data stay float64
                z = randn(list(x.shape), seeds[sl], i, device=x.device).to(x.dtype)
                x_t = rows["a"] * x + rows["sigma"] * z
                out = den(x_t, sched.timesteps[pos].to(x.device), keep_variance=learned)
                if learned and out.shape[1] != 2 * x.shape[1]:
                    raise ValueError(f"variance 'learned_range' needs a model output of 2C = "
                                     f"{2 * x.shape[1]} channels, got {out.shape[1]}")
                mean, log_var, _ = p_mean_logvar(rows, out.to(x.dtype), x_t, variance, clip)
                terms[sl, i] = vlb_terms(rows, x, x_t, pos, mean, log_var, bins)
                bar.update()
    prior = prior_kl(sched, x0)
    total = prior + terms.sum(1)
    return VLBResult(total=total, terms=terms, prior=prior,
                     bpd=total / (x0[0].numel() * math.log(2)))
