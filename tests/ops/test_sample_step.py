"""sample_step on every backend against the pure-torch reference, on fresh random data."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, randn, sample_step
from tests.conftest import backend_device
from tests.ops.helpers import DTYPES, LAYOUTS, SHAPES, assert_close, make, per_sample, reference_of

FEATURES = ("plain", "per_sample", "guided_clipped", "learned_var", "seed", "seeds", "everything")


def _case(feature, shape, dtype, device, layout):
    """(x, out, kwargs) for one feature combination of the step equation."""
    batch = shape[0]
    x = make(shape, dtype, device, layout)
    out_shape = list(shape)
    learned = feature in ("learned_var", "everything") and len(shape) >= 2
    if learned:
        out_shape[1] *= 2
    out = make(out_shape, dtype, device, layout)
    scalar = dict(cx=1.3, co=-0.7, ex=0.4, e0=-0.2, m0=0.9, me=0.35, mx=0.05, s=0.3)
    if feature in ("per_sample", "everything"):
        scalar = {k: per_sample(batch, device) for k in scalar}
    kwargs = dict(coefs=StepCoefs(**scalar), noise=make(shape, dtype, device, layout))
    if feature in ("guided_clipped", "everything"):
        kwargs.update(out_uncond=make(out_shape, dtype, device, layout), guidance=3.0, clip=0.5)
    if learned:
        kwargs["learned_var"] = (per_sample(batch, device, -6, -4), -3.0)
    if feature in ("seed", "seeds", "everything"):
        kwargs["noise"] = None
        kwargs["seed"] = 1234 if feature == "seed" else list(range(7, 7 + batch))
        kwargs["step"] = 17
    return x, out, kwargs


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_name, shape, dtype, layout, feature):
    device = backend_device(backend_name)
    x, out, kwargs = _case(feature, shape, dtype, device, layout)
    nxt, x0 = sample_step(x, out, return_x0=True, **kwargs)
    ref_next, ref_x0 = reference_of(sample_step, x, out, return_x0=True, **kwargs)
    assert nxt.shape == x.shape and nxt.dtype == dtype and nxt.device == x.device
    assert_close(x0, ref_x0, dtype)
    assert_close(nxt, ref_next, dtype)


def test_output_keeps_channels_last(backend_name):
    device = backend_device(backend_name)
    x = make((2, 3, 4, 5), torch.float32, device, "channels_last")
    nxt = sample_step(x, x.clone(), StepCoefs(cx=1.0, mx=1.0))
    assert nxt.is_contiguous(memory_format=torch.channels_last)


def test_seeded_step_equals_step_with_the_stream(backend_name):
    """A fused step with seed=s equals the step with noise=randn(x.shape, s, step)."""
    device = backend_device(backend_name)
    x = make((3, 2, 9, 11), torch.float32, device, "channels_last")
    out = make((3, 2, 9, 11), torch.float32, device)
    coefs = StepCoefs(co=1.0, m0=0.8, me=0.5, s=0.7)
    fused = sample_step(x, out, coefs, seed=[3, 1, 4], step=5)
    z = randn(list(x.shape), [3, 1, 4], 5, device=device)
    unfused = sample_step(x, out, coefs, noise=z.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fused, unfused, atol=1e-6, rtol=1e-6)


def test_ddpm_posterior_step_by_hand(backend_name):
    """The packed coefficients mean what the formula says: a DDPM eps-step computed by hand."""
    device = backend_device(backend_name)
    abar_t, abar_prev = 0.5, 0.6
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    x, eps, z = (make((2, 33), torch.float32, device) for _ in range(3))
    coefs = StepCoefs(cx=abar_t ** -0.5, co=-((1 - abar_t) / abar_t) ** 0.5,
                      m0=abar_prev ** 0.5 * beta / (1 - abar_t),
                      mx=alpha ** 0.5 * (1 - abar_prev) / (1 - abar_t),
                      s=(beta * (1 - abar_prev) / (1 - abar_t)) ** 0.5)
    x0 = (x - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5
    expected = coefs.m0 * x0 + coefs.mx * x + coefs.s * z
    torch.testing.assert_close(sample_step(x, eps, coefs, noise=z), expected, atol=1e-5, rtol=1e-5)


def test_empty_batch(backend_name):
    device = backend_device(backend_name)
    x = torch.empty(0, 3, device=device)
    assert sample_step(x, x, StepCoefs(cx=1.0)).shape == (0, 3)
