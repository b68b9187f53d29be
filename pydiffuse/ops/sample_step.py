"""``sample_step``: the step equation of every sampler, fused, and its gradient."""

from collections.abc import Sequence

from . import _autograd, _dispatch, reference
from ._checks import (check_data, check_number, check_same, check_step_index, check_stream_size,
                      is_nonzero)
from ._packing import (COEF_INDEX, STEP_ROW_NAMES, StepCoefs, pack_rows, pack_seeds,
                       step_coef_values)


def sample_step(x, out, coefs, *, out_uncond=None, guidance=None, clip=None, learned_var=None,
                noise=None, seed=None, step=0, return_x0=False):
    """One sampler step, fused: one read of x and the model output(s), one write of the result.

    o    = out_uncond + guidance (out - out_uncond)       (classifier-free guidance, Ho & Salimans)
    x0   = cx x + co o;  x0 = clamp(x0, -clip, clip)      (any parameterization -> x0)
    eps  = ex x + e0 x0                                   (eps implied by the clipped x0)
    next = m0 x0 + me eps + mx x + s z                    (DDPM, DDIM, ancestral, Euler, ...)

    Args:
        x: [B, ...] current sample, float32/float16/bfloat16 (arithmetic in float32), or
            float64 (arithmetic and coefficients in float64, on the reference backend by
            default).
        out: model output, x's shape; [B, 2C, ...] with ``learned_var`` (second half: v).
        coefs: ``StepCoefs``; each field a float or a [B] tensor.
        out_uncond: unconditional output (out's shape), with ``guidance`` (float or [B]).
        clip: clamp x0 to [-clip, clip] (float or [B]).
        learned_var: (log_lo, log_hi): s *= exp(0.5 (f log_hi + (1 - f) log_lo)), f = (v+1)/2
            (iDDPM learned range; log_lo = clipped log beta~_t, log_hi = log beta_t).
        noise: z given as a tensor of x's shape; or ``seed`` (int, or one per sample) and
            ``step`` to draw z from the noise stream (``pydiffuse.ops.randn(x.shape, seed, step)``).
        return_x0: also return the (clipped) x0.

    Returns:
        next [x's shape], or (next, x0).
    """
    check_data(x, "x")
    if not isinstance(coefs, StepCoefs):
        raise TypeError(f"coefs must be a pydiffuse.ops.StepCoefs, got {type(coefs).__name__}")
    out_shape = None
    if learned_var is not None:
        if x.ndim < 2:
            raise ValueError("learned_var needs x of shape [B, C, ...]")
        if not (isinstance(learned_var, Sequence) and len(learned_var) == 2):
            raise TypeError("learned_var must be a pair (log_lo, log_hi)")
        out_shape = list(x.shape)
        out_shape[1] *= 2
    check_same(out, x, "out", out_shape)
    if (out_uncond is None) != (guidance is None):
        raise ValueError("out_uncond and guidance go together: give both or neither")
    if out_uncond is not None:
        check_same(out_uncond, x, "out_uncond", out_shape)
        check_number(guidance, "guidance")
    if clip is not None:
        check_number(clip, "clip", positive=True)
    if noise is not None and seed is not None:
        raise ValueError("give noise or seed, not both")
    if noise is not None:
        check_same(noise, x, "noise")
    step = check_step_index(step)
    if noise is None and seed is None and is_nonzero(coefs.s):
        raise ValueError("coefs.s multiplies the noise z: pass noise= or seed= (or s=0.0)")

    batch, device = x.shape[0], x.device
    lo, hi = learned_var if learned_var is not None else (0.0, 0.0)
    table = pack_rows([*step_coef_values(coefs), 0.0 if guidance is None else guidance,
                       0.0 if clip is None else clip, lo, hi], STEP_ROW_NAMES, batch, device,
                      x.dtype)
    seeds = None
    if seed is not None:
        check_stream_size(x.shape)
        seeds = pack_seeds(seed, batch, device)
    nxt, x0 = _dispatch.select("sample_step", device, x.dtype)(
        x, out, out_uncond, table, noise, seeds, step, clip is not None, learned_var is not None,
        return_x0)
    return (nxt, x0) if return_x0 else nxt


@_autograd.formula("sample_step")
def _sample_step_autograd(namespace):
    """The gradients (g of next, g_x0 of x0, G = k g + g_x0 with k = m0 + me e0; w = guidance,
    1 without out_uncond). Linear case (no clip, fixed variance):

        o = u + w (out - u),  x0 = cx x + co o,  next = k x0 + (mx + me ex) x + s z
        dx = (mx + me ex) g + cx G,  dout = w co G,  du = (1 - w) co G,  dz = s g

    each one fused lincomb of the namespace; the coefficient table's gradient (a per-sample
    reduction), clip's clamp (torch.maximum / minimum's convention: half the gradient at a tie)
    and learned_var's exp(v): the reference op's gradient, recomputed."""
    ops = _autograd.kernels(namespace)

    def setup_context(ctx, inputs, output):
        x, out, out_uncond, coefs, noise, seeds, step, has_clip, learned_var, return_x0 = inputs
        if not return_x0:
            ctx.mark_non_differentiable(output[1])  # the empty placeholder
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, out, out_uncond, coefs, noise, seeds)
        ctx.flags = (step, has_clip, learned_var, return_x0)

    def backward(ctx, g_next, g_x0):
        x, out, out_uncond, coefs, noise, seeds = ctx.saved_tensors
        step, has_clip, learned_var, return_x0 = ctx.flags
        g_x0 = g_x0 if return_x0 else None
        grads = [None] * 10
        wanted = [i for i in range(5) if ctx.needs_input_grad[i]]
        if g_next is None and g_x0 is None:
            return tuple(grads)
        linear = not (has_clip or learned_var)
        if linear:
            c = {name: coefs[i] for name, i in COEF_INDEX.items()}
            w = c["guidance"] if out_uncond is not None else 1.0
            k = c["m0"] + c["me"] * c["e0"]
            through = {0: (c["mx"] + c["me"] * c["ex"], c["cx"]), 1: (0.0, w * c["co"]),
                       2: (0.0, (1 - w) * c["co"]), 4: (c["s"], 0.0)}
            for i in wanted:
                if i != 3:
                    grads[i] = _autograd.combine(ops.lincomb, g_next, g_x0, k, *through[i])
        recompute = [i for i in wanted if not linear or i == 3]
        if recompute:
            noise, seeds = _autograd.stream_noise(ops.randn, x, noise, seeds, step)
            found = _autograd.reference_grads(
                reference.sample_step, (x, out, out_uncond, coefs, noise, seeds, step, has_clip,
                                        learned_var, return_x0), recompute, (g_next, g_x0))
            for i, grad in found.items():
                grads[i] = grad
        return tuple(grads)

    return backward, setup_context
