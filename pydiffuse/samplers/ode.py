"""Probability-flow ODE sampling for score SDEs (Song et al. 2021, eq. 13; MATH.md section 5):
fixed-step Euler and Heun, and adaptive Dormand-Prince RK45 with a step size per sample."""

import numbers

import torch

from ..ode_solvers import DP_A, DP_C, DP_E, controlled_step, initial_step_from_norms
from ..ops import StepCoefs, compute_dtype, lincomb, sample_step
from ..predictions import x0_coefs
from ._common import StepTable, guided_pair, model_marginal, start
from .pc import predictor_columns
from .registry import register

METHODS = ("euler", "heun", "rk45")

def drift_coefs(process, prediction: str, t) -> dict:
    """The probability-flow drift at times t as ``sample_step`` coefficients, host float64 [n]:

    dx/dt = f x - g^2 s / 2,  s = (a x0 - x) / sigma^2   =>   dx/dt = mx x + m0 x0,
    mx = f + g^2 / (2 sigma^2),  m0 = -g^2 a / (2 sigma^2),  x0 = cx x + co out, (a, sigma) the
    ``model_marginal`` (a ``DiscreteVPSDE``'s chain: s = -eps / sigma_chain, as score_sde);
    also (a, std) for classifier guidance.
    """
    a, std = model_marginal(process, t)
    half_g2 = 0.5 * process.diffusion(t) ** 2 / std ** 2
    cx, co = x0_coefs(prediction, a, std)
    return {"cx": cx, "co": co, "mx": process.drift_coef(t) + half_g2, "m0": -half_g2 * a,
            "a": a, "std": std}


def output_terms(den, out, uncond, coef):
    """coef * o as ``lincomb`` terms, the guidance o = o_u + w' (o_c - o_u) fused in."""
    if uncond is None:
        return [out], [coef]
    return [out, uncond], [coef * den.guidance, coef * (1 - den.guidance)]


def euler_heun_loop(run, x, table: StepTable, times, heun, *, pre=None, desc=None, noise=None):
    """Run a fixed grid of Euler or Heun steps whose coefficients ``table`` holds, per step i:

    (pre[i])  x   = pre_mx x + pre_s z                   (EDM's churn; noise when pre_s > 0)
              x0  = cx x + co o(x, t_i);  x_e = mx x + m0 x0 (+ s z_1)   (one ``sample_step``)
    (heun[i]) x_e = hx x + hd x0 + he x_e + ho o(x_e, t2_i) (+ hz z_2)   (one ``lincomb``)

    Args:
        run: the sampler's ``Run`` (model call, noise stream, callback, progress bar).
        table: ``StepTable`` with those columns and (a, std), (a2, std2, co2) for guidance.
        times: (t, t2), the model times of the two evaluations (``Run.times``).
        heun, pre: per-step host booleans.
        noise: a ``StepNoise`` for z_1 (stage 0) and z_2 (stage 1), or None (no s, hz).
    """
    den = run.den
    for i in run.steps(len(table), desc):
        c = table.row(i)
        if pre is not None and pre[i]:
            draws = run.draw()
            x = sample_step(x, x, StepCoefs(mx=c["pre_mx"], s=c["pre_s"] if draws else 0.0),
                            **draws)          # out = x is a placeholder: co = 0
        t = run.t(times[0], i)
        out, uncond = guided_pair(den, x, t, c["a"], c["std"], c["co"])
        draws = noise.keywords(0, i, x) if noise is not None else {}
        x_e, x0 = sample_step(x, out, StepCoefs(cx=c["cx"], co=c["co"], mx=c["mx"], m0=c["m0"],
                                                s=c["s"] if draws else 0.0),
                              return_x0=True, **den.fused_cfg(uncond), **draws)
        if heun[i]:
            t2 = run.t(times[1], i)
            out2, uncond2 = guided_pair(den, x_e, t2, c["a2"], c["std2"], c["co2"])
            terms, coefs = output_terms(den, out2, uncond2, c["ho"])
            terms, coefs = [x, x0, x_e, *terms], [c["hx"], c["hd"], c["he"], *coefs]
            z = noise.tensor(1, i, x) if noise is not None else None
            if z is not None:
                terms, coefs = terms + [z], coefs + [c["hz"]]
            x_e = lincomb(terms, coefs)
        x = x_e
        run.report(i, t, x, x0=x0)
    return x


