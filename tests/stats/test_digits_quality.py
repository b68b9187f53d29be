"""The digits quality score: the classifier's held-out accuracy, real held-out digits scoring well
and noise badly, label entropy, the Frechet distance against closed forms, and bad inputs."""

import math

import pytest
import torch

from pydiffuse.data.digits import digits
from pydiffuse.stats.digits_quality import (
    DigitsScorer,
    digits_quality,
    digits_scorer,
    frechet_distance,
    frechet_distance_gaussians,
    label_entropy,
)

LN10 = math.log(10)


@pytest.fixture(scope="module")
def scorer():
    return digits_scorer()


@pytest.fixture(scope="module")
def test_digits():
    return digits("test").tensors


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _exact_features(mean, var, n=50, seed=0):
    """n features whose sample mean is exactly ``mean`` [D] and unbiased covariance diag(var)."""
    z = torch.randn(n, len(mean), dtype=torch.float64, generator=_gen(seed))
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T.cov())).T
    return mean + z * var.sqrt()


def test_classifier_accuracy(scorer):
    assert scorer.accuracy >= 0.95


def test_real_digits_score_well_and_noise_badly(scorer):
    ref = scorer.reference()
    assert scorer.reference() is ref
    real, noise = ref["real"], ref["noise"]
    assert real["confident"] >= 0.9 and noise["confident"] <= 0.5
    assert real["label_entropy"] >= 0.99 * LN10 > noise["label_entropy"]
    assert 0 < real["frechet"] < noise["frechet"] / 10


def test_held_out_set_against_itself(scorer, test_digits):
    got = digits_quality(test_digits[0])
    assert got["frechet"] == pytest.approx(0, abs=1e-6)
    assert got["confident"] == scorer.reference()["real"]["confident"]
    assert got["label_entropy"] == scorer.reference()["real"]["label_entropy"]


def test_training_digits_score_like_held_out_ones(scorer):
    got = scorer.score(digits("train").tensors[0])
    ref = scorer.reference()["real"]
    assert got["confident"] >= 0.9 and got["label_entropy"] >= 0.99 * LN10
    assert got["frechet"] < ref["frechet"]  # N = 1438 against 359: less finite-sample bias


def test_one_repeated_digit_has_no_label_entropy(scorer, test_digits):
    x, y = test_digits
    sevens = scorer.score(x[y == 7])
    assert sevens["label_entropy"] < 0.1 and sevens["confident"] >= 0.9
    assert sevens["frechet"] > 10 * scorer.reference()["real"]["frechet"]
    assert scorer.score(x[:1].expand(50, -1, -1, -1))["label_entropy"] == 0.0


@pytest.mark.parametrize("labels,expected", [
    ([3, 3, 3], 0.0), ([0, 1, 0, 1], math.log(2)), (list(range(10)) * 4, LN10),
    ([0, 0, 0, 1], 0.75 * math.log(4 / 3) + 0.25 * math.log(4)),
])
def test_label_entropy(labels, expected):
    assert label_entropy(torch.tensor(labels)) == pytest.approx(expected, abs=1e-12)


def test_probs_and_features(scorer, test_digits):
    p = scorer.probs(test_digits[0][:20])
    assert p.shape == (20, 10)
    torch.testing.assert_close(p.sum(1), torch.ones(20))
    assert scorer.features(test_digits[0][:20]).dtype == torch.float64


def test_out_of_range_values_are_clamped(scorer, test_digits):
    x = test_digits[0]
    assert scorer.score(x * 1.5) == scorer.score((x * 1.5).clamp(-1, 1))


def test_scorer_is_deterministic_cached_and_leaves_global_rng(test_digits):
    state = torch.get_rng_state()
    a, b, c = DigitsScorer(seed=3, epochs=1), DigitsScorer(seed=3, epochs=1), DigitsScorer(
        seed=4, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    fa, fb, fc = (s.features(test_digits[0]) for s in (a, b, c))
    assert torch.equal(fa, fb) and not torch.equal(fa, fc)
    assert digits_scorer() is digits_scorer()


def test_frechet_zero_for_identical_sets():
    f = torch.randn(100, 8, generator=_gen())
    assert frechet_distance(f, f) == pytest.approx(0, abs=1e-10)
    assert frechet_distance(f, f[torch.randperm(100, generator=_gen(1))]) == pytest.approx(
        0, abs=1e-10)


def test_frechet_of_a_shift_is_its_squared_length():
    f = torch.randn(200, 5, dtype=torch.float64, generator=_gen())
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(f, f + delta) == pytest.approx(float(delta.pow(2).sum()), rel=1e-9)


def test_frechet_diagonal_gaussians_closed_form():
    """Commuting (diagonal) covariances: FD = |m1 - m2|^2 + sum (sqrt s1 - sqrt s2)^2."""
    g = _gen(2)
    m1, m2 = torch.randn(6, generator=g, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    s1 = torch.rand(6, generator=g, dtype=torch.float64) * 3 + 0.1
    s2 = torch.rand(6, generator=g, dtype=torch.float64) * 3 + 0.1
    expected = float((m1 - m2).pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum())
    assert frechet_distance_gaussians(m1, s1.diag(), m2, s2.diag()) == pytest.approx(expected,
                                                                                     rel=1e-10)
    got = frechet_distance(_exact_features(m1, s1), _exact_features(m2, s2, n=80, seed=1))
    assert got == pytest.approx(expected, rel=1e-9)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]  # rotation
    rotated = frechet_distance_gaussians(q @ m1, q @ s1.diag() @ q.T, q @ m2, q @ s2.diag() @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


def test_frechet_non_commuting_2d_closed_form():
    """In 2-D, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) with M = S1^1/2 S2 S1^1/2, so
    tr M = tr(S1 S2) and det M = det S1 det S2."""
    s1 = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=torch.float64)
    m = torch.tensor([0.3, -1.0], dtype=torch.float64)
    cross = math.sqrt((s1 @ s2).trace() + 2 * math.sqrt(s1.det() * s2.det()))
    expected = float(m.pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)
    zero = torch.zeros(2, dtype=torch.float64)
    assert frechet_distance_gaussians(m, s1, zero, s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance_gaussians(zero, s2, m, s1) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("x,error,match", [
    (torch.zeros(10, 64), ValueError, r"\[N, 1, 8, 8\]"),
    (torch.zeros(10, 3, 8, 8), ValueError, r"\[N, 1, 8, 8\]"),
    (torch.zeros(1, 1, 8, 8), ValueError, "at least 2"),
    (torch.full((10, 1, 8, 8), 16.0), ValueError, "far outside"),
    (torch.full((10, 1, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.zeros(10, 1, 8, 8).numpy(), TypeError, "torch.Tensor"),
])
def test_bad_samples(x, error, match):
    with pytest.raises(error, match=match):
        digits_quality(x)


@pytest.mark.parametrize("f1,f2,match", [
    (torch.zeros(5, 3), torch.zeros(5, 4), "features"),
    (torch.zeros(1, 3), torch.zeros(5, 3), "at least 2"),
    (torch.zeros(5), torch.zeros(5, 1), r"\[N, D\]"),
])
def test_bad_features(f1, f2, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(f1, f2)


def test_bad_moments():
    with pytest.raises(ValueError, match="one D"):
        frechet_distance_gaussians(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))
