"""Argument checks of the public ops: a ValueError or TypeError that names the argument, raised
before any kernel runs."""

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the compiled kernels take
DATA_DTYPES = FLOAT_DTYPES + (torch.float64,)  # float64 runs on the reference backend
DATA_DTYPE_NAMES = "float32, float16, bfloat16 or float64"


def check_data(t, name: str) -> torch.Tensor:
    """A floating tensor with a batch dimension (float64 by default on the reference backend)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in DATA_DTYPES:
        raise TypeError(f"{name} must be {DATA_DTYPE_NAMES}, got {t.dtype}")
    if t.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    return t


def check_same(t, x: torch.Tensor, name: str, shape=None) -> torch.Tensor:
    """``t`` matches x in dtype and device, and in shape (or ``shape``)."""
    check_data(t, name)
    expected = x.shape if shape is None else torch.Size(shape)
    if t.shape != expected:
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {list(expected)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, expected x's dtype {x.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    return t


# The noise stream's counter words (j, b, step, 0) are 32 bits each.
STREAM_WORD = 2**32


def check_step_index(step) -> int:
    """The sampler step of a noise draw: an int in [0, 2^32), the width of its counter word
    (a larger one would wrap silently onto the noise of step mod 2^32)."""
    if type(step) is not int and (isinstance(step, bool)
                                  or not isinstance(step, numbers.Integral)) or step < 0:
        raise TypeError(f"step must be a non-negative int (the sampler step), got {step!r}")
    if step >= STREAM_WORD:
        raise ValueError(f"step must be < 2^32 (the noise stream's step counter is 32 bits), "
                         f"got {step}")
    return int(step)


def check_number(value, name: str, *, minimum=None, positive: bool = False):
    """A Python number that is finite (and >= ``minimum``, or > 0 with ``positive``), else a
    ValueError naming it: a NaN or infinite setting would give NaN samples silently. Tensors
    pass unchecked (reading their values would synchronize with the device)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def is_nonzero(value) -> bool:
    """Whether a coefficient may be non-zero without looking at device data."""
    return isinstance(value, torch.Tensor) or float(value) != 0.0


def check_stream_size(shape) -> None:
    """The noise stream indexes a sample's elements and the samples with 32 bits each."""
    if math.prod(shape[1:]) >= STREAM_WORD:
        raise ValueError("a sample of 2^32 or more elements is beyond the noise stream's counter; "
                         "pass noise= instead of seed=")
    if shape[0] >= STREAM_WORD:
        raise ValueError("a batch of 2^32 or more samples is beyond the noise stream's counter; "
                         "pass noise= instead of seed=")
