"""Data-parallel runs under ``torchrun``, as the Trainer sees them: process-group set-up and
tear-down, the rank and its share of the data. The helpers are ``pydiffuse.distributed``'s (one
layer below the samplers and the training, which both use them), re-exported here;
``sample_to_npz`` moved to ``pydiffuse.samplers`` (its old name here is a deprecated alias).

``torchrun --nproc_per_node N script.py`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``setup()`` joins the group (NCCL with CUDA, gloo on the CPU) and puts each rank on
its own GPU. Without those variables everything here is the single-process case.
"""

from ..distributed import (  # noqa: F401 (re-exported: this module's public names)
    DistInfo,
    all_reduce_sum,
    barrier,
    info,
    setup,
    shard_range,
    teardown,
)
from ..utils import MovedNames

# sample_to_npz -> pydiffuse.samplers.sample_to_npz: registered by pydiffuse/__init__.py (the
# samplers and the training are independent layers: neither imports the other)
__getattr__ = MOVED = MovedNames(__name__)
