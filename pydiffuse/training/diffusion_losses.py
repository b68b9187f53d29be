"""Objectives of discrete Gaussian diffusion (MATH.md sections 1 and 6): DDPM's simple loss
with eps / x0 / v targets, iDDPM's hybrid and pure-VLB losses with a learned variance, and the
noisy classifier of classifier guidance.

Units follow improved-diffusion: the squared errors are means over dimensions, the VLB terms
bits per dimension (nats / (D ln 2)).
"""

import math

import torch
import torch.nn.functional as F

from ..ops import lincomb
from ..schedules import check_bins
from .losses import (Objective, call_model, check_output, check_process, draw_time, mean_flat,
                     noised, time_at)
from .timestep_samplers import make_timestep_sampler

TARGETS = ("eps", "x0", "v")


def target_from_noise(target: str, x0, noise, scale, std):
    """The regression target from x_0 and eps: eps, x0 or v = a eps - sigma x0 (exact: no
    division by sigma); scale, std: [B] float64."""
    if target == "v":
        return lincomb([x0, noise], [-std.to(x0.device), scale.to(x0.device)])
    return noise if target == "eps" else x0


class _DiscreteObjective(Objective):
    """A discrete schedule, a timestep sampler whose history each call updates, and its state."""

    def __init__(self, schedule, timestep_sampler, **labels):
        super().__init__(**labels)
        self.schedule = check_process(schedule, ("discrete",), type(self).__name__)
        self.timestep_sampler = make_timestep_sampler(timestep_sampler, len(self.schedule))

    def noise_batch(self, x0):
        """(TimeDraw, importance weights [B] on x0's device, noise, x_t)."""
        pos, weights = self.timestep_sampler.sample(len(x0))
        draw = time_at(self.schedule, pos, x0)
        noise = torch.randn_like(x0)
        return draw, weights.to(x0.device), noise, noised(x0, noise, draw)

    def finish(self, per_example, draw, weights) -> dict:
        self.timestep_sampler.update(draw.pos, per_example)
        return self.result(per_example, draw.frac, weights)

    def state_dict(self) -> dict:
        state = self.timestep_sampler.state_dict()
        return {"timestep_sampler": state} if state else {}

    def load_state_dict(self, state: dict) -> None:
        self.timestep_sampler.load_state_dict(state.get("timestep_sampler", {}))


class DDPMLoss(_DiscreteObjective):
    """L_simple = E_{t, eps} mean ||target - model(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t)||^2
    (Ho et al. 2020), target eps, x_0 or v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0 (Salimans &
    Ho 2022).

    Args:
        schedule: the ``DiscreteSchedule`` (the model gets its time indices).
        prediction: "eps", "x0" or "v".
        timestep_sampler: "uniform", "loss-second-moment" or a sampler object.
        p_uncond, null_class: classifier-free label dropout.
    """

    vlb_weight, bins = None, 256

    def __init__(self, schedule, prediction: str = "eps", *, timestep_sampler="uniform",
                 p_uncond: float = 0.0, null_class=None):
        super().__init__(schedule, timestep_sampler, p_uncond=p_uncond, null_class=null_class)
        if prediction not in TARGETS:
            raise ValueError(f"prediction must be one of {TARGETS}, got {prediction!r}")
        self.prediction = prediction
        self.columns = self.schedule.reverse_table(prediction, "learned_range")

    def compute(self, model, x0, y) -> dict:
        draw, weights, noise, x_t = self.noise_batch(x0)
        learned = self.vlb_weight is not None
        out = check_output(call_model(model, x_t, draw.model_t, y), x0, 2 if learned else 1)
        c = x0.shape[1]
        target = target_from_noise(self.prediction, x0, noise, draw.scale, draw.std)
        per = mean_flat((out[:, :c] - target.float()) ** 2)
        if learned:      # the mean's gradient stopped: L_vlb trains only the variance
            frozen = torch.cat([out[:, :c].detach(), out[:, c:]], 1)
            per = per + self.vlb_weight * len(self.schedule) * self.vlb_bpd(frozen, x0, x_t, draw)
        return self.finish(per, draw, weights)

    def vlb_bpd(self, out, x0, x_t, draw):
        """L_{t-1} of each example in bits per dimension, [B]."""
        x0, x_t = x0.float(), x_t.float()
        sched = self.schedule
        rows = sched.gather_rows(self.columns, draw.pos, x0)
        mean, log_var, _ = sched.p_mean_logvar(rows, out, x_t, "learned_range")
        nats = sched.vlb_terms(rows, x0, x_t, draw.pos, mean, log_var, self.bins)
        return nats / (x0[0].numel() * math.log(2))


