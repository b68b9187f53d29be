"""DDPM and DDIM turn the oracle's exact predictions into samples of the mixture; broken variants
do not; the exact identities between settings (learned range at its ends, every prediction type,
DDIM eta = 1 over every step) hold sample by sample; DDIM inverts; DDIM matches diffusers."""

import functools

import pytest
import torch

import pydiffuse.samplers.ddim as ddim_module
import pydiffuse.samplers.ddpm as ddpm_module
from pydiffuse import schedules
from pydiffuse.ops import randn
from pydiffuse.samplers import ddim_invert, sample_ddim, sample_ddpm
from tests.samplers import plain_loops
from tests.samplers.oracle_cases import MIXTURES, NUM_SAMPLES, distance_to_truth

# SW_2 to fresh exact draws; the noise floor (baseline_distance) is 0.13 (2-D) and 0.14 (8-D),
# good runs measure 0.06-0.15, the broken variants below 0.46 and far more
THRESHOLD = 0.25
SCHED = schedules.linear(1000)

GOOD = {
    "ddpm_full_small": (sample_ddpm, {}),
    "ddpm_100_large": (sample_ddpm, dict(steps=100, variance="fixed_large")),
    "ddpm_100_small": (sample_ddpm, dict(steps=100)),
    "ddpm_sections": (sample_ddpm, dict(respacing="40,30,30")),
    "ddim_50": (sample_ddim, dict(steps=50)),
    "ddim_50_quad": (sample_ddim, dict(steps=50, spacing="quad")),
    "ddim_50_eta05": (sample_ddim, dict(steps=50, eta=0.5)),
    "ddim_100_eta1": (sample_ddim, dict(steps=100, eta=1.0)),
}


def _x_T(dim, n=NUM_SAMPLES, seed=0):
    return randn([n, dim], seed, 0)


@functools.cache
def _run(case, mixture, prediction="eps", seed=0):
    """Samples of one GOOD case (cached: several tests compare against the same run)."""
    fn, kwargs = GOOD[case]
    mix = MIXTURES[mixture](SCHED, prediction)
    return fn(mix, _x_T(mix.dim, seed=seed), SCHED, prediction=prediction, seed=seed, **kwargs)


@pytest.mark.parametrize("case,mixture", [(c, m) for c in GOOD for m in MIXTURES
                                          if (c, m) != ("ddpm_full_small", "8d")])  # runtime
def test_samples_the_mixture(case, mixture):
    dist = distance_to_truth(_run(case, mixture), MIXTURES[mixture]())
    assert dist < THRESHOLD, f"{case} on {mixture}: SW {dist:.4f}"


def _negated(mix):
    return lambda x, t: -mix(x, t)


def _doubled_noise(module, table_fn):
    """monkeypatch.setattr arguments that double the noise std column of a sampler's table."""
    def table(*args):
        cols = table_fn(*args)
        return {**cols, "s": 2 * cols["s"]}
    return module, table_fn.__name__, table


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("broken", ["ddpm_neg_eps", "ddim_neg_eps", "ddpm_double_noise",
                                    "ddim_eta1_double_noise"])
def test_broken_variants_fail(broken, mixture, monkeypatch):
    mix = MIXTURES[mixture](SCHED, "eps")
    x_T = _x_T(mix.dim)
    if broken == "ddpm_neg_eps":
        out = sample_ddpm(_negated(mix), x_T, SCHED, steps=100, seed=0)
    elif broken == "ddim_neg_eps":
        out = sample_ddim(_negated(mix), x_T, SCHED, steps=50)
    elif broken == "ddpm_double_noise":
        monkeypatch.setattr(*_doubled_noise(ddpm_module, ddpm_module.ddpm_table))
        out = sample_ddpm(mix, x_T, SCHED, steps=100, seed=0)
    else:
        monkeypatch.setattr(*_doubled_noise(ddim_module, ddim_module.ddim_table))
        out = sample_ddim(mix, x_T, SCHED, steps=100, eta=1.0, seed=0)
    dist = distance_to_truth(out, MIXTURES[mixture]())
    assert dist > THRESHOLD, f"{broken} on {mixture}: SW {dist:.4f}"


class LearnedRange(torch.nn.Module):
    """The oracle's eps with iDDPM's variance channels v = 2 f - 1 appended ([B, 2D])."""

    def __init__(self, mix, f):
        super().__init__()
        self.mix, self.f = mix, f

    def forward(self, x, t):
        eps = self.mix(x, t)
        return torch.cat([eps, torch.full_like(eps, 2 * self.f - 1)], 1)


