"""The default cpu dispatch runs group_norm and attention as eager torch ops below the sizes of
``pydiffuse.ops.thresholds`` and as the cpu kernel from them on; a forced backend always runs its
kernel. Both paths, forward and gradients, against the reference on fresh random data."""

import importlib
import math

import pytest
import torch

from pydiffuse import ops
from pydiffuse.ops import _dispatch, thresholds
from tests.ops.helpers import DTYPES, TOLERANCES, needs_cpu_build

pytestmark = needs_cpu_build


def _group_norm_args(work, dtype):
    """x with every parameter (affine, AdaGN (float32) and SiLU): [2, 32, n], the least n whose
    group_norm_work reaches ``work``."""
    n = math.ceil(work / thresholds.group_norm_work(64, True, True))
    x = torch.randn(2, 32, n).to(dtype)
    params = dict(weight=torch.randn(32) * 0.5 + 1, bias=torch.randn(32),
                  scale=torch.randn(2, 32) * 0.5, shift=torch.randn(2, 32))
    return x, params


def _run_group_norm(x, params):
    return ops.group_norm(x, 8, params["weight"], params["bias"], scale=params["scale"],
                          shift=params["shift"], act="silu")


def _attention_args(work, dtype):
    """q, k, v [1, 2, n, 64], the least n with 2 n^2 64 >= work."""
    n = math.ceil((work / 128) ** 0.5)
    return [torch.randn(1, 2, n, 64).to(dtype) for _ in range(3)]


CASES = {
    "group_norm": (_group_norm_args, lambda args: _run_group_norm(*args),
                   lambda args: [args[0]] + list(args[1].values())),
    "attention": (_attention_args, lambda args: ops.attention(*args), lambda args: args),
}


@pytest.fixture
def eager_calls(monkeypatch):
    """Counts the calls of each op module's eager form (the fallback), still running it."""
    calls = {}
    for op in CASES:
        module = importlib.import_module(f"pydiffuse.ops.{op}")
        original = module._eager

        def spy(*args, op=op, original=original):
            calls[op] = calls.get(op, 0) + 1
            return original(*args)

        monkeypatch.setattr(module, "_eager", spy)
    return calls


def _threshold(op):
    return thresholds.CPU_KERNEL_FROM[op][1]


@pytest.mark.parametrize("op", CASES)
def test_select_picks_eager_below_the_threshold_only_by_default(op):
    device, eager = torch.device("cpu"), object()
    kernel = _dispatch.select(op, device, torch.float32)  # the cpu kernel (below autograd)
    assert _dispatch.current_backend(device) == "cpu" and kernel is not eager
    below, at = _threshold(op) - 1, _threshold(op)
    assert _dispatch.select(op, device, torch.float32, eager=eager, work=below) is eager
    assert _dispatch.select(op, device, torch.float32, eager=eager, work=at) is kernel
    with ops.backend("cpu"):  # forced: the kernel whatever the size
        forced = _dispatch.select(op, device, torch.float32, eager=eager, work=below)
        assert forced is not eager and forced is _dispatch.select(op, device, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ("below", "at"))
@pytest.mark.parametrize("op", CASES)
def test_both_paths_match_the_reference(op, side, dtype, eager_calls):
    make, run, leaves_of = CASES[op]
    work = _threshold(op) // 4 if side == "below" else _threshold(op)
    args = make(work, dtype)
    leaves = [t.detach().clone().requires_grad_() for t in leaves_of(args)]
    args_grad = (leaves[0], dict(zip(args[1], leaves[1:]))) if op == "group_norm" else leaves
    out = run(args_grad)
    assert eager_calls.get(op, 0) == (1 if side == "below" else 0)
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    ref_args = ((ref_leaves[0], dict(zip(args[1], ref_leaves[1:]))) if op == "group_norm"
                else ref_leaves)
    with ops.backend("reference"):
        expected = run(ref_args)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.float(), expected, **tol)
    grad_out = torch.randn(out.shape)
    grads = torch.autograd.grad(out, leaves, grad_out.to(dtype))
    expected_grads = torch.autograd.grad(expected, ref_leaves, grad_out)
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        scale = e.abs().max().item() + 1  # gradients summed over a batch or many positions
        torch.testing.assert_close(g.float(), e, atol=tol["atol"] * scale * 4,
                                   rtol=tol["rtol"] * 4, msg=f"{op} leaf {i}: {{}}")


def test_group_norm_counts_silu_and_adagn_as_more_work(eager_calls):
    """Plain GN is one eager op, GN + SiLU two, with AdaGN four: at half the threshold's elements
    plain GN stays eager, GN + SiLU and AdaGN run the kernel."""
    x = torch.randn(2, 32, _threshold("group_norm") // 128)
    ops.group_norm(x, 8)
    assert eager_calls.get("group_norm") == 1
    ops.group_norm(x, 8, act="silu")
    ops.group_norm(x, 8, scale=torch.randn(2, 32), shift=torch.randn(2, 32))
    assert eager_calls.get("group_norm") == 1
