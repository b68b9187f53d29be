"""The samplers as their papers write them: one short plain-PyTorch loop per family, in
k-diffusion's style, with no fused op and every update spelled out. ``test_plain_loops.py`` runs
each beside pydiffuse's fused sampler on the same model and noise and compares every step.

What the loops share with pydiffuse are their inputs, not their algorithms: the grid (a
schedule's alpha_bar and time indices, an SDE and its times, the sigmas), the model called at the
process's own time t as a [B] tensor, and the noise: draw k of a run is
``pydiffuse.ops.randn(x.shape, seed, k)`` (draw 0 is x_T's). ``callback(i, x)`` after each step.
"""

import math

import torch

from pydiffuse.ops import randn


def _z(x, seed, k):
    """The noise stream's draw k, x's shape and dtype."""
    return randn(list(x.shape), seed, k, dtype=x.dtype)


def _at(x, t):
    """The model's time t for the batch, [B] (a long step index, or a float)."""
    return torch.full((len(x),), t, dtype=torch.long if isinstance(t, int) else torch.float64)


def ddpm(eps_model, x, alphas_cumprod, timesteps, *, variance="fixed_small", seed=0,
         callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2; eq. 11) over the positions a (respaced)
    schedule keeps (Nichol & Dhariwal 2021): beta_t = 1 - ab_t / ab_prev and
    x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(1 - beta_t) + sigma_t z,
    sigma_t^2 = beta~_t = beta_t (1 - ab_prev) / (1 - ab_t) ("fixed_small") or beta_t
    ("fixed_large"); no noise on the last step."""
    ab = alphas_cumprod
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    for k, i in enumerate(reversed(range(len(ab)))):
        eps = eps_model(x, _at(x, int(timesteps[i])))
        beta = 1 - ab[i] / ab_prev[i]
        mean = (x - beta / (1 - ab[i]).sqrt() * eps) / (1 - beta).sqrt()
        var = beta * (1 - ab_prev[i]) / (1 - ab[i]) if variance == "fixed_small" else beta
        x = mean + (var.sqrt() if i > 0 else 0.0) * _z(x, seed, k + 1)
        callback(k, x)
    return x


def ddim(eps_model, x, alphas_cumprod, timesteps, *, eta=0.0, seed=0, callback=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12): x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t),
    x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma_t^2) eps + sigma_t z,
    sigma_t = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev) (eq. 16)."""
    ab = alphas_cumprod
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    for k, i in enumerate(reversed(range(len(ab)))):
        eps = eps_model(x, _at(x, int(timesteps[i])))
        x0 = (x - (1 - ab[i]).sqrt() * eps) / ab[i].sqrt()
        sigma = eta * ((1 - ab_prev[i]) / (1 - ab[i]) * (1 - ab[i] / ab_prev[i])).sqrt()
        x = ab_prev[i].sqrt() * x0 + (1 - ab_prev[i] - sigma ** 2).sqrt() * eps
        if eta > 0:
            x = x + sigma * _z(x, seed, k + 1)
        callback(k, x)
    return x


def ald(score_model, x, sigmas, *, steps, step_lr, denoise=True, seed=0, callback=None):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1, in the reference code's step
    convention): for each level, alpha_i = step_lr sigma_i^2 / sigma_L^2 and ``steps`` times
    x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z; then (NCSNv2) x <- x + sigma_L^2 s(x,
    sigma_L). ``callback`` after each level."""
    k = 0
    for i, sigma in enumerate(sigmas):
        alpha = step_lr * sigma ** 2 / sigmas[-1] ** 2
        for _ in range(steps):
            k += 1
            x = x + alpha * score_model(x, _at(x, float(sigma))) + (2 * alpha).sqrt() * _z(
                x, seed, k)
        callback(i, x)
    if denoise:
        x = x + sigmas[-1] ** 2 * score_model(x, _at(x, float(sigmas[-1])))
    return x


def pc(score_model, x, sde, *, eps, snr=0.16, n_corrector=1, denoise=True, mask=None,
       known=None, seed=0, callback=None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2-5, as the score_sde code runs it:
    at each t_i of linspace(1, eps, N) the Langevin corrector, then the reverse-diffusion
    predictor). Corrector: e = 2 alpha_i (snr |z| / |s|)^2 (norms of each sample, averaged over
    the batch), x <- x + e s + sqrt(2 e) z, alpha_i = 1 (VE) or 1 - beta_i (VP). Predictor on the
    SDE's own chain: VE x <- x + (sigma_i^2 - sigma_{i-1}^2) s + sqrt(sigma_i^2 -
    sigma_{i-1}^2) z; VP x <- (2 - sqrt(1 - beta_i)) x + beta_i s + sqrt(beta_i) z. The last
    predictor returns its mean with ``denoise``. With ``mask`` (1 = known) and ``known``,
    score_sde's ``pc_inpainter``: x starts as known * mask + x * (1 - mask) (the known part
    clean), and after the correctors and after the predictor the known part becomes
    mean(t) + std(t) z of the SDE's ``marginal_prob`` of ``known``."""
    n, k, ve = sde.N, 0, hasattr(sde, "discrete_sigmas")

    def inpaint(x, t, k):
        if ve:
            mean, std = known, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        else:
            log_mean = -0.25 * t ** 2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
            mean, std = log_mean.exp() * known, (1 - (2 * log_mean).exp()).sqrt()
        return x * (1 - mask) + (mean + std * _z(x, seed, k)) * mask

    if mask is not None:
        x = known * mask + x * (1 - mask)
    for i, t in enumerate(torch.linspace(1.0, eps, n, dtype=torch.float64)):
        j = int((t * (n - 1)).long())               # the chain's index of t (the reference's)
        if ve:
            below = sde.discrete_sigmas[j - 1] ** 2 if j > 0 else 0.0
            g2, alpha = sde.discrete_sigmas[j] ** 2 - below, 1.0
        else:
            g2, alpha = sde.discrete_betas[j], 1 - sde.discrete_betas[j]
        for _ in range(n_corrector):
            k += 1
            z, s = _z(x, seed, k), score_model(x, _at(x, float(t)))
            e = 2 * alpha * (snr * z.flatten(1).norm(dim=1).mean()
                             / s.flatten(1).norm(dim=1).mean()) ** 2
            x = x + e * s + (2 * e).sqrt() * z
        if mask is not None:
            k += 1
            x = inpaint(x, t, k)
        k += 1
        s = score_model(x, _at(x, float(t)))
        mean = x + g2 * s if ve else (2 - (1 - g2).sqrt()) * x + g2 * s
        x = mean if denoise and i == n - 1 else mean + g2.sqrt() * _z(x, seed, k)
        if mask is not None:
            k += 1
            x = inpaint(x, t, k)
        callback(i, x)
    return x


