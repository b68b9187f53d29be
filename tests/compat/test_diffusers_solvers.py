"""The fused Euler, Euler ancestral, DPM-Solver multistep and PNDM schedulers against diffusers'
own over their configuration grids: whole runs of ``step`` on fresh model outputs, each step
within 1e-5 relative of diffusers' arithmetic in float64 plus twice diffusers' own float32 error
(``assert_parity``, as for DDIM / DDPM); stochastic ones on the same generator draws (the
generators end in the same state); config round trips; ``FUSED_SCHEDULERS``; the errors."""

import itertools

import pytest
import torch

pytest.importorskip("diffusers", reason="pydiffuse.compat.diffusers needs diffusers")

from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,  # noqa: E402
                       EulerDiscreteScheduler, PNDMScheduler)
from diffusers.schedulers import (scheduling_euler_ancestral_discrete,  # noqa: E402
                                  scheduling_euler_discrete)

from pydiffuse.compat.diffusers import (FUSED_SCHEDULERS,  # noqa: E402
                                        FusedDPMSolverMultistepScheduler,
                                        FusedEulerAncestralDiscreteScheduler,
                                        FusedEulerDiscreteScheduler, FusedPNDMScheduler)
from tests.compat.test_diffusers import (SHAPE, TOL, assert_parity, generator,  # noqa: E402
                                         rel)

BETAS = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")
SIGMAS = ("plain", "karras")


def in_float64(scheduler):
    """diffusers' arithmetic in float64: its sigmas / alphas_cumprod as float64 (after
    ``set_timesteps``)."""
    for name in ("sigmas", "alphas_cumprod", "final_alpha_cumprod"):
        if isinstance(getattr(scheduler, name, None), torch.Tensor):
            setattr(scheduler, name, getattr(scheduler, name).double())
    return scheduler


def trio(stock_cls, fused_cls, steps, **config):
    stock = stock_cls(**config)
    fused, truth = fused_cls.from_config(stock.config), stock_cls.from_config(stock.config)
    for s in (stock, fused, truth):
        s.set_timesteps(steps)
    return stock, fused, in_float64(truth)


def run_parity(stock, fused, truth, *, step_kw=None, with_generator=False, patch=None,
               x0=True):
    """Step all three through the schedule on the same x (diffusers' float32 path) and fresh
    outputs; with_generator: the same generator draws for stock and fused, and the float64
    truth given that draw (as variance_noise, or as the ``randn_tensor`` of module ``patch``)."""
    data = generator(0)
    x = torch.randn(SHAPE, generator=data) * float(stock.init_noise_sigma)
    for t in stock.timesteps:
        out = torch.randn(SHAPE, generator=data)
        kw = dict(step_kw or {})
        if with_generator:
            g1, g2 = generator(int(t) + 1), generator(int(t) + 1)
            theirs = stock.step(out, t, x, generator=g1, **kw)
            mine = fused.step(out, t, x, generator=g2, **kw)
            assert torch.equal(g1.get_state(), g2.get_state())
            z = torch.randn(SHAPE, generator=generator(int(t) + 1)).double()
            with pytest.MonkeyPatch.context() as m:
                if patch is None:
                    kw["variance_noise"] = z
                else:
                    m.setattr(patch, "randn_tensor", lambda *args, **kwargs: z)
                exact = truth.step(out.double(), t, x.double(), **kw)
        else:
            theirs, mine = stock.step(out, t, x, **kw), fused.step(out, t, x, **kw)
            exact = truth.step(out.double(), t, x.double(), **kw)
        if x0:
            assert_parity(mine, theirs, exact, f"t={float(t)}")
        else:
            err, own = rel(mine.prev_sample, exact.prev_sample), rel(theirs.prev_sample,
                                                                     exact.prev_sample)
            assert err <= TOL + 2 * own, f"t={float(t)}: {err:.2e} (diffusers {own:.2e})"
        x = theirs.prev_sample


@pytest.mark.parametrize("final", ("zero", "sigma_min"))
@pytest.mark.parametrize("sigmas", SIGMAS + ("exponential",))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", ("epsilon", "v_prediction", "sample"))
@pytest.mark.parametrize("beta_schedule", BETAS)
def test_euler_matches_diffusers(beta_schedule, prediction, spacing, sigmas, final):
    config = dict(beta_schedule=beta_schedule, prediction_type=prediction,
                  timestep_spacing=spacing, final_sigmas_type=final,
                  use_karras_sigmas=sigmas == "karras",
                  use_exponential_sigmas=sigmas == "exponential")
    run_parity(*trio(EulerDiscreteScheduler, FusedEulerDiscreteScheduler, 5, **config))


