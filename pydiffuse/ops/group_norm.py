"""``group_norm``: group normalization with the affine, AdaGN scale-shift and SiLU of a diffusion
UNet's norm layers fused into one kernel, with autograd through the backend's own
``group_norm_backward``."""

import math
import numbers

import torch

from . import _autograd, _dispatch, thresholds
from ._checks import DATA_DTYPE_NAMES, DATA_DTYPES

ACTIVATIONS = (None, "silu")


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, scale=None, shift=None,
               act=None):
    """Group norm, affine, AdaGN and activation in one pass over x:

        y = act((GN(x) * weight + bias) * (1 + scale) + shift)

    GN (Wu & He 2018) normalizes each group of C / num_groups channels of a sample over those
    channels and every spatial position, with the biased variance: (x - mean) / sqrt(var + eps).
    ``scale`` and ``shift`` are the per-sample, per-channel modulation of ADM's scale-shift norm
    (AdaGN, Dhariwal & Nichol 2021); ``act="silu"`` applies x * sigmoid(x). Statistics are
    computed in float32 whatever x's dtype (float64 for float64 x), in either memory layout
    (NCHW or channels_last). On the default cpu backend, inputs below
    ``thresholds.CPU_KERNEL_FROM`` run as eager torch ops.

    Args:
        x: [B, C, *spatial] (any number of spatial dims, 0 to 3 in UNets), float32/float16/
            bfloat16 (float64: in float64 on the reference backend by default); C-order,
            channels_last or strided.
        num_groups: G, a divisor of C.
        weight, bias: [C] per-channel affine, or None (1 and 0).
        eps: added to the variance.
        scale, shift: [B, C] AdaGN modulation, or None (0).
        act: None or "silu".
        Each parameter has x's dtype, or float32 (half activations with float32 parameters).

    Returns:
        y, x's shape and dtype (channels_last when x is, on the compiled backends).
    """
    _check(x, num_groups, weight, bias, eps, scale, shift, act)
    work = thresholds.group_norm_work(x.numel(), act == "silu",
                                      scale is not None or shift is not None)
    y, _, _ = _dispatch.select("group_norm", x.device, x.dtype, eager=_eager, work=work)(
        x, int(num_groups), weight, bias, scale, shift, float(eps), act == "silu")
    return y


def _eager(x, num_groups, weight, bias, scale, shift, eps, silu):
    """The op as eager torch ops, the kernels' signature (mean and rstd not computed: None), for
    the sizes where they beat the cpu kernel (``_dispatch.select``); autograd is torch's."""
    y = torch.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None or shift is not None:
        per_channel = list(x.shape[:2]) + [1] * (x.ndim - 2)
        if scale is not None:
            y = y * (1 + scale.reshape(per_channel))
        if shift is not None:
            y = y + shift.reshape(per_channel)
        y = y.to(x.dtype)  # float32 parameters of half x promote
    return (torch.nn.functional.silu(y) if silu else y), None, None


def _check(x, num_groups, weight, bias, eps, scale, shift, act) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DATA_DTYPES:
        raise TypeError(f"x must be {DATA_DTYPE_NAMES}, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must be [B, C, *spatial] (at least 2-d), got shape {list(x.shape)}")
    channels = x.shape[1]
    # (``type() is`` first: the ABC checks cost a microsecond a call at small sizes)
    if type(num_groups) is not int and (isinstance(num_groups, bool)
                                         or not isinstance(num_groups, numbers.Integral)):
        raise TypeError(f"num_groups must be an int, got {num_groups!r}")
    if num_groups < 1 or channels % num_groups != 0:
        raise ValueError(f"num_groups must be a positive divisor of the {channels} channels of x, "
                         f"got {num_groups}")
    if type(eps) is not float and (isinstance(eps, bool) or not isinstance(eps, numbers.Real)):
        raise TypeError(f"eps must be a float, got {eps!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be None or 'silu', got {act!r}")
    for t, name, shape in ((weight, "weight", (channels,)), (bias, "bias", (channels,)),
                           (scale, "scale", (x.shape[0], channels)),
                           (shift, "shift", (x.shape[0], channels))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.shape != shape:
            what = "[C]" if len(shape) == 1 else "[B, C]"
            raise ValueError(f"{name} must be {what} = {list(shape)}, got shape {list(t.shape)}")
        if t.dtype is not x.dtype and t.dtype is not torch.float32:
            also = "" if x.dtype == torch.float32 else " or float32"
            raise TypeError(f"{name} has dtype {t.dtype}, expected x's dtype {x.dtype}{also}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")


@_autograd.formula("group_norm")
def _group_norm_autograd(namespace):
    """Through the namespace's ``group_norm_backward(grad_y, x, mean, rstd, num_groups, weight?,
    bias?, scale?, shift?, silu) -> (grad_x, grad_weight, grad_bias, grad_scale, grad_shift)``
    (gradients of absent parameters empty); mean and rstd, the second and third outputs, are not
    differentiable."""
    backward_op = getattr(torch.ops, namespace).group_norm_backward

    def setup_context(ctx, inputs, output):
        x, num_groups, weight, bias, scale, shift, _eps, silu = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)
        ctx.num_groups, ctx.silu = num_groups, silu

    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        grads = backward_op(grad_y, x, mean, rstd, ctx.num_groups, weight, bias, scale, shift,
                            ctx.silu)
        params = (weight, bias, scale, shift)
        grad_x, *grad_params = grads
        grad_params = [g if p is not None else None for g, p in zip(grad_params, params)]
        return grad_x, None, *grad_params, None, None

    return backward, setup_context
