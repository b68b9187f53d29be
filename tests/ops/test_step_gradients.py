"""Gradients through sample_step, lincomb and langevin_step (issue 13): on every backend, the
gradient of every tensor input (data, model outputs, noise and per-sample coefficients) equals
the reference backend's; gradcheck of the reference itself in float64; opcheck with inputs that
require grad; a compiled graph's gradients."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, backend, langevin_step, lincomb, reference, sample_step
from pydiffuse.ops._dispatch import unavailable_reason
from pydiffuse.ops._packing import NUM_STEP_COEFS
from tests.conftest import DEVICE, backend_device
from tests.ops.helpers import TOLERANCES, make, per_sample

# An op without an autograd formula warns and drops the gradient: here that is an error.
pytestmark = pytest.mark.filterwarnings("error:.*an autograd kernel was not registered")

SHAPE = (3, 2, 5, 4)


def _grads_on(name, fn, leaves):
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
    actual = _grads_on(backend_name, fn, leaves)
    expected = _grads_on("reference", fn, leaves)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **TOLERANCES[torch.float32], msg=f"leaf {i}: {{}}")


# ---------------------------------------------------------------------------------- sample_step

STEP_FEATURES = ("ddim", "per_sample", "cfg", "clip", "clip_boundary", "learned_var", "noise",
                 "seed", "seeds", "everything", "x0_only")


def _ddim(ab=0.6, ab_prev=0.8):
    """eps-DDIM (eta = 0): x0 = (x - sqrt(1 - ab) eps) / sqrt(ab), next = sqrt(ab') x0 +
    sqrt(1 - ab') eps with eps implied by x0."""
    r, rp = ab ** 0.5, ab_prev ** 0.5
    return {"cx": 1 / r, "co": -((1 - ab) ** 0.5) / r, "ex": 1 / (1 - ab) ** 0.5,
            "e0": -r / (1 - ab) ** 0.5, "m0": rp, "me": (1 - ab_prev) ** 0.5}


def _step_case(feature, device):
    """(leaves, fn(*leaves) -> the op's outputs) of one sample_step feature."""
    batch = SHAPE[0]
    x, out, noise = (make(SHAPE, torch.float32, device) for _ in range(3))
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
    out_shape = list(SHAPE)
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


@pytest.mark.parametrize("feature", STEP_FEATURES)
def test_sample_step_gradients_match_reference(backend_name, feature):
    """Through next and x0 (return_x0=True; x0_only: through x0 alone, ddim: next alone)."""
    leaves, fn = _step_case(feature, backend_device(backend_name))
    assert_grads_match_reference(backend_name, fn, leaves)


def test_sample_step_gradient_without_x0(backend_name):
    """return_x0=False, channels_last x: the gradients of x, out and noise are the reference's."""
    device = backend_device(backend_name)
    leaves = [make((2, 3, 4, 5), torch.float32, device, "channels_last") for _ in range(3)]

    def fn(x, out, noise):
        return sample_step(x, out, StepCoefs(cx=1.1, co=-0.4, m0=0.9, me=0.2, e0=0.3, s=0.5),
                           noise=noise)

    assert_grads_match_reference(backend_name, fn, leaves)


# ---------------------------------------------------------------------------------- lincomb


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_lincomb_gradients_match_reference(backend_name, count):
    """Per-sample coefficients (leaves) and floats alternate."""
    device = backend_device(backend_name)
    tensors = [make(SHAPE, torch.float32, device) for _ in range(count)]
    coefs = [per_sample(SHAPE[0], device) for i in range(count) if i % 2 == 0]

    def fn(*leaves):
        ts, cs = list(leaves[:count]), iter(leaves[count:])
        return lincomb(ts, [next(cs) if i % 2 == 0 else 0.5 - i for i in range(count)])

    assert_grads_match_reference(backend_name, fn, tensors + coefs)


def test_lincomb_gradient_of_a_coefficient_table(backend_name):
    """coefs as one [n, B] tensor: its gradient too."""
    device = backend_device(backend_name)
    leaves = [make(SHAPE, torch.float32, device) for _ in range(3)]
    leaves.append(torch.randn(3, SHAPE[0], device=device))
    assert_grads_match_reference(backend_name, lambda a, b, c, t: lincomb([a, b, c], t), leaves)


# ---------------------------------------------------------------------------------- langevin_step

LANGEVIN_MODES = ("plain", "per_sample_size", "snr_batch", "snr_sample", "seed", "seeds_snr")


@pytest.mark.parametrize("return_mean", [False, True])
@pytest.mark.parametrize("mode", LANGEVIN_MODES)
def test_langevin_step_gradients_match_reference(backend_name, mode, return_mean):
    device = backend_device(backend_name)
    batch = SHAPE[0]
    leaves = [make(SHAPE, torch.float32, device), make(SHAPE, torch.float32, device, scale=3)]
    kwargs = {"return_mean": return_mean}
    names = []
    if mode.startswith("snr") or mode == "seeds_snr":
        kwargs["norm"] = "sample" if mode == "snr_sample" else "batch"
        leaves.append(per_sample(batch, device, 0.1, 0.2))
        names.append("snr")
    if mode in ("seed", "seeds_snr"):
        kwargs.update(seed=5 if mode == "seed" else list(range(batch)), step=9)
    else:
        leaves.append(make(SHAPE, torch.float32, device))
        names.append("noise")
    if mode != "plain":
        leaves.append(per_sample(batch, device, 0.001, 0.1))
        names.append("step_size")

    def fn(x, score, *rest):
        named = dict(zip(names, rest))
        return langevin_step(x, score, named.pop("step_size", 0.01), **named, **kwargs)

    assert_grads_match_reference(backend_name, fn, leaves)


# ---------------------------------------------------------------------------------- gradcheck


def _f64(*shape, low=None, high=None):
    t = torch.randn(*shape, dtype=torch.float64)
    if low is not None:
        t = torch.rand(*shape, dtype=torch.float64) * (high - low) + low
    return t.requires_grad_()


@pytest.mark.parametrize("clip, learned_var, guided", [(False, False, False),
                                                      (True, False, True),
                                                      (False, True, True)])
def test_gradcheck_reference_sample_step(clip, learned_var, guided):
    """The reference op in float64 (upcast=float64), its coefficient table included."""
    out_shape = (2, 4, 3) if learned_var else (2, 2, 3)
    table = _f64(NUM_STEP_COEFS, 2, low=0.3, high=1.0)
    x, out, noise = _f64(2, 2, 3), _f64(*out_shape), _f64(2, 2, 3)
    uncond = _f64(*out_shape) if guided else None

    def fn(x, out, table, noise, *uncond):
        return reference.sample_step(x, out, uncond[0] if uncond else None, table, noise, None, 0,
                                     clip, learned_var, True, upcast=torch.float64)

    assert torch.autograd.gradcheck(fn, (x, out, table, noise) + ((uncond,) if guided else ()))


def test_gradcheck_reference_lincomb():
    tensors = [_f64(2, 3, 2) for _ in range(3)]
    table = _f64(3, 2)
    assert torch.autograd.gradcheck(
        lambda a, b, c, t: reference.lincomb([a, b, c], t, upcast=torch.float64),
        (*tensors, table))


@pytest.mark.parametrize("adaptive, per_sample_norm", [(False, False), (True, False),
                                                      (True, True)])
def test_gradcheck_reference_langevin_step(adaptive, per_sample_norm):
    table = _f64(2, 3, low=0.05, high=0.2)

    def fn(x, score, table, noise):
        return reference.langevin_step(x, score, table, adaptive, per_sample_norm, noise, None, 0,
                                       True, upcast=torch.float64)

    assert torch.autograd.gradcheck(fn, (_f64(3, 4), _f64(3, 4), table, _f64(3, 4)))


PUBLIC_OPS = {
    "sample_step": lambda x, out, u, z: sample_step(
        x, out, StepCoefs(cx=1.2, co=-0.6, ex=0.3, e0=0.4, m0=0.8, me=0.3, mx=0.1, s=0.5),
        out_uncond=u, guidance=2.0, clip=0.7, noise=z, return_x0=True),
    "sample_step_learned_var": lambda x, out, u, z: sample_step(
        x, torch.cat([out, u], dim=1), StepCoefs(cx=0.9, co=0.4, m0=1.0, s=0.5),
        learned_var=(-2.0, -1.0), noise=z),
    "lincomb": lambda x, out, u, z: lincomb([x, out, u, z], [0.5, -1.0, 2.0, 0.25]),
    "langevin_step": lambda x, out, u, z: langevin_step(x, out, 0.05, noise=z, return_mean=True),
    "langevin_step_snr": lambda x, out, u, z: langevin_step(x, out, 0.05, snr=0.2, noise=z),
}


@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_gradcheck_public_ops_on_the_reference_backend(op):
    """float64 through the public ops on the reference backend (the coefficients floats)."""
    with backend("reference"):
        assert torch.autograd.gradcheck(PUBLIC_OPS[op], [_f64(2, 3, 2) for _ in range(4)])


# ---------------------------------------------------------------------------------- opcheck

X = torch.randn(2, 3, 5, 4)


def _opcheck_cases():
    """(op name, args) with inputs that require grad."""
    def g(*shape):
        return torch.randn(*shape).requires_grad_()

    def positive(*shape):  # step sizes, snr
        return (torch.rand(*shape) + 0.05).requires_grad_()

    seeds = torch.tensor([3], dtype=torch.int64)
    return {
        "sample_step_linear": ("sample_step", (g(2, 3, 5, 4), g(2, 3, 5, 4), g(2, 3, 5, 4),
                                               g(12, 2), g(2, 3, 5, 4), None, 0, False, False,
                                               True)),
        "sample_step_clip_learned_var": ("sample_step", (g(2, 3, 5, 4), g(2, 6, 5, 4), None,
                                                         g(12, 2), None, seeds, 2, True, True,
                                                         True)),
        "lincomb": ("lincomb", ([g(2, 3, 5, 4), X * 2, g(2, 3, 5, 4)], g(3, 2))),
        "langevin_step": ("langevin_step", (g(2, 3, 5, 4), g(2, 3, 5, 4), positive(2, 2), False,
                                            False, g(2, 3, 5, 4), None, 1, True)),
        "langevin_step_snr": ("langevin_step", (g(2, 3, 5, 4), g(2, 3, 5, 4), positive(2, 2),
                                                True, True, None, seeds, 1, False)),
    }


def _backward_reaches_every_input(op, args):
    """The op's outputs backpropagate to each input that requires grad (the gradient values are
    the tests above)."""
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])
            if isinstance(t, torch.Tensor) and t.requires_grad]
    outs = op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum(o.sum() for o in outs if o.requires_grad)
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    assert all(g is not None and g.shape == t.shape for g, t in zip(grads, flat))