@pytest.mark.parametrize("f,fixed", [(0.0, "ddpm_100_small"), (1.0, "ddpm_100_large")])
def test_learned_range_ends_are_the_fixed_variances(f, fixed):
    """f = 0: log Sigma = clipped log beta~ (fixed small); f = 1: log beta (fixed large)."""
    mix = MIXTURES["2d"](SCHED, "eps")
    learned = sample_ddpm(LearnedRange(mix, f), _x_T(2), SCHED, steps=100,
                          variance="learned_range", seed=0)
    torch.testing.assert_close(learned, _run(fixed, "2d"), rtol=0, atol=1e-4)


def test_learned_range_middle():
    mix = MIXTURES["2d"](SCHED, "eps")
    half = sample_ddpm(LearnedRange(mix, 0.5), _x_T(2), SCHED, steps=100,
                       variance="learned_range", seed=0)
    assert distance_to_truth(half, mix) < THRESHOLD
    for fixed in ("ddpm_100_small", "ddpm_100_large"):
        assert (half - _run(fixed, "2d")).abs().max() > 1e-3


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
@pytest.mark.parametrize("case", ["ddim_50", "ddpm_100_large", "ddim_50_eta05"])
def test_every_prediction_gives_the_same_samples(case, prediction):
    # float32 rounding differs between the parameterizations; the deterministic flow amplifies
    # it near the boundary between components (a few elements at ~5e-4)
    torch.testing.assert_close(_run(case, "8d", prediction), _run(case, "8d"), rtol=0,
                               atol=2e-3)


