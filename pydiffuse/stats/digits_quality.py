"""Sample quality for 8x8 digits, judged by a classifier trained on the real training digits.

For samples x [N, 1, 8, 8] in [-1, 1] (as ``pydiffuse.data.digits`` scales them):

- ``confident``: the share classified with max softmax probability > 0.9;
- ``label_entropy``: H(h) = -sum_c h_c ln h_c (nats) of the histogram h of predicted labels
  (ln 10 ~ 2.303 when every class is equally frequent, 0 for a single class);
- ``frechet``: the Frechet distance between Gaussians fitted to the classifier's penultimate
  features of the samples (m1, S1) and of the held-out real test digits (m2, S2),
  FD = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) (Heusel et al. 2017, "GANs trained by
  a two time-scale update rule converge to a local Nash equilibrium": FID with this network in
  place of Inception). FD is biased upward for small N: compare figures at similar sample sizes.

``DigitsScorer.reference()`` gives the same numbers for real held-out digits and for pure noise,
the scale to read a sample's scores against. The classifier trains in a few seconds on a CPU,
deterministically given its seed, on the shared train split; ``digits_quality(x)`` uses one
scorer per process.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..data.digits import digits

CONFIDENCE = 0.9
NUM_CLASSES = 10
_RANGE_LIMIT = 2.0  # inputs beyond +-2 are taken for a wrong pixel scale, not sampling overshoot


class _Classifier(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and a ReLU feature layer (the Frechet features)."""

    def __init__(self, features: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, features), nn.ReLU())
        self.head = nn.Linear(features, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return self.head(feats), feats


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """The symmetric square root U diag(sqrt(max(lambda, 0))) U^T of a symmetric PSD matrix."""
    lam, u = torch.linalg.eigh(c)
    return (u * lam.clamp(min=0).sqrt()) @ u.T


def frechet_distance_gaussians(mu1, cov1, mu2, cov2) -> float:
    """The Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2), in float64 with the
    square roots from eigendecompositions (negative round-off eigenvalues clamped to 0).

    Args:
        mu1, mu2: [D] means.
        cov1, cov2: [D, D] symmetric positive semi-definite covariances.

    Returns:
        the distance (a float >= 0 up to round-off).
    """
    mu1, cov1, mu2, cov2 = (torch.as_tensor(t, dtype=torch.float64).cpu()
                            for t in (mu1, cov1, mu2, cov2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"need means [D] and covariances [D, D] of one D; got shapes "
                         f"{[list(t.shape) for t in (mu1, cov1, mu2, cov2)]}")
    s1 = _sqrtm_psd((cov1 + cov1.T) / 2)
    cross = _sqrtm_psd(s1 @ ((cov2 + cov2.T) / 2) @ s1).trace()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross)


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (sample means and
    unbiased covariances, in float64); see ``frechet_distance_gaussians``.

    Args:
        f1: [N1, D] features, N1 >= 2.
        f2: [N2, D] features, N2 >= 2.
    """
    moments = []
    for name, f in (("f1", f1), ("f2", f2)):
        if f.ndim != 2:
            raise ValueError(f"{name} must be [N, D] features, got shape {list(f.shape)}")
        if len(f) < 2:
            raise ValueError(f"{name} has {len(f)} sample(s); a covariance needs at least 2")
        f = f.to(torch.float64).cpu()
        moments += [f.mean(0), f.T.cov()]
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"f1 has {f1.shape[1]} features, f2 {f2.shape[1]}")
    return frechet_distance_gaussians(*moments)


def label_entropy(labels: torch.Tensor) -> float:
    """sum_c h_c ln(1 / h_c) (nats) of the histogram h of integer labels 0..9 [N]."""
    h = labels.bincount(minlength=NUM_CLASSES).to(torch.float64) / len(labels)
    h = h[h > 0]
    return float((h * h.reciprocal().log()).sum())


def _check_samples(x) -> torch.Tensor:
    """x as float32 CPU [N, 1, 8, 8] clamped to [-1, 1], after checking shape, finiteness, range."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [N, 1, 8, 8], got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"x must be 8x8 digits [N, 1, 8, 8], got shape {list(x.shape)}")
    if len(x) < 2:
        raise ValueError(f"x has {len(x)} sample(s); the Frechet distance needs a covariance, "
                         "so at least 2 (a few hundred for a stable figure)")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("x has NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_LIMIT or hi > _RANGE_LIMIT:
        raise ValueError(f"x has values in [{lo:.3g}, {hi:.3g}], far outside [-1, 1]: pass digits "
                         "scaled like pydiffuse.data.digits (pixel / 8 - 1), not 0..16 pixels")
    return x.clamp(-1, 1)


class DigitsScorer:
    """A digits classifier trained on the shared train split, and the scores it gives samples.

    Training: Adam (lr 1e-3), batches of 64, light Gaussian input noise (std 0.2) as augmentation,
    on one thread (reproducible, and fastest for this size); weights and shuffling from ``seed``
    without touching torch's global RNG.

    Args:
        seed: seeds the initialisation, shuffling and augmentation.
        epochs: passes over the 1438 training digits.
        features: width of the penultimate (Frechet feature) layer.

    Attributes:
        accuracy: the share of the 359 held-out test digits classified correctly.
    """

    def __init__(self, *, seed: int = 0, epochs: int = 20, features: int = 64):
        x_train, y_train = digits("train").tensors
        self._x_test, self._y_test = digits("test").tensors
        gen = torch.Generator().manual_seed(seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = _Classifier(features)
            opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
            for _ in range(epochs):
                perm = torch.randperm(len(x_train), generator=gen)
                for idx in perm.split(64):
                    xb = x_train[idx] + 0.2 * torch.randn(len(idx), 1, 8, 8, generator=gen)
                    loss = F.cross_entropy(self.model(xb)[0], y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            torch.set_num_threads(threads)
        self.model.eval().requires_grad_(False)
        self._test_logits, self._test_features = self._forward(self._x_test)
        self.accuracy = float((self._test_logits.argmax(1) == self._y_test).double().mean())
        self._reference = None

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, 10] and float64 features [N, F] of checked x, in chunks."""
        outs = [self.model(chunk) for chunk in x.split(4096)]
        return (torch.cat([o[0] for o in outs]),
                torch.cat([o[1] for o in outs]).to(torch.float64))

    @staticmethod
    def _label_scores(logits: torch.Tensor) -> dict:
        """The confident share and label entropy of logits [N, 10]."""
        probs = logits.softmax(1)
        return {"confident": float((probs.max(1).values > CONFIDENCE).double().mean()),
                "label_entropy": label_entropy(probs.argmax(1))}

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, 10] of digits x [N, 1, 8, 8] in [-1, 1]."""
        return self._forward(_check_samples(x))[0].softmax(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features float64 [N, F] of digits x [N, 1, 8, 8] in [-1, 1]."""
        return self._forward(_check_samples(x))[1]

    def score(self, x: torch.Tensor) -> dict:
        """The three scores of samples x [N, 1, 8, 8] in [-1, 1] (N >= 2; values beyond [-1, 1]
        are clamped, beyond +-2 refused), the Frechet distance against all 359 test digits.

        Returns:
            {"confident": share in [0, 1], "label_entropy": nats in [0, ln 10],
             "frechet": float >= 0}.
        """
        logits, feats = self._forward(_check_samples(x))
        return {**self._label_scores(logits),
                "frechet": frechet_distance(feats, self._test_features)}

    def reference(self) -> dict:
        """The scores of real held-out digits and of noise, computed once.

        "real": confident and label_entropy of the 359 test digits; frechet between two halves of
        them (each class's test digits alternately to either half): real against real at about
        180 against 180, so with more finite-sample bias than a few hundred samples against all
        359 test digits carry.
        "noise": ``score`` of 359 images uniform in [-1, 1] (seed 0).

        Returns:
            {"real": {...}, "noise": {...}} with the keys of ``score``.
        """
        if self._reference is None:
            order = self._y_test.argsort(stable=True)
            half_a, half_b = order[0::2], order[1::2]
            real = {**self._label_scores(self._test_logits),
                    "frechet": frechet_distance(self._test_features[half_a],
                                                self._test_features[half_b])}
            gen = torch.Generator().manual_seed(0)
            noise = torch.rand(len(self._x_test), 1, 8, 8, generator=gen) * 2 - 1
            self._reference = {"real": real, "noise": self.score(noise)}
        return self._reference


@functools.cache
def digits_scorer() -> DigitsScorer:
    """The process-wide DigitsScorer (default seed), trained on first use."""
    return DigitsScorer()


def digits_quality(x: torch.Tensor) -> dict:
    """``digits_scorer().score(x)``: confident share, label entropy and Frechet distance of
    samples x [N, 1, 8, 8] in [-1, 1]; see ``DigitsScorer.score``."""
    return digits_scorer().score(x)


__all__ = ["DigitsScorer", "digits_quality", "digits_scorer", "frechet_distance",
           "frechet_distance_gaussians", "label_entropy"]
