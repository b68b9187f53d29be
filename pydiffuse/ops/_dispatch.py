"""The one place a backend is chosen: ``with backend(name)``, then ``PYDIFFUSE_BACKEND``, then the
best backend built for the tensor's device (cuda > triton > reference on GPUs; cpu > reference
on the CPU). A forced backend that cannot run raises ``BackendUnavailable`` saying why; there is
no silent fallback.
"""

import contextlib
import functools
import importlib
import os

import torch

from . import reference
from ._autograd_steps import register_step_autograd

BACKENDS = ("cpu", "cuda", "triton", "reference")
# Innermost ``with backend(...)`` last. Process-wide like torch.backends flags: a plain list,
# so that torch.compile traces the choice (it cannot trace a ContextVar).
_forced: list[str] = []


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the op on this tensor."""


@functools.cache
def _compiled_module():
    """(pydiffuse._C or None, why not)."""
    try:
        module = importlib.import_module("pydiffuse._C")
    except ImportError as err:
        return None, f"pydiffuse._C is not built or failed to load ({err})"
    register_step_autograd("pydiffuse")
    return module, ""


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_module():
    """(pydiffuse.triton_kernels with its ops registered, or None, why not)."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return None, f"triton is not installed ({err})"
    try:
        module = importlib.import_module("pydiffuse.triton_kernels")
    except Exception as err:  # a broken triton install fails in many ways
        return None, f"pydiffuse.triton_kernels failed to load ({type(err).__name__}: {err})"
    register_step_autograd("pydiffuse_triton")
    return module, ""


@torch.compiler.assume_constant_result
def unavailable_reason(name: str, device_type: str) -> str:
    """Why ``name`` cannot run on ``device_type`` tensors ('' when it can)."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"
    if name == "reference":
        return ""
    if name == "cpu":
        if device_type != "cpu":
            return f"the cpu backend runs on CPU tensors, not {device_type}"
        return _compiled_module()[1]
    if name == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device_type}"
        module, why = _compiled_module()
        if module is None:
            return why
        if not module.with_cuda:
            return ("pydiffuse._C was built without CUDA kernels (torch is a CPU build or nvcc "
                    "was not found at build time)")
        return ""
    # triton
    if device_type == "cpu" and not _triton_interpreted():
        return "triton runs on CPU tensors only under TRITON_INTERPRET=1 (its interpreter)"
    if device_type not in ("cpu", "cuda"):
        return f"triton does not run on {device_type} tensors"
    return _triton_module()[1]


def _default(device_type: str) -> str:
    order = ("cuda", "triton") if device_type == "cuda" else ("cpu",)
    for name in order:
        if not unavailable_reason(name, device_type):
            return name
    return "reference"


def current_backend(device: torch.device) -> str:
    """The backend an op on ``device`` runs with now."""
    forced = (_forced[-1] if _forced else None) or os.environ.get("PYDIFFUSE_BACKEND") or None
    if forced is None:
        return _default(device.type)
    why = unavailable_reason(forced, device.type)
    if why:
        raise BackendUnavailable(f"pydiffuse backend {forced!r} cannot run here: {why}")
    return forced


@contextlib.contextmanager
def backend(name: str):
    """Force a backend inside the block: ``with pydiffuse.ops.backend("triton"): ...``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def implementation(op: str, device: torch.device):
    """The callable that runs ``op`` (packed arguments) on ``device`` with the chosen backend."""
    name = current_backend(device)
    if name == "reference":
        return getattr(reference, op)
    if name == "triton":
        return getattr(torch.ops.pydiffuse_triton, op)
    return getattr(torch.ops.pydiffuse, op)


def available_backends() -> dict[str, str]:
    """Each backend -> 'available on <devices>' or why it is not, for ``pydiffuse info``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {}
    for name in BACKENDS:
        ok = [d for d in devices if not unavailable_reason(name, d)]
        if ok:
            report[name] = "available on " + ", ".join(ok)
            if name == "cuda":  # csrc/cuda has attention's forward only
                why = unavailable_reason("triton", "cuda")
                report[name] += (" (attention backward runs the Triton kernel" +
                                 (f", which is unavailable: {why})" if why else ")"))
        else:
            reasons = {unavailable_reason(name, d) for d in devices}
            if name == "cuda" and not torch.cuda.is_available():
                reasons = {unavailable_reason(name, "cuda") or "no CUDA device is visible"}
            report[name] = "unavailable: " + "; ".join(sorted(reasons))
    return report
