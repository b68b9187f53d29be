"""The host fast path of the fused ops (issue 15): packed coefficient tables and int seeds reused
per exact value, batch and device, the backend chosen once per (op, forced backend, device,
dtype), the kernel called below autograd when nothing needs a gradient. None of it may return a
stale table, a stale choice, or drop a gradient."""

import pytest
import torch

from pydiffuse.ops import (BackendUnavailable, StepCoefs, backend, langevin_step, lincomb, randn,
                           sample_step)
from pydiffuse.ops._packing import (STEP_COEF_NAMES, STEP_ROW_NAMES, pack_rows, pack_seeds,
                                    step_coef_values)
from pydiffuse.ops._dispatch import unavailable_reason
from tests.conftest import DEVICE

X = torch.arange(1.0, 7.0).reshape(2, 3)


def test_step_coef_values_follow_the_row_order():
    coefs = StepCoefs(**{name: float(i) for i, name in enumerate(STEP_COEF_NAMES)})
    assert step_coef_values(coefs) == tuple(float(i) for i in range(len(STEP_COEF_NAMES)))
    assert STEP_ROW_NAMES[:len(STEP_COEF_NAMES)] == STEP_COEF_NAMES


def test_a_mutated_or_reused_step_coefs_is_packed_anew():
    coefs = StepCoefs(cx=1.0, m0=1.0)
    torch.testing.assert_close(sample_step(X, X, coefs), X, rtol=0, atol=0)
    coefs.cx = 2.0
    torch.testing.assert_close(sample_step(X, X, coefs), 2 * X, rtol=0, atol=0)
    coefs.cx = torch.full((2,), 3.0)  # a tensor row: its current values, never a cached table
    torch.testing.assert_close(sample_step(X, X, coefs), 3 * X, rtol=0, atol=0)
    coefs.cx.fill_(4.0)
    torch.testing.assert_close(sample_step(X, X, coefs), 4 * X, rtol=0, atol=0)
    coefs.cx = 1.0
    torch.testing.assert_close(sample_step(X, X, coefs), X, rtol=0, atol=0)


def test_tables_are_keyed_by_exact_value_batch_and_device():
    cpu = torch.device("cpu")
    zero, minus_zero = pack_rows([0.0, 1.0], "c", 2, cpu), pack_rows([-0.0, 1.0], "c", 2, cpu)
    assert not zero.signbit().any() and minus_zero[0].signbit().all()
    assert pack_rows([1.0], "c", 3, cpu).shape == (1, 3)
    assert pack_rows([1, 2], "c", 1, cpu).equal(pack_rows([1.0, 2.0], "c", 1, cpu))
    assert pack_rows([0.1], "c", 1, cpu).item() == torch.tensor(0.1).item()
    torch.testing.assert_close(sample_step(X[:1], X[:1], StepCoefs(cx=2.0, m0=1.0)), 2 * X[:1])
    torch.testing.assert_close(sample_step(X, X, StepCoefs(cx=2.0, m0=1.0)), 2 * X)
    if DEVICE.type == "cuda":
        assert pack_rows([1.0], "c", 2, DEVICE).device == DEVICE
        assert pack_rows([1.0], "c", 2, cpu).device == cpu


def test_a_refusal_is_never_cached():
    for _ in range(2):
        with pytest.raises(ValueError, match="coefficient 'cx' must be finite"):
            sample_step(X, X, StepCoefs(cx=float("nan")))
        with pytest.raises(ValueError, match=r"coefs\[1\]' must be finite"):
            lincomb([X, X], [1.0, float("inf")])
        if not unavailable_reason("cpu", "cpu"):
            with backend("cpu"), pytest.raises(TypeError, match="float64 runs on the reference"):
                sample_step(X.double(), X.double(), StepCoefs(cx=1.0))
        with pytest.raises(ValueError, match="seed must fit in 64 signed bits"):
            randn([2, 3], 2**63)


def test_the_backend_choice_follows_the_context_and_the_environment(monkeypatch):
    coefs = StepCoefs(cx=1.0)
    sample_step(X, X, coefs)  # the cpu backend chosen and kept for float32 on the CPU
    assert sample_step(X.double(), X.double(), coefs).dtype == torch.float64  # on reference
    monkeypatch.setenv("PYDIFFUSE_BACKEND", "magic")
    with pytest.raises(BackendUnavailable, match="unknown backend 'magic'"):
        sample_step(X, X, coefs)
    monkeypatch.setenv("PYDIFFUSE_BACKEND", "reference")
    assert sample_step(X.double(), X.double(), coefs).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_dtype_gets_its_own_kernel_choice(dtype):
    out = sample_step(X.to(dtype), X.to(dtype), StepCoefs(cx=2.0, m0=1.0))
    assert out.dtype == dtype
    torch.testing.assert_close(out, 2 * X.to(dtype))


def test_int_seeds_are_reused_per_value_and_device():
    assert pack_seeds(5, 2, torch.device("cpu")).tolist() == [5]
    assert pack_seeds(6, 2, torch.device("cpu")).tolist() == [6]
    assert randn([2, 3], 5).equal(randn([2, 3], torch.tensor(5)))
    assert not randn([2, 3], 5).equal(randn([2, 3], 6))


def test_gradients_flow_when_an_input_requires_grad():
    x = X.clone().requires_grad_()
    y = sample_step(x, X, StepCoefs(cx=2.0, m0=1.0))
    assert y.requires_grad
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(X, 2.0))
    cx = torch.full((2,), 2.0, requires_grad=True)  # through a tensor coefficient
    lincomb([X, X], [cx, 1.0]).sum().backward()
    torch.testing.assert_close(cx.grad, X.sum(1))
    noise = torch.zeros_like(X, requires_grad=True)
    langevin_step(X, X, 0.5, noise=noise).sum().backward()
    torch.testing.assert_close(noise.grad, torch.ones_like(X))


def test_no_graph_without_a_gradient():
    x = X.clone().requires_grad_()
    with torch.no_grad():
        assert not sample_step(x, X, StepCoefs(cx=1.0)).requires_grad
    y = sample_step(X, X, StepCoefs(cx=1.0))
    assert not y.requires_grad and y.grad_fn is None
