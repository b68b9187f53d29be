"""Deprecated alias of ``pydiffuse.ops.sample_step`` and ``pydiffuse.ops.lincomb`` (one module
per op); removed in the next release. Import the ops from ``pydiffuse.ops``."""

from ._moved import warn_moved
from ._packing import StepCoefs
from .lincomb import lincomb
from .sample_step import sample_step

__all__ = ["StepCoefs", "lincomb", "sample_step"]
warn_moved("pydiffuse.ops.step", "pydiffuse.ops.sample_step and pydiffuse.ops.lincomb")
