"""Sample-quality statistics: sliced Wasserstein distance (more in later issues: KSD, digits
scores)."""

from .sliced_wasserstein import sliced_wasserstein

__all__ = ["sliced_wasserstein"]