@pytest.mark.skipif(bool(unavailable_reason("cpu", "cpu")),
                    reason=unavailable_reason("cpu", "cpu") or "cpu available")
@pytest.mark.parametrize("case", _opcheck_cases())
def test_opcheck_with_grad(case):
    name, args = _opcheck_cases()[case]
    op = getattr(torch.ops.pydiffuse, name).default
    torch.library.opcheck(op, args)
    _backward_reaches_every_input(op, args)


TRITON_DEVICE = "cuda" if DEVICE.type == "cuda" else "cpu"


@pytest.mark.skipif(bool(unavailable_reason("triton", TRITON_DEVICE)),
                    reason=unavailable_reason("triton", TRITON_DEVICE) or "triton available")
@pytest.mark.parametrize("case", _opcheck_cases())
def test_opcheck_with_grad_triton(case):
    """Under the interpreter only the schema and autograd-registration checks run."""
    name, args = _opcheck_cases()[case]

    def moved(a):
        if isinstance(a, list):
            return [moved(t) for t in a]
        if isinstance(a, torch.Tensor):
            return a.detach().to(TRITON_DEVICE).requires_grad_(a.requires_grad)
        return a

    limited = {} if TRITON_DEVICE == "cuda" else {
        "test_utils": ("test_schema", "test_autograd_registration")}
    op, args = getattr(torch.ops.pydiffuse_triton, name).default, tuple(moved(a) for a in args)
    torch.library.opcheck(op, args, **limited)
    _backward_reaches_every_input(op, args)


