"""EDM's Euler and Heun (with churn) and DPM-Solver++(2M) on every process kind, against the exact
Gaussian-mixture oracle and a single Gaussian's closed-form flow."""

import pytest
import torch

import pydiffuse
from pydiffuse import schedules, sde
from pydiffuse.samplers import Denoiser, sample_dpmpp_2m, sample_euler, sample_heun, sample_ode
from pydiffuse.samplers.edm import edm_sigmas

from .oracle_cases import flow_map, gaussian, mixture_distance, x_T

THRESHOLD = 0.2        # SW_2; the noise floor baseline_distance is 0.126 (2-D) and 0.142 (8-D)

PROCESSES = {"linear": lambda: schedules.linear(1000), "vp": sde.VPSDE, "ve": sde.VESDE,
             "ladder": lambda: schedules.NoiseLadder(schedules.geometric_sigmas(50.0, 0.01, 10))}
SAMPLERS = {"euler": (sample_euler, 50), "heun": (sample_heun, 18),
            "dpmpp_2m": (sample_dpmpp_2m, 20)}


def distance(sampler, process_name, mixture_name="2d", prediction="eps", **kwargs) -> float:
    fn, steps = SAMPLERS[sampler]
    return mixture_distance(fn, PROCESSES[process_name](), mixture_name, prediction,
                            **{"steps": steps, **kwargs})


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("mixture_name,prediction", [("2d", "eps"), ("8d", "v"), ("2d", "x0")])
def test_samples_mixture(sampler, process_name, mixture_name, prediction):
    assert distance(sampler, process_name, mixture_name, prediction) < THRESHOLD


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("process_name,scale", [("linear", -1.0), ("ve", 0.8), ("vp", 1.25),
                                                ("ladder", 0.8)])
def test_wrong_score_fails(sampler, process_name, scale):
    """A flipped score, or one 20% off, misses the mixture."""
    assert distance(sampler, process_name, scale=scale) > THRESHOLD


@pytest.mark.parametrize("sampler,steps,process_name,mixture_name", [
    ("heun", 18, "linear", "2d"), ("heun", 18, "vp", "8d"), ("heun", 18, "ve", "2d"),
    ("heun", 18, "ladder", "8d"), ("euler", 100, "linear", "8d")])
def test_churn_samples_mixture(sampler, steps, process_name, mixture_name):
    assert distance(sampler, process_name, mixture_name, steps=steps, churn=40.0, seed=7) \
        < THRESHOLD


@pytest.mark.parametrize("process_name,s_noise", [("linear", 1.5), ("ve", 0.5)])
def test_churn_wrong_noise_fails(process_name, s_noise):
    """Churn's noise sqrt(sigma^^2 - sigma^2) s_noise z must be exact: 1.5x or 0.5x misses."""
    assert distance("heun", process_name, churn=40.0, s_noise=s_noise, seed=7) > THRESHOLD


def test_churn_window_and_seed():
    """Churn applies on [s_tmin, s_tmax] only, and its noise comes from the seed."""
    process = sde.VESDE()
    g = gaussian(process)
    x = x_T(process, 2, n=64)
    plain = sample_heun(g, x, process, steps=10)
    assert torch.equal(sample_heun(g, x, process, steps=10, churn=5.0, s_tmax=1e-3), plain)
    a, b = (sample_heun(g, x, process, steps=10, churn=5.0, s_tmin=0.1, s_tmax=10.0, seed=s)
            for s in (1, 2))
    assert not torch.equal(a, plain) and not torch.equal(a, b)
    assert torch.equal(a, sample_heun(g, x, process, steps=10, churn=5.0, s_tmin=0.1,
                                      s_tmax=10.0, seed=1))


