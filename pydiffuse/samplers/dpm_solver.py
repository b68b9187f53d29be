"""DPM-Solver-1, 2 and 3 steps (Lu et al. 2022, "DPM-Solver", Algorithms 1-2 in eps) on the
noise levels sigma = std / a of any process, with k-diffusion's step choices: fixed orders on a
grid uniform in log sigma (``dpm_fast``, DPM-Solver-fast) and the adaptive DPM-Solver-12 / 23
(``dpm_adaptive``, an embedded lower-order solution and a PID controller on the step in
t = -log sigma).

In VE coordinates x_ve = x / a and with eps_j = (u_j - D(u_j, sigma_j)) / sigma_j at the stage
points u_0 = x, u_1, u_2, every stage and the end of a step is x_ve + sum_j w_j eps_j
(``dpm_weights``); in native coordinates one ``lincomb`` of [x, o_0, u_1, o_1, ...] per stage
(``dpm_columns``), the ancestral noise included.
"""

import math

import torch

from ..ops import lincomb
from ..predictions import x0_coefs
from ..schedules import append_zero, exponential_sigmas, karras_sigmas
from ._common import StepNoise, guided_pair, start
from .edm import ancestral_step, at_sigmas, check_eta, check_sigmas, start_grid
from .ode import output_terms
from .registry import PROCESS_KINDS, register

ROWS = ("u1", "u2", "end", "low")     # the stage points, the step's end, the embedded solution
TERMS = ("x", "o0", "u1", "o1", "u2", "o2")


def dpm_weights(order: int, sigma: float, target: float, levels) -> dict:
    """The VE weights w[row] of eps_0, eps_1, ... of a DPM-Solver step from sigma to target
    (h = log(sigma / target), the stage levels sigma_k = sigma e^(-r_k h), ``levels`` =
    (sigma_1, sigma_2) as the process sees them; r_k recomputed from them), k-diffusion's
    dpm_solver_{1,2,3}_step with sigma' expm1(h) = sigma - sigma':

    1: x' = x - (sigma - sigma') eps_0                       (also to sigma' = 0: x' = D)
    2: u_1 = x - (sigma - sigma_1) eps_0,
       x'  = x - (sigma - sigma') eps_0 - (sigma - sigma') / (2 r_1) (eps_1 - eps_0)
    3: u_2 = x - (sigma - sigma_2) eps_0 - sigma_2 r_2 / r_1 (phi(r_2 h) - 1) (eps_1 - eps_0),
       x'  = x - (sigma - sigma') eps_0 - sigma' / r_2 (phi(h) - 1) (eps_2 - eps_0),
       phi(h) = expm1(h) / h;

    "low", the embedded order 1 / 2 end of order 2 / 3 (DPM-Solver-12 / 23; order 1's own end).
    """
    full = sigma - target
    if order == 1:
        return {"end": [-full], "low": [-full]}
    h = math.log(sigma / target)
    r = [math.log(sigma / s) / h for s in levels]
    w = {"u1": [-(sigma - levels[0])]}
    two = [-full + full / (2 * r[0]), -full / (2 * r[0])]
    if order == 2:
        return dict(w, end=two, low=[-full])
    c2 = levels[1] * r[1] / r[0] * (math.expm1(r[1] * h) / (r[1] * h) - 1)
    c3 = target / r[1] * (math.expm1(h) / h - 1)
    return dict(w, u2=[-(sigma - levels[1]) + c2, -c2], end=[-full + c3, 0.0, -c3], low=two)


