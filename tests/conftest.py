"""Shared fixtures: the device under test and the backend parametrization.

Without a GPU, Triton kernels run under its interpreter (TRITON_INTERPRET=1 must be set before
triton is imported, hence here; OMP_WAIT_POLICY before torch loads OpenMP)."""

import os

# Idle OpenMP threads sleep instead of spinning: the sampler tests run many small ops, and a
# spinning pool on a busy 2-core machine slows them tenfold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pydiffuse.ops import BACKENDS, backend  # noqa: E402
from pydiffuse.ops._dispatch import unavailable_reason  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device():
    return DEVICE


def backend_params():
    """One pytest param per backend; the ones that cannot run here carry a skip with the reason."""
    params = []
    for name in BACKENDS:
        devices = ["cuda", "cpu"] if name == "triton" else [DEVICE.type]
        reasons = [unavailable_reason(name, d) for d in devices]
        if name == "cuda" and DEVICE.type != "cuda":
            reasons = ["needs a CUDA device (none here)"]
        if all(reasons):
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reasons[0])))
        else:
            params.append(name)
    return params


def backend_device(name: str) -> torch.device:
    """The device a backend is tested on: its own (triton on the CPU under the interpreter)."""
    if name == "cpu" or (name == "triton" and DEVICE.type == "cpu"):
        return torch.device("cpu")
    return DEVICE


@pytest.fixture(params=backend_params())
def backend_name(request):
    with backend(request.param):
        yield request.param
