"""Toy 2-D data sets for score models: swiss roll, two moons, concentric rings, and a mixture of
Gaussians on a circle. Each is a ``TensorDataset`` of float32 points [n, 2] of scale ~1 (and
int64 labels with ``labels=True``), a pure function of (n, noise, seed)."""

import math

import torch
from torch.utils.data import TensorDataset


def _dataset(x, y, noise: float, gen, labels: bool) -> TensorDataset:
    x = x + noise * torch.randn(x.shape, dtype=torch.float64, generator=gen)
    x = x.to(torch.float32)
    return TensorDataset(x, y) if labels else TensorDataset(x)


def _check(n, noise):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")


def swiss_roll(n: int = 10_000, *, noise: float = 0.05, seed: int = 0) -> TensorDataset:
    """The 2-D swiss roll (scikit-learn's ``make_swiss_roll`` seen from above, scaled by 1/5):
    s = 1.5 pi (1 + 2u), u ~ U[0, 1); x = (s cos s, s sin s) / 5 + noise * N(0, I)."""
    _check(n, noise)
    gen = torch.Generator().manual_seed(seed)
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, dtype=torch.float64, generator=gen))
    return _dataset(torch.stack([s * s.cos(), s * s.sin()], 1) / 5, None, noise, gen, False)


def moons(n: int = 10_000, *, noise: float = 0.05, seed: int = 0,
          labels: bool = False) -> TensorDataset:
    """Two interleaving half circles (scikit-learn's ``make_moons``, centred): label 0 on
    (cos a, sin a) and label 1 on (1 - cos a, 1/2 - sin a), a ~ U[0, pi), shifted by
    (-1/2, -1/4); each point's moon drawn with probability 1/2."""
    _check(n, noise)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=gen)
    a = math.pi * torch.rand(n, dtype=torch.float64, generator=gen)
    upper = torch.stack([a.cos(), a.sin()], 1)
    lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1)
    x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return _dataset(x, y, noise, gen, labels)


def rings(n: int = 10_000, *, radii=(0.5, 1.0, 1.5), noise: float = 0.03, seed: int = 0,
          labels: bool = False) -> TensorDataset:
    """Concentric circles: ring k (uniform over the rings) of radius radii[k], angle uniform;
    label k."""
    _check(n, noise)
    radii = torch.as_tensor(radii, dtype=torch.float64).reshape(-1)
    if len(radii) == 0 or (radii <= 0).any():
        raise ValueError(f"radii must be positive, got {radii.tolist()}")
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(len(radii), (n,), generator=gen)
    a = 2 * math.pi * torch.rand(n, dtype=torch.float64, generator=gen)
    return _dataset(radii[y, None] * torch.stack([a.cos(), a.sin()], 1), y, noise, gen, labels)


def circle_means(num_components: int = 8, radius: float = 2.0) -> torch.Tensor:
    """[K, 2] means evenly spaced on a circle: radius (cos 2 pi k / K, sin 2 pi k / K)."""
    angle = 2 * math.pi * torch.arange(num_components, dtype=torch.float64) / num_components
    return radius * torch.stack([angle.cos(), angle.sin()], 1)


def gaussian_mixture(n: int = 10_000, *, num_components: int = 8, radius: float = 2.0,
                     noise: float = 0.1, seed: int = 0, labels: bool = False) -> TensorDataset:
    """K isotropic Gaussians N(mu_k, noise^2 I) with equal weights, mu_k = ``circle_means``;
    label k. Its exact score under any process is
    ``pydiffuse.nn.GaussianMixtureScore(circle_means(K, radius), noise ** 2, process=...)``."""
    _check(n, noise)
    if not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"num_components must be a positive int, got {num_components!r}")
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(num_components, (n,), generator=gen)
    return _dataset(circle_means(num_components, radius)[y], y, noise, gen, labels)


TOY_SETS = {"swiss_roll": swiss_roll, "moons": moons, "rings": rings,
            "gaussian_mixture": gaussian_mixture}