@pytest.mark.parametrize("prediction", ("epsilon", "v_prediction"))
def test_euler_churn_matches_diffusers(prediction):
    """s_churn > 0 on part of the range: diffusers' generator draws, in float64 the same."""
    stock, fused, truth = trio(EulerDiscreteScheduler, FusedEulerDiscreteScheduler, 6,
                               prediction_type=prediction)
    run_parity(stock, fused, truth, step_kw=dict(s_churn=2.0, s_tmin=0.5, s_tmax=20.0,
                                                 s_noise=1.1),
               with_generator=True, patch=scheduling_euler_discrete)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", ("epsilon", "v_prediction"))
@pytest.mark.parametrize("beta_schedule", BETAS)
def test_euler_ancestral_matches_diffusers(beta_schedule, prediction, spacing):
    run_parity(*trio(EulerAncestralDiscreteScheduler, FusedEulerAncestralDiscreteScheduler, 5,
                     beta_schedule=beta_schedule, prediction_type=prediction,
                     timestep_spacing=spacing),
               with_generator=True, patch=scheduling_euler_ancestral_discrete)


DPM_GRID = list(itertools.product(
    ("dpmsolver++", "sde-dpmsolver++"), (1, 2, 3), ("midpoint", "heun"), SIGMAS,
    ("zero", "sigma_min")))


@pytest.mark.parametrize("algorithm, order, solver_type, sigmas, final", [
    g for g in DPM_GRID if not (g[0] == "sde-dpmsolver++" and g[1] == 3)])
@pytest.mark.parametrize("prediction", ("epsilon", "v_prediction", "sample"))
@pytest.mark.parametrize("steps", (6, 16))
def test_dpm_solver_matches_diffusers(algorithm, order, solver_type, sigmas, final,
                                      prediction, steps):
    """Every order, both solver types, Karras on/off, both final sigmas; 6 steps (lower order
    at the end) and 16 (full order to the last step with sigma_min)."""
    if (steps, sigmas, final) == (16, "karras", "sigma_min") and (
            order == 3 or order == 2 and solver_type == "heun"):
        pytest.skip("diffusers returns NaN: Karras ends at sigma_min, its last step has h = 0 "
                    "and its heun / third-order coefficients are 0 / 0 (the fused step keeps x)")
    config = dict(algorithm_type=algorithm, solver_order=order, solver_type=solver_type,
                  use_karras_sigmas=sigmas == "karras", final_sigmas_type=final,
                  prediction_type=prediction, beta_schedule="scaled_linear",
                  beta_start=0.00085, beta_end=0.012)
    stock, fused, truth = trio(DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler,
                               steps, **config)
    if algorithm == "dpmsolver++":
        run_parity(stock, fused, truth, x0=False)
    else:
        run_parity(stock, fused, truth, x0=False, with_generator=True)


@pytest.mark.parametrize("config", [
    {"beta_schedule": "linear", "timestep_spacing": "leading", "steps_offset": 1},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing",
     "lambda_min_clipped": -5.1},
    {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
    {"euler_at_final": True, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"use_exponential_sigmas": True, "solver_order": 3}])
def test_dpm_solver_options_match_diffusers(config):
    run_parity(*trio(DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler, 8,
                     **config), x0=False)


def test_dpm_solver_sde_stream_noise():
    """No generator: the stream N(seed, i + 1) at step index i, the same in any batch, and the
    same step as diffusers' given that noise as variance_noise."""
    stock, fused, _ = trio(DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler, 5,
                           algorithm_type="sde-dpmsolver++")
    fused.seed = 9
    data = generator(3)
    x = torch.randn((4, *SHAPE[1:]), generator=data)
    from pydiffuse.ops import randn
    for i, t in enumerate(stock.timesteps):
        out = torch.randn(x.shape, generator=data)
        z = randn(list(x.shape), 9, i + 1)
        mine = fused.step(out, t, x).prev_sample
        theirs = stock.step(out, t, x, variance_noise=z).prev_sample
        assert rel(mine, theirs) < 1e-5
        x = theirs