def heun_columns(c: dict, c2: dict, h) -> dict:
    """The trapezoid x' = x + h/2 (d + d2) of two drift columns d = mx x + m0 x0 (``c``, at t)
    and d2 (``c2``, at x_e = x + h d and t + h, x0_2 = cx2 x_e + co2 o2) as Heun's columns."""
    half = 0.5 * h
    return {"hx": 1 + half * c["mx"], "hd": half * c["m0"],
            "he": half * (c2["mx"] + c2["m0"] * c2["cx"]), "ho": half * c2["m0"] * c2["co"],
            "a2": c2["a"], "std2": c2["std"], "co2": c2["co"]}


def _fixed_step(run, x, prediction, method, steps, eps):
    """Euler or Heun on the uniform grid t_i = 1 + i (eps - 1) / steps:
    x' = x + h d(x, t_i) (Euler); x' = x + h (d(x, t_i) + d(x + h d, t_{i+1})) / 2 (Heun)."""
    process = run.process
    ts = torch.linspace(process.T, eps, steps + 1, dtype=torch.float64)
    h = ts[1:] - ts[:-1]
    c, c2 = drift_coefs(process, prediction, ts[:-1]), drift_coefs(process, prediction, ts[1:])
    table = run.table(dict(c, mx=1 + h * c["mx"], m0=h * c["m0"], **heun_columns(c, c2, h)))
    times = (run.times(ts[:-1]), run.times(ts[1:]))
    return euler_heun_loop(run, x, table, times, [method == "heun"] * steps,
                           desc=f"ode {method}")


def _rms(v, scale):
    """Per-sample root mean square of v / scale, [B] (float32, float64 for float64 v)."""
    return (v.to(compute_dtype(v.dtype)) / scale).square().flatten(1).mean(1).sqrt()


def _device_columns(columns: dict, run) -> dict:
    """Host float64 [B] columns -> [B] device views of the run's table dtype, one upload."""
    table = run.table(columns)
    return dict(zip(table.names, table.data.unbind(1)))


def _drift(den, process, y, c: dict, stage):
    """dy/dt = mx y + m0 x0 at the stage's per-sample times (one sample_step)."""
    t = process.model_time(c[stage, "t"], compute_dtype(y.dtype))
    out, uncond = guided_pair(den, y, t, c[stage, "a"], c[stage, "std"], c[stage, "co"])
    return sample_step(y, out, StepCoefs(cx=c[stage, "cx"], co=c[stage, "co"],
                                         mx=c[stage, "mx"], m0=c[stage, "m0"]),
                       **den.fused_cfg(uncond))


def _stage_columns(process, prediction, times) -> dict:
    """Drift and time columns of the stages at their times ([B] each), keyed (stage, name)."""
    cols = {}
    for stage, ts in enumerate(times):
        cols.update({(stage, k): v for k, v in drift_coefs(process, prediction, ts).items()})
        cols[stage, "t"] = ts
    return cols


def _initial_step(run, x, k1, prediction, t, span, rtol, atol):
    """Hairer, Norsett & Wanner's starting step (scipy's select_initial_step), per sample:
    h0 = 0.01 |x| / |f|, h1 = (0.01 / max(|f|, |f(x - h0 f) - f| / h0))^(1/5),
    h = min(100 h0, h1) (norms scaled by atol + rtol |x|)."""
    den, process = run.den, run.process
    scale = atol + rtol * x.to(compute_dtype(x.dtype)).abs()
    d = torch.stack([_rms(x, scale), _rms(k1, scale)]).double().cpu()
    h0 = torch.where((d < 1e-5).any(0), 1e-6, 0.01 * d[0] / d[1]).minimum(span)
    c = _device_columns({**_stage_columns(process, prediction, [t - h0]), "h": -h0}, run)
    k2 = _drift(den, process, lincomb([x, k1], [1.0, c["h"]]), c, 0)
    d2 = _rms(lincomb([k2, k1], [1.0, -1.0]), scale).double().cpu() / h0
    return initial_step_from_norms(h0, d[1], d2, span)


