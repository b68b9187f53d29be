"""Discrete diffusion schedules, respacing, and NCSN noise ladders (MATH.md sections 1, 2, 4).

Buffers are float64 on the CPU, as improved-diffusion keeps them; samplers turn them into one
float32 coefficient table on the data's device before their loop.

A *process* tells a sampler its marginals x_t = a x_0 + sigma eps: ``marginal(t) -> (a, sigma)``
for the process's own time t (the step index here, sigma for a ladder, t in [0, 1] for an SDE),
``prior_std``, and for the EDM-style samplers the noise level ``sigma = std / scale`` of each
time (``sigma_range``, ``sigma_to_time``).

A ``DiscreteSchedule`` also holds the math of its reverse process and variational bound, as
improved-diffusion's ``GaussianDiffusion`` does (``q_posterior_mean_variance``,
``p_mean_variance``, ``_vb_terms_bpd``): ``posterior``, ``reverse_table``, ``gather_rows``,
``p_mean_logvar``, ``vlb_terms``, ``prior_kl``; the DDPM sampler, ``pydiffuse.likelihood.vlb``
and the iDDPM objectives all use them.
"""

import math
import numbers
from collections.abc import Sequence

import torch

from .ops import lincomb
from .predictions import x0_coefs
from .utils import per_sample

