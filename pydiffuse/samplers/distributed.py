"""Sampling split over the ranks of a ``torchrun`` run into one ``.npz`` (``sample_to_npz``)."""

import os
from pathlib import Path

import numpy as np
import torch

from ..distributed import barrier, info, shard_range
from .api import _model_device, sample


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