# ---------------------------------------------------------------------------------- compile


def _loss(x, out, cx):
    """A sampler-like chain of every step op; cx a per-sample coefficient."""
    coefs = StepCoefs(cx=cx, co=-0.3, ex=0.2, e0=0.5, m0=0.9, me=0.4, s=0.1)
    nxt, x0 = sample_step(x, out, coefs, seed=7, step=1, return_x0=True)
    nxt = sample_step(nxt, out, StepCoefs(cx=1.0, co=0.5, m0=1.0), clip=0.8)
    y = lincomb([nxt, x0], [cx, 0.5])
    return (langevin_step(y, out, 0.01, snr=0.16, seed=7, step=2) ** 2).sum()


@pytest.mark.parametrize("backend_name", ["cpu"] + (["cuda", "triton"] if DEVICE.type == "cuda"
                                                     else []))
def test_fullgraph_compile_gradients(backend_name):
    device = backend_device("cpu" if backend_name == "cpu" else "cuda")
    leaves = [torch.randn(2, 3, 4, 4, device=device), torch.randn(2, 3, 4, 4, device=device),
              per_sample(2, device, 0.5, 1.5)]
    leaves = [t.requires_grad_() for t in leaves]
    with backend(backend_name):
        expected = torch.autograd.grad(_loss(*leaves), leaves)
        actual = torch.autograd.grad(torch.compile(_loss, fullgraph=True)(*leaves), leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOLERANCES[torch.float32])


# ---------------------------------------------------------------------------------- double backward

SECOND_ORDER = {
    "sample_step": lambda x, o, c: sample_step(
        x, o, StepCoefs(cx=c, co=0.5, m0=c, me=0.3, e0=0.2, s=0.4), noise=o, return_x0=True)[0],
    "sample_step_clip": lambda x, o, c: sample_step(x, o, StepCoefs(cx=c, co=0.5, m0=1.0),
                                                    clip=0.8),
    "lincomb": lambda x, o, c: lincomb([x, o], [c, 0.5]),
    "langevin_step": lambda x, o, c: langevin_step(x, o, c, noise=o),
    "langevin_step_snr": lambda x, o, c: langevin_step(x, o, c, snr=0.1, seed=3),
}


@pytest.mark.parametrize("op", SECOND_ORDER)
def test_double_backward_matches_reference(backend_name, op):
    """create_graph=True: the backward is differentiable (fused lincombs, reference parts)."""
    device = backend_device(backend_name)
    leaves = [make((2, 3, 4), torch.float32, device), make((2, 3, 4), torch.float32, device),
              per_sample(2, device, 0.5, 1.5)]

    def second_order(x, o, c):
        (gx,) = torch.autograd.grad((SECOND_ORDER[op](x, o, c) ** 2).sum(), x, create_graph=True)
        return gx

    assert_grads_match_reference(backend_name, second_order, leaves)
