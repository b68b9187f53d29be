"""Run configurations: one YAML file names the model preset, the process, the objective, the data
and the training settings (``configs/*.yaml``; ``pydiffuse train CONFIG``).

    model:     {preset: digits, dropout: 0.1}             # pydiffuse.nn.presets + overrides
    process:   {type: linear, num_timesteps: 1000}        # see PROCESSES
    prediction: eps                                       # what the model predicts
    objective: {type: ddpm, p_uncond: 0.1}                # see OBJECTIVES (process passed in)
    # LSGM: model {preset: lsgm, latent_shape, vae, prior}, process vpsde, objective lsgm
    data:      {type: digits, labels: false}              # see DATASETS
    train:     {steps: 2000, batch_size: 128, lr: 2e-4}   # Trainer keywords (+ steps)
    sample:    {sampler: ddim, steps: 50}                 # defaults of `pydiffuse sample`

The whole config travels in each checkpoint's config.json, so ``pydiffuse.load`` rebuilds the
model, the process and the prediction from it.
"""

from pathlib import Path

import yaml
from torch.utils.data import TensorDataset

from . import data, schedules, sde, training
from .nn.lsgm import build_lsgm
from .nn.presets import create_model

PROCESSES = {
    "linear": schedules.linear, "cosine": schedules.cosine,
    "scaled_linear": schedules.scaled_linear,
    "vpsde": sde.VPSDE, "vesde": sde.VESDE, "subvpsde": sde.SubVPSDE,
    "geometric": lambda sigma_max, sigma_min, num_levels: schedules.NoiseLadder(
        schedules.geometric_sigmas(sigma_max, sigma_min, num_levels)),
}
# objective type -> (class, whether it takes the process as its first argument)
OBJECTIVES = {
    "ddpm": (training.DDPMLoss, True), "hybrid": (training.HybridLoss, True),
    "vlb": (training.VLBLoss, True), "dsm": (training.DenoisingScoreMatching, True),
    "sde": (training.ScoreSDELoss, True), "classifier": (training.ClassifierLoss, True),
    "esm": (training.ExactScoreMatching, False), "ssm": (training.SlicedScoreMatching, False),
    "lsgm": (training.LSGMLoss, False),
}
DATASETS = {"digits": data.digits, "folder": data.ImageFolder, "npz": data.npz_dataset,
            **data.TOY_SETS}
SECTIONS = ("name", "model", "process", "prediction", "objective", "data", "train", "sample")


def _typed(spec: dict, section: str, table: dict):
    """(builder, keywords) of a ``{type: ..., **keywords}`` section."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"config section {section!r} must be a mapping with a 'type'")
    kind = spec["type"]
    if kind not in table:
        raise ValueError(f"unknown {section} type {kind!r}; choose one of {', '.join(table)}")
    return table[kind], {k: v for k, v in spec.items() if k != "type"}


def load_config(path) -> dict:
    """A config file as a dict, checked for its sections."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    unknown = sorted(set(config) - set(SECTIONS))
    missing = [s for s in ("model", "process", "objective", "data") if s not in config]
    if unknown or missing:
        raise ValueError(f"{path}: unknown sections {unknown}, missing sections {missing} "
                         f"(sections: {', '.join(SECTIONS)})")
    return config


def build_process(config: dict):
    builder, kwargs = _typed(config["process"], "process", PROCESSES)
    return builder(**kwargs)


def build_model(config: dict):
    """(model, every constructor keyword) of the config's preset and overrides; preset "lsgm"
    builds ``pydiffuse.nn.lsgm.build_lsgm`` (a VAE and a latent prior on the config's process)."""
    spec = dict(config["model"])
    preset = spec.pop("preset", None)
    if preset is None:
        raise ValueError("config section 'model' needs a 'preset' (pydiffuse.nn.presets or lsgm)")
    if preset == "lsgm":
        return build_lsgm(build_process(config), **spec)
    return create_model(preset, **spec)


def build_objective(config: dict, process):
    """The objective; a VLB objective ("hybrid", "vlb") gets the data's ``bins`` (the digits'
    17 levels, else 8-bit's 256) unless the section sets them."""
    (cls, takes_process), kwargs = _typed(config["objective"], "objective", OBJECTIVES)
    if cls in (training.HybridLoss, training.VLBLoss) and "bins" not in kwargs:
        kwargs["bins"] = data.DIGITS_LEVELS if config["data"].get("type") == "digits" else 256
    return cls(process, **kwargs) if takes_process else cls(**kwargs)


def build_data(config: dict):
    """The dataset; ``labels: false`` drops the labels of a labelled one (unconditional models)."""
    spec = dict(config["data"])
    keep_labels = spec.pop("labels", True)
    builder, kwargs = _typed(spec, "data", DATASETS)
    dataset = builder(**kwargs)
    if keep_labels:
        return dataset
    if not isinstance(dataset, TensorDataset):
        raise ValueError(f"labels: false needs a tensor dataset, got {type(dataset).__name__}")
    return TensorDataset(dataset.tensors[0])


def train_from_config(config: dict, run_dir, *, steps=None, resume=False, overwrite=False,
                      progress=None, **overrides):
    """Build everything a config names and train; returns the finished ``Trainer``.

    The model (and the objective) are built inside ``training.seeded_init(train.seed)``, so a
    fresh run's initial weights, and with them the whole run, are reproducible (the caller's
    global RNG state is left as it was).

    Args:
        config: ``load_config``'s dict; run_dir: logs and checkpoints.
        steps: training steps (default ``train.steps``).
        resume, overwrite: as the Trainer's: continue the run in run_dir, or replace it (a
            fresh run into a run_dir holding a run is refused otherwise).
        overrides: Trainer keywords replacing ``train``'s.
    """
    settings = {**config.get("train", {}), **overrides}
    steps = settings.pop("steps", None) if steps is None else steps
    settings.pop("steps", None)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of training steps must be an int >= 1, got {steps!r}")
    process = build_process(config)
    with training.seeded_init(settings.get("seed", training.DEFAULT_SEED)):
        model = build_model(config)[0]
        objective = build_objective(config, process)
    trainer = training.Trainer(model, objective, build_data(config), run_dir=run_dir,
                               config=config, resume=resume, overwrite=overwrite,
                               progress=progress, **settings)
    trainer.train(steps)
    return trainer