def _rk45(run, x, prediction, eps, rtol, atol, max_steps, stats):
    """Dormand-Prince 5(4) from t = 1 to eps, a step size per sample (see ``sample_ode``)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise ValueError("method='rk45' adapts its steps on the host: it cannot run inside a CUDA "
                         "graph; use method='euler' or 'heun' with cuda_graph=True")
    den, process = run.den, run.process
    batch, shape = len(x), (-1,) + (1,) * (x.ndim - 1)
    t = torch.full((batch,), float(process.T), dtype=torch.float64)
    k1 = _drift(den, process, x,
                _device_columns(_stage_columns(process, prediction, [t]), run), 0)
    h = -_initial_step(run, x, k1, prediction, t, t - eps, rtol, atol)
    accepted = torch.zeros(batch, dtype=torch.long)
    rejected = torch.zeros(batch, dtype=torch.long)
    retry = torch.zeros(batch, dtype=torch.bool)     # no growth right after a rejection
    for i in run.steps(max_steps, "ode rk45"):
        active = t > eps
        if not active.any():
            break
        h = torch.maximum(h, eps - t)                  # land on eps; 0 once a sample is there
        cols = _stage_columns(process, prediction, [t + c * h for c in DP_C])
        cols.update({("a", s, j): h * w for s, row in enumerate(DP_A) for j, w in enumerate(row)})
        cols.update({("e", j): h * w for j, w in enumerate(DP_E)})
        c = _device_columns(cols, run)
        ks = [k1]
        for s in range(1, len(DP_C)):
            y = lincomb([x, *ks], [1.0, *(c["a", s, j] for j in range(s))])
            ks.append(_drift(den, process, y, c, s))
        err = lincomb(ks, [c["e", j] for j in range(len(DP_E))])
        bound = torch.maximum(x.abs(), y.abs())
        norm = _rms(err, atol + rtol * bound.to(compute_dtype(bound.dtype)))
        ok = (norm <= 1).reshape(shape)
        x, k1 = torch.where(ok, y, x), torch.where(ok, ks[-1], k1)
        norm = norm.double().cpu()                     # the loop's one host sync per step
        t, h, ok = controlled_step(t, h, norm, retry, eps)
        accepted += ok & active
        rejected += ~ok & active
        retry = ~ok
        run.report(i, t, x)
    else:
        if (t > eps).any():
            raise RuntimeError(f"rk45 did not reach t = {eps} within max_steps={max_steps} "
                               "steps; raise max_steps or loosen rtol/atol")
    if stats is not None:
        stats.update(steps=accepted, rejected=rejected)
    return x


def _denoise(run, x, prediction, eps):
    """score_sde's ``denoise_update_fn``, the end of its ODE sampler: the reverse-diffusion
    predictor's mean at t = eps, x <- x - f_eps x + G_eps^2 s(x, eps) ((f, G) of
    ``discretize_coefs``; a Tweedie step from eps to 0), one ``sample_step``."""
    t = torch.tensor([eps], dtype=torch.float64)
    a, std = model_marginal(run.process, t)
    cols = predictor_columns(run.process, "reverse_diffusion", t, prediction)
    c = run.table(dict(cols, a=a, std=std)).row(0)
    out, uncond = guided_pair(run.den, x, run.t(run.times(t), 0), c["a"], c["std"], c["co"])
    return sample_step(x, out, StepCoefs(cx=c["cx"], co=c["co"], mx=c["mx"], m0=c["m0"]),
                       **run.den.fused_cfg(uncond))


@register("ode", title="probability-flow ODE", paper="Song et al. 2021", processes=("sde",),
          stochastic=False, order=5, nfe_per_step=6, adaptive={"method": "rk45"},
          quick={"method": "heun", "steps": 3})
def sample_ode(model, x, process, *, method: str = "rk45", steps=None, rtol: float = 1e-5,
               atol: float = 1e-5, eps=None, max_steps: int = 10000, denoise: bool = True,
               prediction: str = "eps", seed=None, callback=None, progress=False, stats=None):
    """Solve the probability-flow ODE dx/dt = f(t) x - g(t)^2 s(x, t) / 2 from t = 1 to eps
    (Song et al. 2021, eq. 13 and appendix D.3), the drift as one ``sample_step``:
    dx/dt = (f + g^2 / (2 sigma^2)) x - g^2 a / (2 sigma^2) x0, x0 the model's prediction.

    - "euler", "heun": ``steps`` uniform steps in t (default 100; Heun: 2 model calls a step).
    - "rk45": adaptive Dormand-Prince 5(4) with FSAL, as the reference code's scipy RK45: error
      norm per sample RMS(err / (atol + rtol max(|x|, |x_new|))), accepted when <= 1, next
      h = h clamp(0.9 norm^(-1/5), 0.2, 10) (at most h after a rejection); the first h from
      Hairer's heuristic (one model call).
      Each sample has its own t and h ([B]): the reference code flattens the whole batch into one
      scipy system, so a sample's steps (and result) depend on its batch-mates and the stiffest
      sample sets everyone's step; here a sample's trajectory is the same alone as in any batch,
      and a finished sample idles (h = 0) while the others go on. The step-size control runs on
      the host in float64: one device-to-host copy of the [B] error norms per step (the loop's
      only sync) and one upload of the step's coefficients. The fixed-step methods never sync.
    - ``denoise`` (score_sde's default): then one denoising step at eps, the reverse-diffusion
      predictor's mean x <- x - f_eps x + G_eps^2 s(x, eps) (``_denoise``; one model call).

    Args:
        model: ``model(x, t)`` with t the [B] float32 times in [eps, 1], or a ``Denoiser``.
        x: x_T [B, ...] at the prior (prior_std * z); process: a VE, VP or sub-VP ``SDE``.
        method: "euler", "heun" or "rk45"; steps: fixed-step methods only.
        rtol, atol: rk45's tolerances (scipy's meaning); max_steps: rk45's attempted steps.
        eps: the final time (default ``process.sampling_eps``).
        denoise: end with the denoising step (True, score_sde's default) or return x_eps.
        seed: unused (the ODE is deterministic; accepted for ``pydiffuse.sample``).
        callback: callback({"i", "t", "x"} (+ "x0" for euler/heun)) after each step
            (rk45: t is the host float64 [B] of the samples' times).
        stats: a dict to fill with "nfe" (model calls), "steps" and "rejected" (rk45: int64 [B]
            per sample on the host; fixed-step: ints).

    Returns:
        x_0 [B, ...] (x_eps without ``denoise``).
    """
    run = start("ode", model, x, process, prediction=prediction, noise=False, callback=callback,
                progress=progress, hint="; for a discrete schedule or a noise ladder use sampler "
                "'euler', 'heun' or 'dpmpp_2m' (EDM's), or 'ddim'")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    process = run.process
    eps = process.sampling_eps if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < process.T:
        raise ValueError(f"eps must be a float in (0, {process.T}), got {eps!r}")
    nfe0 = run.den.nfe
    if method == "rk45":
        if steps is not None:
            raise ValueError("steps is for method 'euler' or 'heun'; rk45 chooses its own steps "
                             "(set rtol, atol)")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got {rtol}, {atol}")
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) \
                or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
        x = _rk45(run, x, prediction, float(eps), rtol, atol, max_steps, stats)
    else:
        steps = 100 if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        x = _fixed_step(run, x, prediction, method, int(steps), float(eps))
        if stats is not None:
            stats.update(steps=int(steps), rejected=0)
    if denoise:
        x = _denoise(run, x, prediction, float(eps))
    if stats is not None:
        stats["nfe"] = run.den.nfe - nfe0
    return x
