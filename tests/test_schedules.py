"""Discrete schedules, respacing, subsequences and noise ladders against their closed forms, the
reference codes' rules (improved-diffusion, DDIM) and diffusers."""

import math

import numpy as np
import pytest
import torch

from pydiffuse import schedules
from pydiffuse.samplers import sample_ddpm
from pydiffuse.samplers.ddim import ddim_schedule


def _close(a, b, rtol=1e-12, atol=0.0):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), rtol=rtol, atol=atol)


# -- the schedules ------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1000, 4000, 250])
def test_linear_default_scales_with_steps(steps):
    betas = schedules.linear(steps).betas
    scale = 1000 / steps
    assert len(betas) == steps
    _close(betas[[0, -1]], [1e-4 * scale, 0.02 * scale])
    _close(betas.diff(), torch.full((steps - 1,), (0.02 - 1e-4) * scale / (steps - 1),
                                       dtype=torch.float64), rtol=1e-9)


def test_linear_explicit_range_used_as_given():
    betas = schedules.linear(100, beta_start=0.001, beta_end=0.01).betas
    _close(betas, torch.linspace(0.001, 0.01, 100, dtype=torch.float64))


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = schedules.scaled_linear(1000).betas
    _close(betas[[0, -1]], [0.00085, 0.012])
    root = betas.sqrt()
    step = (0.012 ** 0.5 - 0.00085 ** 0.5) / 999
    _close(root.diff(), torch.full((999,), step, dtype=torch.float64), rtol=1e-9)


def test_cosine_matches_closed_form():
    steps, s = 1000, 0.008

    def f(t):
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    sched = schedules.cosine(steps)
    expect = torch.tensor([f(t) / f(0) for t in range(1, steps + 1)], dtype=torch.float64)
    # every beta below the clamp gives alpha_bar(t) = f(t)/f(0); the last one (f(T) = 0) is clamped
    assert sched.betas[-1] == 0.999 and (sched.betas[:-1] < 0.999).all()
    _close(sched.alphas_cumprod[:-1], expect[:-1], rtol=1e-9)
    _close(sched.alphas_cumprod[-1], expect[-2] * (1 - 0.999), rtol=1e-9)
    assert (schedules.cosine(steps, max_beta=0.5).betas <= 0.5).all()


def test_from_betas_and_cumulative_products():
    betas = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    sched = schedules.from_betas(betas)
    _close(sched.alphas_cumprod, [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7])
    _close(sched.alphas_cumprod_prev, [1.0, 0.9, 0.72])
    assert sched.timesteps.tolist() == [0, 1, 2] and len(sched) == sched.num_timesteps == 3


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(kind):
    diffusers = pytest.importorskip("diffusers")
    ends = {"beta_start": 0.00085, "beta_end": 0.012} if kind == "scaled_linear" else {}
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind, **ends).betas
    ours = {"linear": schedules.linear(1000, 1e-4, 0.02),
            "scaled_linear": schedules.scaled_linear(),
            "squaredcos_cap_v2": schedules.cosine()}[kind].betas
    _close(ours, ref, rtol=2e-6, atol=1e-9)      # diffusers computes in float32


def test_final_alpha_bar_anchors_the_chain():
    betas = torch.tensor([0.0, 0.2, 0.3], dtype=torch.float64)
    sched = schedules.DiscreteSchedule(betas, final_alpha_bar=0.9)
    _close(sched.alphas_cumprod, [0.9, 0.72, 0.504])
    _close(sched.alphas_cumprod_prev, [0.9, 0.9, 0.72])


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("linspace", 0), ("leading", 0)])
def test_set_alpha_to_one_false_keeps_alpha_bar(spacing, offset):
    """diffusers' set_alpha_to_one=False: alpha_bar at the positions unchanged, alpha_bar_prev of
    the first = alpha_bar_0 of the original schedule."""
    base = schedules.scaled_linear()
    sched = ddim_schedule(base, 50, spacing, offset, set_alpha_to_one=False)
    _close(sched.alphas_cumprod, base.alphas_cumprod[sched.timesteps], rtol=1e-12)
    _close(sched.alphas_cumprod_prev[0], base.alphas_cumprod[0])


# -- respacing ----------------------------------------------------------------------------------

