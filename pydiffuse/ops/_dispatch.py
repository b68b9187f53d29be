"""The one place a backend is chosen, and what each backend can run.

Choice: ``with backend(name)``, then ``PYDIFFUSE_BACKEND``, then the best backend built for the
tensor's device (cuda > triton > reference on GPUs; cpu > reference on the CPU). A forced backend
that cannot run raises ``BackendUnavailable`` saying why; there is no silent fallback. A forced
backend always runs its kernel; the default ``cpu`` choice runs an op's eager PyTorch form
instead where ``thresholds`` says the kernel loses at that size. float64 data, which the
compiled kernels do not take (they compute in float32), run on the reference backend by default
on every device (``_chosen_for``: arithmetic and coefficients in float64; issue 17); a forced
compiled backend refuses them.

Capability: ``CAPABILITIES`` says, per backend, which dtypes it takes, which attention head sizes,
how many lincomb terms, and whose kernel runs a backward it has none of; an op asks
``select(op, device, dtype, ...)`` for its kernel, which refuses what the chosen backend cannot
run with an error naming the argument. The kernel it accepted is kept per (op, forced backend,
device type, dtype), and a compiled one is called below autograd when no input needs a gradient
(the per-call host cost of a small step, issue 15).

Loading: ``pydiffuse._C`` (the C++ / CUDA ops, ``torch.ops.pydiffuse``) when this package is
imported, its coefficient rows checked against ``_packing``; the Triton kernels
(``torch.ops.pydiffuse_triton``) on first use. Once a namespace's ops exist, every autograd
formula (``_autograd``) is registered for it, and the kernels a backend borrows are attached.
"""

import contextlib
import dataclasses
import functools
import importlib
import os
from collections.abc import Callable, Mapping

import torch

from . import reference, thresholds
from ._autograd import register_namespace
from ._checks import FLOAT_DTYPES
from ._packing import LANGEVIN_COEF_NAMES, STEP_ROW_NAMES

BACKENDS = ("cpu", "cuda", "triton", "reference")
NAMESPACES = {"cpu": "pydiffuse", "cuda": "pydiffuse", "triton": "pydiffuse_triton"}


@dataclasses.dataclass(frozen=True)
class Capability:
    """What one backend runs (every op, unless a field restricts it)."""

    # dtypes of the data (every compiled backend computes in float32)
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    # attention's head dims D (the GPU kernels are specialised per D); None: any
    head_dims: tuple[int, ...] | None = None
    # lincomb's tensors in one call (the CUDA kernel takes their pointers by value); None: any
    max_terms: int | None = None
    # op -> the backend whose ``<op>_backward`` kernel this backend runs (it has none of its own);
    # absent: its own backward (C++ / CUDA / Triton kernels, or fused lincombs for the step ops)
    backward: Mapping[str, str] = dataclasses.field(default_factory=dict)


CAPABILITIES = {
    "cpu": Capability(),
    "cuda": Capability(head_dims=(32, 64, 128), max_terms=16, backward={"attention": "triton"}),
    "triton": Capability(head_dims=(32, 64, 128)),
    "reference": Capability(dtypes=FLOAT_DTYPES + (torch.float64,)),  # backward: torch autograd
}

