"""Sample-quality statistics: the sliced Wasserstein distance (the samplers' oracle tests), the
digits quality score (a classifier's confidence, label entropy and Frechet distance) and the
kernel Stein discrepancy goodness-of-fit test (a sampler's output against a model's score)."""

from .digits_quality import (DigitsScorer, digits_quality, digits_scorer, frechet_distance,
                             frechet_distance_gaussians, label_entropy)
from .ksd import KSDTestResult, ksd, ksd_test
from .sliced_wasserstein import sliced_wasserstein

__all__ = ["DigitsScorer", "KSDTestResult", "digits_quality", "digits_scorer",
           "frechet_distance", "frechet_distance_gaussians", "ksd", "ksd_test", "label_entropy",
           "sliced_wasserstein"]
