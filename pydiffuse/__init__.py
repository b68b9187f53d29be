"""pydiffuse: fused kernels (C++, CUDA, Triton) and the samplers and trainers of diffusion models.

``pydiffuse.ops`` holds the fused ops; importing pydiffuse loads the compiled ops when built.
"""

from . import ops

__version__ = "0.1.0"
__all__ = ["ops"]