# Innermost ``with backend(...)`` last. Process-wide like torch.backends flags: a plain list,
# so that torch.compile traces the choice (it cannot trace a ContextVar).
_forced: list[str] = []


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the op on this tensor."""


def check_packed_layout(module) -> None:
    """ImportError unless ``module`` (pydiffuse._C) reads the packed coefficient rows in the order
    ``_packing`` writes them (csrc/common/step.h against pydiffuse/ops/_packing.py)."""
    for op, attr, expected in (("sample_step", "step_coef_names", STEP_ROW_NAMES),
                               ("langevin_step", "langevin_coef_names", LANGEVIN_COEF_NAMES)):
        built = tuple(getattr(module, attr, ()))
        if built != expected:
            raise ImportError(
                f"pydiffuse._C reads {op}'s coefficient rows in the order {built or 'unknown'} "
                f"(csrc/common/step.h), but pydiffuse/ops/_packing.py packs them as {expected}: "
                "make the two orders agree and rebuild (pip install --no-build-isolation -e .)")


@functools.cache
def _compiled_module():
    """(pydiffuse._C or None, why not)."""
    try:
        module = importlib.import_module("pydiffuse._C")
    except ImportError as err:
        return None, f"pydiffuse._C is not built or failed to load ({err})"
    check_packed_layout(module)
    register_namespace("pydiffuse")
    if module.with_cuda:
        for op, lender in CAPABILITIES["cuda"].backward.items():
            torch.library.impl(f"pydiffuse::{op}_backward", "CUDA",
                               _borrowed(f"{op}_backward", lender))
    return module, ""


def _borrowed(kernel: str, lender: str):
    """pydiffuse::<kernel> on CUDA tensors: ``lender``'s kernel, loaded on first use."""

    def run(*args, **kwargs):
        why = unavailable_reason(lender, "cuda")
        if why:
            raise RuntimeError(f"pydiffuse: {kernel} on CUDA runs the {lender.title()} kernel: "
                               f"{why}")
        return _kernel(lender, kernel)(*args, **kwargs)

    return run


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
    register_namespace("pydiffuse_triton")
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


# os.environ's own dict of encoded names and values (what os.environ.get reads after encoding
# the name: a microsecond a call, more than a small op's whole Python path should cost).
_ENVIRON = getattr(os.environ, "_data", None)
_ENV_NAME = os.environ.encodekey("PYDIFFUSE_BACKEND") if _ENVIRON is not None else None


def _forced_name() -> str | None:
    if _forced:
        return _forced[-1]
    if _ENVIRON is None:
        return os.environ.get("PYDIFFUSE_BACKEND") or None
    value = _ENVIRON.get(_ENV_NAME)
    return os.environ.decodevalue(value) or None if value is not None else None


def _chosen(forced: str | None, device_type: str) -> str:
    if forced is None:
        return _default(device_type)
    why = unavailable_reason(forced, device_type)
    if why:
        raise BackendUnavailable(f"pydiffuse backend {forced!r} cannot run here: {why}")
    return forced


def _chosen_for(forced: str | None, device_type: str, dtype: torch.dtype | None) -> str:
    """``_chosen``, with the default choice moved to the reference backend for a dtype only it
    takes (float64)."""
    name = _chosen(forced, device_type)
    if forced is None and dtype is not None and dtype not in CAPABILITIES[name].dtypes \
            and dtype in CAPABILITIES["reference"].dtypes:
        return "reference"
    return name


