"""``langevin_step``: the Langevin update of SGLD, annealed Langevin (NCSN) and the score-SDE
corrector, fused, and its gradient."""

from . import _autograd, _dispatch, reference
from ._checks import check_data, check_number, check_same, check_step_index, check_stream_size
from ._packing import LANGEVIN_COEF_NAMES, LANGEVIN_STEP_SIZE, pack_rows, pack_seeds

NORMS = ("batch", "sample")


def langevin_step(x, score, step_size, *, snr=None, norm="batch", noise=None, seed=None, step=0,
                  return_mean=False):
    """mean = x + e score;  next = mean + sqrt(2 e) z.

    e = step_size (annealed Langevin, Song & Ermon 2019, with step_size = alpha_i / 2), or with
    ``snr`` the score-SDE corrector's e = 2 step_size (snr |z| / |score|)^2 (Song et al. 2021,
    Alg. 4-5, step_size = alpha_i), |.| the L2 norm of each sample, averaged over the batch for
    ``norm="batch"`` as the reference code does, or per sample for ``norm="sample"``.

    Args:
        x, score: [B, ...], one dtype (float32/float16/bfloat16: arithmetic in float32;
            float64: in float64 on the reference backend by default).
        step_size, snr: float or [B] tensor.
        noise: z as a tensor of x's shape, or ``seed`` (int or one per sample) and ``step``.
        return_mean: also return the noise-free mean.

    Returns:
        next, or (next, mean).
    """
    check_data(x, "x")
    check_same(score, x, "score")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if noise is not None and seed is not None:
        raise ValueError("give noise or seed, not both")
    if noise is None and seed is None:
        raise ValueError("langevin_step needs noise= or seed= (z of the update)")
    if noise is not None:
        check_same(noise, x, "noise")
    step = check_step_index(step)
    check_number(step_size, "step_size", minimum=0)
    if snr is not None:
        check_number(snr, "snr", positive=True)
    batch, device = x.shape[0], x.device
    table = pack_rows([step_size, 0.0 if snr is None else snr], LANGEVIN_COEF_NAMES, batch,
                      device, x.dtype)
    seeds = None
    if seed is not None:
        check_stream_size(x.shape)
        seeds = pack_seeds(seed, batch, device)
    nxt, mean = _dispatch.select("langevin_step", device, x.dtype)(
        x, score, table, snr is not None, norm == "sample", noise, seeds, step, return_mean)
    return (nxt, mean) if return_mean else nxt


@_autograd.formula("langevin_step")
def _langevin_step_autograd(namespace):
    """mean = x + e score,  next = mean + sqrt(2e) z;  G = g + g_mean (g of next, g_mean of
    mean). Without snr: dx = G, dscore = e G, dz = sqrt(2e) g, each a fused lincomb of the
    namespace; the step sizes' gradient, and everything with snr (e through the norms of score
    and z): the reference op's, recomputed."""
    ops = _autograd.kernels(namespace)
    positions = (0, 1, 2, 5)  # x, score, coefs, noise in the op's schema

    def setup_context(ctx, inputs, output):
        x, score, coefs, adaptive, per_sample_norm, noise, seeds, step, return_mean = inputs
        if not return_mean:
            ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, score, coefs, noise, seeds)
        ctx.flags = (adaptive, per_sample_norm, step, return_mean)

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
                    grads[i] = _autograd.combine(ops.lincomb, g_next, g_mean, 1.0, *through[i])
        recompute = [i for i in wanted if adaptive or i == 2]
        if recompute:
            noise, seeds = _autograd.stream_noise(ops.randn, x, noise, seeds, step)
            found = _autograd.reference_grads(
                reference.langevin_step, (x, score, coefs, adaptive, per_sample_norm, noise,
                                          seeds, step, return_mean), recompute, (g_next, g_mean))
            for i, grad in found.items():
                grads[i] = grad
        return tuple(grads)

    return backward, setup_context
