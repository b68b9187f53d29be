"""Layers and models on the fused ops (DESIGN.md): norms, attention, the UNet (DDPM and ADM
styles), ADM's noisy classifier, an MLP score network, their presets, and the exact
Gaussian-mixture score (the samplers' oracle)."""

from .attention import SelfAttention2d
from .classifier import NoisyClassifier
from .gaussian_mixture import GaussianMixtureScore
from .mlp import MLP
from .norm import AdaGroupNorm, GroupNorm
from .presets import PRESETS, create_model
from .unet import UNet

__all__ = ["MLP", "PRESETS", "AdaGroupNorm", "GaussianMixtureScore", "GroupNorm",
           "NoisyClassifier", "SelfAttention2d", "UNet", "create_model"]