@pytest.mark.parametrize("skip_prk", (True, False))
@pytest.mark.parametrize("set_alpha_to_one", (True, False))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", ("epsilon", "v_prediction"))
@pytest.mark.parametrize("beta_schedule", BETAS)
def test_pndm_matches_diffusers(beta_schedule, prediction, spacing, set_alpha_to_one, skip_prk):
    """PLMS (skip_prk_steps, Stable Diffusion's) and the PRK warm-up, 7 steps (PLMS at order
    1, Heun, 2, 3 and 4); diffusers' state ends the same."""
    config = dict(beta_schedule=beta_schedule, prediction_type=prediction,
                  timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one,
                  skip_prk_steps=skip_prk, steps_offset=1 if spacing == "leading" else 0)
    stock, fused, truth = trio(PNDMScheduler, FusedPNDMScheduler, 7, **config)
    assert torch.equal(stock.timesteps, fused.timesteps)
    run_parity(stock, fused, truth, x0=False)
    assert fused.counter == stock.counter and len(fused.ets) == len(stock.ets)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "DPMSolverMultistepScheduler", "PNDMScheduler"])
def test_config_round_trip_and_mapping(name, tmp_path):
    import diffusers
    stock_cls, fused_cls = getattr(diffusers, name), FUSED_SCHEDULERS[name]
    assert issubclass(fused_cls, stock_cls) and fused_cls.__name__ == "Fused" + name
    stock = stock_cls(beta_schedule="scaled_linear", prediction_type="v_prediction",
                      steps_offset=1)
    fused = fused_cls.from_config(stock.config)
    public = lambda s: {k: v for k, v in s.config.items() if not k.startswith("_")}  # noqa: E731
    assert public(fused) == public(stock)
    fused.save_config(tmp_path)
    loaded = fused_cls.from_pretrained(tmp_path)
    assert type(loaded) is fused_cls and public(loaded) == public(stock)
    assert public(stock_cls.from_config(fused.config)) == public(stock)
    for s in (stock, fused):
        s.set_timesteps(10)
    assert torch.equal(fused.timesteps, stock.timesteps)
    assert fused.init_noise_sigma == stock.init_noise_sigma
    x = torch.randn(SHAPE)
    t = stock.timesteps[0]
    assert torch.equal(fused.scale_model_input(x, t), stock.scale_model_input(x, t))


def test_every_mapped_class_is_its_drop_in():
    import diffusers
    assert {"DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
            "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
            "PNDMScheduler"} == set(FUSED_SCHEDULERS)
    for name, cls in FUSED_SCHEDULERS.items():
        assert issubclass(cls, getattr(diffusers, name))


@pytest.mark.parametrize("config, match", [
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "solver_order=3"),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, "algorithm_type"),
    ({"variance_type": "learned_range"}, "variance_type")])
def test_dpm_solver_unsupported_configs_raise(config, match):
    sched = FusedDPMSolverMultistepScheduler(**config)
    sched.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(NotImplementedError, match=match):
        sched.step(x, sched.timesteps[0], x)


def test_argument_errors():
    x = torch.randn(SHAPE)
    euler = FusedEulerDiscreteScheduler()
    euler.set_timesteps(5)
    with pytest.raises(ValueError, match="integer indices"):
        euler.step(x, 3, x)
    ancestral = FusedEulerAncestralDiscreteScheduler(prediction_type="sample")
    ancestral.set_timesteps(5)
    with pytest.raises(ValueError, match="prediction_type given as sample"):
        ancestral.step(x, ancestral.timesteps[0], x)
    for cls in (FusedDPMSolverMultistepScheduler, FusedPNDMScheduler):
        with pytest.raises(ValueError, match="set_timesteps"):
            cls().step(x, 10, x)
    pndm = FusedPNDMScheduler()
    pndm.set_timesteps(5)
    pndm.counter = 12
    with pytest.raises(ValueError, match="prk"):
        pndm.step(x, pndm.timesteps[-1], x)


def test_dpm_solver_history_matters():
    """The parity test tells orders apart: 2M with its history dropped is far from diffusers."""
    stock, fused, _ = trio(DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler, 6)
    data = generator(1)
    x = torch.randn(SHAPE, generator=data)
    for k, t in enumerate(stock.timesteps[:2]):
        out = torch.randn(SHAPE, generator=data)
        theirs = stock.step(out, t, x).prev_sample
        if k == 1:
            fused.model_outputs[-1] = torch.zeros_like(x)
        mine = fused.step(out, t, x).prev_sample
        x = theirs
    assert rel(mine, theirs) > 1e-2

