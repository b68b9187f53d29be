"""The samplers' exact oracle for the tests: the 2-D and 8-D mixtures and the distance to their
truth (``pydiffuse.nn``, also read by ``benchmarks/plot_samplers.py``), the noise floor, a
Gaussian's closed-form flow, and a sampler's distance on a mixture in one call."""

from pydiffuse.nn import GaussianMixtureScore, distance_to_truth, mixture_2d, mixture_8d
from pydiffuse.ops import randn
from pydiffuse.stats import sliced_wasserstein

NUM_SAMPLES = 2000
MIXTURES = {"2d": mixture_2d, "8d": mixture_8d}


def baseline_distance(mixture: GaussianMixtureScore, n: int = NUM_SAMPLES) -> float:
    """SW_2 between two independent exact sample sets of size n (the noise floor)."""
    return sliced_wasserstein(mixture.sample(n, seed=1), mixture.sample(n, seed=2))


def gaussian(process, prediction="eps"):
    """One anisotropic Gaussian: its probability flow has a closed form (``flow_map``)."""
    return GaussianMixtureScore([[1.0, -0.5]], [[[0.3, 0.1], [0.1, 0.2]]], process=process,
                                prediction=prediction)


def flow_map(g, x, a1, s1, a0, s0):
    """The probability-flow ODE of N(mu, U diag(lam) U^T) from marginal (a1, s1) to (a0, s0):
    x0 = a0 mu + U diag(sqrt((a0^2 lam + s0^2) / (a1^2 lam + s1^2))) U^T (x1 - a1 mu), float64."""
    mu, u, lam = g.means[0], g.eigvecs[0], g.eigvals[0]
    ratio = ((a0 ** 2 * lam + s0 ** 2) / (a1 ** 2 * lam + s1 ** 2)).sqrt()
    return a0 * mu + ((x.double() - a1 * mu) @ u * ratio) @ u.T


def x_T(process, dim, n=NUM_SAMPLES, seed=3):
    return randn([n, dim], seed, 0) * process.prior_std


def mixture_distance(sampler, process, mixture_name="2d", prediction="eps", scale=1.0,
                     **kwargs) -> float:
    """SW_2 to the truth of ``sampler`` run on the exact mixture model; ``scale`` != 1 breaks
    the model (its output, so for eps its score, times scale)."""
    mixture = MIXTURES[mixture_name](process, prediction)
    model = mixture if scale == 1.0 else (lambda x, t: mixture(x, t) * scale)
    x = sampler(model, x_T(process, mixture.dim), process, prediction=prediction, **kwargs)
    return distance_to_truth(x, mixture)
