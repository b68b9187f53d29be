"""lincomb on every backend against the reference; its gradients against the reference's,
gradcheck of the reference in float64, and opcheck of the pydiffuse:: and pydiffuse_triton::
ops."""

import pytest
import torch

from pydiffuse.ops import _dispatch, backend, lincomb, reference
from tests.conftest import backend_device
from tests.ops.helpers import (DTYPES, ELEMENT_SHAPES, LAYOUTS, NO_DROPPED_GRADIENTS, SHAPES,
                               assert_close, assert_double_backward_matches_reference,
                               assert_grads_match_reference, backward_reaches_every_input, f64,
                               make, needs_cpu_build, needs_triton, on_triton_device,
                               opcheck_triton, per_sample, reference_of, split_rows, triton_ops)


@pytest.mark.parametrize("count", [1, 2, 5])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_name, shape, dtype, layout, count):
    _assert_matches_reference(backend_device(backend_name), shape, dtype, layout, count)


def _assert_matches_reference(device, shape, dtype, layout, count):
    tensors = [make(shape, dtype, device, layout) for _ in range(count)]
    coefs = [0.5 if i % 2 else per_sample(shape[0], device) for i in range(count)]
    result = lincomb(tensors, coefs)
    assert result.shape == tensors[0].shape and result.dtype == dtype
    assert_close(result, reference_of(lincomb, tensors, coefs), dtype)


@pytest.mark.parametrize("count", [3, 9])
@pytest.mark.parametrize("shape", ELEMENT_SHAPES, ids=str)
def test_blocks_across_samples_match_reference(backend_name, shape, count):
    """Blocks of elements that span many samples: each element takes its own sample's
    coefficients (past 8 terms too), and a batch's rows combine as the rows alone."""
    device = backend_device(backend_name)
    _assert_matches_reference(device, shape, torch.float32, "channels_last", count)
    tensors = [make(shape, torch.float32, device, "channels_last") for _ in range(count)]
    coefs = [per_sample(shape[0], device) for _ in range(count)]
    parts = [lincomb([t[r] for t in tensors], [c[r] for c in coefs]) for r in split_rows(shape[0])]
    assert_close(torch.cat(parts), lincomb(tensors, coefs), torch.float32)


def test_coefficient_tensor_forms(backend_name):
    """coefs as a [n] tensor and as an [n, B] tensor mean the same as the list form."""
    device = backend_device(backend_name)
    a, b = make((3, 10), torch.float32, device), make((3, 10), torch.float32, device)
    expected = 2 * a - 0.5 * b
    torch.testing.assert_close(lincomb([a, b], torch.tensor([2.0, -0.5], device=device)), expected)
    table = torch.tensor([[2.0] * 3, [-0.5] * 3], device=device)
    torch.testing.assert_close(lincomb([a, b], table), expected)


def test_terms_beyond_a_backend_are_refused():
    """A backend that takes at most n tensors per call (CAPABILITIES: the CUDA kernel passes
    their pointers by value) refuses more, naming the argument, before any kernel runs."""
    limit = _dispatch.CAPABILITIES["cuda"].max_terms
    _dispatch.check_supported("cuda", dtype=torch.float32, terms=limit)
    with pytest.raises(ValueError, match=f"tensors: the 'cuda' backend's lincomb takes at most "
                                         f"{limit} tensors, got {limit + 1}"):
        _dispatch.check_supported("cuda", dtype=torch.float32, terms=limit + 1)
    _dispatch.check_supported("cpu", dtype=torch.float32, terms=1000)


# ---------------------------------------------------------------------------------- gradients

GRAD_SHAPE = (3, 2, 5, 4)


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_lincomb_gradients_match_reference(backend_name, count):
    """Per-sample coefficients (leaves) and floats alternate."""
    device = backend_device(backend_name)
    tensors = [make(GRAD_SHAPE, torch.float32, device) for _ in range(count)]
    coefs = [per_sample(GRAD_SHAPE[0], device) for i in range(count) if i % 2 == 0]

    def fn(*leaves):
        ts, cs = list(leaves[:count]), iter(leaves[count:])
        return lincomb(ts, [next(cs) if i % 2 == 0 else 0.5 - i for i in range(count)])

    assert_grads_match_reference(backend_name, fn, tensors + coefs)


@NO_DROPPED_GRADIENTS
def test_lincomb_gradient_of_a_coefficient_table(backend_name):
    """coefs as one [n, B] tensor: its gradient too."""
    device = backend_device(backend_name)
    leaves = [make(GRAD_SHAPE, torch.float32, device) for _ in range(3)]
    leaves.append(torch.randn(3, GRAD_SHAPE[0], device=device))
    assert_grads_match_reference(backend_name, lambda a, b, c, t: lincomb([a, b, c], t), leaves)


@NO_DROPPED_GRADIENTS
def test_gradcheck_reference_lincomb():
    tensors = [f64(2, 3, 2) for _ in range(3)]
    table = f64(3, 2)
    assert torch.autograd.gradcheck(
        lambda a, b, c, t: reference.lincomb([a, b, c], t, upcast=torch.float64),
        (*tensors, table))


PUBLIC_OPS = {
    "lincomb": lambda x, out, u, z: lincomb([x, out, u, z], [0.5, -1.0, 2.0, 0.25]),
}


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_gradcheck_public_ops_on_the_reference_backend(op):
    """float64 through the public op on the reference backend (the coefficients floats)."""
    with backend("reference"):
        assert torch.autograd.gradcheck(PUBLIC_OPS[op], [f64(2, 3, 2) for _ in range(4)])


SECOND_ORDER = {"lincomb": lambda x, o, c: lincomb([x, o], [c, 0.5])}


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("op", SECOND_ORDER)
def test_double_backward_matches_reference(backend_name, op):
    """create_graph=True: the backward is differentiable (fused lincombs, reference parts)."""
    assert_double_backward_matches_reference(backend_name, SECOND_ORDER[op])


# ---------------------------------------------------------------------------------- opcheck

X = torch.randn(2, 3, 5, 4)
OPCHECK_CASES = {"lincomb": ([X, X * 2], torch.rand(2, 2))}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    torch.library.opcheck(torch.ops.pydiffuse.lincomb.default, OPCHECK_CASES[case])


@needs_triton
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_triton(case):
    opcheck_triton(triton_ops().lincomb.default, on_triton_device(OPCHECK_CASES[case]))


def _opcheck_with_grad_cases():
    """Arguments with inputs that require grad."""
    def g(*shape):
        return torch.randn(*shape).requires_grad_()

    return {"lincomb": ([g(2, 3, 5, 4), X * 2, g(2, 3, 5, 4)], g(3, 2))}


@NO_DROPPED_GRADIENTS
@needs_cpu_build
@pytest.mark.parametrize("case", _opcheck_with_grad_cases())
def test_opcheck_with_grad(case):
    args = _opcheck_with_grad_cases()[case]
    op = torch.ops.pydiffuse.lincomb.default
    torch.library.opcheck(op, args)
    backward_reaches_every_input(op, args)


@NO_DROPPED_GRADIENTS
@needs_triton
@pytest.mark.parametrize("case", _opcheck_with_grad_cases())
def test_opcheck_with_grad_triton(case):
    """Under the interpreter only the schema and autograd-registration checks run."""
    op, args = triton_ops().lincomb.default, on_triton_device(_opcheck_with_grad_cases()[case])
    opcheck_triton(op, args)
    backward_reaches_every_input(op, args)
