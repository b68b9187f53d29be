"""attention on every backend against the float64 reference: out, lse and the three gradients,
with FlashAttention's tolerance (a kernel's error at most twice PyTorch's own error in the same
dtype, plus a small atol); gradcheck, opcheck, bad inputs and torch.compile."""

import importlib
import math
import pathlib
import re

import pytest
import torch

from pydiffuse.ops import _dispatch, attention, backend, reference
from pydiffuse.ops._dispatch import implementation, unavailable_reason
from tests.conftest import DEVICE, backend_device
from tests.ops.helpers import DTYPES, on_triton_device, opcheck_triton, triton_ops

ROOT = pathlib.Path(__file__).resolve().parents[2]

# (B, H, Nq, Nk, D): sizes 1, 7, 97, 130; Nq != Nk; several query and key blocks (cpu: 64 x 256).
SHAPES = ((1, 2, 7, 7, 32), (1, 1, 1, 1, 64), (2, 2, 97, 130, 64), (1, 3, 130, 97, 128),
          (1, 2, 1, 97, 32), (1, 1, 200, 600, 64))
# Triton under its interpreter: tiny sizes only.
INTERPRETED_SHAPES = ((1, 2, 7, 7, 32), (1, 1, 1, 1, 32), (2, 1, 33, 64, 32), (1, 2, 64, 17, 32),
                      (1, 1, 1, 40, 32), (2, 2, 16, 5, 32))
LAYOUTS = ("contiguous", "strided", "transposed")
# atol per dtype, relative to the largest reference value (at least 1).
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-10}


def _interpreted(name: str) -> bool:
    return name == "triton" and DEVICE.type == "cpu"


def _shapes(name):
    return INTERPRETED_SHAPES if _interpreted(name) else SHAPES


def _make(shape, dtype, device, layout, generator):
    """[B, H, N, D] data in a layout: C-order, every other element of the last dim, or the
    [B, N, H, D] tensor of a projection seen as [B, H, N, D]."""
    b, h, n, d = shape
    t = torch.randn(b, n, h, d, generator=generator).to(device=device, dtype=dtype)
    if layout == "transposed":
        return t.transpose(1, 2)
    t = t.transpose(1, 2).contiguous()
    if layout == "strided":
        return torch.stack([t, t], dim=-1).flatten(-2)[..., ::2]
    return t


def _inputs(shape, dtype, device, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, nq, nk, d = shape
    return [_make(s, dtype, device, layout, g) for s in ((b, h, nq, d), (b, h, nk, d),
                                                         (b, h, nk, d))]


def _forward_backward(q, k, v, grad):
    """(out, dq, dk, dv) of the public op (the backend in force)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq, dk, dv


def _torch_in(q, k, v, grad, dtype, scale=None):
    """PyTorch's own answer in ``dtype`` (scores, softmax and products in that dtype)."""
    q, k, v = (t.detach().cpu().to(dtype).requires_grad_() for t in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = reference.attention(q, k, v, scale, upcast=dtype)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad.cpu().to(dtype))
    return [out, lse, dq, dk, dv]


def _check_errors(names, actual, truth, lowp, dtype):
    """Each result within twice PyTorch's own error of the float64 truth, and NaN exactly
    where the truth is NaN (e.g. dq through a key of -inf: 0 * -inf)."""
    for name, a, t, p in zip(names, actual, truth, lowp):
        assert a.shape == t.shape, f"{name}: shape {list(a.shape)}, expected {list(t.shape)}"
        a, t, p = a.detach().cpu().double(), t.detach(), p.detach().double()
        nan = t.isnan()
        assert torch.equal(a.isnan(), nan), f"{name}: {a.isnan().sum()} NaN, truth {nan.sum()}"
        a, t, p = a[~nan], t[~nan], p[~nan]
        if t.numel() == 0:
            continue
        err = (a - t).abs().max().item()
        torch_err = (p - t).abs().max().item()
        bound = 2 * torch_err + ATOL[dtype] * max(1.0, t.abs().max().item())
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g} (PyTorch's {torch_err:.3g})"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_matches_reference(backend_name, index, dtype, layout):
    shape = _shapes(backend_name)[index]
    device = backend_device(backend_name)
    q, k, v = _inputs(shape, dtype, device, layout)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    scale = 1 / math.sqrt(shape[-1])
    out, dq, dk, dv = _forward_backward(q, k, v, grad)
    lse = implementation("attention", device)(q, k, v, scale)[1]
    assert out.dtype == dtype and lse.dtype == torch.float32
    truth = _torch_in(q, k, v, grad, torch.float64)
    lowp = _torch_in(q, k, v, grad, dtype)
    _check_errors(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), truth, lowp, dtype)


