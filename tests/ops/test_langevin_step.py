"""langevin_step on every backend against the reference, plain and SNR-adaptive."""

import pytest
import torch

from pydiffuse.ops import langevin_step, randn
from tests.conftest import backend_device
from tests.ops.helpers import DTYPES, LAYOUTS, SHAPES, assert_close, make, per_sample, reference_of

MODES = ("plain", "per_sample_size", "snr_batch", "snr_sample", "seed", "seeds_snr")


def _kwargs(mode, shape, dtype, device, layout):
    batch = shape[0]
    kwargs = dict(step_size=0.01, noise=make(shape, dtype, device, layout))
    if mode == "per_sample_size":
        kwargs["step_size"] = per_sample(batch, device, 0.001, 0.1)
    if mode.startswith("snr") or mode == "seeds_snr":
        kwargs.update(snr=0.16, norm="sample" if mode == "snr_sample" else "batch")
    if mode in ("seed", "seeds_snr"):
        kwargs.update(noise=None, step=9, seed=5 if mode == "seed" else list(range(batch)))
    return kwargs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_name, shape, dtype, layout, mode):
    device = backend_device(backend_name)
    x, score = make(shape, dtype, device, layout), make(shape, dtype, device, layout)
    kwargs = _kwargs(mode, shape, dtype, device, layout)
    nxt, mean = langevin_step(x, score, return_mean=True, **kwargs)
    ref_next, ref_mean = reference_of(langevin_step, x, score, return_mean=True, **kwargs)
    assert nxt.shape == x.shape and nxt.dtype == dtype
    assert_close(mean, ref_mean, dtype)
    assert_close(nxt, ref_next, dtype)


def test_snr_step_size_by_hand(backend_name):
    """The corrector's e = 2 alpha (snr |z| / |score|)^2 with batch-averaged norms (score_sde)."""
    device = backend_device(backend_name)
    x, score = make((4, 50), torch.float32, device), make((4, 50), torch.float32, device, scale=3)
    z = randn([4, 50], 11, 2, device=device)
    alpha, snr = 0.9, 0.2
    e = 2 * alpha * (snr * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    _, mean = langevin_step(x, score, alpha, snr=snr, seed=11, step=2, return_mean=True)
    torch.testing.assert_close(mean, x + e * score, atol=1e-5, rtol=1e-5)
