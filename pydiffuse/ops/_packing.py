"""The packed argument layout shared by every backend (C++, CUDA, Triton, reference).

Coefficients travel as one float32 tensor [rows, B] on the data's device, one row per
coefficient, so a compiled kernel reads them per sample; seeds as an int64 tensor [1] (one seed
for the batch) or [B] (one per sample).

The row order is written once per language: here for Python and the Triton kernels (which read
this module), and in ``csrc/common/step.h`` for C++ and CUDA, whose order ``pydiffuse._C``
reports; ``ops._dispatch`` compares the two when it loads ``_C``. This module imports nothing
from pydiffuse, so that ``triton_kernels/`` may import it (its one import of ``pydiffuse``).
"""

import dataclasses
import math
import numbers

import torch

STEP_COEF_NAMES = ("cx", "co", "ex", "e0", "m0", "me", "mx", "s")
STEP_EXTRA_NAMES = ("guidance", "clip", "log_lo", "log_hi")
STEP_ROW_NAMES = STEP_COEF_NAMES + STEP_EXTRA_NAMES  # the rows of sample_step's table
COEF_INDEX = {name: i for i, name in enumerate(STEP_ROW_NAMES)}
NUM_STEP_COEFS = len(COEF_INDEX)

LANGEVIN_COEF_NAMES = ("step_size", "snr")
LANGEVIN_STEP_SIZE = LANGEVIN_COEF_NAMES.index("step_size")
LANGEVIN_SNR = LANGEVIN_COEF_NAMES.index("snr")
NUM_LANGEVIN_COEFS = len(LANGEVIN_COEF_NAMES)

Coef = float | torch.Tensor


@dataclasses.dataclass
class StepCoefs:
    """Coefficients of the step equation (DESIGN.md, op 1); each a float or a [B] tensor.

    x0 = cx x + co o;  eps = ex x + e0 x0;  next = m0 x0 + me eps + mx x + s z.
    """

    cx: Coef = 0.0
    co: Coef = 0.0
    ex: Coef = 0.0
    e0: Coef = 0.0
    m0: Coef = 0.0
    me: Coef = 0.0
    mx: Coef = 0.0
    s: Coef = 0.0


def coef_row(name: str, value, batch: int, device: torch.device) -> torch.Tensor:
    """One coefficient (float or [B] / [1] tensor) as a float32 [B] row on ``device``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"coefficient {name!r} must be a float or a tensor of shape [B], "
                        f"got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"coefficient {name!r} must be finite, got {value}")
        return torch.full((batch,), float(value), dtype=torch.float32, device=device)
    if value.is_complex() or not (value.is_floating_point() or value.dtype in _INT_DTYPES):
        raise TypeError(f"coefficient {name!r} must be a real tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"coefficient {name!r} is on {value.device}, the data on {device}")
    flat = value.reshape(-1) if value.ndim <= 1 else None
    if flat is None or flat.numel() not in (1, batch):
        raise ValueError(f"coefficient {name!r} must be a float or a tensor of shape [{batch}] "
                         f"(one per sample), got shape {list(value.shape)}")
    return flat.to(torch.float32).expand(batch)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def pack_rows(named_values, batch: int, device: torch.device) -> torch.Tensor:
    """[(name, value), ...] -> a contiguous float32 tensor [len, B].

    All-float rows (the common case) are built on the host in one tensor: one copy instead of a
    fill per row. On CUDA the copy is from pinned memory; under CUDA-graph capture, which takes
    no host copies, the rows are filled on the device."""
    values = [v for _, v in named_values]
    for name, v in named_values:
        if type(v) is float and not math.isfinite(v):
            raise ValueError(f"coefficient {name!r} must be finite, got {v}")
    if all(type(v) is float or type(v) is int for v in values) and (
            device.type == "cpu" or (device.type == "cuda"
                                     and not torch.cuda.is_current_stream_capturing())):
        host = torch.tensor(values, dtype=torch.float32)
        if device.type == "cuda":
            host = host.pin_memory().to(device, non_blocking=True)
        return host.unsqueeze(1).expand(len(values), batch).contiguous()
    return torch.stack([coef_row(n, v, batch, device) for n, v in named_values]).contiguous()


def _int64_seed(seed) -> int:
    """A seed is an int64 (the Philox key's 64 bits); a larger one is refused, not wrapped."""
    if not -2**63 <= int(seed) < 2**63:
        raise ValueError(f"seed must fit in 64 signed bits (-2^63 <= seed < 2^63), got {seed}")
    return int(seed)


def pack_seeds(seed, batch: int, device: torch.device) -> torch.Tensor:
    """An int seed (or a 0-d integer tensor) -> int64 [1]; a sequence or tensor of B seeds ->
    int64 [B]."""
    if isinstance(seed, bool):
        raise TypeError("seed must be an int or one int per sample, got bool")
    if isinstance(seed, numbers.Integral):
        return torch.tensor([_int64_seed(seed)], dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        if seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool:
            raise TypeError(f"seed tensor must have an integer dtype, got {seed.dtype}")
        seeds = seed.reshape(-1).to(device=device, dtype=torch.int64)
        if seed.ndim == 0:
            return seeds
    elif isinstance(seed, (list, tuple)) and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seed):
        seeds = torch.tensor([_int64_seed(s) for s in seed], dtype=torch.int64, device=device)
    else:
        raise TypeError(f"seed must be an int or one int per sample, got {type(seed).__name__}")
    if seeds.numel() != batch:
        raise ValueError(f"seed has {seeds.numel()} values; it must be one int or one per "
                         f"sample ({batch})")
    return seeds