def _extreme_shape(name):
    """(B, H, Nq, Nk, D): several heads, query blocks and key tiles (cpu: 64 x 256 tiles; the
    interpreted Triton kernel: 32-key blocks at D = 32)."""
    return (1, 3, 20, 80, 32) if _interpreted(name) else (2, 3, 130, 600, 64)


def _extreme(case, shape, generator):
    """(q, k, v, scale) of a case that an online softmax with state leaking between (head,
    query block) tasks, or an unguarded -inf max, gets wrong (issue 13)."""
    b, h, nq, nk, d = shape
    q, k, v = (torch.randn(b, h, n, d, generator=generator, dtype=torch.float64)
               for n in (nq, nk, nk))
    scale = 1 / math.sqrt(d)
    if case == "issue repro":          # head 0's max is 128 above head 1's scores
        q, k, v = q.zero_(), k.zero_(), v.fill_(1)
        q[:, 0], k[:, 0], k[:, 1, 1] = 4, 4, 1
    elif case == "heads of very different magnitudes":
        f = torch.tensor([10.0, 0.01, 3.0][:h], dtype=torch.float64).reshape(1, h, 1, 1)
        q, k = q * f, k * f
    elif case == "all-negative scores":
        q, k, scale = q.abs() + 1, -(k.abs() + 1), 10.0
    elif case == "large scale":
        scale = 30.0
    elif case == "keys of -inf":         # more than a whole first tile of keys masked out
        q = q.abs() + 0.1
        k[:, :, : nk // 2] = -math.inf
        k[:, :, -1] = -math.inf
    return q, k, v, scale


EXTREMES = ("issue repro", "heads of very different magnitudes", "all-negative scores",
            "large scale", "keys of -inf")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", EXTREMES)
def test_extreme_scores_match_float64_sdpa(backend_name, case, threads):
    """Forward and backward against SDPA in float64 where a row's scores are far from another
    head's, all negative, huge, or -inf for keys spanning whole tiles; at 1 and 2 threads."""
    shape = _extreme_shape(backend_name)
    device = backend_device(backend_name)
    q, k, v, scale = _extreme(case, shape, torch.Generator().manual_seed(3))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*leaves, scale=scale)
    truth = [out, torch.logsumexp(q @ k.transpose(-1, -2) * scale, -1),
             *torch.autograd.grad(out, leaves, grad)]
    lowp = _torch_in(q, k, v, grad, torch.float32, scale)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        qf, kf, vf = (t.float().to(device).requires_grad_() for t in (q, k, v))
        out = attention(qf, kf, vf, scale=scale)
        grads = torch.autograd.grad(out, (qf, kf, vf), grad.float().to(device))
        lse = implementation("attention", device)(qf, kf, vf, scale)[1]
    finally:
        torch.set_num_threads(old)
    assert not out.isnan().any(), f"{out.isnan().sum()} NaN outputs"
    _check_errors(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), truth, lowp,
                  torch.float32)


