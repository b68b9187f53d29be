"""Training: every objective of the papers (``losses``, ``diffusion_losses``, ``score_losses``,
``sde_losses``, ``lsgm_loss``), the timestep samplers, and the ``Trainer`` (EMA, AMP, atomic
checkpoints with exact resume, data-parallel under torchrun). ``sample_to_npz`` moved to
``pydiffuse.samplers`` (the old name here is a deprecated alias)."""

from ..utils import MovedNames
from . import distributed
from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from .diffusion_losses import ClassifierLoss, DDPMLoss, HybridLoss, VLBLoss
from .ema import EMA
from .losses import Objective, label_dropout
from .lsgm_loss import LSGMLoss
from .score_losses import DenoisingScoreMatching, ExactScoreMatching, SlicedScoreMatching
from .sde_losses import ScoreSDELoss
from .timestep_samplers import LossSecondMomentSampler, UniformSampler, make_timestep_sampler
from .trainer import DEFAULT_SEED, Trainer, seeded_init

# sample_to_npz -> pydiffuse.samplers.sample_to_npz, a deprecated alias here: registered by
# pydiffuse/__init__.py (the samplers and the training are independent layers)
__getattr__ = MOVED = MovedNames(__name__)

__all__ = [
    "DEFAULT_SEED", "EMA", "CheckpointError", "ClassifierLoss", "DDPMLoss",
    "DenoisingScoreMatching", "ExactScoreMatching", "HybridLoss", "LSGMLoss",
    "LossSecondMomentSampler", "Objective", "ScoreSDELoss", "SlicedScoreMatching", "Trainer",
    "UniformSampler", "VLBLoss", "distributed", "label_dropout", "latest_checkpoint",
    "load_checkpoint", "make_timestep_sampler", "save_checkpoint", "seeded_init",
    "verify_checkpoint", "write_manifest",
]
