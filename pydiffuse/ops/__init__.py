"""The fused ops of pydiffuse (DESIGN.md): ``sample_step``, ``lincomb``, ``langevin_step``,
``randn``; the backend is chosen in ``_dispatch`` (``backend``, ``available_backends``)."""

from ._dispatch import BACKENDS, BackendUnavailable, available_backends, backend, current_backend
from ._packing import StepCoefs
from .langevin import langevin_step
from .noise import randn
from .step import lincomb, sample_step

__all__ = [
    "BACKENDS", "BackendUnavailable", "StepCoefs", "available_backends", "backend",
    "current_backend", "langevin_step", "lincomb", "randn", "sample_step",
]
