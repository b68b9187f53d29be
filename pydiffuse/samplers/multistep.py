"""Multistep samplers on the noise levels sigma = std / a of any process: linear multistep
(LMS, Adams-Bashforth in sigma; k-diffusion's sample_lms), DEIS (tAB in log rho; Zhang & Chen
2023), DPM-Solver++(2M) SDE and (3M) SDE (Lu et al. 2022, "DPM-Solver++"; k-diffusion's
sample_dpmpp_2m_sde / sample_dpmpp_3m_sde) and UniPC-bh2 (Zhao et al. 2023; diffusers'
UniPCMultistepScheduler).

Each step is two passes (``multistep_loop``): the model's ``sample_step``, whose x0 slot writes
the step's history item H_i (eps = d for LMS and DEIS, the denoised D for DPM-Solver++ and
UniPC) and whose output is x' without the older history (the noise included), then one
``lincomb`` adding the previous H's.
"""

import math
import numbers

import numpy as np
import torch
from numpy.polynomial import Polynomial

from ..ops import StepCoefs, lincomb, sample_step
from ..predictions import x0_coefs
from ._common import StepNoise, guided_pair, start
from .edm import check_eta, start_grid
from .registry import PROCESS_KINDS, register


def multistep_loop(run, x, table, times, depth, noise, slot_is_x0):
    """Per step i, with columns of ``table`` and host ``depth[i]`` previous items used:

    H_i = hx x + ho o(x, t_i);  y = mx x + m0 H_i + s z    (one ``sample_step``, H_i its x0)
    x'  = y + h1 H_{i-1} + ... + hk H_{i-k}               (one ``lincomb``, k = depth[i])

    the callback's x0 = H_i (``slot_is_x0``) or rx x + rd H_i.
    """
    den, hist, keep = run.den, [], max(depth, default=0)
    for i in run.steps(len(table)):
        c, t = table.row(i), run.t(times, i)
        out, uncond = guided_pair(den, x, t, c["a"], c["std"], c["co"])
        draws = noise.keywords(0, i, x)
        y, item = sample_step(x, out, StepCoefs(cx=c["hx"], co=c["ho"], mx=c["mx"], m0=c["m0"],
                                                s=c["s"] if draws else 0.0),
                              return_x0=True, **den.fused_cfg(uncond), **draws)
        if depth[i]:
            y = lincomb([y, *hist[:depth[i]]], [1.0, *(c[f"h{j}"] for j in
                                                      range(1, depth[i] + 1))])
        if run.callback is not None:
            run.report(i, t, y, x0=item if slot_is_x0 else lincomb([x, item],
                                                                   [c["rx"], c["rd"]]))
        hist, x = [item, *hist][:keep], y
    return x


