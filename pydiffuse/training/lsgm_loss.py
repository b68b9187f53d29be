"""The LSGM objective (Vahdat, Kreis & Kautz 2021; MATH.md section 8): a VAE whose prior is a
score model on a latent VP SDE, trained end to end on the variational bound

    NELBO(x) = E_q[-log p(x | z_eps)] - H(q(z_eps | x)) + CE(q(z_eps | x) || p_theta(z_eps)),

z_eps the latent at the SDE's smallest time eps (the sampler's end point), q(z_eps | x) =
N(m_eps mu, m_eps^2 sigma^2 + sigma_eps^2) the encoder's q(z_0 | x) diffused to eps.

The cross-entropy in score-matching form. For the marginals q_t, p_t of one forward SDE
dz = f z dt + g dw, d/dt CE(q_t || p_t) = D f + g^2/2 E_q[|grad log q_t|^2 - |grad log q_t -
grad log p_t|^2] (Fokker-Planck, integrating by parts), and CE(q_eps || p_eps) = CE(q_1 || p_1)
- int_eps^1 of it. Denoising score matching replaces the marginal score by the conditional one,
which adds E|grad log q(z_t | z_0)|^2 = D / sigma_t^2 back; for the VP SDE (f = -beta/2,
g^2 = beta, beta / sigma_t^2 = beta + d/dt log sigma_t^2) the D f and D g^2 / (2 sigma_t^2) terms
integrate to (D/2) log(sigma_1^2 / sigma_eps^2). With p_1 = N(0, I):

    CE(q_eps || p_eps) = int_eps^1 g^2/2 E|grad log q(z_t | z_0) - grad log p_t(z_t)|^2 dt
                         + (D/2) log(2 pi sigma_eps^2 / sigma_1^2) + (D/2) sigma_1^2
                         + (m_1^2 / 2) E|z_0|^2,

exact when eps_theta is p_t's true eps; as m_1 -> 0 the constant is MATH.md's (D/2) log(2 pi e
sigma_0^2) with sigma_0 = sigma_eps, the standard deviation at the truncation time. With
grad log q(z_t | z_0) = -n / sigma_t and grad log p_t = -eps_theta / sigma_t the integrand is
beta(t) / (2 sigma_t^2) |n - eps_theta(z_t, t)|^2: likelihood weighting. Its weight
beta / sigma^2 = d/dt log(sigma_t^2 / m_t^2) = -d/dt log SNR(t), so drawing t with density
proportional to it is drawing log SNR uniformly (``likelihood_times``): every draw then has the
same weight Z / 2, Z = log SNR(eps) - log SNR(1) (LSGM's variance reduction: importance sampling
of t for the likelihood weighting on the VP SDE).
"""

import math

import torch

from ..nn.lsgm import diffuse
from ..sde import VPSDE
from .losses import Objective

PRIOR_WEIGHTINGS = ("eps", "likelihood")


def likelihood_times(sde: VPSDE, n: int, eps: float):
    """t in [eps, 1] with density proportional to beta(t) / sigma_t^2 (log SNR uniform).

    Args:
        sde: the latent ``VPSDE``. n: how many. eps: the smallest time.

    Returns:
        (t [n] float64 on the host, Z = log SNR(eps) - log SNR(1) = int_eps^1 beta / sigma^2 dt).
    """
    lo, hi = (2 * torch.log(sde.sigma(v)) for v in (eps, 1.0))     # -log SNR at eps and 1
    u = lo + (hi - lo) * torch.rand(n, dtype=torch.float64)
    t = sde.sigma_to_time(torch.exp(0.5 * u)).clamp(eps, 1.0)
    return t, float(hi - lo)


