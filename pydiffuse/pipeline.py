"""``Pipeline``: a trained model with its process and prediction, ready to sample (what
``pydiffuse.load`` returns; ``load`` and ``export`` are ``pydiffuse.loading``'s, which builds
an LSGM checkpoint's ``pydiffuse.lsgm.LSGMPipeline`` too)."""

import numbers
from pathlib import Path

import torch

from .predictions import x0_coefs
from .samplers import SAMPLERS
from .samplers import sample as sample_with
from .schedules import geometric_sigmas
from .utils import MovedNames

# the models shipped in the package: the pixel-space digits UNet (configs/digits.yaml) and the
# digits LSGM (configs/lsgm.yaml)
SHIPPED = {name: Path(__file__).parent / "weights" / name for name in ("digits", "lsgm")}

# load, export -> pydiffuse.loading (which imports this module and pydiffuse.lsgm, a subclass of
# Pipeline, so this module cannot import it back): deprecated aliases here, registered by
# pydiffuse/__init__.py
__getattr__ = MOVED = MovedNames(__name__)


class LadderView:
    """A discrete-time model seen by annealed Langevin: x = x_0 + sigma z at a noise level sigma
    -> the model at a x (a = sqrt(alpha_bar) of the step nearest in log sigma) and that step's
    index, its output returned as an x0 prediction (the same in both coordinates). The lookup
    stays on the data's device: no host sync per call."""

    def __init__(self, model, schedule, prediction: str):
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self._tables = {}

    def _table(self, device):
        """(log sigma, time index, a, cx, co) of every step, float32 / long on ``device``."""
        if device not in self._tables:
            s = self.schedule
            a, std = s.alphas_cumprod.sqrt(), (1 - s.alphas_cumprod).sqrt()
            cx, co = x0_coefs(self.prediction, a, std)
            self._tables[device] = tuple(v.to(device) for v in (
                s.sigmas.log().float(), s.timesteps, a.float(), cx.float(), co.float()))
        return self._tables[device]

    def __call__(self, x, sigma, **kwargs):
        log_s, steps, a, cx, co = self._table(x.device)
        pos = (sigma.float().log()[:, None] - log_s[None, :]).abs().argmin(1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        x_vp = x * a[pos].reshape(shape)
        out = self.model(x_vp, steps[pos], **kwargs)
        return cx[pos].reshape(shape) * x_vp + co[pos].reshape(shape) * out


class Pipeline:
    """A model, the process it was trained on and what it predicts, from a checkpoint's config.

    ``pipe.sample(n, sampler="ddim", steps=50, seed=0, **options)`` returns n samples in
    [-1, 1] (clamped) of the data's shape; class-conditional models sample unconditionally (the
    null label) unless ``labels`` are given, with classifier-free guidance ``guidance = 1 + w``.
    A sampler that does not run on a discrete schedule (its registry entry's ``processes``)
    gets the model in a view it does: an SDE sampler ("pc", "ode") the VP SDE whose chain a
    linear schedule is (``pydiffuse.sample`` makes it ``VPSDE.from_discrete``), a ladder sampler
    ("ald") ``levels`` (default 10) geometric noise levels spanning the model's own
    (``LadderView``).
    """

    default_sampler = "ddim"

    def __init__(self, model, process, prediction: str, config: dict, event_shape: tuple):
        self.model, self.process, self.prediction, self.config = model, process, prediction, config
        self.event_shape = tuple(event_shape)
        self.defaults = dict(config.get("sample", {}))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sample(self, n: int, *, sampler=None, steps=None, seed=0, labels=None, guidance=None,
               progress=None, return_info: bool = False, **options):
        """n samples [n, *event_shape] in [-1, 1] with any sampler of ``pydiffuse.sample``
        (and its {"nfe", "seconds"} with ``return_info``).

        ``labels`` (class-conditional models only): integer class indices in [0, num_classes)
        (the null label num_classes is the unconditional model, used when labels is None), one
        for every sample or one per sample (a list, or an integer tensor / array); floats,
        bools, negative or out-of-range labels, or another count raise ValueError before any
        sampling. ``guidance`` (1 + w) needs labels."""
        _check_n(n)
        sampler, opts = self._sampler_options(sampler, steps, options)
        null = getattr(self.model, "null_label", None)
        kwargs = {}
        if null is not None:
            y = torch.full((n,), null, dtype=torch.long, device=self.device) if labels is None \
                else _labels(labels, n, self.device, num_classes=null)
            kwargs["model_kwargs"] = {"y": y}
            if guidance is not None:
                if labels is None:
                    raise ValueError("classifier-free guidance needs labels= (the classes)")
                kwargs.update(guidance=guidance, uncond_kwargs={"y": torch.full_like(y, null)})
        elif labels is not None or guidance is not None:
            raise ValueError("this model is not class-conditional: it takes no labels or "
                             "guidance")
        model, process, prediction = self.model, self.process, self.prediction
        kinds = SAMPLERS[sampler].processes if sampler in SAMPLERS else ("discrete",)
        if process.kind == "discrete" and "discrete" not in kinds and "ladder" in kinds:
            sigma_min, sigma_max = process.sigma_range[1], process.sigma_range[0]
            model = LadderView(model, process, prediction)
            process = geometric_sigmas(sigma_max, sigma_min, opts.pop("levels", 10))
            prediction = "x0"
        with torch.no_grad():
            x = sample_with(model, (n, *self.event_shape), process=process,
                            sampler=sampler, prediction=prediction, seed=seed,
                            device=self.device, progress=progress, return_info=True, **kwargs,
                            **opts)
        x, info = x[0].clamp(-1, 1), x[1]
        return (x, info) if return_info else x


    def _sampler_options(self, sampler, steps, options: dict):
        """(sampler, options): the config's ``sample`` section names the default sampler and
        that sampler's options; explicit ones win, another sampler starts from none."""
        defaults = dict(self.defaults)
        default_sampler = defaults.pop("sampler", self.default_sampler)
        if sampler not in (None, default_sampler):
            defaults = {}
        opts = {**defaults, **options}
        if steps is not None:
            opts["steps"] = steps
        return sampler or default_sampler, opts


def _check_n(n) -> None:
    """The number of samples: an int >= 1."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n (the number of samples) must be an int >= 1, got {n!r}")


def _labels(labels, n: int, device, num_classes: int | None = None) -> torch.Tensor:
    """n class labels (long, on ``device``) from one label or n of them: integer class indices
    in [0, num_classes); floats are refused, not truncated."""
    try:
        y = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):   # strings, ragged lists, ints past int64
        raise ValueError(f"labels must be integer class indices, got {labels!r}") from None
    if y.numel() not in (1, n):
        raise ValueError(f"labels must be one label (for every sample) or one per sample ({n}), "
                         f"got {y.numel()}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integer class indices, got {y.dtype} values "
                         f"{y.reshape(-1)[:8].tolist()}")
    y = y.reshape(-1).to(device=device, dtype=torch.long)
    low, high = 0, num_classes
    bad = y[(y < low) | (y >= high)] if high is not None else y[y < low]
    if bad.numel():
        where = f"[0, {high}) (this model's {high} classes)" if high is not None else ">= 0"
        raise ValueError(f"labels must be class indices in {where}, got "
                         f"{sorted(set(bad.tolist()))[:8]}")
    return y.expand(n)
