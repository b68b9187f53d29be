"""Loops of fused ops, as samplers and trainers write them, compile with
torch.compile(fullgraph=True), forward and backward. (Each op's opcheck is in its own test file,
tests/ops/test_<op>.py.)"""

import pytest
import torch

from pydiffuse.ops import StepCoefs, backend, langevin_step, lincomb, randn, sample_step
from tests.conftest import DEVICE, backend_device
from tests.ops.helpers import NO_DROPPED_GRADIENTS, TOLERANCES, per_sample

COMPILED_BACKENDS = ["cpu"] + (["cuda", "triton"] if DEVICE.type == "cuda" else [])


def _loop(x, out):
    """A DDIM-like loop of fused ops, as a sampler writes it."""
    for step in range(3):
        coefs = StepCoefs(cx=1.1, co=-0.3, ex=0.2, e0=0.5, m0=0.9, me=0.4, s=0.1)
        x = sample_step(x, out, coefs, seed=7, step=step, clip=1.0)
        x = lincomb([x, out], [0.9, 0.1])
        x = langevin_step(x, out, 0.01, snr=0.16, seed=7, step=step)
    return x + randn(list(x.shape), 1, 0, device=x.device)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
def test_fullgraph_compile_of_a_loop(backend_name):
    device = "cpu" if backend_name == "cpu" else "cuda"
    x, out = torch.randn(2, 3, 8, 8, device=device), torch.randn(2, 3, 8, 8, device=device)
    with backend(backend_name):
        expected = _loop(x, out)
        compiled = torch.compile(_loop, fullgraph=True)
        torch.testing.assert_close(compiled(x, out), expected)


def _loss(x, out, cx):
    """A sampler-like chain of every step op; cx a per-sample coefficient."""
    coefs = StepCoefs(cx=cx, co=-0.3, ex=0.2, e0=0.5, m0=0.9, me=0.4, s=0.1)
    nxt, x0 = sample_step(x, out, coefs, seed=7, step=1, return_x0=True)
    nxt = sample_step(nxt, out, StepCoefs(cx=1.0, co=0.5, m0=1.0), clip=0.8)
    y = lincomb([nxt, x0], [cx, 0.5])
    return (langevin_step(y, out, 0.01, snr=0.16, seed=7, step=2) ** 2).sum()


@NO_DROPPED_GRADIENTS
@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
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