def test_reference_backward_is_autograd_of_reference():
    q, k, v = _inputs((2, 3, 9, 13, 8), torch.float64, "cpu", "contiguous")
    grad = torch.randn(q.shape, dtype=torch.float64)
    out, lse = reference.attention(q, k, v, 0.4)
    expected = _torch_in(q, k, v, grad, torch.float64, 0.4)[2:]
    for got, want in zip(reference.attention_backward(grad, q, k, v, out, lse, 0.4), expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        out, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.4))
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.4, -1).float())


def test_gradcheck_float64_reference():
    q, k, v = (t.requires_grad_() for t in _inputs((1, 2, 5, 7, 4), torch.float64, "cpu",
                                                     "contiguous"))
    with backend("reference"):
        assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, scale=0.7), (q, k, v))


def test_float64_needs_reference_backend():
    q = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    with backend("cpu"), pytest.raises(TypeError, match="float64"):
        attention(q, q, q)


def test_cpu_any_head_dim_and_blas_path(monkeypatch):
    """The CPU kernel runs any D; its BLAS fallback (CPUs without AVX-512) gives the same."""
    q, k, v = _inputs((1, 2, 70, 300, 40), torch.float32, "cpu", "contiguous")
    grad = torch.randn(q.shape)
    truth = _torch_in(q, k, v, grad, torch.float64)
    lowp = _torch_in(q, k, v, grad, torch.float32)
    for gemm in ("", "blas"):
        monkeypatch.setenv("PYDIFFUSE_CPU_GEMM", gemm)
        with backend("cpu"):
            out, dq, dk, dv = _forward_backward(q, k, v, grad)
        lse = torch.ops.pydiffuse.attention(q, k, v, 1 / math.sqrt(40))[1]
        _check_errors(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), truth, lowp,
                      torch.float32)


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_empty_queries(name):
    q = torch.randn(1, 2, 0, 32, requires_grad=True)
    k = torch.randn(1, 2, 5, 32, requires_grad=True)
    with backend(name):
        out = attention(q, k, k)
    assert out.shape == (1, 2, 0, 32)
    out.sum().backward()
    assert k.grad.shape == k.shape and not k.grad.any()


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_head_dims_of_gpu_backends(name):
    device = backend_device(name)
    if unavailable_reason(name, device.type):
        pytest.skip(unavailable_reason(name, device.type))
    q = torch.randn(1, 1, 4, 40, device=device)
    with backend(name), pytest.raises(ValueError, match="head dim D = 40"):
        attention(q, q, q)


def test_head_dims_in_the_capability_table_are_the_kernels():
    """CAPABILITIES (what the op asks) states the head dims the GPU kernels are built for."""
    source = (ROOT / "csrc" / "cuda" / "attention.cu").read_text()
    body = source[source.index("bool attention_supports_head_dim"):].split("}", 1)[0]
    cuda_dims = tuple(int(d) for d in re.findall(r"head_dim == (\d+)", body))
    assert _dispatch.CAPABILITIES["cuda"].head_dims == cuda_dims
    assert _dispatch.CAPABILITIES["cpu"].head_dims is None
    if not unavailable_reason("triton", TRITON_DEVICE):
        assert _dispatch.CAPABILITIES["triton"].head_dims == \
            importlib.import_module("pydiffuse.triton_kernels.attention").HEAD_DIMS


