"""Layers and models on the fused ops (DESIGN.md): norms, attention, UNets."""

from .attention import SelfAttention2d
from .norm import AdaGroupNorm, GroupNorm

__all__ = ["AdaGroupNorm", "GroupNorm", "SelfAttention2d"]
