"""Model parameterizations: eps, x0, v and score predictions as affine maps of one another.

Every process here has Gaussian marginals x_t = a x_0 + sigma eps (a = ``scale``, sigma = ``std``;
a = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar) for DDPM). At fixed t (MATH.md section 1 and 9):

    eps:   x0 = (x - sigma eps) / a
    x0:    x0 = out
    v:     v = a eps - sigma x0   =>   x0 = (a x - sigma v) / (a^2 + sigma^2)     (Salimans & Ho)
    score: s = -eps / sigma       =>   x0 = (x + sigma^2 s) / a

and back: eps = (x - a x0) / sigma. Coefficients are returned for ``sample_step``'s
``x0 = cx x + co out`` and ``eps = ex x + e0 x0``; they accept floats or tensors alike.
"""

from .ops import lincomb

PREDICTIONS = ("eps", "x0", "v", "score")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def x0_coefs(prediction: str, scale, std):
    """(cx, co) with x0 = cx x + co out for a model predicting ``prediction``."""
    check_prediction(prediction)
    if prediction == "eps":
        return 1 / scale, -std / scale
    if prediction == "x0":
        return 0 * scale, 1 + 0 * scale
    if prediction == "v":
        norm = scale * scale + std * std
        return scale / norm, -std / norm
    return 1 / scale, std * std / scale


def eps_coefs(scale, std):
    """(ex, e0) with eps = ex x + e0 x0 = (x - a x0) / sigma."""
    return 1 / std, -scale / std


def target_coefs(target: str, scale, std):
    """(p, q) with target = p x + q x0, for target in PREDICTIONS."""
    check_prediction(target)
    if target == "x0":
        return 0 * scale, 1 + 0 * scale
    ex, e0 = eps_coefs(scale, std)
    if target == "eps":
        return ex, e0
    if target == "score":
        return -ex / std, -e0 / std
    # v = a eps - sigma x0
    return scale * ex, scale * e0 - std


def convert(out, x, scale, std, *, source: str, target: str):
    """A model output ``out`` predicting ``source`` at x, as a prediction of ``target``.

    Args:
        out, x: [B, ...] tensors of one shape.
        scale, std: a and sigma of the marginal at the model's time, floats or [B] tensors.
        source, target: one of "eps", "x0", "v", "score".

    Returns:
        [B, ...]: target = (p + q cx) x + q co out, one fused ``lincomb`` pass.
    """
    cx, co = x0_coefs(source, scale, std)
    p, q = target_coefs(target, scale, std)
    return lincomb([x, out], [p + q * cx, q * co])
