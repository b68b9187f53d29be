"""Inputs, tolerances, gradient checks and opcheck helpers shared by the op tests."""

import pytest
import torch

from pydiffuse.ops import _dispatch, backend
from pydiffuse.ops._dispatch import unavailable_reason
from tests.conftest import DEVICE, backend_device

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Kernels compute in float32 from the same inputs as the reference and round once: the gap is a
# few float32 ulps before rounding, so at most about one ulp of the storage dtype after it.
TOLERANCES = {
    torch.float32: dict(atol=3e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
# [B, ...] shapes with per-sample sizes 1, 7, 97, 1025 and a 4-D one for channels_last.
SHAPES = ((1, 1), (3, 7), (2, 97), (1, 1025), (2, 3, 5, 7))
LAYOUTS = ("contiguous", "channels_last", "strided")
# Blocks of elements that span many samples (issue 15): 3001 samples (no multiple of a block) of
# 2, 16 and 1 (1-D data) elements, 3 of 5, 3 of 1024 (a block per sample), and 4-D data of 168 per
# sample (made channels_last: consecutive elements are not consecutive in the noise stream).
ELEMENT_SHAPES = ((3001, 2), (3001, 16), (3001,), (3, 5), (3, 1024), (5, 4, 6, 7))


def make(shape, dtype, device, layout="contiguous", generator=None, scale=1.0):
    """Fresh random data in the requested memory layout."""
    t = torch.randn(shape, generator=generator, dtype=torch.float32) * scale
    t = t.to(device=device, dtype=dtype)
    if layout == "channels_last" and t.ndim == 4:
        return t.to(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([t, t], dim=-1)[..., ::2]  # every other element: non-contiguous view
    return t


def split_rows(batch):
    """Rows [0, k) and [k, B) of a batch, k not on a block boundary."""
    k = batch // 3 + 1
    return slice(0, k), slice(k, batch)


def per_sample(batch, device, low=-1.0, high=1.0):
    return torch.empty(batch, device=device).uniform_(low, high)


def reference_of(fn, *args, **kwargs):
    """fn run on the reference backend with float32 copies of every tensor argument."""
    def up(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.float().contiguous()
        if isinstance(a, (list, tuple)):
            return type(a)(up(v) for v in a)
        return a
    with backend("reference"):
        return fn(*up(args), **{k: up(v) for k, v in kwargs.items()})


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), **TOLERANCES[dtype])


# ---------------------------------------------------------------------------------- gradients

# An op without an autograd formula warns and drops the gradient: in a gradient test that is an
# error.
NO_DROPPED_GRADIENTS = pytest.mark.filterwarnings(
    "error:.*an autograd kernel was not registered")


def grads_on(name, fn, leaves):
    """Gradients w.r.t. ``leaves`` of sum_k <output_k, r_k> (fixed random r_k), ``fn`` run on
    backend ``name`` with fresh copies of the leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    with backend(name):
        outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in outs)
    return torch.autograd.grad(loss, leaves)


def assert_grads_match_reference(backend_name, fn, leaves):
    actual = grads_on(backend_name, fn, leaves)
    expected = grads_on("reference", fn, leaves)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **TOLERANCES[torch.float32], msg=f"leaf {i}: {{}}")


def assert_double_backward_matches_reference(backend_name, op):
    """The gradient of |op(x, o, c)|^2 in x, itself differentiated (create_graph=True), equals
    the reference backend's: x, o [2, 3, 4] and a per-sample c [2]."""
    device = backend_device(backend_name)
    leaves = [make((2, 3, 4), torch.float32, device), make((2, 3, 4), torch.float32, device),
              per_sample(2, device, 0.5, 1.5)]

    def second_order(x, o, c):
        (gx,) = torch.autograd.grad((op(x, o, c) ** 2).sum(), x, create_graph=True)
        return gx

    assert_grads_match_reference(backend_name, second_order, leaves)


def f64(*shape, low=None, high=None):
    """A float64 leaf for gradcheck: normal, or uniform in [low, high)."""
    t = torch.randn(*shape, dtype=torch.float64)
    if low is not None:
        t = torch.rand(*shape, dtype=torch.float64) * (high - low) + low
    return t.requires_grad_()


def backward_reaches_every_input(op, args):
    """The op's outputs backpropagate to each input that requires grad (the gradient values are
    the tests against the reference)."""
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])
            if isinstance(t, torch.Tensor) and t.requires_grad]
    outs = op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum(o.sum() for o in outs if o.requires_grad)
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    assert all(g is not None and g.shape == t.shape for g, t in zip(grads, flat))


# ---------------------------------------------------------------------------------- opcheck

TRITON_DEVICE = "cuda" if DEVICE.type == "cuda" else "cpu"
needs_cpu_build = pytest.mark.skipif(bool(unavailable_reason("cpu", "cpu")),
                                     reason=unavailable_reason("cpu", "cpu") or "cpu available")
needs_triton = pytest.mark.skipif(bool(unavailable_reason("triton", TRITON_DEVICE)),
                                  reason=unavailable_reason("triton", TRITON_DEVICE) or
                                  "triton available")


def triton_ops():
    """torch.ops.pydiffuse_triton, its kernels loaded and their autograd registered (as
    pydiffuse.ops loads them)."""
    _dispatch._triton_module()
    return torch.ops.pydiffuse_triton


def on_triton_device(args):
    """The op's arguments on the Triton test device, leaves that require grad staying leaves."""
    def moved(a):
        if isinstance(a, list):
            return [moved(t) for t in a]
        if isinstance(a, torch.Tensor):
            return a.detach().to(TRITON_DEVICE).requires_grad_(a.requires_grad)
        return a
    return tuple(moved(a) for a in args)


def opcheck_triton(op, args):
    """opcheck of a pydiffuse_triton op. Under the interpreter only the schema and autograd
    checks can run: the fake-tensor checks would run the interpreted kernel on fake storage
    (wrap_triton hands back the raw kernel)."""
    limited = {} if TRITON_DEVICE == "cuda" else {
        "test_utils": ("test_schema", "test_autograd_registration")}
    torch.library.opcheck(op, args, **limited)
