"""group_norm on every backend against the reference: forward, the five gradients, the backward
op itself, large-mean statistics, layouts, bad input, opcheck and gradcheck."""

import contextlib

import pytest
import torch

from pydiffuse.ops import _dispatch, backend, group_norm, reference
from pydiffuse.ops._dispatch import unavailable_reason
from tests.conftest import DEVICE, backend_device
from tests.ops.helpers import DTYPES, TOLERANCES, on_triton_device, opcheck_triton, triton_ops

# (shape, groups): 0-3 spatial dims, odd sizes, batch 1, G = C (groups of one channel), G = 1,
# a spatial size past one 2048-element block, rows of a group that split unevenly into
# 2048-element blocks (3 rows of 600, then 1), and a UNet-sized case.
CASES = (
    ((2, 12), 3),
    ((2, 8, 20, 30), 2),
    ((3, 4, 97), 2),
    ((2, 8, 5, 7), 4),
    ((1, 6, 7, 9), 6),
    ((2, 5, 3, 11), 1),
    ((2, 4, 3, 5, 7), 2),
    ((1, 4, 50, 50), 2),
    ((2, 64, 24, 24), 32),
)
LAYOUTS = ("contiguous", "channels_last", "strided")
# The Triton interpreter runs a program at a time: keep its inputs small.
INTERPRETED_MAX = 12_000
MODES = ("plain", "affine", "affine_silu", "adagn", "adagn_silu", "shift_only")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _skip_slow(backend_name, shape):
    if backend_name == "triton" and DEVICE.type == "cpu" and torch.Size(shape).numel() > \
            INTERPRETED_MAX:
        pytest.skip("large for the Triton interpreter")


def _data(shape, dtype, device, layout="contiguous", scale=1.0, offset=0.0):
    t = (torch.randn(shape) * scale + offset).to(device=device, dtype=dtype)
    if layout == "channels_last" and t.ndim in (4, 5):
        return t.to(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)
    if layout == "strided":
        return torch.cat([t, t], dim=-1)[..., ::2]
    return t


def _params(mode, shape, dtype, device):
    """weight, bias [C]; scale, shift [B, C] (shift a non-contiguous half of a [B, 2C] tensor)."""
    batch, channels = shape[:2]
    kw = {}
    if mode in ("affine", "affine_silu", "adagn", "adagn_silu"):
        kw["weight"] = _data([channels], dtype, device) * 0.5 + 1
        kw["bias"] = _data([channels], dtype, device)
    if mode in ("adagn", "adagn_silu", "shift_only"):
        scale, shift = _data([batch, 2 * channels], dtype, device).chunk(2, dim=1)
        kw["shift"] = shift
        if mode != "shift_only":
            kw["scale"] = scale * 0.5
    if mode.endswith("silu"):
        kw["act"] = "silu"
    return kw


def _ref(x, groups, kw, upcast=torch.float32):
    """The reference forward on float32 (or ``upcast``) copies."""
    def up(t):
        return None if t is None else t.to(upcast)
    return reference.group_norm(up(x), groups, up(kw.get("weight")), up(kw.get("bias")),
                                up(kw.get("scale")), up(kw.get("shift")), 1e-5,
                                kw.get("act") == "silu", upcast=upcast)


def _close(actual, expected, dtype, scale=1.0):
    """Per-dtype tolerance; ``scale``: the size of the terms behind a reduced value."""
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(),
                               atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", CASES)
