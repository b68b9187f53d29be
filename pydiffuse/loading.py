"""``pydiffuse.load``: a trained checkpoint (a run directory, a checkpoint directory or a
shipped model) as a ready-to-sample ``Pipeline``, an LSGM checkpoint as an ``LSGMPipeline``; and
``export``, a checkpoint reduced to what ``load`` needs. Above ``pipeline`` and ``lsgm`` (which
no longer import each other)."""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from . import config as run_config
from .lsgm import LSGMPipeline
from .nn import UNet
from .pipeline import SHIPPED, Pipeline
from .training.checkpoint import latest_checkpoint, read_weights, write_manifest


def _event_shape(kwargs: dict) -> tuple:
    """A sample's shape from the model's constructor keywords (UNet: C, H, W; MLP: D)."""
    if "image_size" in kwargs and "in_channels" in kwargs:
        return (kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    if "dim" in kwargs:
        return (kwargs["dim"],)
    raise ValueError("cannot tell the data shape from the model's configuration")


DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
# a diffusers scheduler config's beta_schedule -> pydiffuse process type, prediction_type -> ours
DIFFUSERS_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear",
                   "squaredcos_cap_v2": "cosine"}
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _load_diffusers(folder: Path, device) -> Pipeline:
    """A diffusers ``UNet2DModel`` folder (config.json + diffusion_pytorch_model.safetensors) as a
    ``Pipeline`` on ``UNet.from_diffusers``; the process and prediction from the pipeline's
    scheduler/scheduler_config.json beside it, else diffusers' default (linear, 1000 steps,
    eps)."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") != "UNet2DModel":
        raise ValueError(f"{folder}: a diffusers {config.get('_class_name')}; pydiffuse.load "
                         "reads UNet2DModel folders (pydiffuse.compat.diffusers.fuse runs the "
                         "others in diffusers)")
    model = UNet.from_diffusers(config, load_file(folder / DIFFUSERS_WEIGHTS))
    scheduler_file = folder.parent / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    schedule = scheduler.get("beta_schedule", "linear")
    if schedule not in DIFFUSERS_BETAS or scheduler.get("trained_betas") is not None:
        raise ValueError(f"{scheduler_file}: beta_schedule {schedule!r} (with trained_betas "
                         f"{scheduler.get('trained_betas') is not None}); pydiffuse.load reads "
                         f"{', '.join(DIFFUSERS_BETAS)}")
    process = {"type": DIFFUSERS_BETAS[schedule],
               "num_timesteps": scheduler.get("num_train_timesteps", 1000)}
    if schedule != "squaredcos_cap_v2":
        process.update(beta_start=scheduler.get("beta_start", 1e-4),
                       beta_end=scheduler.get("beta_end", 0.02))
    prediction = DIFFUSERS_PREDICTIONS[scheduler.get("prediction_type", "epsilon")]
    run = {"model": {"diffusers": str(folder)}, "process": process, "prediction": prediction}
    model.to(device or "cpu").eval()
    return Pipeline(model, run_config.build_process(run), prediction, run,
                    (model.in_channels, model.image_size, model.image_size))


def load(path, *, device=None, ema: bool = True) -> Pipeline:
    """A ``Pipeline`` from a checkpoint directory (or a run directory: its newest checkpoint), a
    diffusers ``UNet2DModel`` folder (or a pipeline folder holding one in unet/), or a shipped
    model by name ("digits", "lsgm"); an LSGM checkpoint gives a
    ``pydiffuse.lsgm.LSGMPipeline`` (same ``sample``, latent samplers "ode" and "pc", decoded
    images).

    Args:
        path: ``<run_dir>/step_<N>``, ``<run_dir>``, a diffusers folder, or a name of
            ``SHIPPED``.
        device: where the model goes (default the CPU).
        ema: use the EMA weights (the slowest rate) when the checkpoint has them.
    """
    if isinstance(path, str) and path in SHIPPED:
        path = SHIPPED[path]
    path = Path(path)
    folder = path / "unet" if (path / "model_index.json").is_file() else path
    if (folder / DIFFUSERS_WEIGHTS).is_file():
        return _load_diffusers(folder, device)
    if not (path / "config.json").is_file():
        newest = latest_checkpoint(path) if path.is_dir() else None
        if newest is None:
            raise FileNotFoundError(f"{path}: not a checkpoint or a run directory with one (or "
                                    f"a shipped model: {', '.join(SHIPPED)})")
        path = newest
    weights, config = read_weights(path, ema)
    model, model_kwargs = run_config.build_model(config)
    model.load_state_dict(weights)
    model.to(device or "cpu").eval()
    if config["model"].get("preset") == "lsgm":
        return LSGMPipeline(model, config)
    return Pipeline(model, run_config.build_process(config), config.get("prediction", "eps"),
                    config, _event_shape(model_kwargs))


def export(path, out_dir, *, ema: bool = True) -> Path:
    """A checkpoint reduced to what ``load`` needs: model.safetensors (the EMA weights when
    ``ema``), config.json and their manifest.json (checksums, verified by ``load``); how the
    shipped models were made from their training runs."""
    path = Path(path)
    if not (path / "config.json").is_file():
        path = latest_checkpoint(path) or path
    weights, config = read_weights(path, ema)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_manifest(out)
    return out