def flow_errors(process, sampler, steps, **options):
    """RMS error of ``sampler`` at each step count against the exact flow of a Gaussian from
    sigma_max to sigma_min followed by the final step to sigma = 0 (x = D(x, sigma_min) for
    all of them), in float64, v-prediction (so that no coefficient
    vanishes as some do for eps)."""
    g, g_x0 = gaussian(process, "v"), gaussian(process, "x0")
    x = x_T(process, 2, n=256, seed=5).double()
    err = []
    for n in steps:
        times, sig, a = edm_sigmas(process, n)
        a_end, std_end = process.marginal(times[-1:])
        end = flow_map(g, x, float(a[0]), float(a[0] * sig[0]), float(a_end),
                       float(std_end))
        ref = g_x0(end, times[-1:].expand(len(x)))
        out = pydiffuse.sample(g, x_T=x, process=process, sampler=sampler, steps=n,
                               prediction="v", progress=False, **options)
        err.append(float((out - ref).pow(2).mean().sqrt()))
    return err


@pytest.mark.parametrize("process_name", ["vp", "ve"])
@pytest.mark.parametrize("sampler,order,options", [
    ("euler", 1, {}), ("heun", 2, {}), ("dpmpp_2m", 2, {}), ("dpm_2", 2, {}),
    ("dpmpp_2m_sde", 2, {"eta": 0.0}), ("euler_ancestral", 1, {"eta": 0.0}),
    ("dpm_2_ancestral", 2, {"eta": 0.0}), ("dpmpp_2s_ancestral", 2, {"eta": 0.0}),
    ("dpmpp_sde", 2, {"eta": 0.0})])
def test_orders(process_name, sampler, order, options):
    """Doubling the steps divides the error by 2^order: Euler halves it, Heun, DPM-Solver-2 and
    DPM-Solver++(2M) (also as the 2M SDE solver at eta = 0) quarter it; the ancestral and SDE
    samplers at eta = 0 are their ODE solvers (Euler; DPM-Solver-2; DPM-Solver++(2S) for
    2s_ancestral and dpmpp_sde)."""
    err = flow_errors(PROCESSES[process_name](), sampler, (20, 40), **options)
    assert 2 ** order * 0.8 < err[0] / err[1] < 2 ** order * 1.35


@pytest.mark.parametrize("process_name", ["vp", "ve"])
def test_lms_reaches_high_order(process_name):
    """LMS (order 4, started at orders 1, 2, 3): from 40 to 80 steps its error falls by more
    than 2^3 (measured: 22x; a second-order method falls by 4x)."""
    err = flow_errors(PROCESSES[process_name](), "lms", (40, 80))
    assert err[0] / err[1] > 2 ** 3


# measured SW_2 on the 2-D mixture, cosine chain, at 80 steps 0.09 (Heun and DPM++(2M)); at 25
# steps 0.088 / 0.087 on NVlabs/edm's range [0.002, 80], 0.149 / 0.198 on the chain's own
# [0.0064, 20291] (most of the 25 levels above sigma = 80)
AT_80_STEPS = 0.12


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_25_steps_reach_the_80_step_quality(sampler):
    """The default grid is NVlabs/edm's [max(0.002, model min), min(80, model max)] (on a
    schedule, recomputed at the nearest step): 25 steps on the cosine chain are as close to the
    mixture as 80, and sigma_min / sigma_max override it."""
    cosine = schedules.cosine(1000)
    sig = edm_sigmas(cosine, 25)[1]
    assert 79 < sig[0] < 81 and sig[-2] == pytest.approx(min(cosine.sigma_range), rel=0.05)
    wide = edm_sigmas(cosine, 25, sigma_max=max(cosine.sigma_range))[1]
    assert wide[0] == pytest.approx(max(cosine.sigma_range), rel=1e-3)
    for steps in (25, 80):
        assert mixture_distance(SAMPLERS[sampler][0], cosine, steps=steps) < AT_80_STEPS


