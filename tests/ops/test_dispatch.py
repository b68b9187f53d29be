"""Backend choice: the per-device default, PYDIFFUSE_BACKEND, ``with backend(...)``, and clear
errors (never a silent fallback) when a forced backend cannot run."""

import subprocess
import sys

import pytest
import torch

import pydiffuse.ops as ops
from pydiffuse.ops import (BackendUnavailable, StepCoefs, available_backends, backend,
                           current_backend)


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
