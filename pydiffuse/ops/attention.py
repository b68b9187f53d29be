"""``attention``: softmax(q kᵀ · scale) v, flash-style (online softmax, no Nq×Nk matrix), with
autograd through the backend's ``attention_backward`` (on CUDA tensors, the kernel
``_dispatch.CAPABILITIES`` names: Triton's)."""

import math
import numbers

import torch

from . import _autograd, _dispatch
from ._checks import DATA_DTYPE_NAMES, DATA_DTYPES


def attention(q, k, v, *, scale=None):
    """Scaled dot-product attention, fused: out = softmax(q kᵀ · scale) v.

    The kernels run the online softmax of FlashAttention (Dao et al. 2022): key blocks stream
    past a block of queries with a running max and sum, so no [Nq, Nk] matrix is stored; the
    backward pass recomputes it block by block from the saved log-sum-exp. On the default cpu
    backend, inputs below ``thresholds.CPU_KERNEL_FROM`` run ``F.scaled_dot_product_attention``.

    Args:
        q: [B, H, Nq, D] queries, float32/float16/bfloat16 (accumulation in float32) or
            float64 (computed in float64 on the reference backend by default).
        k, v: [B, H, Nk, D] keys and values, q's dtype and device; Nk >= 1 (Nk may differ
            from Nq).
        scale: the factor of the scores; default 1 / sqrt(D).

    Returns:
        out [B, H, Nq, D] in q's dtype.
    """
    _check(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    # (``type() is`` first: the ABC checks cost a microsecond a call at small sizes)
    if (type(scale) is not float and (isinstance(scale, bool)
                                      or not isinstance(scale, numbers.Real))
            or not math.isfinite(scale)):
        raise TypeError(f"scale must be a finite float, got {scale!r}")
    work = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
    run = _dispatch.select("attention", q.device, q.dtype, eager=_eager, work=work,
                           head_dim=q.shape[-1])
    out, _ = run(q, k, v, float(scale))
    return out


def _eager(q, k, v, scale):
    """``F.scaled_dot_product_attention``, the kernels' signature (lse not computed: None), for
    the sizes where it beats the cpu kernel (``_dispatch.select``); autograd is torch's."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale), None


def _check(q, k, v) -> None:
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DATA_DTYPES:
            raise TypeError(f"{name} must be {DATA_DTYPE_NAMES}, got {t.dtype}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be [B, H, N, D] (4-d), got shape {list(t.shape)}")
    q_shape = q.shape
    for t, name in ((k, "k"), (v, "v")):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected q's dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
        shape = t.shape
        for dim, what in ((0, "batch B"), (1, "heads H"), (3, "head dim D")):
            if shape[dim] != q_shape[dim]:
                raise ValueError(f"{name} has {what} = {shape[dim]}, q has {q_shape[dim]} "
                                 f"(q {list(q_shape)}, {name} {list(shape)})")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"k and v must have the same number of keys Nk, got k {list(k.shape)} "
                         f"and v {list(v.shape)}")
    if k.shape[2] < 1:
        raise ValueError("attention needs at least one key (Nk >= 1)")
    if q.shape[-1] < 1:
        raise ValueError("attention needs a head dim D >= 1")


@_autograd.formula("attention")
def _attention_autograd(namespace):
    """Through the namespace's ``attention_backward(grad_out, q, k, v, out, lse, scale) -> (dq, dk,
    dv)`` (on CUDA tensors the backend's kernel per ``_dispatch.CAPABILITIES``); lse, the second
    output, is not differentiable."""
    backward_op = getattr(torch.ops, namespace).attention_backward

    def setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale

    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = backward_op(grad_out, q, k, v, out, lse, ctx.scale)
        return dq, dk, dv, None

    return backward, setup_context