def test_discrete_grid_quantized():
    """On a discrete schedule the model sees step indices, sigma is recomputed from them, and
    steps that quantize to one index are merged."""
    sched = schedules.linear(1000)
    times, sig, a = edm_sigmas(sched, 400)
    assert times.dtype == torch.long and (times.diff() < 0).all() and len(times) < 400
    torch.testing.assert_close(a[:-1], sched.alphas_cumprod[times].sqrt())
    torch.testing.assert_close(sig[:-1], sched.sigmas[times])
    assert sig[-1] == 0 and a[-1] == 1
    seen = []
    g = gaussian(sched)
    sample_heun(lambda x, t: (seen.append(t), g(x, t))[1], x_T(sched, 2, n=8), sched, steps=400,
                churn=80.0, seed=0)
    assert all(t.dtype == torch.long for t in seen)
    assert len(seen) == 2 * len(times) - 1


@pytest.mark.parametrize("sampler,nfe", [("euler", 10), ("heun", 19), ("dpmpp_2m", 10)])
def test_front_door_nfe_and_callback(sampler, nfe):
    process = sde.VPSDE()
    steps = []
    out, info = pydiffuse.sample(gaussian(process), (16, 2), process=process, sampler=sampler,
                                 steps=10, return_info=True, callback=steps.append)
    assert info["nfe"] == nfe
    assert [s["i"] for s in steps] == list(range(10))
    assert torch.equal(steps[-1]["x"], out) and steps[-1]["x0"].shape == out.shape


@pytest.mark.parametrize("sampler,options,tol", [
    ("euler", {}, 1e-5), ("heun", {}, 1e-5), ("dpmpp_2m", {}, 1e-5),
    ("ode", {"method": "heun", "steps": 20}, 1e-5),
    ("ode", {}, 1e-3)])        # rk45: a rounding difference may flip a step decision
def test_guidance_fused(sampler, options, tol):
    """Classifier-free guidance fused into the steps equals the combined output o_u + w'(o_c -
    o_u); classifier guidance equals eps - std s grad log p(y | x) (Dhariwal & Nichol)."""
    process = sde.VPSDE()
    g = gaussian(process)
    x = x_T(process, 2, n=32)

    def fn(model):
        sampler_fn = SAMPLERS[sampler][0] if sampler != "ode" else sample_ode
        return sampler_fn(model, x, process, **options)

    def shifted(x, t, shift=0.0):
        return g(x, t) + shift

    cfg = Denoiser(shifted, model_kwargs={"shift": 0.0}, guidance=1.5,
                   uncond_kwargs={"shift": 1.0})
    torch.testing.assert_close(fn(cfg), fn(lambda x, t: g(x, t) - 0.5), atol=tol, rtol=tol)

    direction = torch.tensor([1.0, -2.0])

    def classifier(x, t):
        return torch.stack([x @ direction, torch.zeros(len(x))], 1)

    def guided_eps(x, t):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(classifier(x_in, t), 1)[:, 0].sum()
            grad, = torch.autograd.grad(log_p, x_in)
        std = process.marginal(t)[1].float()[:, None]
        return g(x, t) - 0.3 * std * grad

    den = Denoiser(g, classifier=classifier, classifier_scale=0.3, labels=0)
    torch.testing.assert_close(fn(den), fn(guided_eps), atol=10 * tol, rtol=10 * tol)


def test_sigma_max_override_rescales_x_T():
    """A grid above the prior's sigma_max: x_T is rescaled to the first level, still samples."""
    assert distance("heun", "ve", sigma_max=80.0) < THRESHOLD


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps"), ({"sigma_min": 10.0, "sigma_max": 1.0}, "sigma_min"),
    ({"rho": 0.0}, "rho"), ({"prediction": "noise"}, "prediction")])
def test_bad_inputs(sampler, kwargs, match):
    process = sde.VPSDE()
    with pytest.raises(ValueError, match=match):
        SAMPLERS[sampler][0](gaussian(process), torch.zeros(4, 2), process, **kwargs)


@pytest.mark.parametrize("kwargs", [{"churn": -1.0}, {"s_noise": -1.0},
                                    {"s_tmin": 2.0, "s_tmax": 1.0}])
def test_bad_churn(kwargs):
    process = sde.VPSDE()
    with pytest.raises(ValueError, match="churn"):
        sample_euler(gaussian(process), torch.zeros(4, 2), process, **kwargs)