def _space_timesteps_reference(num_timesteps, section_counts):
    """improved-diffusion's space_timesteps (respace.py), verbatim in substance."""
    if section_counts.startswith("ddim"):
        want = int(section_counts[4:])
        for i in range(1, num_timesteps):
            if len(range(0, num_timesteps, i)) == want:
                return sorted(range(0, num_timesteps, i))
        raise ValueError
    counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        frac = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += frac
        start += size
    return sorted(set(steps))


@pytest.mark.parametrize("n,spec,expect", [
    (10, "2,3", [0, 4, 5, 7, 9]),                 # sections of 5: strides 4 and 2
    (10, "3", [0, 4, 9]),                         # stride 4.5: round(4.5) = 4 (half to even)
    (10, 3, [0, 4, 9]),                           # an int is one section
    (11, "1,1", [0, 6]),                          # sections 6 and 5: first of each
    (1000, "ddim50", list(range(0, 1000, 20))),
    (1000, "ddim3", [0, 334, 668]),               # the first stride giving exactly 3 steps
    (10, [5, 1, 3, 3], [1, 3, 5]),                # positions: sorted, deduplicated
    (10, torch.tensor([9, 0]), [0, 9]),
])
def test_space_timesteps_hand_cases(n, spec, expect):
    assert schedules.space_timesteps(n, spec) == expect


@pytest.mark.parametrize("n,specs", [
    (1000, [str(k) for k in range(1, 120)] + ["10,15,20", "1,2,3,4", "250,250,250,250", "7,100"]),
    (977, ["10,15,20", "100", "333", "ddim10", "ddim98", "21"]),
    (4000, ["333,333,334", "250", "ddim250"]),
])
def test_space_timesteps_matches_improved_diffusion(n, specs):
    for spec in specs:
        assert schedules.space_timesteps(n, spec) == _space_timesteps_reference(n, spec), spec


@pytest.mark.parametrize("spec,err", [
    ("ddim7", ValueError), ("11", ValueError), ("0", ValueError), ("4,8", ValueError),
    ([10], ValueError), ([-1, 3], ValueError), ([], ValueError), (2.5, TypeError),
    ("", ValueError),
])
def test_space_timesteps_errors(spec, err):
    with pytest.raises(err):
        schedules.space_timesteps(10, spec)


@pytest.mark.parametrize("spec", ["10,15,20", "ddim25", 40, [0, 3, 500, 999]])
def test_respace_keeps_alpha_bar_and_original_indices(spec):
    base = schedules.cosine(1000)
    spaced = base.respace(spec)
    keep = schedules.space_timesteps(1000, spec)
    assert spaced.timesteps.tolist() == keep
    _close(spaced.alphas_cumprod, base.alphas_cumprod[keep], rtol=1e-7)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), base.alphas_cumprod[keep][:-1]])
    _close(spaced.betas, 1 - base.alphas_cumprod[keep] / prev, rtol=1e-12)
    for got, want in zip(spaced.marginal(torch.tensor(keep)), base.marginal(torch.tensor(keep))):
        _close(got, want, rtol=1e-7)
    missing = next(i for i in range(1000) if i not in keep)
    with pytest.raises(ValueError, match="not steps of this schedule"):
        spaced.marginal(torch.tensor([missing]))
    # respacing a respaced schedule keeps the original indices and alpha_bar
    twice = spaced.respace([0, len(spaced) - 1])
    assert twice.timesteps.tolist() == [keep[0], keep[-1]]
    _close(twice.alphas_cumprod, base.alphas_cumprod[[keep[0], keep[-1]]], rtol=1e-7)


def test_respaced_sampling_calls_the_model_with_original_indices():
    base = schedules.linear(1000)
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    sample_ddpm(model, torch.zeros(3, 2), base, respacing="10,5", seed=0)
    keep = schedules.space_timesteps(1000, "10,5")
    assert seen == [[t] * 3 for t in reversed(keep)]


