"""LSGM's models (Vahdat, Kreis & Kautz 2021; MATH.md section 8): the mixed-score latent prior and
the VAE + prior pair the LSGM objective trains end to end."""

import math

import torch
from torch import nn
from torch.func import functional_call

from ..sde import VPSDE
from ..utils import per_sample
from .presets import create_model
from .vae import ConvVAE


def diffuse(sde: VPSDE, z0: torch.Tensor, t):
    """(z_t = m_t z_0 + sigma_t n, n), n ~ N(0, I) from torch's global generator, differentiable
    in z_0 (the encoder's gradient passes through it); t: [B] host times."""
    m, std = sde.marginal(torch.as_tensor(t).detach().cpu())
    n = torch.randn_like(z0)
    return per_sample(m, z0) * z0 + per_sample(std, z0) * n, n


class MixedScore(nn.Module):
    """The mixed score parameterization of a latent VP SDE's eps-prediction (LSGM):

        eps_theta(z_t, t) = sigma_t (1 - alpha) * z_t + alpha * eps'_theta(z_t, t),
        alpha = sigmoid(logit), one learned logit per latent dimension.

    sigma_t z_t is the eps of the Normal prior N(0, I) (diffused by the VP SDE it stays N(0, I),
    score -z_t, eps = -sigma_t score), so alpha -> 0 gives exactly that prior and the network
    eps' learns the residual.

    Args:
        net: eps'(z_t, t) with t the SDE time in [0, 1] (an MLP for a flat latent, a UNet for
            [C, H, W]).
        latent_shape: the latent's shape without the batch.
        sde: the latent ``VPSDE``.
        logit_init: the initial logit of alpha (LSGM starts near the Normal prior).

    ``forward(z_t [B, *latent_shape], t [B] float)`` returns eps [B, *latent_shape].
    """

    def __init__(self, net: nn.Module, latent_shape, sde: VPSDE, logit_init: float = -3.0):
        super().__init__()
        if not isinstance(sde, VPSDE):
            raise TypeError(f"the mixed score needs a VPSDE (its N(0, I) prior), got {sde!r}")
        self.net, self.sde = net, sde
        self.latent_shape = tuple(int(d) for d in latent_shape)
        self.mixing_logit = nn.Parameter(torch.full(self.latent_shape, float(logit_init)))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.mixing_logit)

    def forward(self, z: torch.Tensor, t) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != self.latent_shape:
            shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be [B, {', '.join(map(str, self.latent_shape))}], got "
                             f"{shape}")
        std = per_sample(self.sde.marginal(torch.as_tensor(t).detach().cpu())[1], z)
        t = torch.as_tensor(t, device=z.device).float().reshape(-1).expand(len(z))
        alpha = self.alpha
        return std * (1 - alpha) * z + alpha * self.net(z, t)


