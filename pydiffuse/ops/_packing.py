"""The packed argument layout shared by every backend (C++, CUDA, Triton, reference).

Coefficients travel as one tensor [rows, B] on the data's device, one row per coefficient, so
a compiled kernel reads them per sample: float32 (``compute_dtype``), or float64 for float64 data
(which runs on the reference backend, so a float64 run's coefficients are not rounded to
float32: issue 17); a table of numbers, shared by the batch,
is a [rows, 1] tensor expanded over B (stride 0), which the kernels read in place (a batch of
2^24 one-element samples carries 12 floats, not 12 x 2^24). Seeds travel as an int64 tensor [1]
(one seed for the batch) or [B] (one per sample).

The row order is written once per language: here for Python and the Triton kernels (which read
this module), and in ``csrc/common/step.h`` for C++ and CUDA, whose order ``pydiffuse._C``
reports; ``ops._dispatch`` compares the two when it loads ``_C``. This module imports nothing
from pydiffuse, so that ``triton_kernels/`` may import it (its one import of ``pydiffuse``).
"""

import dataclasses
import functools
import math
import numbers
import struct

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


def step_coef_values(c: StepCoefs) -> tuple:
    """The fields of ``c`` in row order (``STEP_COEF_NAMES``)."""
    return c.cx, c.co, c.ex, c.e0, c.m0, c.me, c.mx, c.s


def compute_dtype(data_dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute in for data of ``data_dtype``, and so their coefficient tables'
    and a sampler's continuous model times: float64 for float64 data (the reference backend's
    exact path), else float32 (what the compiled kernels read, and models trained in float32 or
    half precision)."""
    return torch.float64 if data_dtype == torch.float64 else torch.float32


def coef_row(name: str, value, batch: int, device: torch.device,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One coefficient (float or [B] / [1] tensor) as a [B] row of ``dtype`` on ``device``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"coefficient {name!r} must be a float or a tensor of shape [B], "
                        f"got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"coefficient {name!r} must be finite, got {value}")
        return torch.full((batch,), float(value), dtype=dtype, device=device)
    if value.is_complex() or not (value.is_floating_point() or value.dtype in _INT_DTYPES):
        raise TypeError(f"coefficient {name!r} must be a real tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"coefficient {name!r} is on {value.device}, the data on {device}")
    flat = value.reshape(-1) if value.ndim <= 1 else None
    if flat is None or flat.numel() not in (1, batch):
        raise ValueError(f"coefficient {name!r} must be a float or a tensor of shape [{batch}] "
                         f"(one per sample), got shape {list(value.shape)}")
    return flat.to(dtype).expand(batch)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def pack_rows(values, names, batch: int, device: torch.device,
              data_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Coefficients (floats or [B] tensors) -> a tensor [len, B] of ``compute_dtype(data_dtype)``
    (stride 0 over B for all-number rows); ``names`` name the rows in errors (a sequence, or a
    prefix: row i is ``f"{names}[{i}]"``).

    All-number rows (the common case) are packed once per (values, batch, device) and the table
    reused (``_number_table``): a sampler's per-step coefficients repeat from one run to the
    next. Otherwise, and where no cache may be used (``_cacheable``), the rows are filled on the
    device one by one."""
    dtype = compute_dtype(data_dtype)
    if (_NUMBER_TYPES.issuperset(map(type, values)) and device.type in ("cpu", "cuda")
            and _cacheable(device)):
        return _number_table(struct.pack(f"{len(values)}d", *values), names, batch, device,
                             dtype)
    _check_finite(values, names)
    return torch.stack([coef_row(_row_name(names, i), v, batch, device, dtype)
                        for i, v in enumerate(values)]).contiguous()


_NUMBER_TYPES = frozenset((float, int))


def _cacheable(device: torch.device) -> bool:
    """Whether a packed tensor may come from a cache: not while torch.compile traces (it would
    trace past the cache), nor during CUDA-graph capture (a graph would keep reading the tensor
    after the cache dropped it; and a capture takes no host copies)."""
    return not (torch.compiler.is_compiling()
                or device.type == "cuda" and torch.cuda.is_current_stream_capturing())


@functools.lru_cache(maxsize=2048)  # (each [rows] floats: a 1000-step sampler's tables fit)
def _number_table(key: bytes, names, batch: int, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """Number rows, keyed by their exact bits as doubles (0.0 and -0.0 differ), built on the host
    in one tensor (one copy instead of a fill per row; on CUDA from pinned memory). A non-finite
    value raises, so no cached table holds one."""
    values = struct.unpack(f"{len(key) // 8}d", key)
    _check_finite(values, names)
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory().to(device, non_blocking=True)
    return host.unsqueeze(1).expand(len(values), batch)  # one row for the batch: stride 0


def _check_finite(values, names) -> None:
    for i, v in enumerate(values):
        if type(v) is float and not math.isfinite(v):
            raise ValueError(f"coefficient {_row_name(names, i)!r} must be finite, got {v}")


def _row_name(names, i: int) -> str:
    return f"{names}[{i}]" if isinstance(names, str) else names[i]


def _int64_seed(seed) -> int:
    """A seed is an int64 (the Philox key's 64 bits); a larger one is refused, not wrapped."""
    if not -2**63 <= int(seed) < 2**63:
        raise ValueError(f"seed must fit in 64 signed bits (-2^63 <= seed < 2^63), got {seed}")
    return int(seed)


@functools.lru_cache(maxsize=256)
def _int_seed(seed: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([_int64_seed(seed)], dtype=torch.int64, device=device)


def pack_seeds(seed, batch: int, device: torch.device) -> torch.Tensor:
    """An int seed (or a 0-d integer tensor) -> int64 [1]; a sequence or tensor of B seeds ->
    int64 [B]. An int's tensor is made once per (seed, device) and reused."""
    if type(seed) is int or isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return (_int_seed if _cacheable(device) else _int_seed.__wrapped__)(int(seed), device)
    if isinstance(seed, bool):
        raise TypeError("seed must be an int or one int per sample, got bool")
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
