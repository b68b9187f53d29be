"""pydiffuse: fused kernels (C++, CUDA, Triton) and the samplers and trainers of diffusion models.

``pydiffuse.ops`` holds the fused ops, ``pydiffuse.nn`` the layers on them, ``schedules`` and
``sde`` the diffusion processes, ``samplers`` every sampler with ``pydiffuse.sample`` as the front
door, ``training`` the objectives and the Trainer, ``data`` the datasets, ``likelihood`` bits/dim
(VLB, probability-flow ODE) and AIS, ``stats`` sample-quality measures and the KSD test, ``load``
a trained checkpoint; importing pydiffuse loads the compiled ops when built.

The modules form layers, each importing only from those below it (``[tool.importlinter]`` in
pyproject.toml, checked by ``tests/test_layers.py``); this package's ``__init__`` is the one
place that sees them all, so it also registers the deprecated aliases of names that moved up.
"""

from . import (data, likelihood, loading, nn, ops, pipeline, predictions, samplers, schedules,
               sde, stats, training)
from .loading import load
from .samplers import sample

# names that moved to a higher layer, kept one release under their old names (with a
# DeprecationWarning): the old module cannot import the new one, so they are wired here
pipeline.MOVED.register("pydiffuse.loading", load=loading.load, export=loading.export)
training.MOVED.register("pydiffuse.samplers", sample_to_npz=samplers.sample_to_npz)
training.distributed.MOVED.register("pydiffuse.samplers", sample_to_npz=samplers.sample_to_npz)

__version__ = "0.1.0"
__all__ = ["data", "likelihood", "load", "nn", "ops", "predictions", "sample", "samplers",
           "schedules", "sde", "stats", "training"]