def test_forward_matches_reference(backend_name, shape, groups, dtype, layout):
    _skip_slow(backend_name, shape)
    device = backend_device(backend_name)
    x = _data(shape, dtype, device, layout)
    kw = _params("adagn_silu", shape, dtype, device)
    y = group_norm(x, groups, **kw)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    if backend_name != "reference" and layout == "channels_last" and x.ndim in (4, 5):
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=fmt)
    _close(y, _ref(x, groups, kw)[0], dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, groups", [((2, 8, 5, 7), 4), ((3, 6), 2)])
def test_forward_modes(backend_name, shape, groups, mode):
    device = backend_device(backend_name)
    x = _data(shape, torch.float32, device)
    kw = _params(mode, shape, torch.float32, device)
    _close(group_norm(x, groups, **kw), _ref(x, groups, kw)[0], torch.float32)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("shape, groups", [((2, 8, 5, 7), 4), ((2, 16, 64, 40), 4),
                                           ((1, 6, 3, 4, 5), 3)])
def test_statistics(backend_name, shape, groups, layout):
    """mean and rstd [B, G] float32 outputs of the op itself."""
    _skip_slow(backend_name, shape)
    device = backend_device(backend_name)
    x = _data(shape, torch.float32, device, layout, scale=2.0, offset=0.5)
    op = _dispatch.implementation("group_norm", device)
    _, mean, rstd = op(x, groups, None, None, None, None, 1e-5, False)
    _, ref_mean, ref_rstd = _ref(x, groups, {}, upcast=torch.float64)
    assert mean.shape == rstd.shape == (shape[0], groups) and mean.dtype == torch.float32
    torch.testing.assert_close(mean.cpu(), ref_mean.cpu(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rstd.cpu(), ref_rstd.cpu(), atol=0, rtol=1e-5)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_large_mean(backend_name, layout):
    """Mean 1e4, std 1 in float32: E[x^2] - E[x]^2 in float32 would lose every digit of the
    variance (errors of order 1 in y); the statistics must not. A kernel that subtracts the
    float32 mean (within an ulp of 1e4, ~1e-3) is off by up to |a| ulp in y (SiLU' <= 1.1), with
    a = rstd weight (1 + scale); the CPU kernel carries the mean's float64 remainder."""
    device = backend_device(backend_name)
    shape = (2, 8, 16, 16)
    x = _data(shape, torch.float32, device, layout, offset=1e4)
    kw = _params("adagn_silu", shape, torch.float32, device)
    op = _dispatch.implementation("group_norm", device)
    y, mean, rstd = op(x, 4, kw["weight"], kw["bias"], kw["scale"], kw["shift"], 1e-5, True)
    ref_y, ref_mean, ref_rstd = _ref(x, 4, kw, upcast=torch.float64)
    torch.testing.assert_close(mean.cpu(), ref_mean.cpu(), atol=0, rtol=1e-7)
    torch.testing.assert_close(rstd.cpu(), ref_rstd.cpu(), atol=0, rtol=1e-4)
    gain = (kw["weight"] * (1 + kw["scale"])).abs().max().item() * ref_rstd.max().item()
    ulp = 2.0 ** -10  # float32 spacing at 1e4
    atol = 1e-4 if backend_name == "cpu" else 1.1 * gain * ulp + 1e-4
    torch.testing.assert_close(y.cpu(), ref_y.float().cpu(), atol=atol, rtol=0)


def _grads(x, groups, kw, grad_y, on_reference):
    """(y, gradients of x and each given parameter) by autograd through group_norm."""
    names = [n for n in ("weight", "bias", "scale", "shift") if n in kw]
    cast = (lambda t: t.detach().float()) if on_reference else (lambda t: t.detach())
    leaves = [cast(x).requires_grad_()] + [cast(kw[n]).requires_grad_() for n in names]
    args = dict(kw, **dict(zip(names, leaves[1:])))
    with backend("reference") if on_reference else contextlib.nullcontext():
        y = group_norm(leaves[0], groups, **args)
    return y, torch.autograd.grad(y, leaves, cast(grad_y))


def _check_grads(backend_name, shape, groups, dtype, layout, mode):
    device = backend_device(backend_name)
    x = _data(shape, dtype, device, layout)
    kw = _params(mode, shape, dtype, device)
    grad_y = _data(shape, dtype, device, layout)
    y, grads = _grads(x, groups, kw, grad_y, on_reference=False)
    ref_y, ref_grads = _grads(x, groups, kw, grad_y, on_reference=True)
    _close(y, ref_y, dtype)
    inputs = [x] + [kw[n] for n in ("weight", "bias", "scale", "shift") if n in kw]
    for g, ref, t in zip(grads, ref_grads, inputs):
        assert g.shape == t.shape and g.dtype == t.dtype
        _close(g, ref, dtype, scale=max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", CASES)
def test_gradients_match_reference(backend_name, shape, groups, dtype, layout):
    _skip_slow(backend_name, shape)
    _check_grads(backend_name, shape, groups, dtype, layout, "adagn_silu")


@pytest.mark.parametrize("mode", MODES)
def test_gradients_modes(backend_name, mode):
    _check_grads(backend_name, (2, 8, 5, 7), 4, torch.float32, "contiguous", mode)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_float32_parameters_with_half_data(backend_name, dtype):
    """Mixed precision: half activations, float32 parameters; gradients in each one's dtype."""
    device = backend_device(backend_name)
    shape = (2, 8, 6, 5)
    x = _data(shape, dtype, device)
    kw = _params("adagn_silu", shape, torch.float32, device)
    y, grads = _grads(x, 4, kw, _data(shape, dtype, device), on_reference=False)
    assert y.dtype == dtype and grads[0].dtype == dtype
    assert all(g.dtype == torch.float32 for g in grads[1:])
    _close(y, _ref(x, 4, kw)[0], dtype)


@pytest.mark.parametrize("silu", (False, True))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_backward_op(backend_name, layout, silu):
    """The backend's group_norm_backward against reference.group_norm_backward, given the same
    saved mean and rstd; absent parameters get empty gradients."""
    device = backend_device(backend_name)
    shape = (3, 6, 7, 5)
    x, grad_y = _data(shape, torch.float32, device, layout), _data(shape, torch.float32, device)
    ns = torch.ops.pydiffuse_triton if backend_name == "triton" else torch.ops.pydiffuse
    forward = _dispatch.implementation("group_norm", device)
    backward = (reference.group_norm_backward if backend_name == "reference"
                else ns.group_norm_backward)
    for mode in ("plain", "adagn_silu" if silu else "adagn"):
        kw = _params(mode, shape, torch.float32, device)
        params = [kw.get(n) for n in ("weight", "bias", "scale", "shift")]
        _, mean, rstd = forward(x, 3, *params, 1e-5, silu)
        grads = backward(grad_y, x, mean, rstd, 3, *params, silu)
        expected = reference.group_norm_backward(grad_y, x, mean, rstd, 3, *params, silu)
        assert len(grads) == 5
        for g, ref, p in zip(grads, expected, [x] + params):
            if p is None:
                assert g.numel() == 0
            else:
                _close(g, ref, torch.float32, scale=max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_deterministic_over_thread_counts(backend_name, layout):
    """Partial sums reduce in an order fixed by the shape: 1 and 2 threads agree bit for bit.
    5 units (groups in C-order, samples in channels-last) run fused one unit per task on one
    thread, phase by phase on two (csrc/cpu/group_norm.cpp)."""
    if backend_name != "cpu":
        pytest.skip("a property of the CPU kernels")
    x = _data((5, 16, 30, 25), torch.float32, "cpu", layout)
    kw = _params("adagn_silu", x.shape, torch.float32, "cpu")
    grad_y = torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_grads(x, 1, kw, grad_y, on_reference=False))
    finally:
        torch.set_num_threads(threads)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("shape, groups", [((16, 32, 4, 4), 8), ((2, 8, 48, 48), 2),
                                           ((3, 8, 5, 6), 4)])
def test_groups_of_very_different_magnitudes(backend_name, shape, groups, layout, threads):
    """Each (sample, group) at its own scale, 1e-3 to 1e3, and mean: no statistic or buffer of
    one group may leak into the next one a task or program handles (issue 13's attention bug,
    looked for here too). Forward and input gradient against the float64 reference, relative
    to each group's own size; at 1 and 2 threads (both of the CPU kernel's task plans)."""
    _skip_slow(backend_name, shape)
    device = backend_device(backend_name)
    batch, channels = shape[:2]
    g = torch.Generator().manual_seed(5)
    per_group = 10.0 ** (torch.rand(batch, groups, generator=g, dtype=torch.float64) * 6 - 3)
    size = per_group.repeat_interleave(channels // groups, 1).reshape(batch, channels, 1, 1)
    x64 = (torch.randn(shape, generator=g, dtype=torch.float64) + 3 * torch.randn(
        batch, channels, 1, 1, generator=g, dtype=torch.float64)) * size
    grad_y = torch.randn(shape, generator=g, dtype=torch.float64)
    kw = _params("adagn_silu", shape, torch.float64, "cpu")
    leaf = x64.clone().requires_grad_()
    with backend("reference"):
        y_ref = group_norm(leaf, groups, **kw)
    (dx_ref,) = torch.autograd.grad(y_ref, leaf, grad_y)
    x = _data(shape, torch.float32, device, layout, scale=0.0)
    x.copy_(x64)
    x.requires_grad_()
    kw32 = {k: v if isinstance(v, str) else v.float().to(device) for k, v in kw.items()}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = group_norm(x, groups, **kw32)
        (dx,) = torch.autograd.grad(y, x, grad_y.float().to(device))
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(y.double().cpu(), y_ref.detach(), atol=2e-4, rtol=2e-4)
    # dx scales as 1 / size: compare it in each group's own units
    torch.testing.assert_close((dx.double().cpu() * size), dx_ref * size, atol=2e-4, rtol=2e-3)


@pytest.mark.filterwarnings("ignore:var\\(\\). degrees of freedom")
def test_empty_batch(backend_name):
    device = backend_device(backend_name)
    x = torch.zeros(0, 4, 3, 3, device=device)
    assert group_norm(x, 2, act="silu").shape == x.shape


def test_gradcheck_reference():
    """The reference forward and its closed-form backward in float64: autograd of the one is the
    other (gradcheck runs the forward; the backward formula is checked against autograd)."""
    torch.manual_seed(0)
    shape, groups = (2, 4, 3, 5), 2
    leaves = [torch.randn(shape, dtype=torch.float64, requires_grad=True)]
    leaves += [torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    leaves += [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]

    def fn(x, w, b, s, sh):
        return group_norm(x, groups, w, b, scale=s, shift=sh, act="silu")

    with backend("reference"):
        assert torch.autograd.gradcheck(fn, leaves)
        y = fn(*leaves)
    grad_y = torch.randn_like(y)
    auto = torch.autograd.grad(y, leaves, grad_y)
    x, w, b, s, sh = (t.detach() for t in leaves)
    _, mean, rstd = reference.group_norm(x, groups, w, b, s, sh, 1e-5, True, upcast=torch.float64)
    closed = reference.group_norm_backward(grad_y, x, mean, rstd, groups, w, b, s, sh, True,
                                           upcast=torch.float64)
    for a, c in zip(auto, closed):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)  # mean, rstd saved as float32


X = torch.randn(2, 6, 5, 4)
W, S = torch.randn(6), torch.randn(2, 6)
OPCHECK_CASES = {
    "plain": (X, 3, None, None, None, None, 1e-5, False),
    "adagn_silu": (X, 3, W, W * 0.5, S, S * 2, 1e-5, True),
    "channels_last": (X.to(memory_format=torch.channels_last), 2, W, None, None, S, 1e-5, True),
    "no_spatial": (torch.randn(3, 6), 6, W, W, None, None, 1e-3, False),
}


def _backward_args(args):
    x, groups, w, b, s, sh, eps, silu = args
    _, mean, rstd = reference.group_norm(x, groups, w, b, s, sh, eps, silu)
    return (torch.randn_like(x), x, mean, rstd, groups, w, b, s, sh, silu)


@pytest.mark.skipif(bool(unavailable_reason("cpu", "cpu")), reason="pydiffuse._C not built")
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    args = OPCHECK_CASES[case]
    torch.library.opcheck(torch.ops.pydiffuse.group_norm.default, args)
    torch.library.opcheck(torch.ops.pydiffuse.group_norm_backward.default, _backward_args(args))


TRITON_DEVICE = "cuda" if DEVICE.type == "cuda" else "cpu"


@pytest.mark.skipif(bool(unavailable_reason("triton", TRITON_DEVICE)),
                    reason=unavailable_reason("triton", TRITON_DEVICE) or "triton available")
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_triton(case):
    """Under the interpreter only the schema and autograd checks run (tests/ops/helpers.py)."""
    ops = triton_ops()
    opcheck_triton(ops.group_norm.default, on_triton_device(OPCHECK_CASES[case]))
    opcheck_triton(ops.group_norm_backward.default,
                   on_triton_device(_backward_args(OPCHECK_CASES[case])))


@pytest.mark.skipif(bool(unavailable_reason("cpu", "cpu")), reason="pydiffuse._C not built")
def test_fullgraph_compile_forward_backward():
    def fn(x, w, b, s, sh):
        return group_norm(x, 4, w, b, scale=s, shift=sh, act="silu").square().sum()

    torch.manual_seed(0)
    leaves = [torch.randn(2, 8, 6, 5), torch.randn(8), torch.randn(8), torch.randn(2, 8),
              torch.randn(2, 8)]
    leaves = [t.requires_grad_() for t in leaves]
    with backend("cpu"):
        expected = torch.autograd.grad(fn(*leaves), leaves)
        compiled = torch.compile(fn, fullgraph=True)
        actual = torch.autograd.grad(compiled(*leaves), leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


G = torch.zeros(2, 6, 3, 3)
C6 = torch.zeros(6)


@pytest.mark.parametrize("call, error, match", [
    (lambda: group_norm(G.numpy(), 3), TypeError, "x must be a torch.Tensor"),
    (lambda: group_norm(G.long(), 3), TypeError, "x must be float32"),
    (lambda: group_norm(torch.zeros(6), 3), ValueError, "x must be"),
    (lambda: group_norm(G, 4), ValueError, "num_groups must be a positive divisor of the 6"),
    (lambda: group_norm(G, 0), ValueError, "num_groups"),
    (lambda: group_norm(G, 3.0), TypeError, "num_groups must be an int"),
    (lambda: group_norm(G, 3, torch.zeros(5)), ValueError, r"weight must be \[C\]"),
    (lambda: group_norm(G, 3, C6, torch.zeros(2, 6)), ValueError, r"bias must be \[C\]"),
    (lambda: group_norm(G, 3, scale=C6), ValueError, r"scale must be \[B, C\]"),
    (lambda: group_norm(G, 3, shift=torch.zeros(3, 6)), ValueError, r"shift must be \[B, C\]"),
    (lambda: group_norm(G, 3, C6.double()), TypeError, "weight has dtype torch.float64"),
    (lambda: group_norm(G.half(), 3, bias=C6.bfloat16()), TypeError, "bias has dtype"),
    (lambda: group_norm(G, 3, [1.0] * 6), TypeError, "weight must be a torch.Tensor"),
    (lambda: group_norm(G, 3, act="relu"), ValueError, "act must be None or 'silu'"),
    (lambda: group_norm(G, 3, eps=-1.0), ValueError, "eps must be finite"),
    (lambda: group_norm(G, 3, eps="1e-5"), TypeError, "eps must be a float"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_device_mismatch():
    with pytest.raises(ValueError, match="weight is on meta"):
        group_norm(G, 3, C6.to("meta"))


def test_silu_relative_error_on_the_cpu_kernel():
    """The cpu kernel's SiLU (cpu/vec_math.h: a polynomial exp and a divide) against float64 SiLU
    of the kernel's own pre-activation z (act=None): within 4e-7 relative for z in [-60, 60]
    (measured: 2.7e-7), tails and the clamped range included."""
    if unavailable_reason("cpu", "cpu"):
        pytest.skip(unavailable_reason("cpu", "cpu"))
    x = torch.randn(4, 64, 32, 32)
    weight, bias = torch.full((64,), 10.0), torch.linspace(-20, 20, 64)
    with backend("cpu"):
        y = group_norm(x, 8, weight, bias, act="silu").double()
        z = group_norm(x, 8, weight, bias).double()
    expected = torch.nn.functional.silu(z)
    assert z.min() < -50 and z.max() > 50
    assert ((y - expected).abs() / expected.abs()).max() < 4e-7