def test_ddim_eta1_over_every_step_is_ddpm_fixed_small():
    """Same coefficients (sigma_t^2 = beta~_t) and the same noise stream steps: equal samples."""
    mix = MIXTURES["2d"](SCHED, "eps")
    ddim = sample_ddim(mix, _x_T(2), SCHED, steps=1000, eta=1.0, seed=0)
    torch.testing.assert_close(ddim, _run("ddpm_full_small", "2d"), rtol=0, atol=2e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip(sampler):
    """The last step returns the clipped x0 (alpha_bar_prev = 1): every sample in [-clip, clip];
    a clip no sample reaches changes nothing."""
    mix = MIXTURES["2d"](SCHED, "eps")
    x_T = _x_T(2, n=500)

    def run(clip):
        if sampler == "ddpm":
            return sample_ddpm(mix, x_T, SCHED, steps=50, clip=clip, seed=0)
        return sample_ddim(mix, x_T, SCHED, steps=20, eta=0.5, clip=clip, seed=0)

    free = run(None)
    assert free.abs().max() > 1.5
    assert run(1.0).abs().max() <= 1.0
    torch.testing.assert_close(run(1e4), free, rtol=0, atol=1e-6)


def test_ddim_clip_recomputes_eps():
    """Two DDIM steps (t = 500, then 0) by hand: x0 = clip((x - sigma eps)/a),
    eps' = (x - a x0)/sigma, x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps'."""
    def model(x, t):
        return 0.3 * x + 1.0

    x_T = _x_T(3, n=64) * 2
    seen = []
    sample_ddim(model, x_T, SCHED, steps=2, clip=0.5, callback=lambda d: seen.append(d["x"]))
    ab, ab_prev = SCHED.alphas_cumprod[500].item(), SCHED.alphas_cumprod[0].item()
    a, s = ab ** 0.5, (1 - ab) ** 0.5
    x0 = ((x_T - s * model(x_T, None)) / a).clamp(-0.5, 0.5)
    eps = (x_T - a * x0) / s
    expect = ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
    torch.testing.assert_close(seen[0], expect, rtol=1e-5, atol=1e-5)


def test_ddim_uniform_spacing_is_ermongroup_ddim():
    """spacing="ddim_uniform", steps=30: ermongroup/ddim's range(0, 1000, 33), 31 model calls,
    as the plain DDIM loop over those positions."""
    mix, positions, calls = MIXTURES["2d"](SCHED, "eps"), list(range(0, 1000, 1000 // 30)), []
    x_T = _x_T(2, n=64)
    ours = sample_ddim(mix, x_T, SCHED, steps=30, spacing="ddim_uniform",
                       callback=lambda d: calls.append(d["t"]))
    expect = plain_loops.ddim(mix, x_T, SCHED.alphas_cumprod[positions], positions,
                              callback=lambda k, x: None)
    assert [int(t[0]) for t in calls] == positions[::-1]
    torch.testing.assert_close(ours, expect, rtol=0, atol=1e-5)


def test_ddim_inversion_round_trip():
    """ddim_invert then sample_ddim (eta = 0) recovers x0; the error shrinks with more steps."""
    mix = MIXTURES["2d"](SCHED, "eps")
    x0 = mix.sample(500, seed=5)
    errors = []
    for steps in (10, 50, 250):
        x_T = ddim_invert(mix, x0, SCHED, steps=steps)
        assert x_T.std() > 0.8                       # x_T is noise-like, not x0
        back = sample_ddim(mix, x_T, SCHED, steps=steps)
        errors.append((back - x0).norm(dim=1).mean().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors


@pytest.mark.parametrize("spacing,offset,alpha_to_one,prediction,clip", [
    ("leading", 1, False, "eps", None),          # Stable Diffusion's settings
    ("leading", 0, True, "v", None),
    ("trailing", 0, True, "eps", 1.0),
])
def test_ddim_matches_diffusers(spacing, offset, alpha_to_one, prediction, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = schedules.scaled_linear()
    mix = MIXTURES["8d"](sched, prediction)
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, timestep_spacing=spacing, steps_offset=offset,
        set_alpha_to_one=alpha_to_one, clip_sample=clip is not None,
        clip_sample_range=clip or 1.0,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction])
    ref.set_timesteps(50)
    x_T = _x_T(8, n=256)
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(mix(x, t.expand(len(x))), t, x, eta=0.0,
                     use_clipped_model_output=True).prev_sample     # eps from the clipped x0
    ours = sample_ddim(mix, x_T, sched, steps=50, spacing=spacing, steps_offset=offset,
                       set_alpha_to_one=alpha_to_one, prediction=prediction, clip=clip)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)


@pytest.mark.parametrize("offset,alpha_to_one", [(1, False), (0, False), (0, True)])
def test_ddim_invert_matches_diffusers(offset, alpha_to_one):
    """ddim_invert with set_alpha_to_one as diffusers' DDIMInverseScheduler (leading spacing;
    offset 1, False: Stable Diffusion's): False starts the first step from alpha_bar_0 rather
    than 1. (eps models: diffusers reads a v or x0 output at the step's start level.)"""
    diffusers = pytest.importorskip("diffusers")
    sched = schedules.scaled_linear()
    mix = MIXTURES["8d"](sched, "eps")
    ref = diffusers.DDIMInverseScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, timestep_spacing="leading", steps_offset=offset, clip_sample=False,
        set_alpha_to_one=alpha_to_one)
    ref.set_timesteps(50)
    x0 = mix.sample(256, seed=3)
    x = x0.clone()
    for t in ref.timesteps:
        x = ref.step(mix(x, t.expand(len(x))), t, x).prev_sample
    ours = ddim_invert(mix, x0, sched, steps=50, spacing="leading", steps_offset=offset,
                       set_alpha_to_one=alpha_to_one)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)


@pytest.mark.parametrize("call,match", [
    (lambda m, x: sample_ddpm(m, x, SCHED, variance="learned"), "variance"),
    (lambda m, x: sample_ddpm(m, x, SCHED, steps=10, respacing="ddim10"), "steps or respacing"),
    (lambda m, x: sample_ddpm(m, x, SCHED, prediction="epsilon"), "prediction"),
    (lambda m, x: sample_ddim(m, x, SCHED, eta=-0.1), "eta"),
    (lambda m, x: sample_ddim(m, x, SCHED, steps=0), "steps"),
    (lambda m, x: sample_ddim(m, x, SCHED, spacing="cubic"), "spacing"),
    (lambda m, x: sample_ddim(m, x, schedules.geometric_sigmas(1, 0.1, 5)), "discrete"),
    (lambda m, x: ddim_invert(m, x, schedules.geometric_sigmas(1, 0.1, 5)), "discrete"),
])
def test_errors(call, match):
    mix = MIXTURES["2d"](SCHED, "eps")
    with pytest.raises(ValueError, match=match):
        call(mix, _x_T(2, n=4))
    with pytest.raises(TypeError, match="x must be"):
        sample_ddpm(mix, torch.zeros(4, 2, dtype=torch.long), SCHED)
