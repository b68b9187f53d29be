"""What the likelihood evaluators share: input checks, per-sample seeds (a sample's noise is the
same in any batch) and splitting the data and its model keywords into batches."""

import numbers

import torch


def check_data(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, ...], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} must be [B, ...] with B >= 1 and a data dimension, got shape "
                         f"{list(x.shape)}")
    return x


def sample_seeds(seed, n: int) -> torch.Tensor:
    """n per-sample seeds (int64) drawn from ``seed`` (None: from torch's global generator), so
    sample i's noise is the noise stream of seeds[i] whatever the batch size."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, ()))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2 ** 62, (n,), generator=gen)


def batches(n: int, batch_size):
    """Slices of at most ``batch_size`` (None: one slice) covering range(n)."""
    if batch_size is None:
        return [slice(0, n)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, int(batch_size))]


def batch_kwargs(model_kwargs, sl: slice, n: int) -> dict:
    """The model keywords of one batch: tensors with n rows (per-sample, e.g. labels) sliced,
    anything else passed whole."""
    return {k: v[sl] if isinstance(v, torch.Tensor) and v.ndim >= 1 and len(v) == n else v
            for k, v in (model_kwargs or {}).items()}