class LSGM(nn.Module):
    """A VAE (``ConvVAE``) with a score-based prior (``MixedScore``) on a latent VP SDE.

    The generative model is z_eps ~ p_theta(z_eps) (the prior's SDE solved from t = 1 down to
    ``eps``), x ~ p(x | z_eps). ``forward`` is the training pass the LSGM objective reads (one
    module call, so DistributedDataParallel sees it):

    - z_0 = mu + sigma n_0 ~ q(z_0 | x); the decoded latent z_eps = m_eps z_0 + sigma_eps n'
      ~ q(z_eps | x) = N(m_eps mu, m_eps^2 sigma^2 + sigma_eps^2), and -log p(x | z_eps);
    - at the VAE's times ``t_vae``: z_t = m_t z_0 + sigma_t n and eps_theta(z_t, t) with the
      prior's parameters detached (the gradient reaches the encoder only);
    - at the prior's times ``t_prior``: the same from z_0 detached (the gradient reaches the
      prior only).

    Args:
        vae: the ``ConvVAE``. prior: the ``MixedScore`` on the VAE's latent shape.
        eps: the smallest time of the latent SDE (training, sampling and the likelihood).
    """

    def __init__(self, vae: ConvVAE, prior: MixedScore, eps: float = 1e-5):
        super().__init__()
        if prior.latent_shape != vae.latent_shape:
            raise ValueError(f"the prior's latent shape {list(prior.latent_shape)} is not the "
                             f"VAE's {list(vae.latent_shape)}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.vae, self.prior, self.eps = vae, prior, float(eps)

    @property
    def sde(self) -> VPSDE:
        return self.prior.sde

    @property
    def latent_shape(self) -> tuple:
        return self.vae.latent_shape

    def q_eps(self, mu, log_sigma):
        """(mean, log std) of q(z_eps | x) = N(m_eps mu, m_eps^2 sigma^2 + sigma_eps^2)."""
        m, s = (float(v) for v in self.sde.marginal(self.eps))
        log_std = 0.5 * torch.logaddexp(2 * (log_sigma + math.log(m)),
                                        torch.full_like(log_sigma, 2 * math.log(s)))
        return m * mu, log_std

    def forward(self, x: torch.Tensor, t_vae=None, t_prior=None) -> dict:
        """The training pass.

        Args:
            x: data [B, C, H, W].
            t_vae, t_prior: [B] times in [eps, 1] (float64 on the host, as the objective draws
                them) of the two cross-entropy passes, or None to skip a pass.

        Returns:
            {"mu", "log_sigma" (q(z_0 | x)), "z0", "log_std_eps" (of q(z_eps | x)), "recon"
            ([B] -log p(x | z_eps)), and per pass "eps_vae"/"noise_vae",
            "eps_prior"/"noise_prior"}.
        """
        mu, log_sigma = self.vae.encode(x)
        z0 = mu + log_sigma.exp() * torch.randn_like(mu)
        mean_eps, log_std_eps = self.q_eps(mu, log_sigma)
        z_eps = mean_eps + log_std_eps.exp() * torch.randn_like(mu)
        out = {"mu": mu, "log_sigma": log_sigma, "z0": z0, "log_std_eps": log_std_eps,
               "recon": self.vae.nll(x, z_eps)}
        if t_vae is not None:
            z_t, out["noise_vae"] = diffuse(self.sde, z0, t_vae)
            frozen = {k: v.detach() for k, v in self.prior.named_parameters()}
            out["eps_vae"] = functional_call(self.prior, frozen, (z_t, t_vae))
        if t_prior is not None:
            z_t, out["noise_prior"] = diffuse(self.sde, z0.detach(), t_prior)
            out["eps_prior"] = self.prior(z_t, t_prior)
        return out

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [lo, hi] from latents z_eps: the decoder's mean."""
        return self.vae.decode_mean(z)


def build_lsgm(sde, *, image_size: int = 8, in_channels: int = 1, latent_shape=(16,),
               vae=None, prior=None, mixing_logit_init: float = -3.0, eps: float = 1e-5):
    """An ``LSGM`` from plain settings (``pydiffuse.config``'s ``model: {preset: lsgm, ...}``).

    Args:
        sde: the latent ``VPSDE``.
        image_size, in_channels: the data's shape. latent_shape: (D,) or (C, H/2, W/2).
        vae: ``ConvVAE`` keywords (channels, levels, lo, hi).
        prior: {preset: a ``pydiffuse.nn.presets`` name, **overrides} for eps' (default an MLP
            for a flat latent, the digits UNet otherwise); its data shape and time input
            ("unit") are set here.
        mixing_logit_init: the initial logit of the mixed score's alpha.
        eps: the latent SDE's smallest time.

    Returns:
        (model, every keyword it was built with).
    """
    latent_shape = [int(d) for d in latent_shape]
    kwargs = dict(image_size=image_size, in_channels=in_channels, latent_shape=latent_shape,
                  vae=dict(vae or {}), prior=dict(prior or {}),
                  mixing_logit_init=mixing_logit_init, eps=eps)
    spec = dict(kwargs["prior"])
    preset = spec.pop("preset", "mlp" if len(latent_shape) == 1 else "digits")
    if len(latent_shape) == 1:
        spec.update(dim=latent_shape[0])
    else:
        spec.update(image_size=latent_shape[1], in_channels=latent_shape[0])
    spec.setdefault("time_input", "unit")
    if preset == "digits":
        spec.setdefault("num_classes", None)
    net, _ = create_model(preset, **spec)
    model = LSGM(ConvVAE(image_size, in_channels, latent_shape, **kwargs["vae"]),
                 MixedScore(net, latent_shape, sde, mixing_logit_init), eps)
    return model, kwargs
