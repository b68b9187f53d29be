"""``lincomb``: a per-sample linear combination of tensors in one pass (ODE stages, multistep
solvers), and its gradient."""

from collections.abc import Sequence

import torch

from . import _autograd, _dispatch, reference
from ._checks import check_data, check_same
from ._packing import pack_rows


def lincomb(tensors, coefs):
    """sum_i coefs[i] * tensors[i] in one pass (Runge-Kutta stages, multistep solvers).

    Args:
        tensors: n >= 1 tensors of one shape [B, ...], dtype and device.
        coefs: n coefficients, each a float or a [B] tensor; or a tensor [n] or [n, B].

    Returns:
        [B, ...] in the tensors' dtype (accumulated in float32; float64 tensors in float64 on
        the reference backend by default).
    """
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence) or not tensors:
        raise TypeError("tensors must be a non-empty list of tensors")
    first = check_data(tensors[0], "tensors[0]")
    for i, t in enumerate(tensors[1:], start=1):
        check_same(t, first, f"tensors[{i}]")
    if isinstance(coefs, torch.Tensor):
        coefs = list(coefs.unbind(0)) if coefs.ndim >= 1 else [coefs]
    if not isinstance(coefs, Sequence):
        raise TypeError("coefs must be a list of floats / [B] tensors, or a tensor [n] or [n, B]")
    if len(coefs) != len(tensors):
        raise ValueError(f"coefs has {len(coefs)} entries for {len(tensors)} tensors")
    batch, device = first.shape[0], first.device
    table = pack_rows(coefs, "coefs", batch, device, first.dtype)
    run = _dispatch.select("lincomb", device, first.dtype, terms=len(tensors))
    return run(list(tensors), table)


@_autograd.formula("lincomb")
def _lincomb_autograd(namespace):
    """out = sum_i c_i T_i:  dT_i = c_i g, each a fused lincomb of the namespace; the
    coefficients' gradient (a per-sample reduction): the reference op's, recomputed."""
    ops = _autograd.kernels(namespace)

    def setup_context(ctx, inputs, output):
        tensors, coefs = inputs
        ctx.save_for_backward(coefs, *tensors)

    def backward(ctx, g):
        coefs, *tensors = ctx.saved_tensors
        need_tensors, need_coefs = ctx.needs_input_grad
        grads = [ops.lincomb([g], coefs[i:i + 1]) if need else None
                 for i, need in enumerate(need_tensors)]
        grad_coefs = None
        if need_coefs:
            grad_coefs = _autograd.reference_grads(reference.lincomb, (tensors, coefs), [1],
                                                   (g,)).get(1)
        return grads, grad_coefs

    return backward, setup_context