# -- subsequences -------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 10, 20, 50, 100, 1000])
def test_uniform_subsequence_is_ddim_code_when_steps_divide(steps):
    """DDIM's code: skip = T // K, range(0, T, skip)."""
    assert schedules.linear(1000).subsequence(steps) == list(range(0, 1000, 1000 // steps))


def test_uniform_subsequence_has_exactly_steps_positions():
    # the DDIM code would take range(0, 1000, 33): 31 steps; here floor(i T / K), exactly K
    assert schedules.linear(1000).subsequence(30) == [i * 1000 // 30 for i in range(30)]


@pytest.mark.parametrize("steps", [1, 7, 30, 50, 333, 999, 1000])
def test_ddim_uniform_subsequence_is_ddim_code(steps):
    """ermongroup/ddim's skip_type "uniform": range(0, T, T // K), one more step than asked
    when K does not divide T (30 -> 31, 333 -> 334, 999 -> 1000)."""
    ref = list(range(0, 1000, 1000 // steps))
    assert schedules.linear(1000).subsequence(steps, "ddim_uniform") == ref
    assert (len(ref) > steps) == (1000 % steps != 0)


@pytest.mark.parametrize("steps", [2, 5, 10, 20, 29, 50, 100])
def test_quad_subsequence_is_ddim_code(steps):
    """DDIM's code: [int(s) for s in np.linspace(0, sqrt(0.8 T), K) ** 2] (repeats dropped)."""
    ref = sorted({int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), steps) ** 2})
    assert schedules.linear(1000).subsequence(steps, "quad") == ref
    assert len(ref) == steps or steps > 29


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0),
                                            ("linspace", 0)])
@pytest.mark.parametrize("steps", [1, 4, 7, 25, 48, 50, 96, 333, 999])
def test_diffusers_spacings_match_set_timesteps(spacing, offset, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing,
                                  steps_offset=offset)
    ref.set_timesteps(steps)
    assert schedules.linear(1000).subsequence(steps, spacing, offset) == sorted(
        ref.timesteps.tolist())


@pytest.mark.parametrize("steps,spacing,offset", [
    (0, "uniform", 0), (1001, "uniform", 0), (True, "uniform", 0), (2.5, "uniform", 0),
    (10, "cubic", 0), (1000, "leading", 1), (10, "leading", 901),
])
def test_subsequence_errors(steps, spacing, offset):
    with pytest.raises(ValueError):
        schedules.linear(1000).subsequence(steps, spacing, offset)


# -- posterior, snr, q_sample -------------------------------------------------------------------

@pytest.mark.parametrize("sched", [schedules.linear(1000), schedules.cosine(200),
                                   schedules.linear(1000).respace("ddim20")],
                         ids=["linear", "cosine", "respaced"])
