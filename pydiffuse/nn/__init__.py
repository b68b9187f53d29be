"""Layers and models on the fused ops (DESIGN.md): norms, attention, UNets, and the
exact Gaussian-mixture score (the samplers' oracle)."""

from .attention import SelfAttention2d
from .gaussian_mixture import GaussianMixtureScore
from .norm import AdaGroupNorm, GroupNorm

__all__ = ["AdaGroupNorm", "GaussianMixtureScore", "GroupNorm", "SelfAttention2d"]