def dpm_columns(prediction: str, steps: list) -> dict:
    """Host columns of ``dpm_weights``' steps in native coordinates: per step a dict with
    "order", "w", the levels "sig" (sigma_0, sigma_1, sigma_2), scales "a" (of u_0, u_1, u_2
    and of the end's level), "z" (the end's VE noise sigma_up s_noise). Row k's native value is
    a_row (x / a_0 + sum_j w_j eps_j) + a_end z, eps_j = hx_j u_j + ho_j o_j; also each model
    call's (a, std, co) for guidance and cx0 (D = cx0 x + co0 o_0, the callback's x0)."""
    cols = {f"{row}_{term}": [] for row in ROWS for term in (*TERMS, "z")}
    cols.update({f"{k}{j}": [] for k in ("a", "std", "co") for j in range(3)}, cx0=[])
    for step in steps:
        sig, a = step["sig"], step["a"]
        cx, co = x0_coefs(prediction, torch.tensor(a[:3], dtype=torch.float64),
                          torch.tensor([u * v for u, v in zip(a[:3], sig)], dtype=torch.float64))
        hx = [1 / (a[j] * sig[j]) - float(cx[j]) / sig[j] for j in range(3)]
        ho = [-float(co[j]) / sig[j] for j in range(3)]
        cols["cx0"].append(float(cx[0]))
        for j in range(3):
            cols[f"a{j}"].append(a[j])
            cols[f"std{j}"].append(a[j] * sig[j])
            cols[f"co{j}"].append(float(co[j]))
        for row in ROWS:
            w = step["w"].get(row, [])
            scale = a[3] if row in ("end", "low") else a[ROWS.index(row) + 1]
            coef = dict.fromkeys((*TERMS, "z"), 0.0)
            if w:
                coef["x"] = scale / a[0]
                coef["z"] = a[3] * step["z"] if row == "end" else 0.0
            for j, wj in enumerate(w):
                coef["x" if j == 0 else f"u{j}"] += scale * wj * hx[j]
                coef[f"o{j}"] += scale * wj * ho[j]
            for term, v in coef.items():
                cols[f"{row}_{term}"].append(v)
    return cols


def _combine(den, c: dict, row: str, us, outs, n: int, z=None):
    """Row ``row`` of ``dpm_columns``: one ``lincomb`` of x, o_0, (u_j, o_j) for j < n, z."""
    terms, coefs = [us[0]], [c[f"{row}_x"]]
    for j in range(n):
        if j:
            terms, coefs = terms + [us[j]], coefs + [c[f"{row}_u{j}"]]
        more, more_c = output_terms(den, *outs[j], c[f"{row}_o{j}"])
        terms, coefs = terms + more, coefs + more_c
    if z is not None:
        terms, coefs = terms + [z], coefs + [c[f"{row}_z"]]
    return lincomb(terms, coefs)


def dpm_step(run, x, c: dict, times, i: int, order: int, z=None, low: bool = False,
             first=None):
    """One DPM-Solver step of ``dpm_columns``' row c: the model at u_0 = x, u_1, ... (``order``
    calls, model times ``times[k][i]``; ``first``: o_0 and its uncond when already known), each
    stage and the end one ``lincomb`` (the end with z). Returns (end, the embedded lower-order
    end or None, (o_0, its uncond))."""
    den, us, outs = run.den, [x], []
    for k in range(order):
        outs.append(first if k == 0 and first is not None else guided_pair(
            den, us[k], run.t(times[k], i), c[f"a{k}"], c[f"std{k}"], c[f"co{k}"]))
        if k + 1 < order:
            us.append(_combine(den, c, f"u{k + 1}", us, outs, k + 1))
    end = _combine(den, c, "end", us, outs, order, z)
    return end, _combine(den, c, "low", us, outs, order - 1) if low else None, outs[0]


def dpm_plan(process, sig_i: float, target: float, order: int, t_i, a_i: float, a_next: float,
             z: float = 0.0) -> dict:
    """A step's host plan for ``dpm_columns``: its stage levels at r = 1/2 (order 2) or 1/3,
    2/3 (order 3) of h in log sigma, as the process sees them (``at_sigmas``); a stage a
    discrete schedule quantizes onto the step's start (r_1 = 0) or onto the first (r_2 = r_1)
    makes the step first order. Returns {"order", "w", "sig", "a", "z", "times"}."""
    levels, scales, times = [sig_i, sig_i], [a_i, a_i], [t_i, t_i]
    if order > 1:
        rs = (0.5,) if order == 2 else (1 / 3, 2 / 3)
        nominal = torch.tensor([sig_i * (target / sig_i) ** r for r in rs], dtype=torch.float64)
        ts, ss, aa = at_sigmas(process, nominal)
        if ss[0] < sig_i and (order == 2 or ss[1] < ss[0]):
            levels[:order - 1], scales[:order - 1] = ss.tolist(), aa.tolist()
            times[:order - 1] = ts.tolist()
        else:
            order = 1
    w = dpm_weights(order, sig_i, target, levels)
    return {"order": order, "w": w, "sig": [sig_i, *levels], "a": [a_i, *scales, a_next],
            "z": z, "times": [t_i, *times]}


