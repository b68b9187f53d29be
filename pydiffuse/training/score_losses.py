"""Score-matching objectives (MATH.md sections 3 and 4): NCSN's denoising score matching over a
noise ladder (NCSNv2 the same loss on a network returning s(x) / sigma), and Hyvarinen's exact
and sliced score matching of the data score for low-dimensional data.

Exact and sliced score matching fit the score of the clean data: the model is called at time
0, ``model(x, zeros [B])`` (``model(x, zeros, y)`` with labels), typically a network
unconditional in time (``time_input=None``).
"""

import torch

from .losses import (Objective, call_model, check_output, check_process, draw_time, half_sum_flat,
                     noised, per_sample)


class DenoisingScoreMatching(Objective):
    """NCSN (Song & Ermon 2019): one sigma per example drawn uniformly from the ladder,
    x~ = x + sigma z, loss lambda(sigma) J_sigma = sigma^p / 2 ||s(x~, sigma) + (x~ - x) /
    sigma^2||^2 summed over dimensions, lambda = sigma^2 (p = ``anneal_power`` = 2).

    NCSNv2 (Song & Ermon 2020, technique 3) trains with this same loss a network unconditional
    in sigma whose output is divided by sigma (the model's ``output_scale="inv_sigma"``).

    Args:
        sigmas: a ``NoiseLadder`` or decreasing sigmas (the model gets each example's sigma).
        anneal_power: p of lambda(sigma) = sigma^p.
        p_uncond, null_class: classifier-free label dropout.
    """

    def __init__(self, sigmas, *, anneal_power: float = 2.0, p_uncond: float = 0.0,
                 null_class=None):
        super().__init__(p_uncond=p_uncond, null_class=null_class)
        self.ladder = check_process(sigmas, ("ladder",), "DenoisingScoreMatching")
        self.anneal_power = float(anneal_power)

    def compute(self, model, x0, y) -> dict:
        draw = draw_time(self.ladder, x0)
        z = torch.randn_like(x0)
        score = check_output(call_model(model, noised(x0, z, draw), draw.model_t, y), x0)
        sigma = per_sample(draw.std, score)
        per = half_sum_flat((score + z.float() / sigma) ** 2) \
            * (draw.std ** self.anneal_power).to(score)
        return self.result(per, draw.frac)


def _data_input(x0: torch.Tensor, particles: int = 1) -> torch.Tensor:
    """x_0 repeated ``particles`` times, a float32 leaf that requires grad."""
    return x0.float().repeat(particles, *[1] * (x0.ndim - 1)).detach().requires_grad_(True)


class ExactScoreMatching(Objective):
    """Hyvarinen (2005): J = E[tr(grad_x s(x)) + 1/2 ||s(x)||^2], the Jacobian trace by one
    autograd pass per dimension (low-dimensional data only)."""

    def __init__(self, *, max_dim: int = 64):
        super().__init__()
        self.max_dim = int(max_dim)

    def compute(self, model, x0, y) -> dict:
        d = x0[0].numel()
        if d > self.max_dim:
            raise ValueError(f"exact score matching takes {d} backward passes per step for "
                             f"{d}-dimensional data (max_dim={self.max_dim}); use "
                             "SlicedScoreMatching")
        x = _data_input(x0)
        score = check_output(call_model(model, x, x.new_zeros(len(x)), y), x).flatten(1)
        trace = torch.zeros(len(x), device=x.device)
        for i in range(d):
            grad, = torch.autograd.grad(score[:, i].sum(), x, create_graph=True)
            trace = trace + grad.flatten(1)[:, i]
        return self.result(trace + half_sum_flat(score ** 2))


class SlicedScoreMatching(Objective):
    """Sliced score matching (Song, Garg, Shi & Ermon 2019):
    J = E_v E_x[v^T grad_x s(x) v + 1/2 (v^T s(x))^2], or with ``variance_reduction`` (SSM-VR)
    1/2 ||s(x)||^2 for the second term; v ~ N(0, I) or Rademacher, ``particles`` projections
    per example (averaged).
    """

    PROJECTIONS = ("gaussian", "rademacher")

    def __init__(self, *, projection: str = "gaussian", variance_reduction: bool = False,
                 particles: int = 1):
        super().__init__()
        if projection not in self.PROJECTIONS:
            raise ValueError(f"projection must be one of {self.PROJECTIONS}, got {projection!r}")
        if particles < 1:
            raise ValueError(f"particles must be >= 1, got {particles}")
        self.projection, self.variance_reduction = projection, bool(variance_reduction)
        self.particles = int(particles)

    def compute(self, model, x0, y) -> dict:
        x = _data_input(x0, self.particles)
        labels = None if y is None else y.repeat(self.particles)
        score = check_output(call_model(model, x, x.new_zeros(len(x)), labels), x)
        v = torch.randn_like(x)
        if self.projection == "rademacher":
            v = v.sign()
        grad, = torch.autograd.grad((score * v).sum(), x, create_graph=True)
        vjv = (v * grad).flatten(1).sum(1)
        second = half_sum_flat(score ** 2) if self.variance_reduction \
            else 0.5 * (v * score).flatten(1).sum(1) ** 2
        per = (vjv + second).reshape(self.particles, len(x0)).mean(0)
        return self.result(per)