def current_backend(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend an op on ``device`` (on data of ``dtype``, when given) runs with now."""
    return _chosen_for(_forced_name(), device.type, dtype)


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


def check_supported(name: str, *, dtype: torch.dtype, head_dim: int | None = None,
                    terms: int | None = None) -> None:
    """A TypeError / ValueError naming the argument if backend ``name`` cannot run these inputs
    (``CAPABILITIES``): the data's dtype, attention's head dim, lincomb's number of tensors."""
    cap = CAPABILITIES[name]
    if dtype not in cap.dtypes:
        if dtype == torch.float64:
            raise TypeError(f"float64 runs on the reference backend only (backend {name!r} "
                            "computes in float32); use float32, or leave the backend to the "
                            "default choice (float64 runs on the reference backend there)")
        raise TypeError(f"the {name!r} backend runs "
                        f"{', '.join(str(d).removeprefix('torch.') for d in cap.dtypes)}, "
                        f"got {dtype}")
    if head_dim is not None and cap.head_dims is not None and head_dim not in cap.head_dims:
        raise ValueError(f"head dim D = {head_dim} is not supported by the {name!r} backend; "
                         f"supported: {', '.join(map(str, cap.head_dims))}")
    if terms is not None and cap.max_terms is not None and terms > cap.max_terms:
        raise ValueError(f"tensors: the {name!r} backend's lincomb takes at most {cap.max_terms} "
                         f"tensors, got {terms}")


def unsupported_reason(device: torch.device, dtype: torch.dtype, **sizes) -> str:
    """Why the backend chosen now for ``device`` cannot run inputs of ``dtype`` (and ``head_dim``
    / ``terms``, as ``check_supported``), or '' when it can: for callers that keep an unfused
    path for what the kernels do not run (``pydiffuse.compat.diffusers.fuse``). float64 counts
    as unsupported by a compiled backend even where the ops would run it on the reference
    backend: such a caller's own path is as exact and faster."""
    try:
        check_supported(_chosen(_forced_name(), device.type), dtype=dtype, **sizes)
    except (BackendUnavailable, TypeError, ValueError) as err:
        return str(err)
    return ""


def _kernel(name: str, op: str):
    if name == "reference":
        return getattr(reference, op)
    return getattr(getattr(torch.ops, NAMESPACES[name]), op)


def implementation(op: str, device: torch.device):
    """The callable that runs ``op`` (packed arguments) on ``device`` with the chosen backend."""
    return _kernel(current_backend(device), op)


# (op, forced backend or None, device type, dtype, sizes) -> (backend name, what select runs)
_SELECTED: dict[tuple, tuple[str, Callable]] = {}


def select(op: str, device: torch.device, dtype: torch.dtype, *, eager=None, work: int = 0,
           **sizes):
    """``implementation(op, device)``, once ``check_supported`` has accepted the inputs
    (``dtype``, and ``head_dim`` / ``terms`` where the op has them) for the chosen backend,
    a compiled kernel wrapped in ``_below_autograd``; or ``eager`` (the op as eager torch ops,
    the kernel's signature) where the cpu backend is the default choice, not a forced one, and
    its kernel loses at this ``work`` (``thresholds.CPU_KERNEL_FROM``). The backend is chosen
    once per (op, forced backend, device type, dtype, sizes); a refusal is never cached."""
    forced = _forced_name()
    key = (op, forced, device.type, dtype, *sizes.items()) if sizes else (op, forced,
                                                                           device.type, dtype)
    chosen = _SELECTED.get(key)
    if chosen is None:
        name = _chosen_for(forced, device.type, dtype)
        check_supported(name, dtype=dtype, **sizes)
        run = _kernel(name, op)
        chosen = _SELECTED[key] = (name, run if name == "reference" else _below_autograd(run))
    name, run = chosen
    if (eager is not None and name == "cpu" and forced is None
            and not thresholds.cpu_kernel_wins(op, work)):
        return eager
    return run


def _below_autograd(kernel):
    """``kernel`` called below the autograd layer when no input needs a gradient: the same
    choice as its ``register_autograd`` wrapper makes, without that wrapper's Python (a few
    microseconds a call, more than a small step's kernel). Traced as is by torch.compile."""

    def run(*args):
        if torch.compiler.is_compiling() or (torch.is_grad_enabled()
                                             and torch._C._any_requires_grad(*args)):
            return kernel(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return kernel(*args)

    return run


def available_backends() -> dict[str, str]:
    """Each backend -> 'available on <devices>' or why it is not, for ``pydiffuse info``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {}
    for name in BACKENDS:
        ok = [d for d in devices if not unavailable_reason(name, d)]
        if ok:
            report[name] = "available on " + ", ".join(ok)
            for op, lender in CAPABILITIES[name].backward.items():  # (runs on CUDA tensors)
                why = unavailable_reason(lender, "cuda")
                report[name] += (f" ({op} backward runs the {lender.title()} kernel" +
                                 (f", which is unavailable: {why})" if why else ")"))
        else:
            reasons = {unavailable_reason(name, d) for d in devices}
            if name == "cuda" and not torch.cuda.is_available():
                reasons = {unavailable_reason(name, "cuda") or "no CUDA device is visible"}
            report[name] = "unavailable: " + "; ".join(sorted(reasons))
    return report
