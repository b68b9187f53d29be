"""Toy 2-D sets: shapes, determinism by seed, and the exact curves they lie on without noise."""

import math

import pytest
import torch

from pydiffuse.data import TOY_SETS, circle_means, gaussian_mixture, moons, rings, swiss_roll

LABELLED = ["moons", "rings", "gaussian_mixture"]


@pytest.mark.parametrize("name", list(TOY_SETS))
def test_shape_and_seed(name):
    make = TOY_SETS[name]
    a, b, c = make(300, seed=1), make(300, seed=1), make(300, seed=2)
    x = a.tensors[0]
    assert x.shape == (300, 2) and x.dtype == torch.float32 and len(a.tensors) == 1
    assert torch.equal(x, b.tensors[0]) and not torch.equal(x, c.tensors[0])
    assert 0.3 < x.std().item() < 3.0                      # scale ~1


@pytest.mark.parametrize("name", LABELLED)
def test_labels(name):
    x, y = TOY_SETS[name](400, seed=0, labels=True).tensors
    assert y.dtype == torch.int64 and len(y) == len(x)
    k = {"moons": 2, "rings": 3, "gaussian_mixture": 8}[name]
    assert set(y.tolist()) == set(range(k))
    assert torch.equal(x, TOY_SETS[name](400, seed=0).tensors[0])    # labels change nothing


def test_curves_without_noise():
    x, y = moons(500, noise=0.0, labels=True).tensors
    x = x.double() + torch.tensor([0.5, 0.25], dtype=torch.float64)
    centre = torch.where(y[:, None] == 0, torch.tensor([0.0, 0.0], dtype=torch.float64),
                         torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert torch.allclose((x - centre).norm(dim=1), torch.ones(500, dtype=torch.float64),
                          atol=1e-6)
    assert ((x[:, 1] - centre[:, 1]) * torch.where(y == 0, 1.0, -1.0) >= -1e-6).all()

    x, y = rings(500, radii=(0.5, 2.0), noise=0.0, labels=True).tensors
    assert torch.allclose(x.norm(dim=1), torch.tensor([0.5, 2.0])[y], atol=1e-6)

    x, y = gaussian_mixture(500, num_components=5, radius=3.0, noise=0.0, labels=True).tensors
    assert torch.allclose(x.double(), circle_means(5, 3.0)[y], atol=1e-6)

    x = swiss_roll(500, noise=0.0).tensors[0].double() * 5      # (s cos s, s sin s)
    s = x.norm(dim=1)
    assert s.min() >= 1.5 * math.pi - 1e-4 and s.max() <= 4.5 * math.pi + 1e-4
    assert torch.allclose(torch.stack([s * s.cos(), s * s.sin()], 1), x, atol=1e-4)


def test_noise_level():
    x, y = gaussian_mixture(4000, num_components=4, noise=0.2, labels=True).tensors
    residual = x.double() - circle_means(4)[y]
    assert residual.std().item() == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("bad", [{"n": 0}, {"noise": -1.0}])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        moons(**{"n": 10, **bad})
