"""Deprecated alias of ``pydiffuse.ops.langevin_step`` (one module per op); removed in the next
release. Import the op from ``pydiffuse.ops``."""

from ._moved import warn_moved
from .langevin_step import NORMS, langevin_step

__all__ = ["NORMS", "langevin_step"]
warn_moved("pydiffuse.ops.langevin", "pydiffuse.ops.langevin_step")
