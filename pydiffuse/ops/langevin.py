"""``langevin_step``: the Langevin update of SGLD, annealed Langevin (NCSN) and the score-SDE
corrector, fused."""

from . import _dispatch
from ._checks import (check_data, check_dtype_backend, check_number, check_same,
                      check_step_index, check_stream_size)
from ._packing import pack_rows, pack_seeds

NORMS = ("batch", "sample")


def langevin_step(x, score, step_size, *, snr=None, norm="batch", noise=None, seed=None, step=0,
                  return_mean=False):
    """mean = x + e score;  next = mean + sqrt(2 e) z.

    e = step_size (annealed Langevin, Song & Ermon 2019, with step_size = alpha_i / 2), or with
    ``snr`` the score-SDE corrector's e = 2 step_size (snr |z| / |score|)^2 (Song et al. 2021,
    Alg. 4-5, step_size = alpha_i), |.| the L2 norm of each sample, averaged over the batch for
    ``norm="batch"`` as the reference code does, or per sample for ``norm="sample"``.

    Args:
        x, score: [B, ...], one dtype (float32/float16/bfloat16; arithmetic in float32).
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
    table = pack_rows([("step_size", step_size), ("snr", 0.0 if snr is None else snr)],
                      batch, device)
    seeds = None
    if seed is not None:
        check_stream_size(x.shape)
        seeds = pack_seeds(seed, batch, device)
    check_dtype_backend(x, _dispatch.current_backend(device))
    nxt, mean = _dispatch.implementation("langevin_step", device)(
        x, score, table, snr is not None, norm == "sample", noise, seeds, step, return_mean)
    return (nxt, mean) if return_mean else nxt