def test_posterior_is_gaussian_conditioning(sched):
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t, x_0) for
    scalar x_0 ~ N(0, v): x_{t-1} = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev) e1,
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) e2."""
    post = sched.posterior()
    v = 0.7
    for i in [1, 2, len(sched) // 2, len(sched) - 1]:
        ab_prev, alpha = sched.alphas_cumprod_prev[i], sched.alphas[i]
        # x_{t-1}, x_t, x_0 as linear maps of (x_0, e1, e2) with covariance diag(v, 1, 1)
        maps = torch.stack([torch.stack([ab_prev.sqrt(), (1 - ab_prev).sqrt(), 0 * alpha]),
                            torch.stack([(alpha * ab_prev).sqrt(), (alpha * (1 - ab_prev)).sqrt(),
                                         (1 - alpha).sqrt()]),
                            torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)])
        cov = maps @ torch.diag(torch.tensor([v, 1.0, 1.0], dtype=torch.float64)) @ maps.T
        gain = cov[0, 1:] @ torch.linalg.inv(cov[1:, 1:])          # coefficients of (x_t, x_0)
        var = cov[0, 0] - gain @ cov[1:, 0]
        _close(post["coef_xt"][i], gain[0], rtol=1e-9)
        _close(post["coef_x0"][i], gain[1], rtol=1e-9)
        _close(post["variance"][i], var, rtol=1e-7)
    assert post["variance"][0] == 0
    _close(post["log_variance_clipped"][0], post["variance"][1].log())
    _close(post["log_variance_clipped"][1:], post["variance"][1:].log())


def test_snr_and_marginal():
    sched = schedules.linear(1000)
    t = torch.tensor([0, 10, 999])
    ab = sched.alphas_cumprod[t]
    _close(sched.snr(t), ab / (1 - ab))
    a, s = sched.marginal(t)
    _close(a, ab.sqrt())
    _close(s, (1 - ab).sqrt())
    assert a.dtype == torch.float64


def test_q_sample_exact_and_moments():
    sched = schedules.linear(1000)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = 1.5 + 0.5 * torch.randn(n, 2, generator=gen)
    noise = torch.randn(n, 2, generator=gen)
    t = torch.full((n,), 300)
    xt = sched.q_sample(x0, t, noise)
    a, s = (float(c[0]) for c in sched.marginal(t[:1]))
    torch.testing.assert_close(xt, a * x0 + s * noise, rtol=1e-5, atol=1e-5)
    _close(xt.mean(0), torch.full((2,), a * 1.5), atol=0.01)
    _close(xt.var(0), torch.full((2,), a * a * 0.25 + s * s), rtol=0.02)
    mixed = torch.tensor([0, 999])
    xt = sched.q_sample(torch.ones(2, 3), mixed, torch.zeros(2, 3))
    torch.testing.assert_close(xt[:, 0].double(), sched.marginal(mixed)[0], rtol=1e-6, atol=0)


def test_sigmas_and_sigma_to_time():
    sched = schedules.linear(1000).respace("ddim100")
    ab = sched.alphas_cumprod
    _close(sched.sigmas, ((1 - ab) / ab).sqrt())
    assert sched.sigma_range == (float(sched.sigmas[-1]), float(sched.sigmas[0]))   # (max, min)
    assert sched.sigma_to_time(sched.sigmas).tolist() == sched.timesteps.tolist()
    between = (sched.sigmas[4] * sched.sigmas[5]).sqrt() * 1.01       # nearer 5 in log sigma
    assert sched.sigma_to_time(between).tolist() == [sched.timesteps[5].item()]


# -- ladders ------------------------------------------------------------------------------------

def test_geometric_sigmas():
    sig = schedules.geometric_sigmas(1.0, 0.01, 10)
    _close(sig[[0, -1]], [1.0, 0.01], rtol=1e-12)
    _close(sig[1:] / sig[:-1], torch.full((9,), 0.01 ** (1 / 9), dtype=torch.float64), rtol=1e-12)


def test_karras_sigmas():
    sig = schedules.karras_sigmas(5, 0.002, 80.0, rho=7.0)
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    _close(sig, [(hi + i / 4 * (lo - hi)) ** 7 for i in range(5)], rtol=1e-12)
    _close(schedules.karras_sigmas(3, 1.0, 3.0, rho=1.0), [3.0, 2.0, 1.0], rtol=1e-12)
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002)


def test_noise_ladder_process():
    ladder = schedules.as_process(schedules.geometric_sigmas(5.0, 0.1, 4))
    assert ladder.kind == "ladder" and len(ladder) == 4 and ladder.prior_std == pytest.approx(5.0)
    a, s = ladder.marginal(torch.tensor([2.0, 0.5]))
    _close(a, [1.0, 1.0])
    _close(s, [2.0, 0.5])
    assert ladder.sigma_range == pytest.approx((5.0, 0.1))


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: schedules.from_betas([0.1, 1.5]), "betas"),
    (lambda: schedules.from_betas([-0.1, 0.5]), "betas"),
    (lambda: schedules.from_betas([0.0, 0.1]), "alpha_bar must be < 1"),
    (lambda: schedules.from_betas([0.1, float("nan")]), "non-finite"),
    (lambda: schedules.from_betas([]), "empty"),
    (lambda: schedules.DiscreteSchedule([0.1, 0.2], timesteps=[3, 3]), "increasing"),
    (lambda: schedules.DiscreteSchedule([0.1, 0.2], timesteps=[1]), "increasing"),
    (lambda: schedules.DiscreteSchedule([0.1], final_alpha_bar=1.5), "final_alpha_bar"),
    (lambda: schedules.NoiseLadder([0.1, 1.0]), "decreasing"),
    (lambda: schedules.NoiseLadder([1.0, 0.0]), "positive"),
    (lambda: schedules.geometric_sigmas(0.1, 1.0, 10), "sigma_min < sigma_max"),
    (lambda: schedules.geometric_sigmas(1.0, 0.1, 1), "at least 2"),
    (lambda: schedules.karras_sigmas(0, 0.1, 1.0), "num_steps"),
])
def test_bad_specs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_as_process_rejects_other_types():
    with pytest.raises(TypeError, match="process must be"):
        schedules.as_process("linear")
    with pytest.raises(TypeError, match="process must be"):
        schedules.as_process(0.5)
