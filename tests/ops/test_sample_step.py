"""sample_step on every backend against the pure-torch reference, on fresh random data; its
gradients against the reference's (issue 13), gradcheck of the reference in float64, and opcheck
of the pydiffuse:: and pydiffuse_triton:: ops."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, backend, randn, reference, sample_step
from pydiffuse.ops._packing import NUM_STEP_COEFS
from tests.conftest import backend_device
from tests.ops.helpers import (DTYPES, ELEMENT_SHAPES, LAYOUTS, NO_DROPPED_GRADIENTS, SHAPES,
                               assert_close, assert_double_backward_matches_reference,
                               assert_grads_match_reference, backward_reaches_every_input, f64,
                               make, needs_cpu_build, needs_triton, on_triton_device,
                               opcheck_triton, per_sample, reference_of, split_rows, triton_ops)

FEATURES = ("plain", "per_sample", "guided_clipped", "learned_var", "seed", "seeds", "everything")


def _case(feature, shape, dtype, device, layout):
    """(x, out, kwargs) for one feature combination of the step equation."""
    batch = shape[0]
    x = make(shape, dtype, device, layout)
    out_shape = list(shape)
    learned = feature in ("learned_var", "everything") and len(shape) >= 2
    if learned:
        out_shape[1] *= 2
    out = make(out_shape, dtype, device, layout)
    scalar = dict(cx=1.3, co=-0.7, ex=0.4, e0=-0.2, m0=0.9, me=0.35, mx=0.05, s=0.3)
    if feature in ("per_sample", "everything"):
        scalar = {k: per_sample(batch, device) for k in scalar}
    kwargs = dict(coefs=StepCoefs(**scalar), noise=make(shape, dtype, device, layout))
    if feature in ("guided_clipped", "everything"):
        kwargs.update(out_uncond=make(out_shape, dtype, device, layout), guidance=3.0, clip=0.5)
    if learned:
        kwargs["learned_var"] = (per_sample(batch, device, -6, -4), -3.0)
    if feature in ("seed", "seeds", "everything"):
        kwargs["noise"] = None
        kwargs["seed"] = 1234 if feature == "seed" else list(range(7, 7 + batch))
        kwargs["step"] = 17
    return x, out, kwargs


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_name, shape, dtype, layout, feature):
    _assert_matches_reference(*_case(feature, shape, dtype, backend_device(backend_name), layout))


def _assert_matches_reference(x, out, kwargs):
    nxt, x0 = sample_step(x, out, return_x0=True, **kwargs)
    ref_next, ref_x0 = reference_of(sample_step, x, out, return_x0=True, **kwargs)
    assert nxt.shape == x.shape and nxt.dtype == x.dtype and nxt.device == x.device
    assert_close(x0, ref_x0, x.dtype)
    assert_close(nxt, ref_next, x.dtype)


@pytest.mark.parametrize("feature", ("plain", "seed", "everything"))
@pytest.mark.parametrize("shape", ELEMENT_SHAPES, ids=str)
def test_blocks_across_samples_match_reference(backend_name, shape, feature):
    """Blocks of elements that span many samples: each element takes its own sample's
    coefficients, seed and variance channel."""
    device = backend_device(backend_name)
    _assert_matches_reference(*_case(feature, shape, torch.float32, device, "channels_last"))


@pytest.mark.parametrize("shape", ELEMENT_SHAPES, ids=str)
def test_blocks_across_samples_draw_each_sample_its_noise(backend_name, shape):
    """next = z (s = 1, the rest 0) is the stream randn draws, and a batch's z is its rows' z
    stepped apart (per-sample seeds)."""
    device = backend_device(backend_name)
    x = make(shape, torch.float32, device, "channels_last")
    seeds = list(range(50, 50 + shape[0]))
    z = sample_step(x, x, StepCoefs(s=1.0), seed=seeds, step=4)
    torch.testing.assert_close(z, randn(list(shape), seeds, 4, device=device), atol=1e-6, rtol=0)
    parts = [sample_step(x[r], x[r], StepCoefs(s=1.0), seed=seeds[r], step=4)
             for r in split_rows(shape[0])]
    torch.testing.assert_close(torch.cat(parts), z, atol=0, rtol=0)


def test_output_keeps_channels_last(backend_name):
    device = backend_device(backend_name)
    x = make((2, 3, 4, 5), torch.float32, device, "channels_last")
    nxt = sample_step(x, x.clone(), StepCoefs(cx=1.0, mx=1.0))
    assert nxt.is_contiguous(memory_format=torch.channels_last)


def test_seeded_step_equals_step_with_the_stream(backend_name):
    """A fused step with seed=s equals the step with noise=randn(x.shape, s, step)."""
    device = backend_device(backend_name)
    x = make((3, 2, 9, 11), torch.float32, device, "channels_last")
    out = make((3, 2, 9, 11), torch.float32, device)
    coefs = StepCoefs(co=1.0, m0=0.8, me=0.5, s=0.7)
    fused = sample_step(x, out, coefs, seed=[3, 1, 4], step=5)
    z = randn(list(x.shape), [3, 1, 4], 5, device=device)
    unfused = sample_step(x, out, coefs, noise=z.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fused, unfused, atol=1e-6, rtol=1e-6)


def test_ddpm_posterior_step_by_hand(backend_name):
    """The packed coefficients mean what the formula says: a DDPM eps-step computed by hand."""
    device = backend_device(backend_name)
    abar_t, abar_prev = 0.5, 0.6
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    x, eps, z = (make((2, 33), torch.float32, device) for _ in range(3))
    coefs = StepCoefs(cx=abar_t ** -0.5, co=-((1 - abar_t) / abar_t) ** 0.5,
                      m0=abar_prev ** 0.5 * beta / (1 - abar_t),
                      mx=alpha ** 0.5 * (1 - abar_prev) / (1 - abar_t),
                      s=(beta * (1 - abar_prev) / (1 - abar_t)) ** 0.5)
    x0 = (x - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5
    expected = coefs.m0 * x0 + coefs.mx * x + coefs.s * z
    torch.testing.assert_close(sample_step(x, eps, coefs, noise=z), expected, atol=1e-5, rtol=1e-5)


def test_empty_batch(backend_name):
    device = backend_device(backend_name)
    x = torch.empty(0, 3, device=device)
    assert sample_step(x, x, StepCoefs(cx=1.0)).shape == (0, 3)


# ---------------------------------------------------------------------------------- gradients

STEP_FEATURES = ("ddim", "per_sample", "cfg", "clip", "clip_boundary", "learned_var", "noise",
                 "seed", "seeds", "everything", "x0_only")
GRAD_SHAPE = (3, 2, 5, 4)


def _ddim(ab=0.6, ab_prev=0.8):
    """eps-DDIM (eta = 0): x0 = (x - sqrt(1 - ab) eps) / sqrt(ab), next = sqrt(ab') x0 +
    sqrt(1 - ab') eps with eps implied by x0."""
    r, rp = ab ** 0.5, ab_prev ** 0.5
    return {"cx": 1 / r, "co": -((1 - ab) ** 0.5) / r, "ex": 1 / (1 - ab) ** 0.5,
            "e0": -r / (1 - ab) ** 0.5, "m0": rp, "me": (1 - ab_prev) ** 0.5}


def _step_case(feature, device):
    """(leaves, fn(*leaves) -> the op's outputs) of one sample_step feature."""
    batch = GRAD_SHAPE[0]
    x, out, noise = (make(GRAD_SHAPE, torch.float32, device) for _ in range(3))
    leaves = [x, out]
    if feature in ("ddim", "x0_only"):
        return leaves, lambda x, out: sample_step(
            x, out, StepCoefs(**_ddim()), return_x0=True)[1 if feature == "x0_only" else 0]
    names = ("cx", "co", "ex", "e0", "m0", "me", "mx", "s")
    coefs = dict(zip(names, (1.3, -0.7, 0.4, -0.2, 0.9, 0.35, 0.05, 0.3)))
    coef_leaves = []
    if feature in ("per_sample", "everything"):
        coef_leaves = list(names)
        leaves += [per_sample(batch, device) for _ in names]
    kw_leaves = []  # keyword arguments that are leaves
    extra = {}
    out_shape = list(GRAD_SHAPE)
    if feature in ("learned_var", "everything"):
        out_shape[1] *= 2
        leaves[1] = make(out_shape, torch.float32, device)
        leaves.append(per_sample(batch, device, -6, -4))
        kw_leaves.append("log_lo")
        extra["learned_var"] = (None, -3.0)
    if feature in ("cfg", "everything"):
        leaves += [make(out_shape, torch.float32, device), per_sample(batch, device, 1, 4)]
        kw_leaves += ["out_uncond", "guidance"]
    if feature in ("clip", "everything"):
        leaves.append(per_sample(batch, device, 0.3, 0.6))  # most |x0| are beyond it
        kw_leaves.append("clip")
    if feature == "clip_boundary":  # x0 = x exactly, some of it on the boundary +-0.5
        leaves[0] = torch.where(x > 1, 0.5, torch.where(x < -1, -0.5, x))
        coefs.update(cx=1.0, co=0.0)
        extra["clip"] = 0.5
    if feature in ("seed", "seeds", "everything"):
        extra.update(seed=123 if feature == "seed" else list(range(5, 5 + batch)), step=4)
    else:
        leaves.append(noise)
        kw_leaves.append("noise")

    def fn(x, out, *rest):
        step_coefs = dict(coefs, **dict(zip(coef_leaves, rest)))
        kwargs = dict(extra, **dict(zip(kw_leaves, rest[len(coef_leaves):])))
        if "log_lo" in kwargs:
            kwargs["learned_var"] = (kwargs.pop("log_lo"), extra["learned_var"][1])
        return sample_step(x, out, StepCoefs(**step_coefs), return_x0=True, **kwargs)

    return leaves, fn


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("feature", STEP_FEATURES)
def test_sample_step_gradients_match_reference(backend_name, feature):
    """Through next and x0 (return_x0=True; x0_only: through x0 alone, ddim: next alone)."""
    leaves, fn = _step_case(feature, backend_device(backend_name))
    assert_grads_match_reference(backend_name, fn, leaves)


@NO_DROPPED_GRADIENTS
def test_sample_step_gradient_without_x0(backend_name):
    """return_x0=False, channels_last x: the gradients of x, out and noise are the reference's."""
    device = backend_device(backend_name)
    leaves = [make((2, 3, 4, 5), torch.float32, device, "channels_last") for _ in range(3)]

    def fn(x, out, noise):
        return sample_step(x, out, StepCoefs(cx=1.1, co=-0.4, m0=0.9, me=0.2, e0=0.3, s=0.5),
                           noise=noise)

    assert_grads_match_reference(backend_name, fn, leaves)


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("clip, learned_var, guided", [(False, False, False),
                                                      (True, False, True),
                                                      (False, True, True)])
def test_gradcheck_reference_sample_step(clip, learned_var, guided):
    """The reference op in float64 (upcast=float64), its coefficient table included."""
    out_shape = (2, 4, 3) if learned_var else (2, 2, 3)
    table = f64(NUM_STEP_COEFS, 2, low=0.3, high=1.0)
    x, out, noise = f64(2, 2, 3), f64(*out_shape), f64(2, 2, 3)
    uncond = f64(*out_shape) if guided else None

    def fn(x, out, table, noise, *uncond):
        return reference.sample_step(x, out, uncond[0] if uncond else None, table, noise, None, 0,
                                     clip, learned_var, True, upcast=torch.float64)

    assert torch.autograd.gradcheck(fn, (x, out, table, noise) + ((uncond,) if guided else ()))


PUBLIC_OPS = {
    "sample_step": lambda x, out, u, z: sample_step(
        x, out, StepCoefs(cx=1.2, co=-0.6, ex=0.3, e0=0.4, m0=0.8, me=0.3, mx=0.1, s=0.5),
        out_uncond=u, guidance=2.0, clip=0.7, noise=z, return_x0=True),
    "sample_step_learned_var": lambda x, out, u, z: sample_step(
        x, torch.cat([out, u], dim=1), StepCoefs(cx=0.9, co=0.4, m0=1.0, s=0.5),
        learned_var=(-2.0, -1.0), noise=z),
}


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_gradcheck_public_ops_on_the_reference_backend(op):
    """float64 through the public op on the reference backend (the coefficients floats)."""
    with backend("reference"):
        assert torch.autograd.gradcheck(PUBLIC_OPS[op], [f64(2, 3, 2) for _ in range(4)])


SECOND_ORDER = {
    "sample_step": lambda x, o, c: sample_step(
        x, o, StepCoefs(cx=c, co=0.5, m0=c, me=0.3, e0=0.2, s=0.4), noise=o, return_x0=True)[0],
    "sample_step_clip": lambda x, o, c: sample_step(x, o, StepCoefs(cx=c, co=0.5, m0=1.0),
                                                    clip=0.8),
}


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("op", SECOND_ORDER)
def test_double_backward_matches_reference(backend_name, op):
    """create_graph=True: the backward is differentiable (fused lincombs, reference parts)."""
    assert_double_backward_matches_reference(backend_name, SECOND_ORDER[op])


# ---------------------------------------------------------------------------------- opcheck

X = torch.randn(2, 3, 5, 4)
TABLE = torch.rand(12, 2)
SEEDS = torch.tensor([3], dtype=torch.int64)
OPCHECK_CASES = {
    "sample_step": (X, X.clone(), None, TABLE, None, SEEDS, 2, True, False, True),
    "sample_step_learned_var": (X, torch.randn(2, 6, 5, 4), torch.randn(2, 6, 5, 4), TABLE,
                                torch.randn(2, 3, 5, 4), None, 0, False, True, False),
}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    torch.library.opcheck(torch.ops.pydiffuse.sample_step.default, OPCHECK_CASES[case])


@needs_triton
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_triton(case):
    opcheck_triton(triton_ops().sample_step.default, on_triton_device(OPCHECK_CASES[case]))


def _g(*shape):
    return torch.randn(*shape).requires_grad_()


def _opcheck_with_grad_cases():
    """Arguments with inputs that require grad."""
    return {
        "sample_step_linear": (_g(2, 3, 5, 4), _g(2, 3, 5, 4), _g(2, 3, 5, 4), _g(12, 2),
                               _g(2, 3, 5, 4), None, 0, False, False, True),
        "sample_step_clip_learned_var": (_g(2, 3, 5, 4), _g(2, 6, 5, 4), None, _g(12, 2), None,
                                         SEEDS, 2, True, True, True),
    }


@NO_DROPPED_GRADIENTS
@needs_cpu_build
@pytest.mark.parametrize("case", _opcheck_with_grad_cases())
def test_opcheck_with_grad(case):
    args = _opcheck_with_grad_cases()[case]
    op = torch.ops.pydiffuse.sample_step.default
    torch.library.opcheck(op, args)
    backward_reaches_every_input(op, args)


@NO_DROPPED_GRADIENTS
@needs_triton
@pytest.mark.parametrize("case", _opcheck_with_grad_cases())
def test_opcheck_with_grad_triton(case):
    """Under the interpreter only the schema and autograd-registration checks run."""
    op, args = triton_ops().sample_step.default, on_triton_device(_opcheck_with_grad_cases()[case])
    opcheck_triton(op, args)
    backward_reaches_every_input(op, args)
