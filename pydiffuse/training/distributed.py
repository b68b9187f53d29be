"""Data-parallel runs under ``torchrun``: process-group set-up and tear-down, and sampling split
over the ranks into one ``.npz``.

``torchrun --nproc_per_node N script.py`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``setup()`` joins the group (NCCL with CUDA, gloo on the CPU) and puts each rank on
its own GPU. Without those variables everything here is the single-process case.
"""

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..samplers import sample
from ..samplers.api import _model_device


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


def sample_to_npz(model, n: int, path, *, shape, process, batch_size: int = 256, seed: int = 0,
                  labels=None, null_label: int | None = None, **options) -> Path:
    """Draw n samples split over the ranks and write them to one ``.npz`` (keys ``x``, and ``y``
    with labels).

    Sample i has the per-sample seed ``seed + i`` (``pydiffuse.sample``'s noise stream), so the
    file does not depend on the number of ranks or the batch size (up to the model's own batch
    effects). Each rank writes its share to ``<path>.rank<r>.npz``; rank 0 merges the shards
    in order, writes ``path`` atomically and deletes the shards.

    Args:
        model: ``model(x, t, y=None)``, on this rank's device (the samples are drawn there).
        n: number of samples in all.
        path: the output ``.npz``.
        shape: one sample's shape, e.g. (1, 8, 8).
        process, options: as ``pydiffuse.sample`` (sampler=, steps=, prediction=, guidance=, ...).
        labels: [n] class labels, passed as ``y`` (None: unconditional).
        null_label: the null class (for classifier-free guidance with ``guidance=``).

    Returns:
        path (on every rank, after rank 0 has written it).
    """
    path = Path(path)
    current = info()
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"labels must hold one class per sample ({n}), got {len(labels)}")
    if null_label is not None and labels is None:
        raise ValueError("null_label needs labels=")
    if not current.is_main:
        options.setdefault("progress", False)
    device = _model_device(model)
    share = shard_range(n, current.rank, current.world_size)
    chunks = [torch.empty(0, *shape)]
    for lo in range(share.start, share.stop, batch_size):
        hi = min(share.stop, lo + batch_size)
        kwargs = dict(options)
        if labels is not None:
            y = labels[lo:hi].to(device)
            kwargs["model_kwargs"] = {"y": y}
            if null_label is not None:
                kwargs["uncond_kwargs"] = {"y": torch.full_like(y, null_label)}
        seeds = list(range(seed + lo, seed + hi))
        x = sample(model, (hi - lo, *shape), process=process, seed=seeds, device=device, **kwargs)
        chunks.append(x.float().cpu())
    shard = path.with_name(f"{path.stem}.rank{current.rank}.npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(shard, x=torch.cat(chunks).numpy())
    barrier()
    if current.is_main:
        shards = [path.with_name(f"{path.stem}.rank{r}.npz") for r in range(current.world_size)]
        arrays = {"x": np.concatenate([np.load(s)["x"] for s in shards])}
        if labels is not None:
            arrays["y"] = labels.numpy()
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        for s in shards:
            s.unlink()
    barrier()
    return path
