"""Predictor-corrector sampling of score SDEs, masked for inpainting and colorization (Song,
Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021, Alg. 1-5 and appendix I; MATH.md section 5;
the score_sde reference code's ``pc_sampler``, ``pc_inpainter`` and ``pc_colorizer``)."""

import math
import numbers

import torch

from ..ops import StepCoefs, langevin_step, lincomb, randn, sample_step
from ..predictions import target_coefs, x0_coefs
from ..schedules import as_process
from ..sde import DiscreteVPSDE, SubVPSDE, VESDE, VPSDE
from ._common import as_denoiser, check_process_kind, model_marginal, start
from .registry import register

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")
INPAINT_EPS = 1e-5                        # score_sde's get_pc_inpainter / get_pc_colorizer


def with_steps(sde, n: int):
    """The SDE discretized with N = n (the reference code builds its SDE with N = steps)."""
    if n == sde.N:
        return sde
    if isinstance(sde, DiscreteVPSDE):       # the model keeps its chain
        return DiscreteVPSDE(sde.beta_min, sde.beta_max, n, chain=sde.chain)
    if isinstance(sde, VESDE):
        return VESDE(sde.sigma_min, sde.sigma_max, n)
    if isinstance(sde, VPSDE):                # VPSDE and SubVPSDE
        return type(sde)(sde.beta_min, sde.beta_max, n)
    raise ValueError(f"steps={n} differs from {sde!r}.N: build the SDE with N={n}")


def predictor_coefs(sde, predictor: str, t):
    """(A, B, S) of the predictor's update x <- A x + B s(x, t) + S z at times t (float64 [N]):

    euler_maruyama:    x - (f x - g^2 s) / N + g z / sqrt(N)
    reverse_diffusion: x - f_i x + G_i^2 s + G_i z   ((f_i, G_i) = ``sde.discretize_coefs``)
    ancestral (VE):    x + (sigma_i^2 - sigma_{i-1}^2) s + sqrt(sigma_{i-1}^2 (sigma_i^2 -
                       sigma_{i-1}^2) / sigma_i^2) z
    ancestral (VP):    (x + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z
    """
    if predictor == "euler_maruyama":
        g = sde.diffusion(t)
        return 1 - sde.drift_coef(t) / sde.N, g * g / sde.N, g / math.sqrt(sde.N)
    if predictor == "reverse_diffusion":
        f, g = sde.discretize_coefs(t)
        return 1 - f, g * g, g
    i = (t * (sde.N - 1) / sde.T).long()
    if isinstance(sde, VESDE):
        sigma = sde.discrete_sigmas[i]
        below = torch.where(i == 0, 0.0, sde.discrete_sigmas[(i - 1).clamp(min=0)])
        jump = sigma ** 2 - below ** 2
        return torch.ones_like(sigma), jump, (below ** 2 * jump / sigma ** 2).sqrt()
    beta = sde.discrete_betas[i]
    return 1 / (1 - beta).sqrt(), beta / (1 - beta).sqrt(), beta.sqrt()


def predictor_columns(sde, predictor: str, t, prediction: str) -> dict:
    """The predictor x <- A x + B s + S z (``predictor_coefs``) at times t as one
    ``sample_step``'s columns: the score read from x0 = cx x + co out at the ``model_marginal``
    (a, std) (a ``DiscreteVPSDE``'s chain), s = (a x0 - x) / std^2, so
    A x + B s + S z = (A - B / std^2) x + (B a / std^2) x0 + S z."""
    a, std = model_marginal(sde, t)
    cx, co = x0_coefs(prediction, a, std)
    big_a, big_b, big_s = predictor_coefs(sde, predictor, t)
    return {"cx": cx, "co": co, "m0": big_b * a / std ** 2, "mx": big_a - big_b / std ** 2,
            "s": big_s}


