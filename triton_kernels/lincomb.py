"""pydiffuse_triton::lincomb: out = sum_i c_i[b] T_i in one pass, accumulated in float32.

One kernel takes up to MAX_TERMS tensors (ODE stages, multistep histories); longer sums run in
groups of MAX_TERMS that carry a float32 partial sum (acc + sum over the group), so the result
is the same float32 sum in the same order.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .common import block_elements, contiguous, kernel_format, launch_config, per_sample_value

MAX_TERMS = 8


@triton.jit
def _lincomb_kernel(t0, t1, t2, t3, t4, t5, t6, t7, coefs_ptr, row_stride, col_stride, acc_ptr,
                    out_ptr, numel, batch, per_sample, N: tl.constexpr, HAS_ACC: tl.constexpr,
                    ONE_SAMPLE: tl.constexpr,
                    BLOCK: tl.constexpr):
    """out = acc + sum_{k < N} coefs[k, b] t_k over one block of elements; t_k for k >= N are
    unused (None)."""
    e, b, _ = block_elements(per_sample, ONE_SAMPLE, 1, BLOCK)
    mask = e < numel
    terms = (t0, t1, t2, t3, t4, t5, t6, t7)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_ACC:
        acc = tl.load(acc_ptr + e, mask=mask)
    for k in tl.static_range(N):
        t = tl.load(terms[k] + e, mask=mask).to(tl.float32)
        acc += per_sample_value(coefs_ptr, k, batch, b, row_stride, col_stride) * t
    tl.store(out_ptr + e, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton_op("pydiffuse_triton::lincomb", mutates_args=())
def lincomb(tensors: list[torch.Tensor], coefs: torch.Tensor) -> torch.Tensor:
    first = tensors[0]
    fmt = kernel_format(first)
    tensors = [contiguous(t, fmt) for t in tensors]
    out = torch.empty_like(first, memory_format=fmt)
    if out.numel() == 0:
        return out
    batch, n, per_sample = first.shape[0], len(tensors), out.numel() // first.shape[0]
    cfg = launch_config(out.numel(), per_sample)
    grid = cfg.pop("grid")
    # Past MAX_TERMS terms the partial sum stays in float32, updated in place group by group.
    partial = torch.empty_like(out, dtype=torch.float32) if n > MAX_TERMS else None
    acc = None
    for start in range(0, n, MAX_TERMS):
        group = tensors[start:start + MAX_TERMS]
        dst = out if start + MAX_TERMS >= n else partial
        wrap_triton(_lincomb_kernel)[grid](
            *group, *[None] * (MAX_TERMS - len(group)), coefs[start:], *coefs.stride(), acc, dst,
            out.numel(), batch, per_sample, N=len(group), HAS_ACC=acc is not None, **cfg)
        acc = partial
    return out
