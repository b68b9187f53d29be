"""pydiffuse: fused kernels (C++, CUDA, Triton) and the samplers and trainers of diffusion models.

``pydiffuse.ops`` holds the fused ops, ``pydiffuse.nn`` the layers on them; importing pydiffuse
loads the compiled ops when built.
"""

from . import nn, ops

__version__ = "0.1.0"
__all__ = ["nn", "ops"]
