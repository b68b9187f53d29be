"""Autograd of the fused step ops ``sample_step``, ``lincomb`` and ``langevin_step`` on the
compiled backends: the ``pydiffuse::`` ops (C++ / CUDA) and the ``pydiffuse_triton::`` ops.

The gradients of the tensor inputs in the linear cases are themselves fused ops, the backend's
own ``lincomb`` (g: the gradient of the first output; G that of the second one, the gradient
at x0 or at the mean, including the first output's dependence on it):

    lincomb         out = sum_i c_i T_i                          dT_i = c_i g
    sample_step     o = u + w (out - u),  x0 = cx x + co o,      G = k g + g_x0,  k = m0 + me e0
    (no clip,       next = k x0 + (mx + me ex) x + s z           dx = (mx + me ex) g + cx G
     fixed var.)                                                 dout = w co G,  du = (1 - w) co G
                                                                 dz = s g   (w = 1 without u)
    langevin_step   mean = x + e score,  next = mean + sqrt(2e) z    G = g + g_mean
    (no snr)                                                     dx = G,  dscore = e G,
                                                                 dz = sqrt(2e) g

Everything else is the ``reference`` op's own gradient, recomputed (the op re-run in pure torch
under enable_grad, then torch.autograd.grad): the packed coefficient table's gradient (a
per-sample reduction), clip's clamp (its boundary convention is torch.maximum / minimum's:
half the gradient at a tie), learned_var's exp(v) and the snr step size's norms of score and z.
Noise drawn from the stream (``seeds``) is a constant: it has no gradient; the recomputation
takes it from the backend's own ``randn`` (the same stream, far cheaper than the reference's
Philox in torch ops, and quick to compile).
"""

import types

import torch

from . import reference
from ._packing import COEF_INDEX, LANGEVIN_STEP_SIZE


def _combine(lincomb_op, g, g_second, k, direct, via_second):
    """``direct g + via_second (k g + g_second)`` as one fused lincomb; ``direct``, ``via_second``
    and ``k`` are [B] rows (or floats); g or g_second None (no gradient) drops out."""
    terms, rows = [], []
    if g is not None:
        terms.append(g)
        rows.append(direct + via_second * k)
    if g_second is not None:
        terms.append(g_second)
        rows.append(via_second)
    batch, device = terms[0].shape[0], terms[0].device
    rows = [torch.as_tensor(r, dtype=torch.float32, device=device).expand(batch) for r in rows]
    return lincomb_op(terms, torch.stack(rows))


def _stream_noise(randn_op, x, noise, seeds, step):
    """(noise, seeds) for the reference recomputation: the stream's z as a tensor when drawn."""
    if seeds is None:
        return noise, None
    return randn_op(seeds, list(x.shape), step, torch.float32), None


def _reference_grads(fn, args, wanted, grads):
    """{i: gradient of args[i]} for i in ``wanted``, of the reference op ``fn(*args)`` given the
    gradients of its outputs (None: none): exactly the reference backend's gradient."""
    keep = torch.is_grad_enabled()  # create_graph: the recomputation stays differentiable

    def leaf(i, a):
        if keep:
            return a
        if isinstance(a, list):  # lincomb's tensors
            return [t.detach() for t in a]
        return a.detach().requires_grad_(i in wanted) if isinstance(a, torch.Tensor) else a

    with torch.enable_grad():
        args = [leaf(i, a) for i, a in enumerate(args)]
        outs = fn(*args)
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    if not pairs:
        return {}
    found = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted],
                                [g for _, g in pairs], allow_unused=True, create_graph=keep)
    return dict(zip(wanted, found))


def _setup_sample_step(ctx, inputs, output):
    x, out, out_uncond, coefs, noise, seeds, step, has_clip, learned_var, return_x0 = inputs
    if not return_x0:
        ctx.mark_non_differentiable(output[1])  # the empty placeholder
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, out, out_uncond, coefs, noise, seeds)
    ctx.flags = (step, has_clip, learned_var, return_x0)


def _sample_step_backward(ops):
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
                    grads[i] = _combine(ops.lincomb, g_next, g_x0, k, *through[i])
        recompute = [i for i in wanted if not linear or i == 3]
        if recompute:
            noise, seeds = _stream_noise(ops.randn, x, noise, seeds, step)
            found = _reference_grads(
                reference.sample_step, (x, out, out_uncond, coefs, noise, seeds, step, has_clip,
                                        learned_var, return_x0), recompute, (g_next, g_x0))
            for i, grad in found.items():
                grads[i] = grad
        return tuple(grads)

    return backward


def _setup_lincomb(ctx, inputs, output):
    tensors, coefs = inputs
    ctx.save_for_backward(coefs, *tensors)


def _lincomb_backward(ops):
    def backward(ctx, g):
        coefs, *tensors = ctx.saved_tensors
        need_tensors, need_coefs = ctx.needs_input_grad
        grads = [ops.lincomb([g], coefs[i:i + 1]) if need else None
                 for i, need in enumerate(need_tensors)]
        grad_coefs = None
        if need_coefs:
            grad_coefs = _reference_grads(reference.lincomb, (tensors, coefs), [1], (g,)).get(1)
        return grads, grad_coefs

    return backward


def _setup_langevin_step(ctx, inputs, output):
    x, score, coefs, adaptive, per_sample_norm, noise, seeds, step, return_mean = inputs
    if not return_mean:
        ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, score, coefs, noise, seeds)
    ctx.flags = (adaptive, per_sample_norm, step, return_mean)


def _langevin_step_backward(ops):
    # Input positions of x, score, coefs, noise in the op's schema.
    positions = (0, 1, 2, 5)

    def backward(ctx, g_next, g_mean):
        x, score, coefs, noise, seeds = ctx.saved_tensors
        adaptive, per_sample_norm, step, return_mean = ctx.flags
        g_mean = g_mean if return_mean else None
        grads = [None] * 9
        wanted = [i for i in positions if ctx.needs_input_grad[i]]
        if g_next is None and g_mean is None:
            return tuple(grads)
        if not adaptive:
            e = coefs[LANGEVIN_STEP_SIZE]
            through = {0: (0.0, 1.0), 1: (0.0, e), 5: ((2 * e).sqrt(), 0.0)}
            for i in wanted:
                if i != 2:
                    grads[i] = _combine(ops.lincomb, g_next, g_mean, 1.0, *through[i])
        recompute = [i for i in wanted if adaptive or i == 2]
        if recompute:
            noise, seeds = _stream_noise(ops.randn, x, noise, seeds, step)
            found = _reference_grads(
                reference.langevin_step, (x, score, coefs, adaptive, per_sample_norm, noise, seeds,
                                          step, return_mean), recompute, (g_next, g_mean))
            for i, grad in found.items():
                grads[i] = grad
        return tuple(grads)

    return backward


def register_step_autograd(namespace: str) -> None:
    """Registers the autograd formulas of ``{namespace}::sample_step``, ``lincomb`` and
    ``langevin_step`` (``"pydiffuse"`` or ``"pydiffuse_triton"``), their backward running
    that namespace's ``lincomb`` and ``randn``."""
    ops = getattr(torch.ops, namespace)
    ops = types.SimpleNamespace(lincomb=ops.lincomb.default, randn=ops.randn.default)
    for name, backward, setup in (
            ("sample_step", _sample_step_backward, _setup_sample_step),
            ("lincomb", _lincomb_backward, _setup_lincomb),
            ("langevin_step", _langevin_step_backward, _setup_langevin_step)):
        torch.library.register_autograd(f"{namespace}::{name}", backward(ops),
                                        setup_context=setup)