def lms_coefficients(sig, order: int) -> list:
    """c_ij = integral from sigma_i to sigma_{i+1} of the Lagrange basis polynomial of node
    sigma_{i-j} over the nodes sigma_i, ..., sigma_{i-k+1} (k = min(i + 1, order)), by
    Gauss-Legendre quadrature with ``order`` nodes (exact: the integrand has degree < order;
    k-diffusion's linear_multistep_coeff integrates the same with scipy's quad)."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    s = sig.tolist()
    rows = []
    for i in range(len(s) - 1):
        k, half, mid = min(i + 1, order), (s[i + 1] - s[i]) / 2, (s[i + 1] + s[i]) / 2
        taus = mid + half * nodes
        rows.append([half * float(np.sum(weights * np.prod(
            [(taus - s[i - m]) / (s[i - j] - s[i - m]) for m in range(k) if m != j], axis=0)))
            for j in range(k)])
    return rows


@register("lms", title="linear multistep (LMS)", paper="k-diffusion (Adams-Bashforth in sigma)",
          processes=PROCESS_KINDS, stochastic=False, order=4, nfe_per_step=1, sigma_view=True,
          quick={"steps": 5})
def sample_lms(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
               sigmas=None, order: int = 4, prediction: str = "eps", seed=None, callback=None,
               progress=False):
    """Linear multistep in sigma (k-diffusion's sample_lms): with d_i = (x_i - D_i) / sigma_i
    (VE coordinates),

    x_{i+1} = x_i + sum_{j < k} c_ij d_{i-j},  k = min(i + 1, order),

    c_ij the integrals of the Lagrange basis over the last k levels (``lms_coefficients``).
    N model calls; a step is a ``sample_step`` writing d_i and a ``lincomb`` of the older d's.

    Args:
        as ``sample_euler`` (no churn); order: 1..4; seed is unused (deterministic).
    """
    _check_order("lms", order, 4)
    return _eps_multistep("lms", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas),
                          prediction, callback, progress,
                          lambda sig: lms_coefficients(sig, int(order)))


def _check_order(name, order, most):
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) \
            or not 1 <= order <= most:
        raise ValueError(f"order must be an int in 1..{most} ({name}'s maximum is {most}), "
                         f"got {order!r}")


def _eps_multistep(name, model, x, process, grid, prediction, callback, progress, coefficients):
    """The multistep methods on eps = (x_ve - D) / sigma = d (LMS, DEIS): with the host rows
    ``coefficients(sig)`` = [c_i0, ..., c_i(k-1)] per step, in VE coordinates

    x_{i+1} = x_i + sum_{j < k} c_ij eps_{i-j};

    ``multistep_loop``'s sample_step writes eps_i and its lincomb adds the older eps's.
    """
    run = start(name, model, x, process, prediction=prediction, noise=False, callback=callback,
                progress=progress)
    times, sig, a, x = start_grid(run, x, *grid)
    rows = coefficients(sig)
    n, width = len(times), max(map(len, rows))
    s, cx, co = sig[:-1], *x0_coefs(prediction, a[:-1], a[:-1] * sig[:-1])
    coef = torch.zeros(n, width, dtype=torch.float64)
    for i, row in enumerate(rows):
        coef[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    # eps = x / (a sigma) - D / sigma; x' = a' (x / a + sum_j c_j eps_{i-j})
    cols = dict(a=a[:-1], std=a[:-1] * s, co=co, hx=1 / (a[:-1] * s) - cx / s, ho=-co / s,
                mx=a[1:] / a[:-1], m0=a[1:] * coef[:, 0], s=torch.zeros(n), rx=1 / a[:-1],
                rd=-s, **{f"h{j}": a[1:] * coef[:, j] for j in range(1, width)})
    depth = [len(row) - 1 for row in rows]
    return multistep_loop(run, x, run.table(cols), run.times(times), depth,
                          StepNoise(run, None), False)


def final_orders(n: int, order: int, lower_final) -> list:
    """Per step of n, the multistep order: warm-up min(i + 1, order), and with ``lower_final``
    (diffusers' lower_order_final) at most n - i on the last steps."""
    return [min(i + 1, order, n - i if lower_final else order) for i in range(n)]


def deis_coefficients(sig, orders) -> list:
    """DEIS's tAB step in log rho (Zhang & Chen 2023; diffusers' DEISMultistepScheduler,
    'logrho'): c_ij = integral from sigma_i to sigma_{i+1} of the Lagrange basis polynomial of
    node u_{i-j} over u_i, ..., u_{i-k+1} (u = log sigma, k = orders[i]), in d sigma. With
    sigma = e^u, the primitive of p(u) e^u is e^u (p - p' + p'' - ...): exact, and 0 at
    sigma = 0 (the limit of a step to the data)."""
    s = sig.tolist()
    u = [math.log(v) if v > 0 else -math.inf for v in s]

    def primitive(p, end):
        if s[end] == 0:
            return 0.0
        return math.exp(u[end]) * sum((-1) ** m * p.deriv(m)(u[end]) for m in range(p.degree()
                                                                                      + 1))

    rows = []
    for i, k in enumerate(orders):
        row = []
        for j in range(k):
            p = Polynomial([1.0])
            for m in range(k):
                if m != j:
                    p = p * Polynomial([-u[i - m], 1.0]) / (u[i - j] - u[i - m])
            row.append(primitive(p, i + 1) - primitive(p, i))
        rows.append(row)
    return rows


@register("deis", title="DEIS (tAB, log rho)", paper="Zhang & Chen 2023", processes=PROCESS_KINDS,
          stochastic=False, order=3, nfe_per_step=1, sigma_view=True, quick={"steps": 5})
def sample_deis(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                sigmas=None, order: int = 3, prediction: str = "eps", seed=None, callback=None,
                progress=False):
    """DEIS, the exponential integrator's multistep tAB in log rho (Zhang & Chen 2023,
    "Fast Sampling of Diffusion Models with Exponential Integrator", eq. 15; diffusers'
    DEISMultistepScheduler, algorithm_type 'deis', solver_type 'logrho'): with rho = sigma,
    eps_i = (x_ve - D) / sigma_i,

    x_ve' = x_ve + sum_{j < k} c_ij eps_{i-j},
    c_ij = int_{sigma_i}^{sigma_{i+1}} L_j(log rho) d rho,

    L_j the Lagrange basis over the last k = min(i + 1, order) levels' log sigma
    (``deis_coefficients``); under 15 steps the last two steps are of order 1 and 2 (diffusers'
    lower_order_final). Order 1 is DDIM. N model calls; a step is a ``sample_step`` writing
    eps_i and a ``lincomb`` of the older eps's.

    Args:
        as ``sample_euler`` (no churn); order: 1..3; seed is unused (deterministic).
    """
    _check_order("deis", order, 3)

    def coefficients(sig):
        n = len(sig) - 1
        return deis_coefficients(sig, final_orders(n, int(order), n < 15))

    return _eps_multistep("deis", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas),
                          prediction, callback, progress, coefficients)


def dpmpp_weights(order: int, solver_type: str, i: int, h, big: float) -> list:
    """(w_0, w_1, ...) of D_i, D_{i-1}, ... in ``dpmpp_sde_columns``' correction of DPM-Solver++'s
    multistep step of ``order`` at step i (Lu et al. 2022; k-diffusion's sample_dpmpp_2m_sde /
    _3m_sde; diffusers' DPMSolverMultistepScheduler), h the host steps log(sigma / sigma'),
    big = H = (1 + eta) h_i, b = 1 - e^-H, r0 = h_{i-1} / h_i, r1 = h_{i-2} / h_i:

    1: none;  2: midpoint w (D - D_1), w = b / (2 r0), or heun w = (1 - b / H) / r0;
    3: phi_2 d1 - phi_3 d2, phi_2 = 1 - b / H, phi_3 = phi_2 / H - 1/2,
       d1_0 = (D - D_1) / r0, d1_1 = (D_1 - D_2) / r1, d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),
       d2 = (d1_0 - d1_1) / (r0 + r1).

    Order 3 as its references write it (DPM-Solver's multistep_dpm_solver_third_update,
    diffusers, k-diffusion): d1 = h D' + O(h^3), but d2 = h^2 D'' / 2 + O(h^3) takes the
    coefficient -phi_3 of h^2 D'' in the exponential integrator's Taylor expansion (the
    singlestep solver's d2 is h^2 D''), so the step's local error is O(h^3) and the method
    second order: measured at eta = 0 on a Gaussian, the error falls 4.0x per halved step
    (with 2 d2, 18-28x). Kept for parity (tests/samplers/test_ancestral_multistep.py).
    """
    if order == 1:
        return [0.0]
    r0, b = float(h[i - 1] / h[i]), -math.expm1(-big)
    if order == 2:
        w = b / (2 * r0) if solver_type == "midpoint" else (1 - b / big) / r0
        return [w, -w]
    phi2, r1 = 1 - b / big, float(h[i - 2] / h[i])
    phi3 = phi2 / big - 0.5
    diff = [1 / r0, -1 / r0 - 1 / r1, 1 / r1]
    d1 = [u + v * r0 / (r0 + r1) for u, v in zip([1 / r0, -1 / r0, 0.0], diff)]
    return [phi2 * u - phi3 * v / (r0 + r1) for u, v in zip(d1, diff)]


def dpmpp_sde_columns(prediction, sig, a, eta, s_noise, correction):
    """The exponential-integrator step of D in VE coordinates (k-diffusion's sample_dpmpp_2m_sde
    and _3m_sde; UniPC with eta = 0), h = log(sigma / sigma'), H = (1 + eta) h:

    x' = (sigma' / sigma) e^(-eta h) x + (1 - e^-H) D + sum_j w_j D_{i-j}
         + sigma' sqrt(1 - e^(-2 eta h)) s_noise z,       x' = D on the last step,

    (w_0, w_1, ...) = ``correction(i, h, H)`` (h the host float64 steps so far), as columns.
    """
    n, last = len(sig) - 1, sig[1:] == 0
    h = torch.where(last, 1.0, sig[:-1] / torch.where(last, 1.0, sig[1:])).log()
    big = (1 + eta) * h
    cx, co = x0_coefs(prediction, a[:-1], a[:-1] * sig[:-1])
    b = torch.where(last, 1.0, -torch.expm1(-big))
    weights = [[] if last[i] else correction(i, h, float(big[i])) for i in range(n)]
    width = max(map(len, weights), default=1)
    w = torch.zeros(n, max(width, 1), dtype=torch.float64)
    for i, row in enumerate(weights):
        w[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    noise = sig[1:] * (-torch.expm1(-2 * eta * h)).clamp(min=0).sqrt() * s_noise
    cols = dict(a=a[:-1], std=a[:-1] * sig[:-1], co=co, hx=cx, ho=co,
                mx=torch.where(last, 0.0, a[1:] * sig[1:] / sig[:-1] * torch.exp(-eta * h)
                               / a[:-1]),
                m0=a[1:] * (b + w[:, 0]), s=torch.where(last, 0.0, a[1:] * noise),
                **{f"h{j}": a[1:] * w[:, j] for j in range(1, w.shape[1])})
    depth = [max(len(row) - 1, 0) for row in weights]
    at = [(sig[i], sig[i + 1]) if d else None for i, d in enumerate((cols["s"] > 0).tolist())]
    return cols, depth, at


def _sde_run(name, model, x, process, grid, eta, s_noise, noise_sampler, prediction, seed,
             callback, progress, correction):
    check_eta(eta, s_noise)
    run = start(name, model, x, process, prediction=prediction, seed=seed, callback=callback,
                noise=eta > 0 and s_noise > 0 and noise_sampler is None, progress=progress)
    times, sig, a, x = start_grid(run, x, *grid)
    cols, depth, at = dpmpp_sde_columns(prediction, sig, a, eta, s_noise, correction)
    return multistep_loop(run, x, run.table(cols), run.times(times), depth,
                          StepNoise(run, noise_sampler, at), True)


@register("dpmpp_2m_sde", title="DPM-Solver++(2M) SDE", paper="Lu et al. 2022 (DPM-Solver++); "
          "k-diffusion", processes=PROCESS_KINDS, stochastic="eta > 0", order=2,
          nfe_per_step=1, sigma_view=True, quick={"steps": 4})
def sample_dpmpp_2m_sde(model, x, process, *, steps=None, sigma_min=None, sigma_max=None,
                        rho=None, sigmas=None, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint", noise_sampler=None,
                        prediction: str = "eps", seed=None, callback=None, progress=False):
    """DPM-Solver++(2M) SDE (Lu et al. 2022; k-diffusion's sample_dpmpp_2m_sde):
    ``dpmpp_sde_columns``' step with, from the second step on, r = h_prev / h and

    midpoint: w (D - D_prev),  w = (1 - e^-H) / (2r);   heun: w = (1 - (1 - e^-H) / H) / r.

    eta = 0 is DPM-Solver++(2M) with this correction. N model calls; k-diffusion's default z is
    a Brownian tree, here the noise stream (its BrownianTreeNoiseSampler as ``noise_sampler``
    reproduces its runs).

    Args:
        as ``sample_euler_ancestral``; solver_type: "midpoint" or "heun".
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")

    def correction(i, h, big):
        return dpmpp_weights(min(i + 1, 2), solver_type, i, h, big)

    return _sde_run("dpmpp_2m_sde", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas),
                    eta, s_noise, noise_sampler, prediction, seed, callback, progress,
                    correction)


@register("dpmpp_3m_sde", title="DPM-Solver++(3M) SDE", paper="Lu et al. 2022 (DPM-Solver++); "
          "k-diffusion", processes=PROCESS_KINDS, stochastic="eta > 0",
          order=2,      # measured: its d2 term is half the Taylor term (dpmpp_weights)
          nfe_per_step=1, sigma_view=True, quick={"steps": 4})
def sample_dpmpp_3m_sde(model, x, process, *, steps=None, sigma_min=None, sigma_max=None,
                        rho=None, sigmas=None, eta: float = 1.0, s_noise: float = 1.0,
                        noise_sampler=None, prediction: str = "eps", seed=None, callback=None,
                        progress=False):
    """DPM-Solver++(3M) SDE (Lu et al. 2022; k-diffusion's sample_dpmpp_3m_sde):
    ``dpmpp_sde_columns``' step with ``dpmpp_weights`` of order 3 (phi_2 d1 - phi_3 d2), of
    order 2 (heun) on the second step. N model calls; arguments as
    ``sample_dpmpp_2m_sde`` (no solver_type). Equal to k-diffusion's (1e-10 in float64), and
    like it second order at eta = 0, not third (``dpmpp_weights``).
    """
    def correction(i, h, big):
        return dpmpp_weights(min(i + 1, 3), "heun", i, h, big)

    return _sde_run("dpmpp_3m_sde", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas),
                    eta, s_noise, noise_sampler, prediction, seed, callback, progress,
                    correction)


def _unipc_rhos(rks, h: float, corrector: bool) -> list:
    """UniPC-bh2's rho (Zhao et al. 2023, Alg. 2-3 with B(h) = e^h - 1, in -h for data
    prediction) of nodes r_k = (lambda_{s-k} - lambda_s) / h: with g_1 = phi_1 - 1 =
    expm1(-h)/(-h) - 1, g_{m+1} = g_m / (-h) - 1/(m+1)!, b_m = m! g_m / B(h), R_mk = r_k^(m-1)
    over (r_1, ..., r_{p-1}, 1): UniC's solve(R, b) (p = 1: 1/2), UniP's over the r's alone
    (p = 2: 1/2), as diffusers' multistep_uni_p/c_bh_update."""
    p, hh = len(rks) + 1, -h
    g, fact, b = math.expm1(hh) / hh - 1, 1, []
    for m in range(1, p + 1):
        b.append(g * fact / math.expm1(hh))
        fact *= m + 1
        g = g / hh - 1 / fact
    big_r = np.vander(np.array([*rks, 1.0]), p, increasing=True).T
    if corrector:
        return [0.5] if p == 1 else list(np.linalg.solve(big_r, b))
    return [] if p == 1 else [0.5] if p == 2 else list(np.linalg.solve(big_r[:-1, :-1], b[:-1]))


def unipc_correction(i: int, h, orders) -> list:
    """Step i of UniPC-bh2 as weights (w_0, w_1, ...) of D_i, D_{i-1}, ... beside
    ``dpmpp_sde_columns``' (1 - sigma'/sigma) D_i, in VE coordinates
    (h_i = log(sigma_i / sigma_{i+1}), b_i = 1 - e^-h_i, D1_k = (D_{s-k} - D_s) / r_k):

    UniC (i > 0, order q = orders[i-1]): x^c_i = x_i + b_{i-1} (sum_k (rc_k - rp_k) D1_k
        + rc_q (D_i - D_{i-1})) about s = i - 1, rp the UniP rho that made x_i;
    UniP (order p = orders[i]): x_{i+1} = (sigma_{i+1} / sigma_i) x^c_i + b_i (D_i
        + sum_k rp_k D1_k) about s = i.

    The model is called at the uncorrected x_i (diffusers' order), so x^c_i is never stored.
    """
    w = [0.0] * 5

    def add(scale, s, rhos, rks):
        for k, (rho_k, r) in enumerate(zip(rhos, rks), 1):
            w[i - s + k] += scale * rho_k / r
            w[i - s] -= scale * rho_k / r

    def nodes(s, order):
        return [-float(h[s - k:s].sum()) / float(h[s]) for k in range(1, order)]

    p, hi = orders[i], float(h[i])
    add(-math.expm1(-hi), i, _unipc_rhos(nodes(i, p), hi, False), nodes(i, p))
    if i > 0:
        q, hp = orders[i - 1], float(h[i - 1])
        scale, rks = math.exp(-hi) * -math.expm1(-hp), nodes(i - 1, q)
        rc, rp = _unipc_rhos(rks, hp, True), _unipc_rhos(rks, hp, False)
        add(scale, i - 1, [c - d for c, d in zip(rc, rp)], rks)
        w[0] += scale * rc[-1]
        w[1] -= scale * rc[-1]
    return w[:max(p, orders[i - 1] + 1 if i > 0 else 1)]


@register("unipc", title="UniPC-bh2 multistep", paper="Zhao et al. 2023", processes=PROCESS_KINDS,
          stochastic=False, order=3, nfe_per_step=1, sigma_view=True,
          quick={"steps": 5})
def sample_unipc(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                 sigmas=None, order: int = 2, prediction: str = "eps", seed=None, callback=None,
                 progress=False):
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", Alg. 2-3,
    B(h) = e^h - 1, data prediction; diffusers' UniPCMultistepScheduler, solver_type 'bh2'):
    after each model call at x_i the corrector UniC-q re-solves the last step with D_i, then the
    predictor UniP-p steps on (``unipc_correction``), in VE coordinates

    x_{i+1} = (sigma_{i+1} / sigma_i) x^c_i + (1 - sigma_{i+1} / sigma_i)
              (D_i + sum_k rho_k (D_{i-k} - D_i) / r_k),

    p = min(order, i + 1, N - i) (warm-up, and diffusers' lower_order_final: the last step is
    x_N = D_{N-1}); UniC raises the order by one. N model calls; a step is a ``sample_step``
    writing D_i and a ``lincomb`` of the older D's (x^c folded in, never stored).

    Args:
        as ``sample_euler`` (no churn); order: UniP's order p, 1..3 (diffusers' solver_order);
            seed is unused (deterministic).
    """
    _check_order("unipc", order, 3)

    def correction(i, h, big):
        return unipc_correction(i, h, final_orders(len(h), int(order), True))

    return _sde_run("unipc", model, x, process, (steps, sigma_min, sigma_max, rho, sigmas), 0.0,
                    0.0, None, prediction, seed, callback, progress, correction)
