"""Deprecated alias of ``pydiffuse.ops.randn`` (one module per op); removed in the next release.
Import the op from ``pydiffuse.ops``."""

from ._moved import warn_moved
from .randn import randn

__all__ = ["randn"]
warn_moved("pydiffuse.ops.noise", "pydiffuse.ops.randn")