BAD_INPUTS = {
    "3-d q": (lambda t: (t[0], t, t), ValueError, "q must be"),
    "5-d k": (lambda t: (t, t[None], t), ValueError, "k must be"),
    "batch": (lambda t: (t, t[:1], t[:1]), ValueError, "batch B"),
    "heads": (lambda t: (t, t[:, :1], t[:, :1]), ValueError, "heads H"),
    "head dim": (lambda t: (t, t[..., :4], t[..., :4]), ValueError, "head dim D"),
    "keys of v": (lambda t: (t, t, t[:, :, :3]), ValueError, "number of keys"),
    "no keys": (lambda t: (t, t[:, :, :0], t[:, :, :0]), ValueError, "at least one key"),
    "dtype of k": (lambda t: (t, t.half(), t.half()), TypeError, "k has dtype"),
    "dtype of v": (lambda t: (t, t, t.bfloat16()), TypeError, "v has dtype"),
    "integer q": (lambda t: (t.long(), t.long(), t.long()), TypeError, "q must be float32"),
    "not a tensor": (lambda t: (t, t.tolist(), t), TypeError, "k must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs(case):
    make, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        attention(*make(torch.randn(2, 3, 5, 8)))


def test_bad_scale_and_device():
    t = torch.randn(1, 1, 2, 8)
    with pytest.raises(TypeError, match="scale"):
        attention(t, t, t, scale="0.1")
    with pytest.raises(TypeError, match="scale"):
        attention(t, t, t, scale=float("nan"))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="k is on"):
            attention(t, t.cuda(), t.cuda())


def _opcheck_args():
    q, k, v = (t.requires_grad_() for t in _inputs((2, 2, 9, 13, 32), torch.float32, "cpu",
                                                     "contiguous"))
    out, lse = reference.attention(q.detach(), k.detach(), v.detach(), 0.3)
    return (q, k, v, 0.3), (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse,
                            0.3)


@pytest.mark.parametrize("op", ["attention", "attention_backward"])
def test_opcheck(op):
    forward_args, backward_args = _opcheck_args()
    args = forward_args if op == "attention" else backward_args
    torch.library.opcheck(getattr(torch.ops.pydiffuse, op).default, args)


TRITON_DEVICE = "cuda" if DEVICE.type == "cuda" else "cpu"


@pytest.mark.skipif(bool(unavailable_reason("triton", TRITON_DEVICE)),
                    reason=unavailable_reason("triton", TRITON_DEVICE) or "triton available")
@pytest.mark.parametrize("op", ["attention", "attention_backward"])
def test_opcheck_triton(op):
    """Under the interpreter only the schema and autograd checks (tests/ops/helpers.py)."""
    forward_args, backward_args = _opcheck_args()
    args = forward_args if op == "attention" else backward_args
    opcheck_triton(getattr(triton_ops(), op).default, on_triton_device(args))


@pytest.mark.skipif(bool(unavailable_reason("triton", TRITON_DEVICE)),
                    reason=unavailable_reason("triton", TRITON_DEVICE) or "triton available")
def test_cuda_backward_is_the_kernel_the_capability_table_names():
    """csrc/cuda has attention's forward only: CAPABILITIES["cuda"] names the backend whose
    attention_backward runs on CUDA tensors, and _dispatch attaches that kernel as
    pydiffuse::attention_backward's CUDA implementation (when _C has CUDA). The attached callable
    runs exactly that kernel (here on the interpreter)."""
    lender = _dispatch.CAPABILITIES["cuda"].backward["attention"]
    assert lender == "triton"
    _, backward_args = _opcheck_args()
    args = on_triton_device(backward_args)
    borrowed = _dispatch._borrowed("attention_backward", lender)(*args)
    for got, expected in zip(borrowed, triton_ops().attention_backward(*args)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def _loss(q, k, v):
    return (attention(q, k, v) * torch.linspace(-1, 1, q.shape[-1], device=q.device)).sum()


@pytest.mark.parametrize("backend_name", ["cpu"] + (["cuda", "triton"] if DEVICE.type == "cuda"
                                                     else []))
def test_fullgraph_compile_forward_backward(backend_name):
    device = "cpu" if backend_name == "cpu" else "cuda"
    inputs = _inputs((2, 2, 33, 20, 32), torch.float32, device, "transposed")
    with backend(backend_name):
        eager = [t.detach().requires_grad_() for t in inputs]
        _loss(*eager).backward()
        compiled = [t.detach().requires_grad_() for t in inputs]
        torch.compile(_loss, fullgraph=True)(*compiled).backward()
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
