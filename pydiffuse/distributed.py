"""Data-parallel runs under ``torchrun``: process-group set-up and tear-down, this process's
rank, and the share of n items each rank takes. In the bottom layer (no pydiffuse imports):
the Trainer (``pydiffuse.training.distributed`` re-exports these) and ``sample_to_npz``
(``pydiffuse.samplers``: sampling split over the ranks) both use it.

``torchrun --nproc_per_node N script.py`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``setup()`` joins the group (NCCL with CUDA, gloo on the CPU) and puts each rank on
its own GPU. Without those variables everything here is the single-process case.
"""

import dataclasses
import logging
import math
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def info() -> DistInfo:
    """The current process group's view: rank, world size, local rank, default device."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available() or not dist.is_initialized():
        return DistInfo(0, 1, 0, _default_device(0))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, _default_device(local))


def setup(backend: str | None = None) -> DistInfo:
    """Join the ``torchrun`` process group (a no-op when already joined or not under torchrun).

    Args:
        backend: "nccl" or "gloo"; None: NCCL when CUDA is available, else gloo.

    Returns:
        this process's DistInfo. Ranks other than 0 log only warnings (``pydiffuse`` loggers).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"),
                                rank=int(os.environ["RANK"]), world_size=world)
    current = info()
    if not current.is_main:
        logging.getLogger("pydiffuse").setLevel(logging.WARNING)
    return current


def teardown():
    """Leave the process group (after a barrier), if joined."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (unchanged in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The global indices [lo, hi) of rank's contiguous share of n items."""
    per = math.ceil(n / world_size)
    return range(min(n, rank * per), min(n, (rank + 1) * per))
