"""VE, VP and sub-VP SDEs dx = f(t) x dt + g(t) dw (Song et al. 2021; MATH.md section 5).

Every coefficient method takes a time tensor t (or float) and returns float64 tensors on the
CPU, so samplers precompute their tables; tensor methods (``sde``, ``marginal_prob``,
``discretize``, ``reverse``) follow the reference code's API for custom samplers.
"""

import math

import torch

from .ops import randn
from .utils import per_sample


def _time(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()


class SDE:
    """dx = f(t) x dt + g(t) dw on t in [0, T = 1], with Gaussian marginals a(t) x_0 + std(t) eps.

    Args:
        N: the number of discretization steps (the reverse-diffusion and ancestral predictors and
            the PC sampler's default step count).
    """

    kind = "sde"
    T = 1.0
    sampling_eps = 1e-3
    prior_std = 1.0

    def __init__(self, N: int = 1000):
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N}")
        self.N = int(N)

    # coefficient functions (float64 [B]) -------------------------------------------------------
    def drift_coef(self, t) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, t) -> torch.Tensor:
        raise NotImplementedError

    def marginal(self, t):
        """(a(t), std(t)) of p_0t(x_t | x_0) = N(a x_0, std^2 I)."""
        raise NotImplementedError

    def discretize_coefs(self, t):
        """(f_i, G_i) of x_{i+1} = x_i + f_i x_i + G_i z: Euler-Maruyama with dt = 1/N."""
        dt = self.T / self.N
        return self.drift_coef(t) * dt, self.diffusion(t) * math.sqrt(dt)

    def model_time(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The model's t at SDE times t (a tensor on any device): t itself, in ``dtype``
        (float32, what a model trained in float32 reads; a float64 run passes float64)."""
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
        return t.to(dtype)

    def model_marginal(self, t):
        """(a, std) at which the model's output is read (turned into x0 or a score) at times t:
        the marginal's (``DiscreteVPSDE``: its chain's)."""
        return self.marginal(t)

    def sigma(self, t) -> torch.Tensor:
        """The VE noise level std / a at t."""
        a, s = self.marginal(t)
        return s / a

    def snr(self, t) -> torch.Tensor:
        """SNR(t) = a(t)^2 / std(t)^2 (Kingma et al. 2021)."""
        return self.sigma(t) ** -2

    @property
    def sigma_range(self):
        """(sigma at t = 1, sigma at sampling_eps)."""
        return float(self.sigma(self.T)), float(self.sigma(self.sampling_eps))

    def sigma_to_time(self, sigma) -> torch.Tensor:
        raise NotImplementedError

    # tensor API (the score_sde reference code's) ----------------------------------------------
    def sde(self, x: torch.Tensor, t):
        """(drift f(t) x, diffusion g(t) as [B])."""
        t = _time(t)
        return per_sample(self.drift_coef(t), x) * x, self.diffusion(t).to(x.device, x.dtype)

    def marginal_prob(self, x0: torch.Tensor, t):
        """(mean a(t) x0, std(t) as [B])."""
        a, s = self.marginal(_time(t))
        return per_sample(a, x0) * x0, s.to(x0.device, x0.dtype)

    def discretize(self, x: torch.Tensor, t):
        """(f_i x, G_i as [B]) of the discretized forward process."""
        f, g = self.discretize_coefs(_time(t))
        return per_sample(f, x) * x, g.to(x.device, x.dtype)

    def prior_sampling(self, shape, seed=0, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """x_T ~ N(0, prior_std^2 I) from the noise stream at step 0."""
        return randn(shape, seed, 0, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, [B]."""
        d = z[0].numel()
        s2 = self.prior_std ** 2
        return -0.5 * d * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """dx = [f - g^2 s(x, t)] dt + g dw-bar, or the probability-flow ODE dx = [f - g^2 s / 2] dt
    (Song et al. 2021, eqs. 6 and 13); ``score_fn(x, t)`` returns the score."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow

    def sde(self, x: torch.Tensor, t):
        drift, g = self.forward.sde(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        tt = _time(t).to(device=x.device, dtype=torch.float32).expand(len(x))
        drift = drift - weight * per_sample(g * g, x) * self.score_fn(x, tt)
        return drift, (torch.zeros_like(g) if self.probability_flow else g)

    def discretize(self, x: torch.Tensor, t):
        """(rev_f, rev_G) = (f - G^2 s, G) of the reverse-diffusion predictor (0.5 G^2 s, 0 for
        the probability flow)."""
        f, g = self.forward.discretize(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        tt = _time(t).to(device=x.device, dtype=torch.float32).expand(len(x))
        f = f - weight * per_sample(g * g, x) * self.score_fn(x, tt)
        return f, (torch.zeros_like(g) if self.probability_flow else g)


class VESDE(SDE):
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t; f = 0; g = sigma(t) sqrt(2 ln(sigma_max /
    sigma_min)); p_0t = N(x_0, sigma(t)^2 I); prior N(0, sigma_max^2 I) (SMLD as an SDE)."""

    sampling_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.discrete_sigmas = torch.exp(torch.linspace(
            math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _time(t)

    def drift_coef(self, t):
        return torch.zeros_like(_time(t))

    def diffusion(self, t):
        return self._sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t):
        s = self._sigma(t)
        return torch.ones_like(s), s

    def discretize_coefs(self, t):
        """SMLD's ladder: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2), sigma_{-1} = 0."""
        i = (_time(t) * (self.N - 1) / self.T).long()
        sigma = self.discrete_sigmas[i]
        below = torch.where(i == 0, torch.zeros_like(sigma),
                            self.discrete_sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(sigma), (sigma ** 2 - below ** 2).sqrt()

    def sigma_to_time(self, sigma):
        return torch.log(_time(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class VPSDE(SDE):
    """beta(t) = beta_min + t (beta_max - beta_min); f = -beta(t)/2; g = sqrt(beta(t));
    p_0t = N(m x_0, (1 - m^2) I), m = exp(-t^2 (beta_max - beta_min)/4 - t beta_min/2) (DDPM as
    an SDE)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not 0 <= beta_min <= beta_max or beta_max <= 0:
            raise ValueError(f"need 0 <= beta_min <= beta_max, beta_max > 0; got {beta_min}, "
                             f"{beta_max}")
        if beta_max / N >= 1:
            raise ValueError(f"N = {N} steps give the discrete chain beta_max / N = "
                             f"{beta_max / N:.3g} >= 1 (the reference discretization needs "
                             f"N > beta_max = {beta_max}); use more steps")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, "
                f"N={self.N})")

    @classmethod
    def from_discrete(cls, schedule) -> "VPSDE":
        """The SDE of a model trained on ``schedule``'s chain: linear betas b_0..b_{T-1} are the
        chain of VPSDE(T b_0, T b_{T-1}, N = T) (DDPM's schedule is VPSDE(0.1, 20)'s), and the
        model keeps its discrete time and std (a ``DiscreteVPSDE``, as score_sde samples its
        DDPM checkpoints)."""
        betas, n = schedule.betas, len(schedule)
        linear = torch.linspace(float(betas[0]), float(betas[-1]), n, dtype=torch.float64)
        if not (torch.allclose(betas, linear, rtol=1e-9, atol=0)
                and torch.equal(schedule.timesteps, torch.arange(n))):
            raise ValueError("only a full linear-beta schedule is the chain of a VP SDE; "
                             f"{schedule!r} is not")
        return DiscreteVPSDE(float(betas[0]) * n, float(betas[-1]) * n, n)

    def beta(self, t):
        return self.beta_min + _time(t) * (self.beta_max - self.beta_min)

    def log_mean_coef(self, t):
        t = _time(t)
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return self.beta(t).sqrt()

    def marginal(self, t):
        m = self.log_mean_coef(t).exp()
        return m, (1 - m * m).sqrt()

    def discretize_coefs(self, t):
        """DDPM's chain: f = sqrt(1 - beta_i) - 1, G = sqrt(beta_i), beta_i = linspace(beta_min/N,
        beta_max/N)[i]."""
        beta = self.discrete_betas[(_time(t) * (self.N - 1) / self.T).long()]
        return (1 - beta).sqrt() - 1, beta.sqrt()

    def _time_of_mean(self, m):
        """Invert log m = -t^2 (b1 - b0)/4 - t b0 / 2 for t."""
        log_m, db = m.log(), self.beta_max - self.beta_min
        if db == 0:
            return -2 * log_m / self.beta_min
        return (-0.5 * self.beta_min + (0.25 * self.beta_min ** 2 - db * log_m).sqrt()) / (0.5 * db)

    def sigma_to_time(self, sigma):
        return self._time_of_mean(1 / (1 + _time(sigma) ** 2).sqrt())


class DiscreteVPSDE(VPSDE):
    """A VP SDE whose model was trained on its discrete chain (a DDPM eps model): score_sde's
    ``get_score_fn(continuous=False)``. The model sees the chain's index
    i = floor(t (chain - 1)) (t in float32, truncated as the reference's ``.long()``) and its
    output is read at the chain's marginal: s = -eps / sqrt(1 - alpha_bar_i), alpha_bar =
    cumprod(1 - linspace(beta_min / chain, beta_max / chain, chain)).

    Args:
        beta_min, beta_max, N: as ``VPSDE`` (N: the sampler's discretization).
        chain: the model's number of steps (default N; kept when a sampler rediscretizes).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000,
                 chain: int | None = None):
        super().__init__(beta_min, beta_max, N)
        self.chain = self.N if chain is None else int(chain)
        betas = torch.linspace(beta_min / self.chain, beta_max / self.chain, self.chain,
                               dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, chain={self.chain})"

    def model_time(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The chain index floor(t (chain - 1)), long (on t's device), of t in float32 as
        score_sde computes it (whatever ``dtype``: an index is exact)."""
        return (torch.as_tensor(t).to(torch.float32) * (self.chain - 1)).long()

    def model_marginal(self, t):
        """(sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i)) at the model's index i of t."""
        ab = self.alphas_cumprod[self.model_time(_time(t))]
        return ab.sqrt(), (1 - ab).sqrt()


class SubVPSDE(VPSDE):
    """f as VP; g = sqrt(beta(t) (1 - exp(-2 int_0^t beta))); p_0t = N(m x_0, (1 - m^2)^2 I)."""

    def diffusion(self, t):
        return (self.beta(t) * (1 - torch.exp(4 * self.log_mean_coef(t)))).sqrt()

    def marginal(self, t):
        m = self.log_mean_coef(t).exp()
        return m, 1 - m * m

    def discretize_coefs(self, t):
        return SDE.discretize_coefs(self, t)

    def sigma_to_time(self, sigma):
        s = _time(sigma)
        return self._time_of_mean((-s + (s * s + 4).sqrt()) / 2)