def pc_table(sde, t, predictor: str, corrector: str, snr: float, prediction: str,
             denoise: bool) -> dict:
    """Per-level columns: the predictor as one ``sample_step`` (``predictor_columns``), the
    corrector's score s = sx x + so out (at the ``model_marginal``) and step size, and the
    marginal (a, std) for the masked replacement."""
    a, std = sde.marginal(t)
    am, sm = model_marginal(sde, t)
    cx, co = x0_coefs(prediction, am, sm)
    p, q = target_coefs("score", am, sm)
    cols = {"cx": cx, "co": co, "sx": p + q * cx, "so": q * co, "a": a, "std": std}
    if predictor != "none":
        cols.update(predictor_columns(sde, predictor, t, prediction))
        if denoise:                           # the last predictor returns its mean
            cols["s"] = torch.cat([cols["s"][:-1], torch.zeros(1, dtype=torch.float64)])
    if isinstance(sde, VPSDE):                # alpha_i of the reference correctors
        alpha = 1 - sde.discrete_betas[(t * (sde.N - 1) / sde.T).long()]
    else:
        alpha = torch.ones_like(t)
    cols["step"] = alpha if corrector == "langevin" else 2 * alpha * (snr * std) ** 2
    return cols


def _score(den, x, out, uncond, c, direct: bool):
    """The corrector's score: out itself (a score model), else sx x + so out, with the guidance
    combine folded into the same ``lincomb``."""
    if uncond is None:
        return out if direct else lincomb([x, out], [c["sx"], c["so"]])
    w = den.guidance
    return lincomb([x, out, uncond], [c["sx"], c["so"] * w, c["so"] * (1 - w)])


def _replace(x, mask, known, c, run):
    """x = where(mask, a(t) known + std(t) z, x): the known part, correctly noised."""
    if mask is None:
        return x
    noised = sample_step(known, known, StepCoefs(mx=c["a"], s=c["std"]), **run.draw())
    return torch.where(mask, noised, x)


def _check_mask(mask, known, x):
    if (mask is None) != (known is None):
        raise ValueError("masked sampling needs both mask= (1 = known) and known= (the data)")
    if mask is None:
        return None, None
    if not isinstance(known, torch.Tensor) or known.shape != x.shape:
        raise ValueError(f"known must be a tensor of x's shape {list(x.shape)}, got "
                         f"{list(getattr(known, 'shape', [])) or type(known).__name__}")
    mask = torch.as_tensor(mask, device=x.device)
    try:
        fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask of shape {list(mask.shape)} does not broadcast to x's "
                         f"{list(x.shape)}")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold 0/1 or booleans (1 = known)")
        mask = mask != 0
    return mask, known.to(device=x.device, dtype=x.dtype)


