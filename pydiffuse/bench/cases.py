"""The benchmark cases of ``pydiffuse bench``: for each fused op (one row per op and set of
options, named after the op), its inputs, the fused call, and the expression a user would write
in PyTorch eager (the baseline, also given to ``torch.compile``). A new op adds one entry to
``make_cases`` (and its eager expression above it); ``harness.py`` times and reports them.
"""

import dataclasses
import math
from collections.abc import Callable

import torch

from pydiffuse import ops

# Arbitrary non-zero coefficients, so that no term of the step equation folds away.
CX, CO, EX, E0, M0, ME, MX, S = 1.25, -0.75, 0.6, -0.8, 0.9, 0.3, 0.05, 0.1
COEFS = ops.StepCoefs(cx=CX, co=CO, ex=EX, e0=E0, m0=M0, me=ME, mx=MX, s=S)
GUIDANCE, CLIP = 3.0, 1.0
LINCOMB = (0.5, -0.25, 1.5, 0.125)
STEP_SIZE, SNR = 1e-3, 0.16


@dataclasses.dataclass
class Case:
    """One benchmarked op: its inputs (how many shape-sized tensors it reads and writes) and the
    fused call, the eager expression, and whether their results can be compared. A case with
    its own ``shape`` (and ``quick_shape``) makes its inputs with ``inputs(shape, dtype,
    device)``; ``flops`` counts its arithmetic where that, not memory, is the limit;
    ``compiled`` builds its torch.compile baseline (default: torch.compile of ``eager``)."""

    reads: int
    writes: int
    fused: Callable
    eager: Callable
    comparable: bool = True  # False where fused and eager draw different noise
    about: str = ""
    shape: tuple | None = None
    quick_shape: tuple | None = None
    inputs: Callable | None = None
    flops: Callable | None = None
    compiled: Callable | None = None


def _backward_runner(forward: Callable) -> Callable:
    """A call that times the backward pass alone: the graph of ``forward`` is built on the first
    call and differentiated again on every call (retain_graph); returns the gradients, flat."""
    graph = {}

    def run(*args):
        if "y" not in graph:  # the same dy for every runner: their gradients are comparable
            graph["y"] = forward(*args)
            gen = torch.Generator(device=graph["y"].device).manual_seed(4)
            graph["dy"] = torch.randn(graph["y"].shape, generator=gen, device=graph["y"].device,
                                      dtype=graph["y"].dtype)
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = torch.autograd.grad(graph["y"], leaves, graph["dy"], retain_graph=True)
        return torch.cat([g.flatten().float() for g in grads])

    return run


GN_SHAPE, GN_QUICK_SHAPE, GN_GROUPS = (16, 128, 32, 32), (4, 64, 16, 16), 32
ATTN_SHAPE, ATTN_QUICK_SHAPE = (8, 4, 1024, 64), (2, 2, 256, 64)


def _group_norm_inputs(shape, dtype, device, requires_grad=False):
    """x [B, C, H, W]; weight, bias [C]; AdaGN scale, shift [B, C]."""
    gen = torch.Generator(device=device).manual_seed(2)
    batch, channels = shape[:2]
    tensors = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in
               (shape, (channels,), (channels,), (batch, channels), (batch, channels))]
    return [t.requires_grad_(requires_grad) for t in tensors]


def _group_norm_fused(x, weight, bias, scale, shift):
    return ops.group_norm(x, GN_GROUPS, weight, bias, scale=scale, shift=shift, act="silu")


def _group_norm_eager(x, weight, bias, scale, shift):
    y = torch.nn.functional.group_norm(x, GN_GROUPS, weight, bias)
    return torch.nn.functional.silu(y * (1 + scale[:, :, None, None]) + shift[:, :, None, None])


def _attention_inputs(shape, dtype, device, requires_grad=False):
    gen = torch.Generator(device=device).manual_seed(3)
    return [torch.randn(shape, generator=gen, device=device, dtype=dtype)
            .requires_grad_(requires_grad) for _ in range(3)]


def _attention_flops(shape, backward=False):
    """2 matmuls of B H N N D multiply-adds forward; 5 (with the recomputed scores) backward."""
    batch, heads, n, d = shape
    return (5 if backward else 2) * 2 * batch * heads * n * n * d


def _grad_inputs(make):
    return lambda shape, dtype, device: make(shape, dtype, device, requires_grad=True)


def _step_eager(x, o, z):
    x0 = CX * x + CO * o
    eps = EX * x + E0 * x0
    return M0 * x0 + ME * eps + MX * x + S * z


