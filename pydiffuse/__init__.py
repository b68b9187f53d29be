"""pydiffuse: fused kernels (C++, CUDA, Triton) and the samplers and trainers of diffusion models.

``pydiffuse.ops`` holds the fused ops, ``pydiffuse.nn`` the layers on them, ``schedules`` and
``sde`` the diffusion processes, ``samplers`` every sampler with ``pydiffuse.sample`` as the front
door, ``training`` the objectives and the Trainer, ``data`` the datasets, ``likelihood`` bits/dim
(VLB, probability-flow ODE) and AIS, ``stats`` sample-quality measures and the KSD test, ``load``
a trained checkpoint; importing pydiffuse loads the compiled ops when built.
"""

from . import data, likelihood, nn, ops, predictions, samplers, schedules, sde, stats, training
from .pipeline import load
from .samplers import sample

__version__ = "0.1.0"
__all__ = ["data", "likelihood", "load", "nn", "ops", "predictions", "sample", "samplers",
           "schedules", "sde", "stats", "training"]
