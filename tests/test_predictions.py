"""eps, x0, v and score predictions: exact values at x = a x0 + sigma eps map back to x0 and to
each other, for scalar and per-sample (a, sigma) that need not satisfy a^2 + sigma^2 = 1."""

import pytest
import torch

from pydiffuse.predictions import (PREDICTIONS, check_prediction, convert, eps_coefs,
                                   target_coefs, x0_coefs)

B = 6


def _case(per_sample: bool):
    """(x, truths, a, sigma) in float64 with every prediction's exact value."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(B, 3, 4, dtype=torch.float64, generator=gen)
    eps = torch.randn(B, 3, 4, dtype=torch.float64, generator=gen)
    if per_sample:
        a = 0.05 + torch.rand(B, dtype=torch.float64, generator=gen)
        s = 0.05 + 3 * torch.rand(B, dtype=torch.float64, generator=gen)
        ab, sb = a[:, None, None], s[:, None, None]
    else:
        a, s = 0.7, 1.9
        ab, sb = a, s
    x = ab * x0 + sb * eps
    truths = {"eps": eps, "x0": x0, "v": ab * eps - sb * x0, "score": -eps / sb}
    return x, truths, a, s


def _bcast(c):
    return c[:, None, None] if isinstance(c, torch.Tensor) else c


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_x0_coefs_recover_x0(prediction, per_sample):
    x, truths, a, s = _case(per_sample)
    cx, co = (_bcast(c) for c in x0_coefs(prediction, a, s))
    torch.testing.assert_close(cx * x + co * truths[prediction], truths["x0"], rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("per_sample", [False, True])
def test_eps_coefs(per_sample):
    x, truths, a, s = _case(per_sample)
    ex, e0 = (_bcast(c) for c in eps_coefs(a, s))
    torch.testing.assert_close(ex * x + e0 * truths["x0"], truths["eps"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("target", PREDICTIONS)
def test_target_coefs(target, per_sample):
    x, truths, a, s = _case(per_sample)
    p, q = (_bcast(c) for c in target_coefs(target, a, s))
    torch.testing.assert_close(p * x + q * truths["x0"], truths[target], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("target", PREDICTIONS)
@pytest.mark.parametrize("source", PREDICTIONS)
def test_convert_every_pair(source, target, per_sample):
    """convert runs in float32 through lincomb: compare with a float32 tolerance."""
    x, truths, a, s = _case(per_sample)
    got = convert(truths[source].float(), x.float(), a, s, source=source, target=target)
    assert got.dtype == torch.float32 and got.shape == x.shape
    scale = truths[target].abs().max()
    torch.testing.assert_close(got.double(), truths[target], rtol=1e-4, atol=1e-5 * scale)


def test_convert_accepts_zero_dim_tensors():
    x, truths, _, _ = _case(False)
    got = convert(truths["v"].float(), x.float(), torch.tensor(0.7, dtype=torch.float64),
                  torch.tensor(1.9, dtype=torch.float64), source="v", target="eps")
    torch.testing.assert_close(got.double(), truths["eps"], rtol=1e-4, atol=1e-5)


def test_vp_special_case():
    """With a^2 + sigma^2 = 1 (DDPM), x0 = a x - sigma v (Salimans & Ho)."""
    cx, co = x0_coefs("v", 0.6, 0.8)
    assert (cx, co) == pytest.approx((0.6, -0.8))


@pytest.mark.parametrize("bad", ["epsilon", "sample", "", None])
def test_bad_prediction(bad):
    with pytest.raises(ValueError, match="prediction must be one of"):
        check_prediction(bad)
    with pytest.raises(ValueError, match="prediction must be one of"):
        x0_coefs(bad, 0.5, 0.5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        target_coefs(bad, 0.5, 0.5)
