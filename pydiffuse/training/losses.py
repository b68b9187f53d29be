"""What every training objective shares: the call convention, labels with classifier-free label
dropout, the time draw of each process kind, and the noised input x_t = a x_0 + sigma eps.

An objective is a callable ``objective(model, batch) -> {"loss", "per_example", "t"}``:
``loss`` the scalar to backpropagate, ``per_example`` the [B] detached float32 losses, ``t`` the
[B] noise level of each example as a fraction of the process's time range (None without time).
``batch`` is x or (x, y); the model is called as ``model(x_t, t, y)`` when there are labels, else
``model(x_t, t)``, with t the process's own time (step index, t in [0, 1], or sigma). Randomness
comes from torch's global generators only (the trainer seeds and checkpoints them).
"""

from dataclasses import dataclass

import torch

from ..ops import lincomb
from ..schedules import as_process
from ..utils import per_sample  # noqa: F401 (the objectives' broadcast)


def split_batch(batch):
    """(x, y) from a batch x or (x, y) (y None when the batch has no labels)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        x, y = batch
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (len(x),)):
            raise ValueError(f"labels must be a [B] = [{len(x)}] tensor, got "
                             f"{getattr(y, 'shape', type(y).__name__)}")
        return x, y
    raise TypeError(f"batch must be a tensor x or a pair (x, y), got {type(batch).__name__}")


def label_dropout(y: torch.Tensor, p: float, null_class: int) -> torch.Tensor:
    """Each label replaced by ``null_class`` with probability p (classifier-free guidance, Ho &
    Salimans 2022); a new tensor, y itself unchanged.

    Args:
        y: [B] long class labels.
        p: the drop probability p_uncond in [0, 1].
        null_class: the null label (``num_classes`` by the models' convention).
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p (p_uncond) must lie in [0, 1], got {p}")
    drop = torch.rand(y.shape, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def call_model(model, x, t, y):
    """``model(x, t, y)`` with labels, ``model(x, t)`` without; the output in float32."""
    out = model(x, t) if y is None else model(x, t, y)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, expected a tensor")
    return out.float()


def check_output(out, x, channels: int = 1, what: str = "the model"):
    """``out`` of x's shape, with ``channels`` times x's channels (2: learned variance)."""
    shape = list(x.shape)
    if x.ndim >= 2:
        shape[1] *= channels
    if list(out.shape) != shape:
        hint = " (a learned-variance model returns 2C channels)" if channels == 2 else ""
        raise ValueError(f"{what} returned shape {list(out.shape)} for x of shape "
                         f"{list(x.shape)}, expected {shape}{hint}")
    return out


def mean_flat(t: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension, [B]."""
    return t.flatten(1).mean(1)


def half_sum_flat(t: torch.Tensor) -> torch.Tensor:
    """Half the sum over all but the batch dimension, [B] (NCSN and score_sde's reduction)."""
    return 0.5 * t.flatten(1).sum(1)


@dataclass
class TimeDraw:
    """The time of each example: ``time`` [B] the process's time on the host (step index,
    sigma, or t float64), ``model_t`` the same on x's device as the model takes it (long, or x's
    dtype), ``frac`` [B] float32 on x's device (its share of the time range, noisier = larger),
    ``scale`` and ``std`` [B] float64 on the host (x_t = scale x_0 + std eps), ``pos`` [B] long
    positions on the host for a discrete schedule or ladder (None for an SDE)."""

    time: torch.Tensor
    model_t: torch.Tensor
    frac: torch.Tensor
    scale: torch.Tensor
    std: torch.Tensor
    pos: torch.Tensor = None


def time_at(process, where: torch.Tensor, x: torch.Tensor) -> TimeDraw:
    """The ``TimeDraw`` of host positions ``where`` (discrete schedule, ladder) or host times
    t (SDE)."""
    if process.kind == "discrete":
        pos = where.long()
        time = process.timesteps[pos]
        frac = pos.double() / max(len(process) - 1, 1)
    elif process.kind == "ladder":
        pos = where.long()
        time = process.sigmas[pos]
        frac = 1 - pos.double() / max(len(process) - 1, 1)
    else:
        pos, time = None, where.double()
        frac = time / process.T
    scale, std = process.marginal(time)
    model_t = time.to(x.device) if process.kind == "discrete" else time.to(x.device, x.dtype)
    return TimeDraw(time, model_t, frac.to(x.device, torch.float32), scale, std, pos)


def draw_time(process, x: torch.Tensor, eps: float = 1e-5) -> TimeDraw:
    """A uniform time per example: a position of a discrete schedule or ladder, or
    t ~ U(eps, T) for an SDE (Song et al. 2021)."""
    n = len(x)
    if process.kind in ("discrete", "ladder"):
        return time_at(process, torch.randint(len(process), (n,)), x)
    return time_at(process, torch.rand(n, dtype=torch.float64) * (process.T - eps) + eps, x)


def noised(x0: torch.Tensor, noise: torch.Tensor, draw: TimeDraw) -> torch.Tensor:
    """x_t = scale x_0 + std noise, one fused ``lincomb`` pass (no gradient flows through it)."""
    return lincomb([x0, noise], [draw.scale.to(x0.device), draw.std.to(x0.device)])


def check_process(process, kinds, objective: str):
    process = as_process(process)
    if process.kind not in kinds:
        raise ValueError(f"{objective} needs a {' or '.join(kinds)} process, got {process!r}")
    return process


class Objective:
    """Base of the objectives: ``objective(model, batch) -> {"loss", "per_example", "t"}``.

    Args:
        p_uncond: classifier-free guidance's label dropout: each label becomes ``null_class``
            with this probability.
        null_class: the null label (the models reserve ``num_classes``).
    """

    def __init__(self, *, p_uncond: float = 0.0, null_class=None):
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        if p_uncond > 0 and null_class is None:
            raise ValueError("p_uncond > 0 needs null_class (the null label, num_classes)")
        self.p_uncond, self.null_class = float(p_uncond), null_class

    def __call__(self, model, batch) -> dict:
        x, y = split_batch(batch)
        if y is not None and self.p_uncond > 0:
            y = label_dropout(y, self.p_uncond, self.null_class)
        return self.compute(model, x, y)

    def compute(self, model, x: torch.Tensor, y) -> dict:
        raise NotImplementedError

    @staticmethod
    def result(per_example: torch.Tensor, frac=None, weights=None) -> dict:
        """The objective's answer: loss = mean(weights * per_example)."""
        loss = per_example.mean() if weights is None else (per_example * weights).mean()
        return {"loss": loss, "per_example": per_example.detach().float(), "t": frac}

    def state_dict(self) -> dict:
        """State the trainer checkpoints (tensors only: loaded with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")
