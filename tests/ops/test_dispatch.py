"""Backend choice: the per-device default, PYDIFFUSE_BACKEND, ``with backend(...)``, and clear
errors (never a silent fallback) when a forced backend cannot run."""

import subprocess
import sys
import types

import pytest
import torch

import pydiffuse.ops as ops
from pydiffuse.ops import (BackendUnavailable, StepCoefs, available_backends, backend,
                           current_backend)
from pydiffuse.ops._dispatch import unavailable_reason


def test_default_is_the_compiled_cpu_backend():
    assert current_backend(torch.device("cpu")) == "cpu"


def test_context_manager_forces_and_restores():
    with backend("reference"):
        assert current_backend(torch.device("cpu")) == "reference"
    assert current_backend(torch.device("cpu")) == "cpu"


def test_environment_variable_forces(monkeypatch):
    monkeypatch.setenv("PYDIFFUSE_BACKEND", "reference")
    assert current_backend(torch.device("cpu")) == "reference"


def test_context_manager_overrides_environment(monkeypatch):
    monkeypatch.setenv("PYDIFFUSE_BACKEND", "reference")
    with backend("cpu"):
        assert current_backend(torch.device("cpu")) == "cpu"


def test_forced_backend_that_cannot_run_says_why():
    x = torch.zeros(2, 3)
    with backend("cuda"), pytest.raises(BackendUnavailable, match="cuda backend runs on CUDA"):
        ops.sample_step(x, x, StepCoefs(cx=1.0))


def test_unknown_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend"):
        with backend("magic"):
            pass
    monkeypatch.setenv("PYDIFFUSE_BACKEND", "magic")
    with pytest.raises(BackendUnavailable, match="unknown backend 'magic'"):
        ops.randn([1, 2], 0)


def test_available_backends_reports_every_backend():
    report = available_backends()
    assert set(report) == set(ops.BACKENDS)
    assert report["cpu"].startswith("available")
    assert report["reference"].startswith("available")
    if not torch.cuda.is_available():
        assert report["cuda"].startswith("unavailable: ")


def test_info_command_reports_backends():
    result = subprocess.run([sys.executable, "-m", "pydiffuse.cli", "info"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ops.BACKENDS:
        assert name in result.stdout
    if not unavailable_reason("cpu", "cpu"):   # the noise stream's SIMD lanes on this CPU
        assert any(f"philox_lanes={w}" in result.stdout for w in ("avx512", "avx2", "scalar"))


def test_compiled_kernels_read_the_coefficient_rows_that_python_packs():
    """The row order is written once per language (csrc/common/step.h, ops/_packing.py); _C
    reports its order and loading it checks the two agree: a clear ImportError if not."""
    import pydiffuse._C as compiled
    from pydiffuse.ops import _dispatch, _packing

    assert tuple(compiled.step_coef_names) == _packing.STEP_ROW_NAMES
    assert tuple(compiled.langevin_coef_names) == _packing.LANGEVIN_COEF_NAMES
    _dispatch.check_packed_layout(compiled)
    swapped = types.SimpleNamespace(
        step_coef_names=("co", "cx") + _packing.STEP_ROW_NAMES[2:],
        langevin_coef_names=_packing.LANGEVIN_COEF_NAMES)
    with pytest.raises(ImportError, match=r"sample_step's coefficient rows .*\('co', 'cx'"):
        _dispatch.check_packed_layout(swapped)
    with pytest.raises(ImportError, match="langevin_step's coefficient rows in the order unknown"):
        _dispatch.check_packed_layout(types.SimpleNamespace(
            step_coef_names=_packing.STEP_ROW_NAMES))


@pytest.mark.parametrize("name", ops.BACKENDS)
def test_capability_table_covers_every_backend(name):
    """The ops ask _dispatch.CAPABILITIES what the chosen backend runs: float64 only on the
    reference backend, the GPU kernels' head dims; a refusal names the argument."""
    from pydiffuse.ops import _dispatch

    cap = _dispatch.CAPABILITIES[name]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        _dispatch.check_supported(name, dtype=dtype, head_dim=64, terms=4)
    if name == "reference":
        _dispatch.check_supported(name, dtype=torch.float64)
    else:
        with pytest.raises(TypeError, match="float64 runs on the reference backend only"):
            _dispatch.check_supported(name, dtype=torch.float64)
    if cap.head_dims is not None:
        with pytest.raises(ValueError, match=f"head dim D = 40 is not supported by the "
                                             f"'{name}' backend"):
            _dispatch.check_supported(name, dtype=torch.float32, head_dim=40)
    for op, lender in cap.backward.items():
        assert lender in ops.BACKENDS and lender != name, (op, lender)


def test_unsupported_reason_says_what_check_supported_refuses():
    cpu = torch.device("cpu")
    assert ops.unsupported_reason(cpu, torch.float32, head_dim=40) == ""
    # (the ops run float64 on the reference backend; a caller with its own path keeps it)
    assert "float64 runs on the reference backend only" in ops.unsupported_reason(cpu,
                                                                                  torch.float64)
    with ops.backend("reference"):
        assert ops.unsupported_reason(cpu, torch.float64) == ""
    if not unavailable_reason("triton", "cpu"):
        with ops.backend("triton"):
            assert "head dim D = 40 is not supported" in ops.unsupported_reason(
                cpu, torch.float32, head_dim=40)
    with ops.backend("cuda"):
        assert "cannot run here" in ops.unsupported_reason(cpu, torch.float32)
