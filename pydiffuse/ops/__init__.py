"""The fused ops of pydiffuse (DESIGN.md): ``sample_step``, ``lincomb``, ``langevin_step``,
``randn``, ``attention``; the backend is chosen in ``_dispatch`` (``backend``,
``available_backends``)."""

from ._dispatch import BACKENDS, BackendUnavailable, available_backends, backend, current_backend
from ._packing import StepCoefs
from .attention import attention
from .group_norm import group_norm
from .langevin import langevin_step
from .noise import randn
from .step import lincomb, sample_step

__all__ = [
    "BACKENDS", "BackendUnavailable", "StepCoefs", "attention", "available_backends", "backend",
    "current_backend", "group_norm", "langevin_step", "lincomb", "randn", "sample_step",
]
