"""Training: every objective of the papers (``losses``, ``diffusion_losses``, ``score_losses``,
``sde_losses``, ``lsgm_loss``), the timestep samplers, and the ``Trainer`` (EMA, AMP, atomic
checkpoints with exact resume, data-parallel under torchrun)."""

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
from .distributed import sample_to_npz
from .ema import EMA
from .losses import Objective, label_dropout
from .lsgm_loss import LSGMLoss
from .score_losses import DenoisingScoreMatching, ExactScoreMatching, SlicedScoreMatching
from .sde_losses import ScoreSDELoss
from .timestep_samplers import LossSecondMomentSampler, UniformSampler, make_timestep_sampler
from .trainer import DEFAULT_SEED, Trainer, seeded_init

__all__ = [
    "DEFAULT_SEED", "EMA", "CheckpointError", "ClassifierLoss", "DDPMLoss",
    "DenoisingScoreMatching", "ExactScoreMatching", "HybridLoss", "LSGMLoss",
    "LossSecondMomentSampler", "Objective", "ScoreSDELoss", "SlicedScoreMatching", "Trainer",
    "UniformSampler", "VLBLoss", "distributed", "label_dropout", "latest_checkpoint",
    "load_checkpoint", "make_timestep_sampler", "sample_to_npz", "save_checkpoint", "seeded_init",
    "verify_checkpoint", "write_manifest",
]
