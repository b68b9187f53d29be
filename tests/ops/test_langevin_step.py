"""langevin_step on every backend against the reference, plain and SNR-adaptive; its gradients
against the reference's, gradcheck of the reference in float64, and opcheck of the pydiffuse::
and pydiffuse_triton:: ops."""

import pytest
import torch

from pydiffuse.ops import backend, langevin_step, randn, reference
from tests.conftest import backend_device
from tests.ops.helpers import (DTYPES, ELEMENT_SHAPES, LAYOUTS, NO_DROPPED_GRADIENTS, SHAPES,
                               assert_close, assert_double_backward_matches_reference,
                               assert_grads_match_reference, backward_reaches_every_input, f64,
                               make, needs_cpu_build, needs_triton, on_triton_device,
                               opcheck_triton, per_sample, reference_of, split_rows, triton_ops)

MODES = ("plain", "per_sample_size", "snr_batch", "snr_sample", "seed", "seeds_snr")


def _kwargs(mode, shape, dtype, device, layout):
    batch = shape[0]
    kwargs = dict(step_size=0.01, noise=make(shape, dtype, device, layout))
    if mode == "per_sample_size":
        kwargs["step_size"] = per_sample(batch, device, 0.001, 0.1)
    if mode.startswith("snr") or mode == "seeds_snr":
        kwargs.update(snr=0.16, norm="sample" if mode == "snr_sample" else "batch")
    if mode in ("seed", "seeds_snr"):
        kwargs.update(noise=None, step=9, seed=5 if mode == "seed" else list(range(batch)))
    return kwargs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_name, shape, dtype, layout, mode):
    _assert_matches_reference(backend_device(backend_name), shape, dtype, layout, mode)


def _assert_matches_reference(device, shape, dtype, layout, mode):
    x, score = make(shape, dtype, device, layout), make(shape, dtype, device, layout)
    kwargs = _kwargs(mode, shape, dtype, device, layout)
    nxt, mean = langevin_step(x, score, return_mean=True, **kwargs)
    ref_next, ref_mean = reference_of(langevin_step, x, score, return_mean=True, **kwargs)
    assert nxt.shape == x.shape and nxt.dtype == dtype
    assert_close(mean, ref_mean, dtype)
    assert_close(nxt, ref_next, dtype)


@pytest.mark.parametrize("mode", ("per_sample_size", "snr_sample", "seed", "seeds_snr"))
@pytest.mark.parametrize("shape", ELEMENT_SHAPES, ids=str)
def test_blocks_across_samples_match_reference(backend_name, shape, mode):
    """Blocks of elements (and reduction tiles) that span many samples: each element takes its
    own sample's step size, seed and norms."""
    _assert_matches_reference(backend_device(backend_name), shape, torch.float32, "channels_last",
                              mode)


@pytest.mark.parametrize("shape", ELEMENT_SHAPES, ids=str)
def test_blocks_across_samples_draw_each_sample_its_noise(backend_name, shape):
    """next = z (x = score = 0, e = 1/2) is the stream randn draws, and a batch's z is its rows'
    z stepped apart (per-sample seeds); so is an SNR step with per-sample norms."""
    device = backend_device(backend_name)
    x, score = (make(shape, torch.float32, device, "channels_last") for _ in range(2))
    seeds = list(range(50, 50 + shape[0]))
    zero = torch.zeros_like(x)
    z = langevin_step(zero, zero, 0.5, seed=seeds, step=4)
    torch.testing.assert_close(z, randn(list(shape), seeds, 4, device=device), atol=1e-6, rtol=0)
    rows = split_rows(shape[0])
    torch.testing.assert_close(
        torch.cat([langevin_step(zero[r], zero[r], 0.5, seed=seeds[r], step=4) for r in rows]), z,
        atol=0, rtol=0)
    whole = langevin_step(x, score, 0.1, snr=0.2, norm="sample", seed=seeds, step=4)
    parts = [langevin_step(x[r], score[r], 0.1, snr=0.2, norm="sample", seed=seeds[r], step=4)
             for r in rows]
    assert_close(torch.cat(parts), whole, torch.float32)


