"""Sample-quality statistics: the sliced Wasserstein distance (the samplers' oracle tests) and
the digits quality score (a classifier's confidence, label entropy and Frechet distance)."""

from .digits_quality import (DigitsScorer, digits_quality, digits_scorer, frechet_distance,
                             frechet_distance_gaussians, label_entropy)
from .sliced_wasserstein import sliced_wasserstein

__all__ = ["DigitsScorer", "digits_quality", "digits_scorer", "frechet_distance",
           "frechet_distance_gaussians", "label_entropy", "sliced_wasserstein"]
