"""``pydiffuse.load``: a trained model with its process and prediction, ready to sample."""

from pathlib import Path

import torch

from . import config as run_config
from .samplers import sample as sample_with
from .training.checkpoint import latest_checkpoint, read_weights


class Pipeline:
    """A model, the process it was trained on and what it predicts, from a checkpoint's config.

    ``pipe.sample(n, sampler="ddim", steps=50, seed=0, **options)`` returns n samples in
    [-1, 1] (clamped) of the data's shape; class-conditional models sample unconditionally (the
    null label) unless ``labels`` are given, with classifier-free guidance ``guidance = 1 + w``.
    """

    def __init__(self, model, process, prediction: str, config: dict, model_kwargs: dict):
        self.model, self.process, self.prediction, self.config = model, process, prediction, config
        self.event_shape = _event_shape(model_kwargs)
        self.defaults = dict(config.get("sample", {}))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sample(self, n: int, *, sampler=None, steps=None, seed=0, labels=None, guidance=None,
               progress=None, **options) -> torch.Tensor:
        """n samples [n, *event_shape] in [-1, 1] with any sampler of ``pydiffuse.sample``."""
        opts = {**self.defaults, **options}
        sampler = sampler or opts.pop("sampler", "ddim")
        opts.pop("sampler", None)
        if steps is not None:
            opts["steps"] = steps
        null = getattr(self.model, "null_label", None)
        kwargs = {}
        if null is not None:
            y = torch.full((n,), null, dtype=torch.long, device=self.device) if labels is None \
                else torch.as_tensor(labels, device=self.device).long().reshape(-1).expand(n)
            kwargs["model_kwargs"] = {"y": y}
            if guidance is not None:
                if labels is None:
                    raise ValueError("classifier-free guidance needs labels= (the classes)")
                kwargs.update(guidance=guidance, uncond_kwargs={"y": torch.full_like(y, null)})
        elif labels is not None or guidance is not None:
            raise ValueError("this model is not class-conditional: no labels or guidance")
        with torch.no_grad():
            x = sample_with(self.model, (n, *self.event_shape), process=self.process,
                            sampler=sampler, prediction=self.prediction, seed=seed,
                            device=self.device, progress=progress, **kwargs, **opts)
        return x.clamp(-1, 1)


def _event_shape(kwargs: dict) -> tuple:
    """A sample's shape from the model's constructor keywords (UNet: C, H, W; MLP: D)."""
    if "image_size" in kwargs and "in_channels" in kwargs:
        return (kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    if "dim" in kwargs:
        return (kwargs["dim"],)
    raise ValueError("cannot tell the data shape from the model's configuration")


def load(path, *, device=None, ema: bool = True) -> Pipeline:
    """A ``Pipeline`` from a checkpoint directory (or a run directory: its newest checkpoint).

    Args:
        path: ``<run_dir>/step_<N>``, or ``<run_dir>``.
        device: where the model goes (default the CPU).
        ema: use the EMA weights (the slowest rate) when the checkpoint has them.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        newest = latest_checkpoint(path) if path.is_dir() else None
        if newest is None:
            raise FileNotFoundError(f"{path}: not a checkpoint or a run directory with one")
        path = newest
    weights, config = read_weights(path, ema)
    model, model_kwargs = run_config.build_model(config)
    model.load_state_dict(weights)
    model.to(device or "cpu").eval()
    return Pipeline(model, run_config.build_process(config), config.get("prediction", "eps"),
                    config, model_kwargs)