def ce_times(sde: VPSDE, n: int, eps: float, importance: bool = True):
    """Times and weights of the cross-entropy's Monte-Carlo integral: the estimate of
    int_eps^1 beta / (2 sigma^2) E|n - eps_theta|^2 dt is w |n - eps_theta(z_t, t)|^2.

    Returns:
        (t [n] float64 host, w [n] float64 host): with ``importance`` t by ``likelihood_times``
        and w = Z / 2; else t ~ U[eps, 1] and w = (1 - eps) beta(t) / (2 sigma_t^2).
    """
    if importance:
        t, z = likelihood_times(sde, n, eps)
        return t, torch.full((n,), z / 2, dtype=torch.float64)
    t = eps + (1 - eps) * torch.rand(n, dtype=torch.float64)
    return t, (1 - eps) * sde.beta(t) / (2 * sde.marginal(t)[1] ** 2)


def ce_constant(sde: VPSDE, z0: torch.Tensor, eps: float) -> torch.Tensor:
    """(D/2) log(2 pi sigma_eps^2 / sigma_1^2) + (D/2) sigma_1^2 + (m_1^2 / 2) |z_0|^2, [B]."""
    d = z0[0].numel()
    var_eps = float(sde.marginal(eps)[1]) ** 2
    m1, s1 = (float(v) for v in sde.marginal(1.0))
    return (0.5 * d * (math.log(2 * math.pi * var_eps / s1 ** 2) + s1 ** 2)
            + 0.5 * m1 ** 2 * z0.flatten(1).pow(2).sum(1))


def ce_from_eps(eps_pred, noise, weight, const) -> torch.Tensor:
    """The cross-entropy estimate w |n - eps_theta|^2 + constant, [B]."""
    w = torch.as_tensor(weight, dtype=eps_pred.dtype).to(eps_pred.device)
    return w * (noise - eps_pred).flatten(1).pow(2).sum(1) + const


def cross_entropy(eps_fn, sde: VPSDE, z0: torch.Tensor, eps: float = 1e-5,
                  importance: bool = True) -> torch.Tensor:
    """A one-sample estimate of CE(q(z_eps | z_0) || p(z_eps)) for each z_0 (module docstring).

    Args:
        eps_fn: eps_theta(z_t [B, ...], t [B] float64 host) of the prior's marginals.
        sde: the latent ``VPSDE``. z0: [B, ...] samples of q(z_0 | x).
        eps: the truncation time. importance: log-SNR importance sampling of t.

    Returns:
        [B] nats; its mean over z_0 ~ q estimates CE(q_eps || p_eps).
    """
    t, w = ce_times(sde, len(z0), eps, importance)
    z_t, noise = diffuse(sde, z0, t)
    return ce_from_eps(eps_fn(z_t, t), noise, w, ce_constant(sde, z0, eps))


