"""Sampling and the likelihood bound of a trained LSGM (Vahdat, Kreis & Kautz 2021; MATH.md
section 8): the latent probability-flow ODE (adaptive) or the reverse SDE (predictor-corrector)
on the mixed-score prior, then the decoder's mean; the NELBO in bits per dimension with the
prior term by the ODE's log-likelihood, as in the paper."""

import math

import torch

from .likelihood.ode import ode_nll
from .pipeline import Pipeline, _check_n
from .samplers import sample as sample_with
from .training.lsgm_loss import cross_entropy

LSGM_SAMPLERS = ("ode", "pc")


class LSGMPipeline(Pipeline):
    """``pydiffuse.load`` of an LSGM checkpoint: ``pipe.sample(n, sampler="ode" | "pc", ...)``
    returns decoded images [n, C, H, W] in [-1, 1].

    Attributes: ``model`` (the ``LSGM``), ``process`` (its latent VP SDE), ``prediction``
    ("eps", the prior's), ``event_shape`` (the images'), ``config``.
    """

    default_sampler = "ode"

    def __init__(self, model, config: dict):
        super().__init__(model, model.sde, "eps", config, model.vae.image_shape)

    def sample(self, n: int, *, sampler=None, steps=None, seed=0, labels=None, guidance=None,
               progress=None, return_info: bool = False, **options):
        """n images: z_1 ~ N(0, I) from the noise stream, the latent sampler from t = 1 to the
        model's eps on the mixed-score prior (``pydiffuse.sample``), then the decoder's mean.

        Args:
            n: how many. sampler: "ode" (the probability-flow ODE; adaptive RK45 by default,
                ``method="euler" | "heun"`` with ``steps``) or "pc" (reverse diffusion +
                Langevin); default the config's.
            steps, seed, progress, options: ``pydiffuse.sample``'s.
            labels, guidance: not supported (the LSGM here is unconditional): any labels
                (whatever their values) or guidance raise ValueError.
            return_info: also return {"nfe", "seconds"} of the latent sampler.

        Returns:
            [n, C, H, W] images (and the info dict).
        """
        _check_n(n)
        if labels is not None or guidance is not None:
            raise ValueError("this LSGM is not class-conditional: it takes no labels or guidance")
        sampler, opts = self._sampler_options(sampler, steps, options)
        if sampler not in LSGM_SAMPLERS:
            raise ValueError(f"an LSGM samples its latent with {LSGM_SAMPLERS}, got {sampler!r}")
        opts = {"eps": self.model.eps, **opts}
        with torch.no_grad():
            z, info = sample_with(self.model.prior, (n, *self.model.latent_shape),
                                  process=self.process, sampler=sampler, prediction="eps",
                                  seed=seed, device=self.device, progress=progress,
                                  return_info=True, **opts)
            x = self.model.decode(z)
        return (x, info) if return_info else x


def nelbo(model, x: torch.Tensor, *, prior: str = "ode", seed: int = 0, divergence="exact",
          rtol: float = 1e-5, atol: float = 1e-5, batch_size=None, progress=None) -> dict:
    """The negative ELBO of an LSGM per example, one z_eps ~ q(z_eps | x) each:

        NELBO(x) = -log p(x | z_eps) + log q(z_eps | x) - log p_theta(z_eps)  >=  -log P(x)

    with -log p_theta(z_eps) by the prior's probability-flow ODE (``prior="ode"``, LSGM's
    evaluation; ``pydiffuse.likelihood.ode_nll`` from t = eps) or by the score-matching
    cross-entropy estimate (``prior="ce"``: the training objective's, an estimate of
    E_q[-log p(z_eps)] under the score model's own marginals). The decoder's discretized
    likelihood makes it a bound on the discrete data: bits/dim = NELBO / (D ln 2), for the
    digits over their 17 levels (a uniform model scores log2 17 = 4.09).

    Args:
        model: an ``LSGM`` (eval mode). x: [B, C, H, W] data on the decoder's grid.
        prior: "ode" or "ce". seed: the draws of z_eps (and the ODE's Hutchinson probes).
        divergence, rtol, atol, batch_size, progress: ``ode_nll``'s.

    Returns:
        {"recon", "log_q", "prior", "nelbo" [B] nats, "bpd" [B], "nfe"}.
    """
    if prior not in ("ode", "ce"):
        raise ValueError(f"prior must be 'ode' or 'ce', got {prior!r}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            mu, log_sigma = model.vae.encode(x)
            mean, log_std = model.q_eps(mu, log_sigma)
            z = mean + log_std.exp() * torch.randn_like(mean)
            recon = model.vae.nll(x, z)
            log_q = -model.vae.gaussian_entropy(log_std) + 0.5 * (
                1 - ((z - mean) / log_std.exp()) ** 2).flatten(1).sum(1)
            nfe = 0
            if prior == "ce":
                z0 = mu + log_sigma.exp() * torch.randn_like(mu)
                prior_nll = cross_entropy(model.prior, model.sde, z0, model.eps)
        if prior == "ode":
            res = ode_nll(model.prior, model.sde, z, prediction="eps", divergence=divergence,
                          rtol=rtol, atol=atol, eps=model.eps, seed=seed,
                          batch_size=batch_size, progress=progress)
            prior_nll, nfe = res.nll.to(z), res.nfe
    finally:
        torch.random.set_rng_state(gen_state)
    total = recon + log_q + prior_nll
    return {"recon": recon, "log_q": log_q, "prior": prior_nll, "nelbo": total,
            "bpd": total / (x[0].numel() * math.log(2)), "nfe": nfe}
