"""The fused ops of pydiffuse (DESIGN.md): ``sample_step``, ``lincomb``, ``langevin_step``,
``randn``, ``attention``, ``group_norm``, each in its module ``ops/<op>.py``; the backend is
chosen in ``_dispatch`` (``backend``, ``available_backends``), which also says what each backend
can run. Importing this package loads the compiled ops (``pydiffuse._C``) when they are built."""

from . import _dispatch
from ._dispatch import (BACKENDS, BackendUnavailable, available_backends, backend, current_backend,
                        unsupported_reason)
from ._packing import StepCoefs, compute_dtype
from .attention import attention
from .group_norm import group_norm
from .langevin_step import langevin_step
from .lincomb import lincomb
from .randn import randn
from .sample_step import sample_step

__all__ = [
    "BACKENDS", "BackendUnavailable", "StepCoefs", "attention", "available_backends", "backend",
    "compute_dtype", "current_backend", "group_norm", "langevin_step", "lincomb", "randn",
    "sample_step", "unsupported_reason",
]

_dispatch._compiled_module()  # torch.ops.pydiffuse.* exist from here (when _C is built)