def _cfg_clip_eager(x, o, u, z):
    o = u + GUIDANCE * (o - u)
    x0 = (CX * x + CO * o).clamp(-CLIP, CLIP)
    eps = EX * x + E0 * x0
    return M0 * x0 + ME * eps + MX * x + S * z


def _lincomb_eager(a, b, c, d):
    return LINCOMB[0] * a + LINCOMB[1] * b + LINCOMB[2] * c + LINCOMB[3] * d


def _langevin_eager(x, score, z):
    mean = x + STEP_SIZE * score
    return mean + math.sqrt(2 * STEP_SIZE) * z


def _langevin_snr_eager(x, score, z):
    batch = x.shape[0]
    score_norm = score.reshape(batch, -1).norm(dim=1).mean()
    noise_norm = z.reshape(batch, -1).norm(dim=1).mean()
    e = 2 * STEP_SIZE * (SNR * noise_norm / score_norm) ** 2
    mean = x + e * score
    return mean + torch.sqrt(2 * e) * z


def make_cases(shape, dtype, device) -> dict[str, Case]:
    """The benchmark cases, by row name (the op's name, then its options)."""
    like = dict(dtype=dtype, device=device)
    return {
        "sample_step": Case(
            3, 1, lambda x, o, z: ops.sample_step(x, o, COEFS, noise=z), _step_eager,
            about="step equation, noise given"),
        "sample_step_seed": Case(
            2, 1, lambda x, o: ops.sample_step(x, o, COEFS, seed=0, step=1),
            lambda x, o: _step_eager(x, o, torch.randn_like(x)), comparable=False,
            about="noise from the in-kernel stream; eager draws torch.randn"),
        "sample_step_cfg_clip": Case(
            4, 1, lambda x, o, u, z: ops.sample_step(
                x, o, COEFS, out_uncond=u, guidance=GUIDANCE, clip=CLIP, noise=z),
            _cfg_clip_eager, about="classifier-free guidance and x0 clipping"),
        "lincomb": Case(4, 1, lambda a, b, c, d: ops.lincomb([a, b, c, d], LINCOMB),
                        _lincomb_eager, about="4 tensors"),
        "langevin_step": Case(
            3, 1, lambda x, s, z: ops.langevin_step(x, s, STEP_SIZE, noise=z), _langevin_eager),
        "langevin_step_snr": Case(
            3, 1, lambda x, s, z: ops.langevin_step(x, s, STEP_SIZE, snr=SNR, noise=z),
            _langevin_snr_eager, about="score-SDE corrector, batch-averaged norms"),
        "randn": Case(0, 1, lambda: ops.randn(list(shape), 0, 1, **like),
                      lambda: torch.randn(shape, **like), comparable=False,
                      about="the noise stream vs torch.randn"),
        "group_norm": Case(
            1, 1, _group_norm_fused, _group_norm_eager, shape=GN_SHAPE, quick_shape=GN_QUICK_SHAPE,
            inputs=_group_norm_inputs, about=f"GN({GN_GROUPS} groups) + AdaGN + SiLU, forward"),
        "group_norm_bwd": Case(
            2, 1, _backward_runner(_group_norm_fused), _backward_runner(_group_norm_eager),
            shape=GN_SHAPE, quick_shape=GN_QUICK_SHAPE,
            inputs=_grad_inputs(_group_norm_inputs),
            compiled=lambda: _backward_runner(torch.compile(_group_norm_eager)),
            about="its backward (all five gradients)"),
        "attention": Case(
            3, 1, lambda q, k, v: ops.attention(q, k, v),
            torch.nn.functional.scaled_dot_product_attention, shape=ATTN_SHAPE,
            quick_shape=ATTN_QUICK_SHAPE, inputs=_attention_inputs, flops=_attention_flops,
            about="[B, H, N, D] forward; eager = F.scaled_dot_product_attention"),
        "attention_bwd": Case(
            4, 3, _backward_runner(lambda q, k, v: ops.attention(q, k, v)),
            _backward_runner(torch.nn.functional.scaled_dot_product_attention),
            shape=ATTN_SHAPE, quick_shape=ATTN_QUICK_SHAPE,
            inputs=_grad_inputs(_attention_inputs),
            flops=lambda shape: _attention_flops(shape, backward=True),
            compiled=lambda: _backward_runner(
                torch.compile(torch.nn.functional.scaled_dot_product_attention)),
            about="its backward (dq, dk, dv)"),
    }


CASE_NAMES = tuple(make_cases((1,), torch.float32, "cpu"))
