"""pydiffuse inside diffusers (an optional dependency: ``pip install 'pydiffuse[diffusers]'``):

- ``fuse(model_or_pipeline)`` / ``unfuse``: a diffusers UNet (or the pipeline holding one) on the
  fused ops in place: GroupNorm + SiLU as one ``group_norm`` pass, attention on ``attention``
  through diffusers' attention processors, the DDPM / DDIM scheduler's step on ``sample_step``
  (``fuse.py``);
- ``FusedDDPMScheduler`` / ``FusedDDIMScheduler``: drop-in schedulers (``schedulers.py``);
- ``schedule_from_diffusers``: a diffusers scheduler's ``DiscreteSchedule``, to run a diffusers
  model with ``pydiffuse.sample``.
"""

try:
    import diffusers  # noqa: F401
except ImportError as err:
    raise ImportError("pydiffuse.compat.diffusers needs diffusers: pip install diffusers "
                      "(or pip install 'pydiffuse[diffusers]')") from err

from .fuse import FuseReport, fuse, unfuse
from .schedulers import FusedDDIMScheduler, FusedDDPMScheduler, schedule_from_diffusers

__all__ = ["FuseReport", "FusedDDIMScheduler", "FusedDDPMScheduler", "fuse",
           "schedule_from_diffusers", "unfuse"]
