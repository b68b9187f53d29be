"""Score-SDE training (Song et al. 2021; MATH.md section 5) for the VE, VP and sub-VP SDEs, and
the reference code's discrete "SMLD" (VE ladder) and "DDPM" (VP chain) variants."""

import torch

from ..schedules import DiscreteSchedule
from ..sde import VESDE, SubVPSDE, VPSDE
from .losses import (Objective, TimeDraw, call_model, check_output, check_process, draw_time,
                     half_sum_flat, mean_flat, noised, per_sample, time_at)

PREDICTIONS = ("score", "eps")


class ScoreSDELoss(Objective):
    """E_t lambda(t) E ||s(x_t, t) - grad log p_0t(x_t | x_0)||^2, x_t = a(t) x_0 + std(t) z,
    grad log p_0t = -z / std, t ~ U(eps, 1) (score_sde's ``get_sde_loss_fn``):

    - lambda = std^2 (default): ||std s + z||^2;
    - likelihood weighting lambda = g(t)^2: ||std s + z||^2 g^2 / std^2 (Song et al. 2021b).

    With ``discrete`` the reference's ``get_smld_loss_fn`` / ``get_ddpm_loss_fn``: a position j
    of the SDE's N levels uniform, the VE ladder sigma_j = ``sde.discrete_sigmas[j]`` or the
    VP chain's sqrt(ab_j) = prod_{i <= j} sqrt(1 - ``sde.discrete_betas[i]``), both weighted by
    lambda = std_j^2. The model gets the SDE time t = j / (N - 1) in every case (the reference
    passes the label j or sigma_j; a "unit" time network embeds 999 t = j for N = 1000).

    Args:
        sde: a ``VESDE``, ``VPSDE`` or ``SubVPSDE``.
        prediction: "score" (the model returns s) or "eps" (s = -out / std).
        likelihood_weighting: lambda = g^2 instead of std^2.
        reduce_mean: mean over dimensions; False (default): half the sum, as score_sde.
        eps: the smallest t.
        discrete: the SMLD (VE) or DDPM (VP) discrete loss.
        p_uncond, null_class: classifier-free label dropout.
    """

    def __init__(self, sde, prediction: str = "score", *, likelihood_weighting: bool = False,
                 reduce_mean: bool = False, eps: float = 1e-5, discrete: bool = False,
                 p_uncond: float = 0.0, null_class=None):
        super().__init__(p_uncond=p_uncond, null_class=null_class)
        self.sde = check_process(sde, ("sde",), "ScoreSDELoss")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if discrete and (likelihood_weighting or isinstance(sde, SubVPSDE)
                         or not isinstance(sde, (VESDE, VPSDE))):
            raise ValueError("discrete training exists for a VESDE (SMLD) or VPSDE (DDPM) "
                             "with the default weighting only")
        if not 0 <= eps < self.sde.T:
            raise ValueError(f"eps must lie in [0, T), got {eps}")
        self.prediction, self.likelihood_weighting = prediction, bool(likelihood_weighting)
        self.reduce = mean_flat if reduce_mean else half_sum_flat
        self.eps, self.discrete = float(eps), bool(discrete)
        self.chain = DiscreteSchedule(sde.discrete_betas) \
            if discrete and isinstance(sde, VPSDE) else None

    def draw(self, x0) -> TimeDraw:
        if not self.discrete:
            return draw_time(self.sde, x0, self.eps)
        n = self.sde.N
        j = torch.randint(n, (len(x0),))
        t = j.double() / max(n - 1, 1)
        draw = time_at(self.sde, t, x0)
        if self.chain is not None:          # the VP chain's own alpha_bar, not the SDE's m(t)
            draw.scale, draw.std = self.chain.marginal(j)
        return draw

    def compute(self, model, x0, y) -> dict:
        draw = self.draw(x0)
        z = torch.randn_like(x0)
        out = check_output(call_model(model, noised(x0, z, draw), draw.model_t, y), x0)
        # std s + z (score) or z - eps (eps): the error scaled by std, lambda = std^2
        err = per_sample(draw.std, out) * out + z if self.prediction == "score" else z - out
        per = self.reduce(err.float() ** 2)
        if self.likelihood_weighting:
            per = per * (self.sde.diffusion(draw.time) ** 2 / draw.std ** 2).to(per)
        return self.result(per, draw.frac)
