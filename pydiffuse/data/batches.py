"""Reproducible data order and seeds, shared by the Trainer and SGLD: ``StepBatches`` (the
example indices of each step, a pure function of (seed, step)), ``mix_seed`` (unrelated 63-bit
seeds from tuples of ints) and ``seed_all`` (seed every global generator).

The seed streams (``mix_seed`` of): (seed, STEP_STREAM, step, rank) a training step's global
RNGs; (seed, DATA_STREAM, epoch) the data order; (seed, INIT_STREAM) a model's initialisation.
"""

import random

import numpy as np
import torch
from torch.utils.data import Sampler

_MASK64 = (1 << 64) - 1
STEP_STREAM, DATA_STREAM, INIT_STREAM = 0, 1, 2     # the tags of mix_seed's streams


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of ints (SplitMix64's finalizer folded over them), so that
    (seed, step, rank) streams are unrelated although their ints are close."""
    z = 0
    for v in values:
        z = (z + (int(v) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z >> 1


def seed_all(seed: int):
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


class StepBatches(Sampler):
    """The example indices of each step, a pure function of (seed, step): the data are read in
    epochs, each a permutation drawn from (seed, epoch); step s takes items [sB, (s+1)B) of that
    stream and rank r the r-th of its world_size equal slices. A resumed run therefore reads
    exactly what an uninterrupted one would.

    Args:
        n: dataset size. batch_size: the global batch B. seed: the data seed.
        start, stop: the steps to yield. rank, world_size: this process's slice.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world_size
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, DATA_STREAM, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """This rank's indices at ``step``, [B / world_size]."""
        local = self.batch // self.world
        pos, parts = step * self.batch + self.rank * local, []
        while local > 0:
            epoch, offset = divmod(pos, self.n)
            part = self._permutation(epoch)[offset:offset + local]
            parts.append(part)
            pos, local = pos + len(part), local - len(part)
        return torch.cat(parts)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.indices(step).tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