def score_sde_discrete(eps_model, sde):
    """score_sde's ``get_score_fn(sde, model, continuous=False)`` for a VP SDE: the model at the
    chain's label t (N - 1) (t in float32; the label truncated by ``.long()``, which an
    index-time model needs for its input too) and s = -eps / sqrt(1 - alphas_cumprod[label]),
    alphas_cumprod = cumprod(1 - sde.discrete_betas)."""
    std = (1 - torch.cumprod(1 - sde.discrete_betas, 0)).sqrt()

    def score(x, t):
        labels = (t.float() * (sde.N - 1)).long()
        return -eps_model(x, labels) / std[labels].to(x.dtype)[:, None]
    return score


def probability_flow(score_model, x, sde, *, steps, eps, method="euler", callback=None):
    """The probability-flow ODE dx/dt = f(t) x - g(t)^2 s(x, t) / 2 (Song et al. 2021, eq. 13)
    from t = 1 to eps in ``steps`` uniform steps h: Euler x <- x + h d(x, t), or Heun
    x <- x + h (d(x, t) + d(x + h d(x, t), t + h)) / 2."""
    def drift(x, t):
        return sde.drift_coef(t) * x - 0.5 * sde.diffusion(t) ** 2 * score_model(
            x, _at(x, float(t)))

    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    for i in range(steps):
        h, d = ts[i + 1] - ts[i], drift(x, ts[i])
        if method == "euler":
            x = x + h * d
        else:
            x = x + h * (d + drift(x + h * d, ts[i + 1])) / 2
        callback(i, x)
    return x


def edm(denoiser, x, sigmas, *, heun=True, churn=0.0, s_tmin=0.0, s_tmax=math.inf,
        s_noise=1.0, seed=0, callback=None):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2; Euler: without the correction) on
    sigmas ending in 0, x = x_0 + sigma n: gamma_i = min(churn / N, sqrt 2 - 1) for sigma_i in
    [s_tmin, s_tmax], sigma^ = (1 + gamma_i) sigma_i, x^ = x + sqrt(sigma^2 - sigma_i^2) s_noise z,
    d = (x^ - D(x^, sigma^)) / sigma^, x' = x^ + (sigma_{i+1} - sigma^) d, and Heun's
    x' = x^ + (sigma_{i+1} - sigma^) (d + d') / 2 where sigma_{i+1} > 0."""
    n, k = len(sigmas) - 1, 0
    for i in range(n):
        gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (1 + gamma)
        if gamma > 0:
            k += 1
            x = x + (sigma_hat ** 2 - sigmas[i] ** 2).sqrt() * s_noise * _z(x, seed, k)
        d = (x - denoiser(x, sigma_hat)) / sigma_hat
        x_next = x + (sigmas[i + 1] - sigma_hat) * d
        if heun and sigmas[i + 1] > 0:
            d_next = (x_next - denoiser(x_next, sigmas[i + 1])) / sigmas[i + 1]
            x_next = x + (sigmas[i + 1] - sigma_hat) * (d + d_next) / 2
        x = x_next
        callback(i, x)
    return x


def dpmpp_2m(denoiser, x, sigmas, *, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, as k-diffusion's sample_dpmpp_2m): lambda =
    -log sigma, h = lambda_{i+1} - lambda_i, r = h_{i-1} / h,
    D_c = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1} (D_i itself on the first step and to sigma = 0),
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h) D_c."""
    old = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        lam, lam_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = lam_next - lam
        if old is None or sigmas[i + 1] == 0:
            d = denoised
        else:
            r = (lam + sigmas[i - 1].log()) / h
            d = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old
        x = sigmas[i + 1] / sigmas[i] * x - torch.expm1(-h) * d
        old = denoised
        callback(i, x)
    return x


# -- running a fused sampler and its plain loop side by side ------------------------------------

def trajectory(sampler, *args, **kwargs) -> list:
    """Every step's x of a pydiffuse sampler, through its ``callback``."""
    xs = []
    sampler(*args, callback=lambda info: xs.append(info["x"].clone()), **kwargs)
    return xs


def plain_trajectory(loop, *args, **kwargs) -> list:
    """Every step's x of a plain loop."""
    xs = []
    loop(*args, callback=lambda i, x: xs.append(x.clone()), **kwargs)
    return xs


def step_difference(fused: list, plain: list) -> float:
    """The largest difference between the two trajectories, over every step and element,
    relative to the trajectory's scale (max(1, |x|)); inf when their lengths differ."""
    if len(fused) != len(plain) or not fused:
        return math.inf
    return max(float((f - p).abs().max() / max(1.0, float(p.abs().max())))
               for f, p in zip(fused, plain))
