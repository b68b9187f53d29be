"""The ops are real torch ops: schema and fake kernels pass opcheck, and a loop of them compiles
with torch.compile(fullgraph=True)."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, backend, langevin_step, lincomb, randn, sample_step
from pydiffuse.ops._dispatch import unavailable_reason
from tests.conftest import DEVICE

X = torch.randn(2, 3, 5, 4)
TABLE = torch.rand(12, 2)
SEEDS = torch.tensor([3], dtype=torch.int64)

OPCHECK_CASES = {
    "sample_step": (torch.ops.pydiffuse.sample_step.default,
                    (X, X.clone(), None, TABLE, None, SEEDS, 2, True, False, True)),
    "sample_step_learned_var": (torch.ops.pydiffuse.sample_step.default,
                                (X, torch.randn(2, 6, 5, 4), torch.randn(2, 6, 5, 4), TABLE,
                                 torch.randn(2, 3, 5, 4), None, 0, False, True, False)),
    "lincomb": (torch.ops.pydiffuse.lincomb.default, ([X, X * 2], torch.rand(2, 2))),
    "langevin_step": (torch.ops.pydiffuse.langevin_step.default,
                      (X, X * 0.5, torch.rand(2, 2), True, False, None, SEEDS, 1, True)),
    "randn": (torch.ops.pydiffuse.randn.default, (SEEDS, [2, 7], 4, torch.float32)),
}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    op, args = OPCHECK_CASES[case]
    torch.library.opcheck(op, args)


TRITON_DEVICE = "cuda" if DEVICE.type == "cuda" else "cpu"


@pytest.mark.skipif(bool(unavailable_reason("triton", TRITON_DEVICE)),
                    reason=unavailable_reason("triton", TRITON_DEVICE) or "triton available")
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_triton(case):
    """Under the interpreter only the schema and autograd checks can run: the fake-tensor checks
    would run the interpreted kernel on fake storage (wrap_triton hands back the raw kernel)."""
    import pydiffuse.triton_kernels  # noqa: F401  (registers the ops)

    op, args = OPCHECK_CASES[case]
    op = getattr(torch.ops.pydiffuse_triton, op._schema.name.split("::")[1]).default
    args = tuple(a.to(TRITON_DEVICE) if isinstance(a, torch.Tensor) else
                 [t.to(TRITON_DEVICE) for t in a] if isinstance(a, list) and a and
                 isinstance(a[0], torch.Tensor) else a for a in args)
    limited = {} if TRITON_DEVICE == "cuda" else {
        "test_utils": ("test_schema", "test_autograd_registration")}
    torch.library.opcheck(op, args, **limited)


def _loop(x, out):
    """A DDIM-like loop of fused ops, as a sampler writes it."""
    for step in range(3):
        coefs = StepCoefs(cx=1.1, co=-0.3, ex=0.2, e0=0.5, m0=0.9, me=0.4, s=0.1)
        x = sample_step(x, out, coefs, seed=7, step=step, clip=1.0)
        x = lincomb([x, out], [0.9, 0.1])
        x = langevin_step(x, out, 0.01, snr=0.16, seed=7, step=step)
    return x + randn(list(x.shape), 1, 0, device=x.device)


@pytest.mark.parametrize("backend_name", ["cpu"] + (["cuda", "triton"] if DEVICE.type == "cuda"
                                                     else []))
def test_fullgraph_compile_of_a_loop(backend_name):
    device = "cpu" if backend_name == "cpu" else "cuda"
    x, out = torch.randn(2, 3, 8, 8, device=device), torch.randn(2, 3, 8, 8, device=device)
    with backend(backend_name):
        expected = _loop(x, out)
        compiled = torch.compile(_loop, fullgraph=True)
        torch.testing.assert_close(compiled(x, out), expected)
