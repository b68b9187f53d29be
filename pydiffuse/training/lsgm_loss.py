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

LSGM's other weightings (``MODES``, ``iw_times``) drop factors of the likelihood weighting for
the prior's loss (w = 1, g^2 / 2, 1 / (2 m_t^2)) and draw t from a density proportional to the
remaining variance-reducing factor, each estimate unbiased for its own integral over [eps, 1].
"""

import math
import warnings

import torch

from ..nn.lsgm import diffuse
from ..sde import SubVPSDE, VPSDE
from .losses import Objective

# LSGM's weightings (Vahdat et al. 2021, Appendix; NVlabs/LSGM ``iw_quantities``): mode ->
# (lambda, proposal). lambda(t) weighs E|n - eps_theta(z_t, t)|^2 in int_eps^1 lambda E|..|^2 dt;
# t is drawn from the proposal r(t) on [eps, 1] with the weight w = lambda(t) / r(t).
MODES = {
    "ll_uniform": ("ll", "uniform"),
    "ll_iw": ("ll", "log_var"),
    "ll_logsnr_iw": ("ll", "log_snr"),
    "drop_all_uniform": ("drop_all", "uniform"),
    "drop_all_iw": ("drop_all", "mean2"),
    "drop_sigma2t_uniform": ("drop_sigma2t", "uniform"),
    "drop_sigma2t_iw": ("drop_sigma2t", "var"),
    "rescale_iw": ("rescale", "uniform"),
}
VAE_MODES = tuple(m for m, (lam, _) in MODES.items() if lam == "ll")
LEGACY_PRIOR_WEIGHTINGS = {"eps": "drop_all_uniform", "likelihood": "ll_logsnr_iw"}


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


def iw_lambda(sde: VPSDE, kind: str, t) -> torch.Tensor:
    """The objective's weight lambda(t), float64: "ll" g^2 / (2 sigma_t^2) (likelihood),
    "drop_all" 1, "drop_sigma2t" g^2 / 2, "rescale" 1 / (2 (1 - sigma_t^2)) (LSGM's names)."""
    m, s = sde.marginal(t)
    return {"ll": lambda: sde.beta(t) / (2 * s ** 2), "drop_all": lambda: torch.ones_like(m),
            "drop_sigma2t": lambda: sde.beta(t) / 2, "rescale": lambda: 0.5 / m ** 2}[kind]()


def _mean2_times(sde: VPSDE, u: torch.Tensor, eps: float):
    """t with density m_t^2 / C on [eps, 1], C = int_eps^1 m_t^2 dt, by the closed-form inverse
    CDF: m_t^2 = exp(d b^2 - d (t + b)^2), d = (beta_max - beta_min) / 2, b = beta_min / (2 d)."""
    d = 0.5 * (sde.beta_max - sde.beta_min)
    if d <= 0:
        raise ValueError("iw_sample_p='drop_all_iw' needs beta_max > beta_min (LSGM's inverse "
                         f"CDF for a linear beta), got {sde!r}")
    b, r = sde.beta_min / (2 * d), math.sqrt(d)
    lo, hi = (torch.erf(torch.tensor(r * (v + b), dtype=torch.float64)) for v in (eps, 1.0))
    t = torch.erfinv(lo + u * (hi - lo)) / r - b
    return t, math.exp(d * b * b) * math.sqrt(math.pi / (4 * d)) * float(hi - lo)


def iw_times(sde: VPSDE, mode: str, n: int, eps: float):
    """Times and weights of an LSGM weighting ``mode`` (``MODES``): E[w |n - eps_theta(z_t, t)|^2]
    = int_eps^1 lambda(t) E|n - eps_theta|^2 dt, w = lambda(t) / r(t) for t ~ r on [eps, 1]
    (LSGM paper, Appendix; NVlabs/LSGM ``iw_quantities`` for the VP SDE, sigma_0^2 = 0):

    - "uniform": r = 1 / (1 - eps) (LSGM's uniform modes and ``rescale_iw``, which LSGM too
      samples uniformly; LSGM weighs them by lambda alone, the mean over U[eps, 1]).
    - "log_var" (``ll_iw``): log sigma_t^2 uniform, r = beta (1 - sigma^2) / (sigma^2 L),
      L = log(sigma_1^2 / sigma_eps^2).
    - "var" (``drop_sigma2t_iw``): sigma_t^2 uniform, r = beta (1 - sigma^2) / (sigma_1^2 -
      sigma_eps^2).
    - "mean2" (``drop_all_iw``): r = m_t^2 / int_eps^1 m^2 = (1 - sigma_t^2) / C, erf's inverse.
    - "log_snr" (``ll_logsnr_iw``, pydiffuse's): log SNR uniform, r = beta / (sigma^2 Z): the
      likelihood weighting's own density, so w = Z / 2 for every draw.

    Returns:
        (t [n] float64 host, w [n] float64 host). Refuses the sub-VP SDE (LSGM's VP formulas).
    """
    if mode not in MODES:
        raise ValueError(f"unknown LSGM weighting {mode!r}; choose one of {', '.join(MODES)}")
    if isinstance(sde, SubVPSDE) or not isinstance(sde, VPSDE):
        raise ValueError(f"LSGM's weightings are derived for the VP SDE, got {sde!r}")
    kind, proposal = MODES[mode]
    if proposal == "log_snr":
        t, z = likelihood_times(sde, n, eps)
        return t, torch.full((n,), z / 2, dtype=torch.float64)
    u = torch.rand(n, dtype=torch.float64)
    if proposal == "uniform":
        t = eps + (1 - eps) * u
        return t, (1 - eps) * iw_lambda(sde, kind, t)
    if proposal == "mean2":
        t, c = _mean2_times(sde, u, eps)
        t = t.clamp(eps, 1.0)
        return t, c / sde.marginal(t)[0] ** 2 * iw_lambda(sde, kind, t)
    lo, hi = (sde.marginal(v)[1] ** 2 for v in (eps, 1.0))
    var = (lo.log() + u * (hi / lo).log()).exp() if proposal == "log_var" else lo + u * (hi - lo)
    t = sde.sigma_to_time((var / (1 - var)).sqrt()).clamp(eps, 1.0)
    m, s = sde.marginal(t)
    span = float((hi / lo).log() if proposal == "log_var" else hi - lo)
    inv_r = span * (s ** 2 if proposal == "log_var" else 1) / (sde.beta(t) * m ** 2)
    return t, inv_r * iw_lambda(sde, kind, t)


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
                  mode: str = "ll_logsnr_iw") -> torch.Tensor:
    """A one-sample estimate of CE(q(z_eps | z_0) || p(z_eps)) for each z_0 (module docstring).

    Args:
        eps_fn: eps_theta(z_t [B, ...], t [B] float64 host) of the prior's marginals.
        sde: the latent ``VPSDE``. z0: [B, ...] samples of q(z_0 | x).
        eps: the truncation time. mode: a likelihood weighting of ``VAE_MODES`` (its t-sampling).

    Returns:
        [B] nats; its mean over z_0 ~ q estimates CE(q_eps || p_eps).
    """
    if mode not in VAE_MODES:
        raise ValueError(f"the cross-entropy's mode must be one of {VAE_MODES}, got {mode!r}")
    t, w = iw_times(sde, mode, len(z0), eps)
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
      with likelihood weighting, its t drawn by ``iw_sample_q`` (``iw_times``), the prior's
      parameters detached.
    - The prior minimizes, from z_0 detached, the weighting ``iw_sample_p`` (``MODES``, LSGM's
      names): the mean over t ~ U[eps, 1] of lambda(t) times the per-latent-dimension mean
      |n - eps_theta|^2, estimated as w / (1 - eps) mean |n - eps_theta|^2 with (t, w) of
      ``iw_times`` (LSGM sums over the dimensions and integrates over [eps, 1]: constant factors
      of the prior's gradient).
    - Defaults are LSGM's (its README's training commands): ``iw_sample_p="drop_sigma2t_iw"``,
      ``iw_sample_q="ll_iw"``. pydiffuse's former defaults are ``iw_sample_p=
      "drop_all_uniform"`` (unweighted eps loss, uniform t) with ``iw_sample_q="ll_logsnr_iw"``
      (log-SNR uniform: constant weights), which ``configs/lsgm.yaml`` and the shipped model use.
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
        iw_sample_p: the prior's weighting, one of ``MODES``.
        iw_sample_q: the VAE's cross-entropy sampling, one of ``VAE_MODES``.
        prior_weighting: deprecated (the shipped model's record): "eps" is
            ``iw_sample_p="drop_all_uniform"``, "likelihood" ``"ll_logsnr_iw"``, each with
            ``iw_sample_q="ll_logsnr_iw"``; not with ``iw_sample_p`` / ``iw_sample_q``.
        vae_lr, prior_lr: the groups' learning rates (None: the Trainer's lr).
    """

    def __init__(self, *, vae_warmup: int = 0, iw_sample_p: str = "drop_sigma2t_iw",
                 iw_sample_q: str = "ll_iw", prior_weighting: str | None = None, vae_lr=None,
                 prior_lr=None):
        super().__init__()
        if prior_weighting is not None:
            if prior_weighting not in LEGACY_PRIOR_WEIGHTINGS:
                raise ValueError(f"prior_weighting must be one of "
                                 f"{tuple(LEGACY_PRIOR_WEIGHTINGS)}, got {prior_weighting!r}")
            if (iw_sample_p, iw_sample_q) != ("drop_sigma2t_iw", "ll_iw"):
                raise ValueError("prior_weighting is the deprecated name of an (iw_sample_p, "
                                 "iw_sample_q) pair; give iw_sample_p / iw_sample_q only")
            warnings.warn(f"LSGMLoss(prior_weighting={prior_weighting!r}) is deprecated: use "
                          f"iw_sample_p={LEGACY_PRIOR_WEIGHTINGS[prior_weighting]!r}, "
                          "iw_sample_q='ll_logsnr_iw'", DeprecationWarning, stacklevel=2)
            iw_sample_p, iw_sample_q = LEGACY_PRIOR_WEIGHTINGS[prior_weighting], "ll_logsnr_iw"
        if iw_sample_p not in MODES:
            raise ValueError(f"iw_sample_p must be one of {tuple(MODES)}, got {iw_sample_p!r}")
        if iw_sample_q not in VAE_MODES:
            raise ValueError(f"iw_sample_q must be one of {VAE_MODES}, got {iw_sample_q!r}")
        if not isinstance(vae_warmup, int) or vae_warmup < 0:
            raise ValueError(f"vae_warmup must be an int >= 0, got {vae_warmup!r}")
        for name, lr in (("vae_lr", vae_lr), ("prior_lr", prior_lr)):
            if lr is not None and not lr > 0:
                raise ValueError(f"{name} must be positive or None, got {lr!r}")
        self.vae_warmup, self.iw_sample_p, self.iw_sample_q = vae_warmup, iw_sample_p, iw_sample_q
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
            t_vae, w_vae = iw_times(sde, self.iw_sample_q, n, eps)
            t_prior, w_prior = iw_times(sde, self.iw_sample_p, n, eps)
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
            err = (out["noise_prior"] - out["eps_prior"]).pow(2).flatten(1).mean(1)
            prior = ((w_prior / (1 - eps)).to(err) * err).mean()
            loss = loss + (prior - prior.detach())
        frac = None if warm else t_vae.to(x.device, torch.float32)
        return {"loss": loss, "per_example": nelbo.detach().float(), "t": frac}
    def state_dict(self) -> dict:
        return {"step": torch.tensor(self.step, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"step"}:
            raise ValueError(f"an LSGMLoss state holds 'step', got keys {sorted(state)}")
        self.step = int(state["step"])
