"""NCSNv2's techniques (Song & Ermon 2020): sigma_1 from the data, the ladder ratio, and the
annealed Langevin step size, checked against brute force and a simulated chain."""

import math

import pytest
import torch

from pydiffuse.ops import langevin_step
from pydiffuse.schedules import (ald_step_size, ald_variance_ratio, ladder_ratio,
                                 num_noise_levels, sigma_max_from_data)
from tests.conftest import DEVICE


def normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_sigma_max_is_the_largest_pairwise_distance():
    """Technique 1, against all pairs (chunked computation with an odd chunk size)."""
    data = torch.randn(301, 3, 2, generator=torch.Generator().manual_seed(0)) * 2
    flat = data.reshape(301, -1).double()
    brute = max(float((flat[i] - flat[j]).norm()) for i in range(301) for j in range(i))
    assert sigma_max_from_data(data, chunk=37) == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("dim", [5, 8, 100, 3072])
def test_ladder_ratio_solves_the_phi_equation(dim):
    """Technique 2: Phi(sqrt(2D)(g - 1) + 3g) - Phi(sqrt(2D)(g - 1) - 3g) = 0.5, and the count
    L is the smallest whose geometric ratio does not exceed g."""
    g, root = ladder_ratio(dim), math.sqrt(2 * dim)
    assert g > 1
    assert normal_cdf(root * (g - 1) + 3 * g) - normal_cdf(root * (g - 1) - 3 * g) \
        == pytest.approx(0.5, abs=1e-9)
    levels = num_noise_levels(50.0, 0.01, dim)
    assert (50 / 0.01) ** (1 / (levels - 1)) <= g * (1 + 1e-12)
    assert levels == 2 or (50 / 0.01) ** (1 / (levels - 2)) > g


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_ladder_ratio_without_a_root_errors(dim):
    with pytest.raises(ValueError, match="no ladder ratio"):
        ladder_ratio(dim)


@pytest.mark.parametrize("step_lr", [2e-6, 1e-5, 4e-5])
def test_ald_variance_ratio_matches_a_simulated_chain(step_lr):
    """Technique 4: data = a point mass at 0, so at level sigma_i the score is -x / sigma_i^2;
    start at variance (gamma sigma_i)^2, run T Langevin steps of alpha_i = eps sigma_i^2 /
    sigma_L^2, compare Var(x) / sigma_i^2 with the formula (2e5 draws: 3 standard errors)."""
    gamma, sigma_min, sigma_i, steps = 1.3, 0.01, 0.5, 8
    x = torch.randn(1000, 200, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    x = x * gamma * sigma_i
    alpha = step_lr * sigma_i ** 2 / sigma_min ** 2
    for k in range(steps):
        x = langevin_step(x, -x / sigma_i ** 2, alpha, seed=4, step=k + 1)
    ratio = float(x.double().pow(2).mean()) / sigma_i ** 2
    expected = ald_variance_ratio(step_lr, gamma, sigma_min, steps)
    assert ratio == pytest.approx(expected, rel=3 * math.sqrt(2 / x.numel()))
    assert abs(expected - gamma ** 2) > 0.1         # the chain moved: the check has power


@pytest.mark.parametrize("gamma, steps", [(1.04, 5), (1.3, 20)])
def test_ald_step_size_minimizes_the_variance_ratio(gamma, steps):
    """The ratio exceeds 1 for every eps in (0, 2 sigma_L^2); ald_step_size finds its minimum."""
    sigma_min = 0.01
    best = ald_step_size(gamma, sigma_min, steps)
    at_best = ald_variance_ratio(best, gamma, sigma_min, steps)
    grid = torch.logspace(-12, math.log10(1.999), 4000, dtype=torch.float64) * sigma_min ** 2
    ratios = [ald_variance_ratio(float(e), gamma, sigma_min, steps) for e in grid]
    assert min(ratios) > 1 and at_best > 1
    assert at_best <= min(ratios) + 1e-9
