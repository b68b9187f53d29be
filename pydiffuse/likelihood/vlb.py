"""The variational bound of discrete Gaussian diffusion (Sohl-Dickstein et al. 2015; Ho et al.
2020; Nichol & Dhariwal 2021), in nats (MATH.md section 1):

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  L_0 = -log p(x_0 | x_1),
    L_T = KL(q(x_T | x_0) || N(0, I)),

with p(x_{t-1} | x_t) = N(mu~_t(x0^, x_t), Sigma) and L_0 a discretized Gaussian over the
``bins`` levels of [-1, 1] (256 for 8-bit data). The model's mean and variance come from
``DiscreteSchedule.reverse_table``'s columns (the DDPM sampler's: x0^ = cx x_t + co out,
mu = m0 x0^ + mx x_t; log_lo = log beta~_t clipped, log_hi = log beta_t, var = fixed_large's
beta). The math of each term is the schedule's (``pydiffuse.schedules``); this module runs the
model over the terms.
"""

import math
from dataclasses import dataclass

import torch

from ..nn.denoiser import Denoiser
from ..ops import randn
from ..predictions import check_prediction
from ..schedules import DiscreteSchedule, as_process
# re-exported: this module's public names before the math moved onto the schedule
from ..schedules import VARIANCES, discretized_gaussian_log_likelihood, normal_kl  # noqa: F401
from ..utils import progress_bar
from ._batch import batch_kwargs, batches, check_data, sample_seeds


def vlb_columns(schedule, prediction: str, variance: str) -> dict:
    """``DiscreteSchedule.reverse_table``'s float64 [K] columns of a schedule (the variance
    checked)."""
    return schedule.reverse_table(prediction, variance)


# improved-diffusion's posterior / reverse-kernel / VLB math lives on the schedule
# (``DiscreteSchedule``); these names stay this module's public API
gather_rows = DiscreteSchedule.gather_rows
p_mean_logvar = DiscreteSchedule.p_mean_logvar
vlb_terms = DiscreteSchedule.vlb_terms


def prior_kl(schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dimensions, [B] nats
    (``DiscreteSchedule.prior_kl``)."""
    return schedule.prior_kl(x0)


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
