"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; bundled with scikit-learn, no
download), scaled from 0..16 to [-1, 1], with one fixed, seeded, stratified train/test split that
everything shares: generators train on "train", the digits quality classifier
(``pydiffuse.stats.digits_quality``) is scored on "test", and the two never overlap.
"""

import functools

import torch
from torch.utils.data import TensorDataset

SPLITS = ("train", "test", "all")
LEVELS = 17          # pixel values 0..16: the bins of the VLB's decoder term (likelihood.vlb)


@functools.cache
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits: x float32 [N, 1, 8, 8] in [-1, 1] (pixel / 8 - 1), y long [N]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8 - 1
    return x, torch.as_tensor(data.target, dtype=torch.long)


@functools.cache
def _test_mask(seed: int, test_fraction: float) -> torch.Tensor:
    """[N] bool: round(test_fraction * n_c) random digits of each class c go to the test split."""
    y = _load()[1]
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in range(int(y.max()) + 1):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        mask[idx[:round(test_fraction * len(idx))]] = True
    return mask


def digits(split: str = "train", *, seed: int = 0, test_fraction: float = 0.2) -> TensorDataset:
    """The 8x8 digits as a dataset of (x, y) pairs.

    The split is stratified: of each class's n_c images, round(test_fraction * n_c), chosen by a
    permutation seeded with ``seed``, form "test" and the rest "train" (the defaults give 1438
    train and 359 test images). Keep the defaults unless every consumer uses the same values.

    Args:
        split: "train", "test" or "all" (the dataset order, unsplit).
        seed: the split's seed.
        test_fraction: the share of each class held out, in (0, 1).

    Returns:
        a TensorDataset of x float32 [N, 1, 8, 8] in [-1, 1] and y long [N] labels 0..9
        (``ds.tensors`` gives both whole).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = _load()
    if split == "all":
        return TensorDataset(x.clone(), y.clone())
    mask = _test_mask(int(seed), float(test_fraction))
    keep = mask if split == "test" else ~mask
    return TensorDataset(x[keep], y[keep])
