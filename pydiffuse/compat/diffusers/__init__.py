"""pydiffuse inside diffusers (an optional dependency: ``pip install 'pydiffuse[diffusers]'``):

- ``fuse(model_or_pipeline)`` / ``unfuse``: a diffusers UNet (or the pipeline holding one) on the
  fused ops in place: GroupNorm + SiLU as one ``group_norm`` pass, attention on ``attention``
  through diffusers' attention processors, the scheduler's step on the fused ops (``fuse.py``);
- drop-in schedulers: ``FusedDDPMScheduler`` / ``FusedDDIMScheduler`` (``schedulers.py``),
  ``FusedEulerDiscreteScheduler``, ``FusedEulerAncestralDiscreteScheduler``,
  ``FusedDPMSolverMultistepScheduler``, ``FusedPNDMScheduler`` (``solvers.py``);
  ``FUSED_SCHEDULERS`` maps a diffusers class name to its drop-in;
- ``schedule_from_diffusers``: a diffusers scheduler's ``DiscreteSchedule``, to run a diffusers
  model with ``pydiffuse.sample``.
"""

try:
    import diffusers  # noqa: F401
except ImportError as err:
    raise ImportError("pydiffuse.compat.diffusers needs diffusers: pip install diffusers "
                      "(or pip install 'pydiffuse[diffusers]')") from err

from .fuse import FuseReport, fuse, unfuse
from .schedulers import (FUSED_SCHEDULERS, FusedDDIMScheduler, FusedDDPMScheduler,
                         FusedDPMSolverMultistepScheduler, FusedEulerAncestralDiscreteScheduler,
                         FusedEulerDiscreteScheduler, FusedPNDMScheduler, schedule_from_diffusers)

__all__ = ["FUSED_SCHEDULERS", "FuseReport", "FusedDDIMScheduler", "FusedDDPMScheduler",
           "FusedDPMSolverMultistepScheduler", "FusedEulerAncestralDiscreteScheduler",
           "FusedEulerDiscreteScheduler", "FusedPNDMScheduler", "fuse", "schedule_from_diffusers",
           "unfuse"]
