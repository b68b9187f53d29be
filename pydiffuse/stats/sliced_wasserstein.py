"""The sliced Wasserstein distance between two sample sets (Rabin et al. 2011; Bonneel et al.
2015): SW_2(X, Y)^2 = E_theta W_2(theta^T X, theta^T Y)^2 over random unit directions theta,
each 1-D W_2 from sorted projections (equal sizes) or matched quantiles."""

import torch


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256,
                       seed: int = 0) -> float:
    """SW_2 between samples x [N, ...] and y [M, ...] (flattened to D), Monte Carlo over
    ``num_projections`` directions drawn with ``seed``.

    Returns:
        the distance (a float, in the data's units).
    """
    x = x.reshape(len(x), -1).to(torch.float64).cpu()
    y = y.reshape(len(y), -1).to(torch.float64).cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has dimension {x.shape[1]}, y {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("need at least 2 samples in each set")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], num_projections, dtype=torch.float64, generator=gen)
    theta /= theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    if len(px) != len(py):
        q = torch.linspace(0, 1, max(len(px), len(py)), dtype=torch.float64)
        px, py = (torch.quantile(p, q, dim=0) for p in (px, py))
    return float((px - py).pow(2).mean().sqrt())