def normal_cross_entropy(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """CE(N(mean, std^2) || N(0, I)) = sum (log(2 pi) + mean^2 + std^2) / 2, [B]: the prior term
    with alpha -> 0 (the Normal prior), the VAE warm-up's."""
    return 0.5 * (math.log(2 * math.pi) + mean ** 2 + torch.exp(2 * log_std)).flatten(1).sum(1)


class LSGMLoss(Objective):
    """LSGM's training objective for an ``pydiffuse.nn.lsgm.LSGM`` model; the loss is in nats per
    data dimension.

    - The VAE (encoder, decoder) minimizes the NELBO: reconstruction - entropy + the cross-entropy
      with likelihood weighting and log-SNR importance sampling (module docstring), the prior's
      parameters detached.
    - The prior minimizes, from z_0 detached, ``prior_weighting`` "eps": the unweighted
      E_{t ~ U[eps, 1]} mean |n - eps_theta|^2 (LSGM's w = 1 for the prior), or "likelihood":
      the VAE's likelihood-weighted, importance-sampled cross-entropy.
    - One backward: loss = NELBO / D + (L_prior - L_prior.detached), so the logged value is the
      NELBO estimate while each part's gradient reaches its own parameters only.
    - ``param_groups`` gives the Trainer two parameter groups, "vae" and "prior", with their own
      learning rates: Adam's state is per parameter, so one Adam with two groups is two Adams.
    - ``vae_warmup`` steps first train the VAE alone against the Normal prior (the closed-form
      CE to N(0, I), i.e. the mixed score with alpha -> 0); the prior gets no gradient and is
      not stepped. The step count is the objective's state (checkpointed).
    - The model is unconditional: labels in the batch are ignored.

    Args:
        vae_warmup: VAE-only steps at the start.
        prior_weighting: "eps" or "likelihood".
        vae_lr, prior_lr: the groups' learning rates (None: the Trainer's lr).
    """

    def __init__(self, *, vae_warmup: int = 0, prior_weighting: str = "eps", vae_lr=None,
                 prior_lr=None):
        super().__init__()
        if prior_weighting not in PRIOR_WEIGHTINGS:
            raise ValueError(f"prior_weighting must be one of {PRIOR_WEIGHTINGS}, got "
                             f"{prior_weighting!r}")
        if not isinstance(vae_warmup, int) or vae_warmup < 0:
            raise ValueError(f"vae_warmup must be an int >= 0, got {vae_warmup!r}")
        for name, lr in (("vae_lr", vae_lr), ("prior_lr", prior_lr)):
            if lr is not None and not lr > 0:
                raise ValueError(f"{name} must be positive or None, got {lr!r}")
        self.vae_warmup, self.prior_weighting = vae_warmup, prior_weighting
        self.lrs = {"vae": vae_lr, "prior": prior_lr}
        # DDP: during the warm-up the prior's parameters get no gradient
        self.find_unused_parameters = vae_warmup > 0
        self.step = 0

    @staticmethod
    def _lsgm(model):
        lsgm = getattr(model, "module", model)          # under DistributedDataParallel
        if not all(hasattr(lsgm, a) for a in ("vae", "prior", "sde", "eps")):
            raise TypeError(f"LSGMLoss trains an LSGM model, got {type(lsgm).__name__}")
        return lsgm

    def param_groups(self, model) -> list:
        """[{"name": "vae", "params", ("lr")}, {"name": "prior", ...}] for the Trainer."""
        lsgm = self._lsgm(model)
        groups = []
        for name, module in (("vae", lsgm.vae), ("prior", lsgm.prior)):
            group = {"name": name, "params": list(module.parameters())}
            if self.lrs[name] is not None:
                group["lr"] = self.lrs[name]
            groups.append(group)
        return groups

    def compute(self, model, x, y) -> dict:
        lsgm = self._lsgm(model)
        sde, eps, n = lsgm.sde, lsgm.eps, len(x)
        warm = self.step < self.vae_warmup
        self.step += 1
        t_vae = t_prior = None
        if not warm:
            t_vae, w_vae = ce_times(sde, n, eps, importance=True)
            t_prior, w_prior = ce_times(sde, n, eps, importance=self.prior_weighting ==
                                        "likelihood")
        out = model(x, t_vae, t_prior)
        d = x[0].numel()
        entropy = lsgm.vae.gaussian_entropy(out["log_std_eps"])
        if warm:
            ce = normal_cross_entropy(lsgm.q_eps(out["mu"], out["log_sigma"])[0],
                                      out["log_std_eps"])
        else:
            ce = ce_from_eps(out["eps_vae"], out["noise_vae"], w_vae,
                             ce_constant(sde, out["z0"], eps))
        nelbo = (out["recon"] - entropy + ce) / d
        loss = nelbo.mean()
        if not warm:
            err = out["noise_prior"] - out["eps_prior"]
            if self.prior_weighting == "eps":
                prior = err.pow(2).flatten(1).mean(1).mean()
            else:
                prior = ce_from_eps(out["eps_prior"], out["noise_prior"], w_prior, 0.0).mean() / d
            loss = loss + (prior - prior.detach())
        frac = None if warm else t_vae.to(x.device, torch.float32)
        return {"loss": loss, "per_example": nelbo.detach().float(), "t": frac}

    def state_dict(self) -> dict:
        return {"step": torch.tensor(self.step, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"step"}:
            raise ValueError(f"an LSGMLoss state holds 'step', got keys {sorted(state)}")
        self.step = int(state["step"])
