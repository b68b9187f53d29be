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
from ..schedules import exponential_sigmas, karras_sigmas
from ._common import StepNoise, guided_pair, start
from .edm import ancestral_step, at_sigmas, check_eta, start_grid
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

    for order 2 / 3 also "low", the embedded order 1 / 2 end (DPM-Solver-12 / 23).
    """
    full = sigma - target
    if order == 1:
        return {"end": [-full]}
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


def dpm_step(run, x, c: dict, times, i: int, order: int, z=None, low: bool = False):
    """One DPM-Solver step of ``dpm_columns``' row c: the model at u_0 = x, u_1, ... (``order``
    calls, model times ``times[k][i]``), each stage and the end one ``lincomb`` (the end with
    z). Returns (end, the embedded lower-order end or None, (o_0, its uncond))."""
    den, us, outs = run.den, [x], []
    for k in range(order):
        outs.append(guided_pair(den, us[k], run.t(times[k], i), c[f"a{k}"], c[f"std{k}"],
                                c[f"co{k}"]))
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
    nxt = sig[i + 1]
    if not (eta > 0 and nxt > 0):
        return float(nxt), 0.0
    down, _ = ancestral_step(sig[i], nxt, eta)
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