def _check_options(process, predictor, corrector, snr, n_corrector, steps, eps):
    """Validated (n_corrector, N, eps)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, numbers.Integral) \
            or n_corrector < 0:
        raise ValueError(f"n_corrector must be an int >= 0, got {n_corrector!r}")
    n_corrector = 0 if corrector == "none" else int(n_corrector)
    if predictor == "none" and n_corrector == 0:
        raise ValueError("predictor='none' needs a corrector (and n_corrector >= 1)")
    if not (isinstance(snr, numbers.Real) and math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    if predictor == "ancestral" and (isinstance(process, SubVPSDE)
                                     or not isinstance(process, (VESDE, VPSDE))):
        raise ValueError(f"the ancestral predictor needs a VESDE or VPSDE, got {process!r}")
    n = process.N if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    eps = process.sampling_eps if eps is None else eps
    if not 0 < eps < process.T:
        raise ValueError(f"eps must lie in (0, {process.T}), got {eps}")
    return n_corrector, int(n), eps


@register("pc", title="predictor-corrector", paper="Song et al. 2021", processes=("sde",),
          stochastic=True, order=1, nfe_per_step="n_corrector + 1", quick={"steps": 25})
def sample_pc(model, x, process, *, steps=None, predictor: str = "reverse_diffusion",
              corrector: str = "langevin", snr: float = 0.16, n_corrector: int = 1,
              denoise: bool = True, eps=None, mask=None, known=None, norm: str = "batch",
              prediction: str = "score", seed=None, callback=None, progress=False):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1): on the grid
    t_i = linspace(1, eps, N), at each level ``n_corrector`` corrector steps, then one predictor
    step; with ``denoise`` the last predictor returns its noise-free mean ("noise removal"; no
    effect without a predictor, as in the reference code).

    Predictors (``predictor_coefs``): "euler_maruyama" on the reverse SDE, "reverse_diffusion"
    (the SDE's own discretization), "ancestral" (SMLD/DDPM, VE and VP only), "none". Each is one
    fused ``sample_step`` whatever the model predicts.
    Correctors: "langevin" (Alg. 4-5): e = 2 alpha_i (snr |z| / |s|)^2 with the norms averaged
    over the batch as the reference code does (``norm="batch"``: the step then depends on the
    batch), or of each sample (``norm="sample"``: batch-independent, but noisy for low-dimensional
    data where |z| and |s| of one sample vary widely), x <- x + e s + sqrt(2 e) z,
    alpha_i = 1 (VE) or 1 - beta_i (VP, sub-VP);
    "ald" (the reference code's AnnealedLangevinDynamics): e = 2 alpha_i (snr std(t))^2; "none".
    Masked (inpainting, colorization: score_sde's ``pc_inpainter``, step for step at its
    n_steps = 1): x starts as known where mask, x_T elsewhere; after every corrector step and
    after the predictor the known part is set to a correctly noised copy a(t) known + std(t) z
    (score_sde: once after a level's correctors, which with 10 of them puts the mean 7 standard
    errors off the exact conditional, against 1); eps defaults to the inpainter's 1e-5; with
    ``denoise`` the result's known part is ``known`` itself and the unknown part the last
    predictor's mean (score_sde's x_mean keeps that predictor's noise there).

    Args:
        model: ``model(x, t)`` with t the [B] float32 SDE time, or a ``Denoiser``.
        x: x_T ~ N(0, prior_std^2 I), [B, ...].
        process: a ``VESDE``, ``VPSDE`` or ``SubVPSDE``.
        steps: N levels (default ``process.N``; another N discretizes the SDE with N steps).
        snr: the correctors' signal-to-noise ratio r > 0; n_corrector: corrector steps per level.
        norm: the "langevin" corrector's norms: "batch" (the reference code) or "sample".
        eps: the last time (default ``process.sampling_eps``; 1e-5 with ``mask``).
        mask: 1/True where x is known, broadcastable to x; known: the data x_0, x's shape.
        prediction: "score", "eps", "x0" or "v" of the marginal x_t = a(t) x_0 + std(t) eps.
        seed: the noise stream's seed (int or one per sample).
        callback: callback({"i", "t", "x", "x0"}) after each level (x0 None without predictor).

    Returns:
        samples [B, ...]. N (n_corrector + 1) model calls (N n_corrector without predictor).
    """
    run = start("pc", model, x, process, prediction=prediction, seed=seed, classifier=False,
                callback=callback, progress=progress)
    mask, known = _check_mask(mask, known, x)
    if eps is None and mask is not None:
        eps = INPAINT_EPS
    n_corrector, n, eps = _check_options(run.process, predictor, corrector, snr, n_corrector,
                                         steps, eps)
    if norm not in ("sample", "batch"):
        raise ValueError(f"norm must be 'sample' or 'batch', got {norm!r}")
    sde = with_steps(run.process, n)
    grid = torch.linspace(sde.T, eps, sde.N, dtype=torch.float64)
    table = run.table(pc_table(sde, grid, predictor, corrector, snr, prediction, denoise))
    times, den = run.times(grid, sde), run.den
    snr_arg = {"snr": snr, "norm": norm} if corrector == "langevin" else {}
    if mask is not None:
        x = torch.where(mask, known, x)
    for i in run.steps(sde.N):
        c, t, x0 = table.row(i), run.t(times, i), None
        for _ in range(n_corrector):      # x <- x + e s + sqrt(2 e) z
            out, uncond = den.pair(x, t)
            score = _score(den, x, out, uncond, c, prediction == "score")
            x = langevin_step(x, score, c["step"], **snr_arg, **run.draw())
            x = _replace(x, mask, known, c, run)
        if predictor != "none":           # x <- A x + B s + S z
            out, uncond = den.pair(x, t)
            coefs = StepCoefs(cx=c["cx"], co=c["co"], m0=c["m0"], mx=c["mx"], s=c["s"])
            x = sample_step(x, out, coefs, return_x0=callback is not None,
                            **den.fused_cfg(uncond), **run.draw())
            if callback is not None:
                x, x0 = x
            x = _replace(x, mask, known, c, run)
        run.report(i, t, x, x0=x0)
    if denoise and mask is not None:
        x = torch.where(mask, known, x)
    return x