SPACINGS = ("uniform", "ddim_uniform", "quad", "leading", "trailing", "linspace")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def _float64(values, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values")
    return t


class DiscreteSchedule:
    """A discrete Gaussian diffusion q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    alpha_bar_t = final_alpha_bar prod_{s <= t} (1 - beta_s); q(x_t | x_0) = N(sqrt(alpha_bar_t)
    x_0, (1 - alpha_bar_t) I) (Ho et al. 2020). A respaced schedule keeps alpha_bar at a
    subsequence of the original steps and calls the model with the original indices
    (``timesteps``).

    Args:
        betas: [K] in [0, 1], every alpha_bar_t < 1.
        timesteps: [K] the model's time index of each position (default 0..K-1), increasing.
        final_alpha_bar: alpha_bar "before" the first position (1; diffusers' set_alpha_to_one=False
            uses alpha_bar_0 of the original schedule).
    """

    kind = "discrete"

    def __init__(self, betas, timesteps=None, final_alpha_bar: float = 1.0):
        self.betas = _float64(betas, "betas")
        if (self.betas < 0).any() or (self.betas > 1).any():
            raise ValueError("betas must lie in [0, 1]")
        self.final_alpha_bar = float(final_alpha_bar)
        if not 0 < self.final_alpha_bar <= 1:
            raise ValueError(f"final_alpha_bar must lie in (0, 1], got {final_alpha_bar}")
        self.alphas = 1 - self.betas
        # the chain starts at final_alpha_bar: beta_0 = 1 - alpha_bar_0 / final_alpha_bar
        self.alphas_cumprod = self.final_alpha_bar * torch.cumprod(self.alphas, 0)
        if (self.alphas_cumprod >= 1).any():
            raise ValueError("every position needs noise: alpha_bar must be < 1 (a beta is 0)")
        self.alphas_cumprod_prev = torch.cat(
            [torch.tensor([self.final_alpha_bar], dtype=torch.float64), self.alphas_cumprod[:-1]])
        k = len(self.betas)
        self.timesteps = (torch.arange(k) if timesteps is None
                          else torch.as_tensor(timesteps, dtype=torch.long).reshape(-1).cpu())
        if len(self.timesteps) != k or (k > 1 and (self.timesteps.diff() <= 0).any()):
            raise ValueError(f"timesteps must be {k} increasing indices, got {self.timesteps}")

    def __len__(self) -> int:
        return len(self.betas)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        return (f"DiscreteSchedule(steps={len(self)}, alpha_bar {self.alphas_cumprod[0]:.4g} .. "
                f"{self.alphas_cumprod[-1]:.4g})")

    # -- the process interface -------------------------------------------------------------
    prior_std = 1.0

    def position(self, t) -> torch.Tensor:
        """Positions of model time indices ``t`` in this schedule (a clear error if absent)."""
        t = torch.as_tensor(t).reshape(-1).cpu().long()
        pos = torch.searchsorted(self.timesteps, t.contiguous()).clamp(max=len(self) - 1)
        if not torch.equal(self.timesteps[pos], t):
            missing = t[self.timesteps[pos] != t][:4].tolist()
            raise ValueError(f"time indices {missing} are not steps of this schedule")
        return pos

    def marginal(self, t):
        """(a, sigma) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at time indices t, float64."""
        ab = self.alphas_cumprod[self.position(t)]
        return ab.sqrt(), (1 - ab).sqrt()

    def snr(self, t) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t)."""
        ab = self.alphas_cumprod[self.position(t)]
        return ab / (1 - ab)

    @property
    def sigmas(self) -> torch.Tensor:
        """The VE noise level of each position, sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    @property
    def sigma_range(self):
        s = self.sigmas
        return float(s[-1]), float(s[0])

    def sigma_to_time(self, sigma) -> torch.Tensor:
        """The time index whose sigma is nearest in log sigma (k-diffusion's quantization)."""
        log_s = self.sigmas.log()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        pos = (sigma.log()[:, None] - log_s[None, :]).abs().argmin(1)
        return self.timesteps[pos]

    # -- derived schedules -------------------------------------------------------------------
    def respace(self, spec) -> "DiscreteSchedule":
        """Keep alpha_bar at a subsequence S: beta_i = 1 - alpha_bar_{S_i} / alpha_bar_{S_{i-1}}.

        Args:
            spec: section counts ("10,15,20"), "ddimK", an int K (uniform), or positions.
        """
        keep = space_timesteps(len(self), spec)
        ab = self.alphas_cumprod[keep]
        prev = torch.cat([torch.tensor([self.final_alpha_bar], dtype=torch.float64), ab[:-1]])
        return DiscreteSchedule(1 - ab / prev, self.timesteps[keep], self.final_alpha_bar)

    def subsequence(self, steps: int, spacing: str = "uniform", steps_offset: int = 0):
        """``steps`` positions (ascending) chosen by DDIM's or diffusers' spacing rules.

        uniform: floor(i T / K); ddim_uniform: range(0, T, T // K) (ermongroup/ddim's
        skip_type "uniform": more than K positions when K does not divide T);
        quad: floor(linspace(0, sqrt(0.8 T), K)^2) (Song et al. 2021;
        fewer than K when positions repeat, as in the reference for K > sqrt(0.8 T) + 1);
        leading: i (T // K) + steps_offset; trailing: round(T - i T / K) - 1;
        linspace: round(linspace(0, T - 1, K)) (diffusers' timestep_spacing).
        """
        n = len(self)
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 < steps <= n:
            raise ValueError(f"steps must be an int in [1, {n}], got {steps!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        k = int(steps)
        if spacing == "uniform":
            pos = [i * n // k for i in range(k)]
        elif spacing == "ddim_uniform":
            pos = list(range(0, n, n // k))
        elif spacing == "quad":     # the reference's repeated positions are no-op steps: dropped
            pos = sorted({int(v) for v in torch.linspace(0, math.sqrt(0.8 * n), k,
                                                         dtype=torch.float64) ** 2})
        elif spacing == "leading":
            pos = [i * (n // k) + steps_offset for i in range(k)]
        elif spacing == "trailing":     # numpy's arange(n, 0, -n / k) arithmetic, as diffusers
            step = (n - n / k) - n
            pos = sorted(int(round(n + i * step)) - 1 for i in range(k))
        else:
            pos = [int(v) for v in torch.linspace(0, n - 1, k, dtype=torch.float64).round()]
        if len(set(pos)) != len(pos) or min(pos) < 0 or max(pos) >= n:
            raise ValueError(f"{spacing} spacing of {k} steps over {n} gives invalid positions "
                             f"{pos[:3]}...{pos[-3:]}; lower steps or steps_offset")
        return pos

    def posterior(self):
        """q(x_{t-1} | x_t, x_0) = N(c0 x_0 + ct x_t, var) per position (MATH.md section 1).

        Returns:
            dict of float64 [K]: coef_x0, coef_xt, variance, log_variance_clipped (log beta~_1 = 0
            replaced by log beta~_2).
        """
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        var = self.betas * (1 - ab_prev) / (1 - ab)
        clipped = var.clone()
        if len(var) > 1:
            clipped[0] = var[1]
        return {"coef_x0": ab_prev.sqrt() * self.betas / (1 - ab),
                "coef_xt": self.alphas.sqrt() * (1 - ab_prev) / (1 - ab),
                "variance": var, "log_variance_clipped": clipped.log()}

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; t: [B] time indices."""
        a, s = self.marginal(t)
        return lincomb([x0, noise], [a.to(x0.device), s.to(x0.device)])

    # -- the reverse process and the variational bound (MATH.md section 1) ------------------
    def reverse_table(self, prediction: str, variance: str) -> dict:
        """Per-position float64 [K] columns of the reverse kernel p(x_{t-1} | x_t) on this
        (respaced) schedule: the DDPM ancestral step and the VLB's terms.

        x0 = cx x + co out;  x_{t-1} = c0 x0 + ct x_t + std z (columns m0 = c0, mx = ct, s),
        c0 = sqrt(ab_prev) beta_t / (1 - ab_t), ct = sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t),
        std^2 = beta~_t ("fixed_small"), beta_t ("fixed_large"), or the learned range between
        log beta~_t (clipped, ``log_lo``) and log beta_t (``log_hi``); std = 0 at the last step.
        Also ``var`` (the fixed variance), and (a, sigma) of the marginal q(x_t | x_0).
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        post = self.posterior()
        a, s = self.alphas_cumprod.sqrt(), (1 - self.alphas_cumprod).sqrt()
        cx, co = x0_coefs(prediction, a, s)
        if variance == "fixed_small":
            var = post["variance"]
        elif variance == "fixed_large":
            var = torch.cat([post["variance"][1:2], self.betas[1:]]) if len(self) > 1 \
                else self.betas.clone()
        else:
            var = torch.zeros_like(self.betas)      # per element: the model's learned range
        std = 1.0 if variance == "learned_range" else var.sqrt()
        nonzero = (torch.arange(len(self)) > 0).to(torch.float64)
        return {"cx": cx, "co": co, "m0": post["coef_x0"], "mx": post["coef_xt"],
                "s": std * nonzero, "var": var, "log_lo": post["log_variance_clipped"],
                "log_hi": self.betas.log(), "a": a, "sigma": s}

    @staticmethod
    def gather_rows(columns: dict, pos: torch.Tensor, x: torch.Tensor) -> dict:
        """Each column (of ``reverse_table``) at each example's position, broadcast over x's
        trailing dimensions (improved-diffusion's _extract_into_tensor)."""
        return {k: per_sample(v[pos.cpu()], x) for k, v in columns.items()}

    @staticmethod
    def q_posterior_mean_logvar(rows: dict, x0, x_t):
        """The true posterior q(x_{t-1} | x_t, x_0) = N(mean, exp(log_var)) from ``gather_rows``
        rows: mean = c0 x_0 + ct x_t, log_var = log beta~_t (clipped)."""
        return rows["m0"] * x0 + rows["mx"] * x_t, rows["log_lo"]

    @staticmethod
    def p_mean_logvar(rows: dict, out, x_t, variance: str, clip=None):
        """The model's reverse kernel p(x_{t-1} | x_t) = N(mean, exp(log_var)).

        Args:
            rows: ``gather_rows`` of ``reverse_table``.
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

    @staticmethod
    def vlb_terms(rows: dict, x0, x_t, pos, mean, log_var, bins: int = 256) -> torch.Tensor:
        """L_{t-1} (t > 1: the Gaussian KL of the true posterior to the model's N(mean,
        exp(log_var))) or L_0 (position 0: the discretized-Gaussian NLL of x_0 on ``bins``
        levels), summed over dimensions: [B] nats."""
        true_mean, true_log_var = DiscreteSchedule.q_posterior_mean_logvar(rows, x0, x_t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).sum(1)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, bins).flatten(1).sum(1)
        return torch.where(pos.to(x0.device) == 0, nll, kl)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dimensions, [B] nats."""
        a, s = self.marginal(self.timesteps[-1:])
        zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
        kl = normal_kl(float(a) * x0, torch.full_like(x0, math.log(float(s) ** 2)), zero, zero)
        return kl.flatten(1).sum(1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise (broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def check_bins(bins) -> int:
    """The data's number of levels: an int >= 2."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"bins must be an int >= 2 (the data's levels), got {bins!r}")
    return int(bins)


def discretized_gaussian_log_likelihood(x, mean, log_scale, bins: int = 256) -> torch.Tensor:
    """log P(bin of x) under N(mean, exp(log_scale)^2), elementwise: the bin [x - w, x + w],
    w = 1 / (bins - 1), of data on ``bins`` levels of [-1, 1] (8-bit: 256, w = 1/255; the
    digits: 17), the outer bins extended to -inf (the level -1) and +inf (the level 1)
    (Ho et al. 2020, eq. 13).

    Computed in log space, log(Phi(b) - Phi(a)) = log Phi(b) + log(-expm1(log Phi(a) - log
    Phi(b))) on the lower-tail side of the bin, so far-tail bins keep their true (tiny) mass;
    improved-diffusion uses a tanh approximation of Phi and clamps the mass at 1e-12.
    """
    half = 1 / (check_bins(bins) - 1)
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + half) * inv_std
    lower = (x - mean - half) * inv_std
    flip = lower > 0                          # Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    log_hi = torch.special.log_ndtr(torch.where(flip, -lower, upper))
    log_lo = torch.special.log_ndtr(torch.where(flip, -upper, lower))
    inner = log_hi + torch.log(-torch.expm1(log_lo - log_hi))
    return torch.where(x < -1 + half, torch.special.log_ndtr(upper),
                       torch.where(x > 1 - half, torch.special.log_ndtr(-lower), inner))


def space_timesteps(num_timesteps: int, spec) -> list:
    """Positions kept by a respacing (improved-diffusion's space_timesteps).

    Args:
        spec: "ddimK" (the stride giving exactly K steps), section counts "10,15,20" (the steps
            split into equal sections, each strided to its count), an int K (uniform, one
            section), or a sequence of positions.
    """
    n = num_timesteps
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        spec = str(int(spec))
    if isinstance(spec, str) and spec.startswith("ddim"):
        want = int(spec[4:])
        for stride in range(1, n + 1):
            if len(range(0, n, stride)) == want:
                return list(range(0, n, stride))
        raise ValueError(f"no integer stride gives exactly {want} of {n} steps")
    if isinstance(spec, str):
        counts = [int(c) for c in spec.split(",")]
        size, extra = divmod(n, len(counts))
        keep, start = [], 0
        for i, count in enumerate(counts):
            section = size + (1 if i < extra else 0)
            if not 0 < count <= section:
                raise ValueError(f"cannot take {count} steps from a section of {section}")
            stride = (section - 1) / (count - 1) if count > 1 else 1
            at = 0.0
            for _ in range(count):          # a running sum, as improved-diffusion rounds it
                keep.append(start + round(at))
                at += stride
            start += section
        return keep
    if isinstance(spec, (Sequence, torch.Tensor)):
        keep = sorted({int(v) for v in spec})
        if not keep or keep[0] < 0 or keep[-1] >= n:
            raise ValueError(f"positions must lie in [0, {n}), got {spec}")
        return keep
    raise TypeError(f"respacing spec must be a str, an int or positions, got {type(spec).__name__}")


def linear(num_timesteps: int = 1000, beta_start=None, beta_end=None) -> DiscreteSchedule:
    """Linear betas (Ho et al. 2020); by default 1e-4 .. 0.02 scaled by 1000 / T (Nichol &
    Dhariwal), given values are used as they are (diffusers' "linear")."""
    scale = 1000 / num_timesteps
    lo = 1e-4 * scale if beta_start is None else beta_start
    hi = 0.02 * scale if beta_end is None else beta_end
    return DiscreteSchedule(torch.linspace(lo, hi, num_timesteps, dtype=torch.float64))


def scaled_linear(num_timesteps: int = 1000, beta_start: float = 0.00085,
                  beta_end: float = 0.012) -> DiscreteSchedule:
    """sqrt(beta) linear from sqrt(beta_start) to sqrt(beta_end), squared (diffusers, LDM)."""
    return DiscreteSchedule(torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps,
                                           dtype=torch.float64) ** 2)


def cosine(num_timesteps: int = 1000, s: float = 0.008,
           max_beta: float = 0.999) -> DiscreteSchedule:
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2);
    beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta) (Nichol & Dhariwal 2021)."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return DiscreteSchedule((1 - f[1:] / f[:-1]).clamp(max=max_beta))


def from_betas(betas) -> DiscreteSchedule:
    return DiscreteSchedule(betas)


# -- noise ladders (NCSN, NCSNv2, EDM) ---------------------------------------------------------

class NoiseLadder:
    """The noise levels sigma_1 > ... > sigma_L of NCSN: x_sigma = x_0 + sigma eps, model time
    sigma (Song & Ermon 2019)."""

    kind = "ladder"

    def __init__(self, sigmas):
        self.sigmas = _float64(sigmas, "sigmas")
        if (self.sigmas <= 0).any() or (len(self.sigmas) > 1 and (self.sigmas.diff() >= 0).any()):
            raise ValueError("a noise ladder's sigmas must be positive and decreasing")

    def __len__(self) -> int:
        return len(self.sigmas)

    def __repr__(self) -> str:
        return f"NoiseLadder(L={len(self)}, sigma {self.sigmas[0]:.4g} .. {self.sigmas[-1]:.4g})"

    @property
    def prior_std(self) -> float:
        return float(self.sigmas[0])

    def marginal(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).cpu()
        return torch.ones_like(sigma), sigma

    def snr(self, sigma) -> torch.Tensor:
        """SNR = 1 / sigma^2."""
        return self.marginal(sigma)[1] ** -2

    @property
    def sigma_range(self):
        return float(self.sigmas[0]), float(self.sigmas[-1])

    def sigma_to_time(self, sigma) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """sigma_max = sigma_1 > ... > sigma_L = sigma_min, geometric (NCSN: 1 -> 0.01, L = 10)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if num_levels < 2:
        raise ValueError(f"a ladder needs at least 2 levels, got {num_levels}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), num_levels,
                          dtype=torch.float64)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..N-1 (Karras et al. 2022, eq. 5), float64, decreasing."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """sigma_i evenly spaced in log sigma from sigma_max to sigma_min, i = 0..N-1, float64
    (k-diffusion's get_sigmas_exponential, without its final 0: ``append_zero``)."""
    return polyexponential_sigmas(num_steps, sigma_min, sigma_max, 1.0)


def polyexponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float,
                           rho: float = 1.0) -> torch.Tensor:
    """log sigma_i = log sigma_min + (1 - i/(N-1))^rho (log sigma_max - log sigma_min),
    i = 0..N-1, float64 (k-diffusion's get_sigmas_polyexponential, without its final 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not (0 < sigma_min <= sigma_max and rho > 0):
        raise ValueError(f"need 0 < sigma_min <= sigma_max and rho > 0, got {sigma_min}, "
                         f"{sigma_max}, {rho}")
    ramp = torch.linspace(1, 0, num_steps, dtype=torch.float64) ** rho
    lo = math.log(sigma_min)
    return (lo + ramp * (math.log(sigma_max) - lo)).exp()


def schedule_sigmas(schedule: "DiscreteSchedule", num_steps: int) -> torch.Tensor:
    """A discrete schedule's own noise levels ``schedule.sigmas`` at N step indices evenly
    spaced from the last to the first (rounded), float64, decreasing (k-diffusion's
    DiscreteSchedule.get_sigmas, whose fractional indices the model would round anyway)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    index = torch.linspace(len(schedule.sigmas) - 1, 0, num_steps, dtype=torch.float64)
    return schedule.sigmas[index.round().long()].unique_consecutive()


def append_zero(sigmas) -> torch.Tensor:
    """The levels followed by sigma = 0: the ``sigmas=`` grid of the sigma-view samplers
    (k-diffusion's convention), e.g. ``append_zero(karras_sigmas(20, 0.002, 80))``."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigma_max_from_data(data: torch.Tensor, chunk: int = 1024) -> float:
    """NCSNv2 technique 1: sigma_1 = the largest pairwise Euclidean distance in the data."""
    flat = data.reshape(len(data), -1).to(torch.float64)
    best = 0.0
    for i in range(0, len(flat), chunk):
        best = max(best, float(torch.cdist(flat[i:i + chunk], flat).max()))
    return best


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def ladder_ratio(dim: int) -> float:
    """NCSNv2 technique 2: gamma = sigma_{i-1} / sigma_i with
    Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5 (bisection)."""
    root = math.sqrt(2 * dim)
    if root <= 3:
        raise ValueError(f"no ladder ratio for D = {dim}: the equation has a root only for D > 4 "
                         "(sqrt(2D) > 3)")

    def mass(g):
        return _normal_cdf(root * (g - 1) + 3 * g) - _normal_cdf(root * (g - 1) - 3 * g)

    lo, hi = 1.0, 2.0
    while mass(hi) > 0.5:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) > 0.5 else (lo, mid)
    return (lo + hi) / 2


def num_noise_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """NCSNv2 technique 2 as a count: L with (sigma_max / sigma_min)^(1/(L-1)) <= gamma(D)."""
    return math.ceil(math.log(sigma_max / sigma_min) / math.log(ladder_ratio(dim))) + 1


def ald_variance_ratio(step_lr: float, gamma: float, sigma_min: float, steps_each: int) -> float:
    """Variance of annealed Langevin on a point mass after ``steps_each`` steps at sigma_i,
    started at variance (gamma sigma_i)^2, over sigma_i^2 (NCSNv2, Prop. 3 / technique 4):
    (1 - e/s^2)^(2T) (gamma^2 - c) + c, c = 2e / (s^2 - s^2 (1 - e/s^2)^2), s = sigma_L,
    for the update x + alpha s(x) + sqrt(2 alpha) z with alpha = e sigma_i^2 / sigma_L^2."""
    s2 = sigma_min ** 2
    decay = 1 - step_lr / s2
    c = 2 * step_lr / (s2 - s2 * decay ** 2)
    return decay ** (2 * steps_each) * (gamma ** 2 - c) + c


def ald_step_size(gamma: float, sigma_min: float, steps_each: int) -> float:
    """NCSNv2 technique 4: the step_lr epsilon whose variance ratio is nearest 1 (the ratio
    exceeds 1 for every epsilon, so this is its minimum, found on a log grid then refined)."""
    s2 = sigma_min ** 2

    def gap(log_e):
        return abs(ald_variance_ratio(math.exp(log_e), gamma, sigma_min, steps_each) - 1)

    lo, hi = math.log(s2 * 1e-12), math.log(s2 * 0.999)
    grid = [lo + (hi - lo) * i / 2000 for i in range(2001)]
    best = min(grid, key=gap)
    step = (hi - lo) / 2000
    a, b = best - step, best + step
    for _ in range(100):          # golden-section refinement
        m1, m2 = a + (b - a) * 0.382, a + (b - a) * 0.618
        a, b = (a, m2) if gap(m1) < gap(m2) else (m1, b)
    return math.exp((a + b) / 2)


def as_process(process):
    """A process object (DiscreteSchedule, SDE, NoiseLadder) as is; sigmas (a decreasing 1-D
    tensor or list, e.g. ``geometric_sigmas``) as a NoiseLadder."""
    if hasattr(process, "marginal") and hasattr(process, "kind"):
        return process
    if isinstance(process, (torch.Tensor, Sequence)) and not isinstance(process, str):
        return NoiseLadder(process)
    raise TypeError("process must be a pydiffuse.schedules.DiscreteSchedule, a pydiffuse.sde SDE "
                    f"or a noise ladder (decreasing sigmas), got {type(process).__name__}")