class HybridLoss(DDPMLoss):
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021), lambda = 0.001, for a model
    with 2C output channels: the mean's prediction and v, log Sigma = f log beta_t + (1 - f)
    log beta~_t, f = (v + 1)/2. One t per example estimates L_vlb by T L_{t-1} (bits/dim, as
    improved-diffusion's RESCALED_MSE); the mean's gradient is stopped inside L_vlb. L_0 is the
    discretized Gaussian on the data's ``bins`` levels of [-1, 1] (8-bit: 256; the digits: 17)."""

    def __init__(self, schedule, prediction: str = "eps", *, vlb_weight: float = 0.001,
                 bins: int = 256, **kwargs):
        super().__init__(schedule, prediction, **kwargs)
        self.vlb_weight, self.bins = float(vlb_weight), check_bins(bins)


class VLBLoss(_DiscreteObjective):
    """The variational bound alone, L_vlb = T E_t L_{t-1} in bits/dim (Sohl-Dickstein et al.
    2015; iDDPM's RESCALED_KL): mean and variance both trained through the Gaussian KL (or the
    discretized-Gaussian L_0), with importance-sampled timesteps by default (iDDPM sec. 3.3).

    Args:
        schedule: the ``DiscreteSchedule``.
        prediction: what the mean half of the output predicts ("eps", "x0", "v", "score").
        variance: "learned_range" (2C output channels), "fixed_small" or "fixed_large".
        timestep_sampler: "loss-second-moment" (default), "uniform" or a sampler object.
        bins: the data's levels in [-1, 1] for L_0 (8-bit: 256; the digits: 17).
    """

    def __init__(self, schedule, prediction: str = "eps", *, variance: str = "learned_range",
                 timestep_sampler="loss-second-moment", bins: int = 256, p_uncond: float = 0.0,
                 null_class=None):
        super().__init__(schedule, timestep_sampler, p_uncond=p_uncond, null_class=null_class)
        self.prediction, self.variance, self.bins = prediction, variance, check_bins(bins)
        self.columns = self.schedule.reverse_table(prediction, variance)

    def compute(self, model, x0, y) -> dict:
        draw, weights, _, x_t = self.noise_batch(x0)
        out = check_output(call_model(model, x_t, draw.model_t, y), x0,
                           2 if self.variance == "learned_range" else 1)
        x0, x_t = x0.float(), x_t.float()
        sched = self.schedule
        rows = sched.gather_rows(self.columns, draw.pos, x0)
        mean, log_var, _ = sched.p_mean_logvar(rows, out, x_t, self.variance)
        nats = sched.vlb_terms(rows, x0, x_t, draw.pos, mean, log_var, self.bins)
        per = len(self.schedule) * nats / (x0[0].numel() * math.log(2))
        return self.finish(per, draw, weights)


class ClassifierLoss(Objective):
    """The noisy classifier of classifier guidance (Dhariwal & Nichol 2021): cross-entropy of
    ``model(x_t, t)`` (logits [B, num_classes]; the model takes no labels) against y, x_t drawn
    from q(x_t | x_0) at a uniform time of the same process (positions of a discrete schedule or
    ladder, t ~ U(eps, 1) for an SDE).

    Args:
        process: the diffusion the classifier will guide.
        eps: the smallest t of an SDE.
    """

    def __init__(self, process, *, eps: float = 1e-5):
        super().__init__()
        self.process = check_process(process, ("discrete", "sde", "ladder"), "ClassifierLoss")
        self.eps = float(eps)

    def compute(self, model, x0, y) -> dict:
        if y is None:
            raise ValueError("ClassifierLoss needs labelled batches (x, y)")
        draw = draw_time(self.process, x0, self.eps)
        logits = model(noised(x0, torch.randn_like(x0), draw), draw.model_t).float()
        if logits.ndim != 2 or len(logits) != len(x0):
            raise ValueError(f"the classifier returned shape {list(logits.shape)}, expected "
                             "logits [B, num_classes]")
        return self.result(F.cross_entropy(logits, y, reduction="none"), draw.frac)