def decoupling_matrix() -> torch.Tensor:
    """An orthogonal 3x3 M (float64) with first row (1, 1, 1) / sqrt(3): y = M x per pixel puts
    sqrt(3) x the gray level (mean of RGB) in channel 0 (the reference colorizer's M,
    transposed)."""
    r3, r2, r6 = math.sqrt(3), math.sqrt(2), math.sqrt(6)
    return torch.tensor([[1 / r3, 1 / r3, 1 / r3],
                         [-2 / r6, 1 / r6, 1 / r6],
                         [0.0, 1 / r2, -1 / r2]], dtype=torch.float64)


def _mix_channels(matrix, x):
    """y[:, i] = sum_j matrix[i, j] x[:, j] for x [B, 3, ...]."""
    return torch.einsum("ij,bj...->bi...", matrix.to(device=x.device, dtype=x.dtype), x)


def sample_colorize(model, gray, process, **pc_options):
    """Colorization by masked predictor-corrector sampling (Song et al. 2021, appendix I.2; the
    reference ``pc_colorizer``): in the decoupled space y = M x (``decoupling_matrix``), channel
    0 is sqrt(3) x the gray level and is known; ``sample_pc`` runs there with the model seen
    through M (model_y(y, t) = M model(M^T y, t): an orthogonal change of variables, valid for
    every prediction and keeping N(0, I) noise), and the result goes back as x = M^T y.

    Args:
        model: ``model(x, t)`` on 3-channel images [B, 3, ...], or a ``Denoiser``.
        gray: [B, 1, ...] the gray image, gray = mean over RGB of the color image; or
            [B, 3, ...], reduced to its channel mean (a color image, or the gray one repeated).
        process: a ``VESDE``, ``VPSDE`` or ``SubVPSDE``.
        pc_options: ``sample_pc``'s keywords (steps, predictor, corrector, snr, ..., prediction,
            seed); x_T is drawn from the noise stream (step 0) with ``seed``; not mask or known.

    Returns:
        [B, 3, ...] colorized images; their channel mean equals ``gray`` when denoise is on.
    """
    if not isinstance(gray, torch.Tensor) or not gray.is_floating_point() or gray.ndim < 2 \
            or gray.shape[1] not in (1, 3):
        raise ValueError("gray must be a floating tensor [B, 1, ...] (or [B, 3, ...])")
    if "mask" in pc_options or "known" in pc_options:
        raise ValueError("sample_colorize builds mask and known itself")
    process = as_process(process)
    check_process_kind(process, ("sde",), "colorize")
    level = gray.mean(1, keepdim=True)
    shape = [gray.shape[0], 3, *gray.shape[2:]]
    matrix = decoupling_matrix()
    known = torch.cat([level * math.sqrt(3), torch.zeros_like(level), torch.zeros_like(level)], 1)
    mask = torch.zeros(1, 3, *[1] * (gray.ndim - 2), dtype=torch.bool, device=gray.device)
    mask[:, 0] = True
    den = as_denoiser(model)
    if den.classifier is not None:
        raise ValueError("sample_colorize does not take classifier guidance")
    seed = pc_options.pop("seed", None)
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, ()))
    y = randn(shape, seed, 0, device=gray.device, dtype=gray.dtype) * process.prior_std

    def decoupled(y_in, t):
        return _mix_channels(matrix, den(_mix_channels(matrix.T, y_in), t))

    y = sample_pc(decoupled, y, process, mask=mask, known=known, seed=seed, **pc_options)
    return _mix_channels(matrix.T, y)
