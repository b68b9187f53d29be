"""float64 on the default backend of the device (issue 17, item 5): the compiled kernels compute
in float32, so float64 data run the ops' reference path there, with the coefficient tables in
float64 (``compute_dtype``): every op equals float64 arithmetic to float64 rounding, and its
gradients pass ``torch.autograd.gradcheck``. A forced compiled backend refuses float64, naming
the dtype."""

import math

import pytest
import torch

from pydiffuse import ops
from pydiffuse.ops import StepCoefs, backend, compute_dtype
from pydiffuse.ops._dispatch import unavailable_reason
from tests.conftest import DEVICE

F64 = dict(dtype=torch.float64, device=DEVICE)
# coefficients no float32 holds: a float32 table is off by ~1e-8 relative
THIRD, SEVENTH, ROOT2 = 1 / 3, 1 / 7, math.sqrt(2)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).to(DEVICE)


def test_float64_runs_on_the_reference_backend_by_default():
    assert ops.current_backend(DEVICE, torch.float64) == "reference"
    assert ops.current_backend(DEVICE, torch.float32) == ops.current_backend(DEVICE)
    # a caller with its own unfused path (compat.diffusers.fuse) is told the kernels lack it
    if ops.current_backend(DEVICE) != "reference":
        assert "float64" in ops.unsupported_reason(DEVICE, torch.float64)
    assert compute_dtype(torch.float64) == torch.float64
    assert all(compute_dtype(d) == torch.float32
               for d in (torch.float32, torch.float16, torch.bfloat16))


def test_sample_step_is_float64_exact():
    x, out, uncond = rand(4, 3, 5, seed=1), rand(4, 3, 5, seed=2), rand(4, 3, 5, seed=3)
    per_sample = torch.tensor([THIRD, SEVENTH, ROOT2, 0.1], **F64)
    coefs = StepCoefs(cx=THIRD, co=per_sample, ex=SEVENTH, e0=-ROOT2, m0=0.1, me=THIRD,
                      mx=SEVENTH, s=ROOT2)
    nxt, x0 = ops.sample_step(x, out, coefs, out_uncond=uncond, guidance=1 / 3, clip=0.9,
                              seed=7, step=2, return_x0=True)
    assert nxt.dtype == x0.dtype == torch.float64
    o = uncond + (out - uncond) / 3
    want_x0 = (THIRD * x + per_sample[:, None, None] * o).clamp(-0.9, 0.9)
    eps = SEVENTH * x - ROOT2 * want_x0
    z = ops.randn(list(x.shape), 7, 2, device=DEVICE, dtype=torch.float64)
    want = 0.1 * want_x0 + THIRD * eps + SEVENTH * x + ROOT2 * z
    torch.testing.assert_close(x0, want_x0, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(nxt, want, rtol=1e-14, atol=1e-14)


def test_lincomb_and_langevin_step_are_float64_exact():
    a, b = rand(3, 8, seed=4), rand(3, 8, seed=5)
    torch.testing.assert_close(ops.lincomb([a, b], [THIRD, SEVENTH]), THIRD * a + SEVENTH * b,
                               rtol=1e-15, atol=1e-15)
    z = rand(3, 8, seed=6)
    nxt, mean = ops.langevin_step(a, b, THIRD, snr=SEVENTH, noise=z, return_mean=True)
    e = 2 * THIRD * (SEVENTH * z.norm(dim=1).mean() / b.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(mean, a + e * b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(nxt, a + e * b + (2 * e).sqrt() * z, rtol=1e-14, atol=1e-14)


def test_randn_float64_is_the_stream_cast():
    """The stream is defined in float32 (the reference's Box-Muller); a float64 draw is it cast,
    and the compiled kernels' float32 draw equals it to their float32 log / sin rounding."""
    z64 = ops.randn([3, 5], 11, 4, device=DEVICE, dtype=torch.float64)
    assert z64.dtype == torch.float64
    with backend("reference"):
        torch.testing.assert_close(z64, ops.randn([3, 5], 11, 4, device=DEVICE).double(),
                                   rtol=0, atol=0)
    torch.testing.assert_close(z64, ops.randn([3, 5], 11, 4, device=DEVICE).double(),
                               rtol=2e-6, atol=2e-6)


def test_group_norm_and_attention_are_float64_exact():
    x, w, b = rand(2, 6, 5, seed=8), rand(6, seed=9), rand(6, seed=10)
    want = torch.nn.functional.silu(torch.nn.functional.group_norm(x, 3, w, b, 1e-5))
    torch.testing.assert_close(ops.group_norm(x, 3, w, b, act="silu"), want, rtol=1e-13,
                               atol=1e-13)
    q, k, v = rand(1, 2, 7, 16, seed=11), rand(1, 2, 5, 16, seed=12), rand(1, 2, 5, 16, seed=13)
    torch.testing.assert_close(ops.attention(q, k, v),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v),
                               rtol=1e-13, atol=1e-13)


def test_float64_gradients_pass_gradcheck():
    x, out = rand(2, 3, seed=14).requires_grad_(), rand(2, 3, seed=15).requires_grad_()
    coefs = StepCoefs(cx=THIRD, co=SEVENTH, ex=0.5, e0=-ROOT2, m0=0.1, me=THIRD, mx=0.2)
    assert torch.autograd.gradcheck(lambda x, o: ops.sample_step(x, o, coefs), (x, out))
    assert torch.autograd.gradcheck(lambda x, o: ops.lincomb([x, o], [THIRD, SEVENTH]), (x, out))
    g = rand(2, 4, 3, seed=16).requires_grad_()
    w = rand(4, seed=17).requires_grad_()
    assert torch.autograd.gradcheck(lambda g, w: ops.group_norm(g, 2, w, act="silu"), (g, w))
    q = rand(1, 1, 3, 8, seed=18).requires_grad_()
    kv = rand(1, 1, 4, 8, seed=19).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, kv: ops.attention(q, kv, kv), (q, kv))


@pytest.mark.parametrize("name", ["cpu", "cuda", "triton"])
def test_a_forced_compiled_backend_refuses_float64(name):
    why = unavailable_reason(name, DEVICE.type)
    if why:
        pytest.skip(why)
    x = rand(2, 3)
    with backend(name), pytest.raises(TypeError, match="float64 runs on the reference backend"):
        ops.sample_step(x, x, StepCoefs(cx=1.0))