def test_snr_step_size_by_hand(backend_name):
    """The corrector's e = 2 alpha (snr |z| / |score|)^2 with batch-averaged norms (score_sde)."""
    device = backend_device(backend_name)
    x, score = make((4, 50), torch.float32, device), make((4, 50), torch.float32, device, scale=3)
    z = randn([4, 50], 11, 2, device=device)
    alpha, snr = 0.9, 0.2
    e = 2 * alpha * (snr * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    _, mean = langevin_step(x, score, alpha, snr=snr, seed=11, step=2, return_mean=True)
    torch.testing.assert_close(mean, x + e * score, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- gradients

GRAD_SHAPE = (3, 2, 5, 4)
LANGEVIN_MODES = ("plain", "per_sample_size", "snr_batch", "snr_sample", "seed", "seeds_snr")


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("return_mean", [False, True])
@pytest.mark.parametrize("mode", LANGEVIN_MODES)
def test_langevin_step_gradients_match_reference(backend_name, mode, return_mean):
    device = backend_device(backend_name)
    batch = GRAD_SHAPE[0]
    leaves = [make(GRAD_SHAPE, torch.float32, device),
              make(GRAD_SHAPE, torch.float32, device, scale=3)]
    kwargs = {"return_mean": return_mean}
    names = []
    if mode.startswith("snr") or mode == "seeds_snr":
        kwargs["norm"] = "sample" if mode == "snr_sample" else "batch"
        leaves.append(per_sample(batch, device, 0.1, 0.2))
        names.append("snr")
    if mode in ("seed", "seeds_snr"):
        kwargs.update(seed=5 if mode == "seed" else list(range(batch)), step=9)
    else:
        leaves.append(make(GRAD_SHAPE, torch.float32, device))
        names.append("noise")
    if mode != "plain":
        leaves.append(per_sample(batch, device, 0.001, 0.1))
        names.append("step_size")

    def fn(x, score, *rest):
        named = dict(zip(names, rest))
        return langevin_step(x, score, named.pop("step_size", 0.01), **named, **kwargs)

    assert_grads_match_reference(backend_name, fn, leaves)


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("adaptive, per_sample_norm", [(False, False), (True, False),
                                                      (True, True)])
def test_gradcheck_reference_langevin_step(adaptive, per_sample_norm):
    table = f64(2, 3, low=0.05, high=0.2)

    def fn(x, score, table, noise):
        return reference.langevin_step(x, score, table, adaptive, per_sample_norm, noise, None, 0,
                                       True, upcast=torch.float64)

    assert torch.autograd.gradcheck(fn, (f64(3, 4), f64(3, 4), table, f64(3, 4)))


PUBLIC_OPS = {
    "langevin_step": lambda x, out, u, z: langevin_step(x, out, 0.05, noise=z, return_mean=True),
    "langevin_step_snr": lambda x, out, u, z: langevin_step(x, out, 0.05, snr=0.2, noise=z),
}


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_gradcheck_public_ops_on_the_reference_backend(op):
    """float64 through the public op on the reference backend (the coefficients floats)."""
    with backend("reference"):
        assert torch.autograd.gradcheck(PUBLIC_OPS[op], [f64(2, 3, 2) for _ in range(4)])


SECOND_ORDER = {
    "langevin_step": lambda x, o, c: langevin_step(x, o, c, noise=o),
    "langevin_step_snr": lambda x, o, c: langevin_step(x, o, c, snr=0.1, seed=3),
}


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("op", SECOND_ORDER)
def test_double_backward_matches_reference(backend_name, op):
    """create_graph=True: the backward is differentiable (fused lincombs, reference parts)."""
    assert_double_backward_matches_reference(backend_name, SECOND_ORDER[op])


# ---------------------------------------------------------------------------------- opcheck

X = torch.randn(2, 3, 5, 4)
SEEDS = torch.tensor([3], dtype=torch.int64)
OPCHECK_CASES = {
    "langevin_step": (X, X * 0.5, torch.rand(2, 2), True, False, None, SEEDS, 1, True),
}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    torch.library.opcheck(torch.ops.pydiffuse.langevin_step.default, OPCHECK_CASES[case])


@needs_triton
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_triton(case):
    opcheck_triton(triton_ops().langevin_step.default, on_triton_device(OPCHECK_CASES[case]))


def _opcheck_with_grad_cases():
    """Arguments with inputs that require grad."""
    def g(*shape):
        return torch.randn(*shape).requires_grad_()

    def positive(*shape):  # step sizes, snr
        return (torch.rand(*shape) + 0.05).requires_grad_()

    return {
        "langevin_step": (g(2, 3, 5, 4), g(2, 3, 5, 4), positive(2, 2), False, False,
                          g(2, 3, 5, 4), None, 1, True),
        "langevin_step_snr": (g(2, 3, 5, 4), g(2, 3, 5, 4), positive(2, 2), True, True, None,
                              SEEDS, 1, False),
    }


@NO_DROPPED_GRADIENTS
@needs_cpu_build
@pytest.mark.parametrize("case", _opcheck_with_grad_cases())
def test_opcheck_with_grad(case):
    args = _opcheck_with_grad_cases()[case]
    op = torch.ops.pydiffuse.langevin_step.default
    torch.library.opcheck(op, args)
    backward_reaches_every_input(op, args)


@NO_DROPPED_GRADIENTS
@needs_triton
@pytest.mark.parametrize("case", _opcheck_with_grad_cases())
def test_opcheck_with_grad_triton(case):
    """Under the interpreter only the schema and autograd-registration checks run."""
    op = triton_ops().langevin_step.default
    args = on_triton_device(_opcheck_with_grad_cases()[case])
    opcheck_triton(op, args)
    backward_reaches_every_input(op, args)