def fast_orders(nfe: int) -> list:
    """k-diffusion's DPM-Solver-fast orders for nfe model calls on m = nfe // 3 + 1 steps:
    3, ..., 3, 2, 1 when 3 divides nfe, else 3, ..., 3, nfe mod 3."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


def _fast_levels(steps, sigma_min, sigma_max, rho):
    """The m + 1 levels of ``fast_orders(steps)``: uniform in log sigma (k-diffusion's), or
    Karras' with rho."""
    m = steps // 3 + 1
    if rho is None:
        return exponential_sigmas(m + 1, sigma_min, sigma_max)
    return karras_sigmas(m + 1, sigma_min, sigma_max, rho)


def _ancestral_target(sig, i: int, end: float, eta: float, s_noise: float):
    """k-diffusion's ancestral DPM-Solver step: the target max(sigma_down, sigma_end) and the VE
    noise sqrt(sigma'^2 - target^2) s_noise (none on the step to sigma = 0)."""
    now, nxt = (torch.tensor(float(v), dtype=torch.float64) for v in sig[i:i + 2])
    if not (eta > 0 and nxt > 0):
        return float(nxt), 0.0
    down, _ = ancestral_step(now, nxt, eta)
    target = max(float(down), end)
    return target, math.sqrt(max(float(nxt) ** 2 - target ** 2, 0.0)) * s_noise


@register("dpm_fast", title="DPM-Solver-fast", paper="Lu et al. 2022 (DPM-Solver); k-diffusion",
          processes=PROCESS_KINDS, stochastic="eta > 0", order=3, nfe_per_step=1,
          sigma_view=True, quick={"steps": 6})
def sample_dpm_fast(model, x, process, *, steps=None, sigma_min=None, sigma_max=None, rho=None,
                    sigmas=None, eta: float = 0.0, s_noise: float = 1.0, noise_sampler=None,
                    prediction: str = "eps", seed=None, callback=None, progress=False):
    """DPM-Solver-fast (Lu et al. 2022, "DPM-Solver", section 3.4; k-diffusion's
    sample_dpm_fast): ``steps`` model calls from sigma_max to sigma_min as DPM-Solver-3 steps,
    then 2 and 1 (or nfe mod 3) on m = steps // 3 + 1 steps uniform in t = -log sigma
    (``fast_orders``, ``dpm_weights``), then the step to sigma = 0, x = D(x, sigma_min) (one more
    call; k-diffusion stops at sigma_min). With eta > 0 each step goes to
    max(sigma_down, sigma_min) and adds sqrt(sigma'^2 - that^2) s_noise z (k-diffusion's).

    Args:
        as ``sample_euler_ancestral`` (default eta 0: deterministic), and
        steps: model calls before the last step (default 50); rho: Karras levels with this rho
            instead of uniform in log sigma; sigmas: a grid ending in 0 instead, whose m + 1
            positive levels run as steps = 3 (m - 1) (orders 3, ..., 3, 2, 1), one model call
            for m = 1.

    Returns:
        x_0 [B, ...].
    """
    check_eta(eta, s_noise)
    run = start("dpm_fast", model, x, process, prediction=prediction, seed=seed,
                noise=eta > 0 and s_noise > 0 and noise_sampler is None, callback=callback,
                progress=progress)
    times, sig, a, x = start_grid(run, x, steps, sigma_min, sigma_max, rho, sigmas,
                                  spacing=_fast_levels)
    m = len(times) - 1
    nfe = 50 if steps is None else int(steps)
    if sigmas is not None or m != nfe // 3 + 1:     # a given grid, or one a schedule merged
        nfe = 3 * (m - 1) if m > 1 else m
    orders = (fast_orders(nfe) if m else []) + [1]
    plans = []
    for i, order in enumerate(orders):
        target, z = _ancestral_target(sig, i, float(sig[m]), eta, s_noise)
        plans.append(dpm_plan(run.process, float(sig[i]), target, order, float(times[i]),
                              float(a[i]), float(a[i + 1]), z))
    return dpm_loop(run, x, plans, prediction, StepNoise(
        run, noise_sampler, [(sig[i], sig[i + 1]) if p["z"] > 0 else None
                             for i, p in enumerate(plans)]))


def dpm_loop(run, x, plans: list, prediction: str, noise: StepNoise):
    """The fixed steps of ``dpm_plan``'s plans, their columns one table on the device."""
    table = run.table(dpm_columns(prediction, plans))
    times = [run.times([p["times"][k] for p in plans]) for k in range(3)]
    for i in run.steps(len(plans)):
        c = table.row(i)
        x_in = x
        x, _, (out, uncond) = dpm_step(run, x, c, times, i, plans[i]["order"],
                                       noise.tensor(0, i, x))
        if run.callback is not None:
            terms, coefs = output_terms(run.den, out, uncond, c["co0"])
            run.report(i, run.t(times[0], i), x,
                       x0=lincomb([x_in, *terms], [c["cx0"], *coefs]))
    return x


class PIDController:
    """k-diffusion's PIDStepSizeController (Soderlind's PID step control): with the inverse
    errors e_n = 1 / (error_n + eps) of the last accepted steps,
    factor = 1 + atan(e_0^b1 e_1^b2 e_2^b3 - 1), b1 = (p + i + d) / k, b2 = -(p + 2d) / k,
    b3 = d / k (k: the order), h <- h factor; accepted when factor >= accept_safety."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order,
                  dcoeff / order)
        self.errs = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        self.errs = [inv, *self.errs[1:]] if self.errs else [inv] * 3
        factor = 1 + math.atan(math.prod(e ** b for e, b in zip(self.errs, self.b)) - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs = [self.errs[0], self.errs[0], self.errs[1]]
        self.h *= factor
        return accept


def _adaptive_range(process, steps, sigma_min, sigma_max, rho, sigmas):
    """(sigma_max, sigma_min) of an adaptive run: the options, the process's range, or the
    first and last positive levels of sigmas = [sigma_max, sigma_min, 0]."""
    if steps is not None or rho is not None:
        raise ValueError("dpm_adaptive chooses its own steps (rtol, atol set their number): "
                         "give no steps or rho")
    if sigmas is not None:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("give sigmas= or sigma_min / sigma_max, not both")
        grid = check_sigmas(sigmas)
        if len(grid) > 3:
            raise ValueError("dpm_adaptive chooses its own steps: sigmas= may give only its "
                             f"range [sigma_max, sigma_min, 0], got {len(grid)} levels")
        return float(grid[0]), float(grid[-2])
    hi = max(process.sigma_range) if sigma_max is None else float(sigma_max)
    lo = min(process.sigma_range) if sigma_min is None else float(sigma_min)
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo}, {hi}")
    return hi, lo


def _level(process, sigma: float, below: float):
    """The level the process sees nearest sigma (``at_sigmas``), strictly below ``below``: on
    a discrete schedule the next index down when sigma rounds back to it. (t, sigma, a)."""
    t, sig, a = (float(v) for v in at_sigmas(process, torch.tensor([sigma],
                                                                   dtype=torch.float64)))
    if sig < below:
        return t, sig, a
    lower = process.sigmas[process.sigmas < below * (1 - 1e-12)]
    if not len(lower):
        raise ValueError(f"no level of {process!r} below sigma = {below}")
    return tuple(float(v) for v in at_sigmas(process, lower.max().reshape(1)))


@register("dpm_adaptive", title="DPM-Solver-12 / 23, adaptive",
          paper="Lu et al. 2022 (DPM-Solver); k-diffusion", processes=PROCESS_KINDS,
          stochastic="eta > 0", order=3, nfe_per_step="order (+ rejected steps)",
          sigma_view=True, adaptive=True, quick={"rtol": 0.2})
def sample_dpm_adaptive(model, x, process, *, steps=None, sigma_min=None, sigma_max=None,
                        rho=None, sigmas=None, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                        icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
                        eta: float = 0.0, s_noise: float = 1.0, noise_sampler=None,
                        max_steps: int = 1000, prediction: str = "eps", seed=None,
                        callback=None, progress=False):
    """Adaptive DPM-Solver-12 / 23 (Lu et al. 2022, "DPM-Solver", section 3.4 and appendix C;
    k-diffusion's sample_dpm_adaptive): from sigma_max to sigma_min in t = -log sigma, each step
    of size h taken by DPM-Solver-``order`` and its embedded order - 1 solution x_low
    (``dpm_weights``) from one set of model calls, with

    error = |(x_low - x) / max(atol, rtol max(|x_low|, |x_low of the last accepted step|))|_2
            / sqrt(numel)   (VE coordinates, the whole batch),

    h set by ``PIDController`` (its order 1.5 with eta > 0), a step accepted when the controller
    accepts it (the model output at x is kept for the retry); then the step to sigma = 0,
    x = D(x, sigma_min). With eta > 0 as ``sample_dpm_fast``. Each attempt reads the error on
    the host (no CUDA graph). A discrete schedule rounds each level to its nearest step.

    Args:
        model, x, process, prediction, seed, callback, progress: as ``sample_euler``.
        sigma_min, sigma_max: the range (default the process's); sigmas: [sigma_max,
            sigma_min, 0] instead; steps, rho: refused (the controller picks the steps).
        order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23); rtol, atol, h_init, pcoeff, icoeff,
            dcoeff, accept_safety: the controller's (k-diffusion's defaults).
        eta, s_noise, noise_sampler: as ``sample_dpm_fast``.
        max_steps: the most attempts (accepted or not) before a RuntimeError.

    Returns:
        x_0 [B, ...].
    """
    if order not in (2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 2 or 3 (dpm_adaptive's embedded pairs), got {order!r}")
    if not (rtol >= 0 and atol >= 0 and rtol + atol > 0 and h_init > 0
            and 0 < accept_safety and all(map(math.isfinite, (rtol, atol, h_init)))):
        raise ValueError(f"need rtol, atol >= 0 (not both 0), h_init > 0, accept_safety > 0; "
                         f"got rtol={rtol}, atol={atol}, h_init={h_init}, "
                         f"accept_safety={accept_safety}")
    check_eta(eta, s_noise)
    run = start("dpm_adaptive", model, x, process, prediction=prediction, seed=seed,
                noise=eta > 0 and s_noise > 0 and noise_sampler is None, callback=callback,
                progress=progress)
    hi, lo = _adaptive_range(run.process, steps, sigma_min, sigma_max, rho, sigmas)
    levels = torch.tensor([hi, lo], dtype=torch.float64)
    times, sig, a, x = start_grid(run, x, None, None, None, None, append_zero(levels))
    pid = PIDController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    t_now, s_now, a_now, end = float(times[0]), float(sig[0]), float(a[0]), float(sig[-2])
    prev, first, i = lincomb([x], [1 / a_now]), None, 0
    for _ in run.steps(max_steps, "dpm_adaptive"):
        if s_now <= end * (1 + 1e-9):
            break
        t_next, s_next, a_next = _level(run.process, max(end, s_now * math.exp(-pid.h)), s_now)
        target, z_scale = _ancestral_target([s_now, s_next], 0, end, eta, s_noise)
        plan = dpm_plan(run.process, s_now, target, order, t_now, a_now, a_next)
        c = run.table(dpm_columns(prediction, [plan])).row(0)
        stage_times = [run.times([tk]) for tk in plan["times"]]
        high, low, first = dpm_step(run, x, c, stage_times, 0, plan["order"], low=True,
                                    first=first)
        low_ve, high_ve = lincomb([low], [1 / a_next]), lincomb([high], [1 / a_next])
        delta = (rtol * torch.maximum(low_ve.abs(), prev.abs())).clamp(min=atol)
        error = float(torch.linalg.norm((low_ve - high_ve) / delta)) / low_ve.numel() ** 0.5
        if not pid.propose(error):
            continue
        draw = StepNoise(run, noise_sampler, [(s_now, s_next)]).tensor(0, 0, x) \
            if z_scale > 0 else None
        x0 = None
        if run.callback is not None:
            terms, coefs = output_terms(run.den, *first, c["co0"])
            x0 = lincomb([x, *terms], [c["cx0"], *coefs])
        x = high if draw is None else lincomb([high, draw], [1.0, a_next * z_scale])
        run.report(i, stage_times[0][0], x, x0=x0)
        prev, first, i = low_ve, None, i + 1
        t_now, s_now, a_now = t_next, s_next, a_next
    else:
        raise RuntimeError(f"dpm_adaptive did not reach sigma_min = {end} within max_steps="
                           f"{max_steps} attempts; raise max_steps or loosen rtol/atol")
    final = dpm_plan(run.process, s_now, 0.0, 1, t_now, a_now, 1.0)
    c = run.table(dpm_columns(prediction, [final])).row(0)
    return dpm_step(run, x, c, [run.times([t_now])] * 3, 0, 1, first=first)[0]
