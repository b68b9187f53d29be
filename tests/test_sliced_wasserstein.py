"""The sliced Wasserstein distance: zero on identical sets, exact shifts in 1-D, the expected
shift in D dimensions, unequal sizes, errors."""

import math

import pytest
import torch

from pydiffuse.stats import sliced_wasserstein


def _draws(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d", [1, 2, 8])
def test_zero_for_identical_sets(d):
    x = _draws(500, d)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(500)]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("delta", [0.3, -2.0])
def test_translation_in_1d_is_exact(delta):
    x = _draws(400, 1)
    assert sliced_wasserstein(x, x + delta) == pytest.approx(abs(delta), rel=1e-6)
    assert sliced_wasserstein(x.reshape(-1), x.reshape(-1) + delta) == pytest.approx(abs(delta),
                                                                                    rel=1e-6)


def test_translation_in_d_dimensions():
    """SW_2^2 of a shift by delta is E_theta (theta . delta)^2 = |delta|^2 / D."""
    x = _draws(300, 4)
    delta = torch.tensor([1.0, -2.0, 0.5, 2.0])
    got = sliced_wasserstein(x, x + delta, num_projections=4000)
    assert got == pytest.approx(float(delta.norm()) / math.sqrt(4), rel=0.05)


def test_unequal_sizes():
    x, y = _draws(300, 1), _draws(700, 1, seed=1)
    assert sliced_wasserstein(x, y + 3.0) == pytest.approx(3.0, abs=0.15)
    assert sliced_wasserstein(x, y) < 0.15
    assert sliced_wasserstein(x, x[:150]) < 0.15


def test_separates_distributions_and_is_symmetric():
    x, y = _draws(1000, 2), _draws(1000, 2, seed=1)
    assert sliced_wasserstein(x, y) < 0.1
    assert sliced_wasserstein(x, 2 * y) > 0.4
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)


def test_images_are_flattened():
    x = _draws(50, 12)
    assert sliced_wasserstein(x.reshape(50, 3, 2, 2), x.reshape(50, 3, 2, 2) + 1.0) == \
        pytest.approx(sliced_wasserstein(x, x + 1.0), rel=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(_draws(10, 2), _draws(10, 3))
    with pytest.raises(ValueError, match="at least 2"):
        sliced_wasserstein(_draws(1, 2), _draws(10, 2))
