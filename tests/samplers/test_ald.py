"""Annealed Langevin dynamics (NCSN/NCSNv2) against the exact mixture scores."""

import pytest
import torch

import pydiffuse
from pydiffuse.ops import langevin_step, randn
from pydiffuse.samplers import Denoiser, sample_ald
from pydiffuse.schedules import NoiseLadder, geometric_sigmas, linear
from pydiffuse.sde import VESDE
from tests.conftest import DEVICE
from tests.samplers.oracle_cases import MIXTURES, NUM_SAMPLES, distance_to_truth

# sigma_1 = 20 covers both mixtures' spread (largest pairwise distances ~6 and ~10); 10 levels,
# 50 steps each, step_lr = 3e-5 (alpha_i / sigma_i^2 = 0.3). Measured SW_2 on 2000 samples
# (noise floor: 0.126 2-D, 0.142 8-D): seed 0 0.132 (2-D), 0.106 (8-D), seeds 1-4 at most 0.16;
# noise_too_large 0.39 / 0.34 (at least 0.31 over seeds); the wrong sign diverges.
LADDER = geometric_sigmas(20.0, 0.01, 10)
OPTIONS = {"steps": 50, "step_lr": 3e-5}
THRESHOLD = 0.22


def run_ald(mixture, model=None, *, prediction="score", seed=0, **options):
    return pydiffuse.sample(model or mixture, (NUM_SAMPLES, mixture.dim), process=LADDER,
                            sampler="ald", prediction=prediction, seed=seed, device=DEVICE,
                            **{**OPTIONS, **options})


@pytest.fixture(params=sorted(MIXTURES))
def mixture(request):
    return MIXTURES[request.param](process=LADDER).to(DEVICE)


def test_ald_reproduces_mixture(mixture):
    assert distance_to_truth(run_ald(mixture), mixture) < THRESHOLD


@pytest.mark.parametrize("broken", ["wrong_sign", "noise_too_large"])
def test_ald_broken_variant_fails(mixture, broken):
    # noise_too_large: x + alpha s / 2 + sqrt(2 alpha) z, the paper's drift with the code's noise
    # (the convention mix-up the docstring warns about), which samples p^(1/2).
    factor = -1.0 if broken == "wrong_sign" else 0.5
    samples = run_ald(mixture, lambda x, t: factor * mixture(x, t))
    assert distance_to_truth(samples, mixture) > THRESHOLD


def test_ald_is_langevin_step_per_level():
    """The fused update equals langevin_step(x, s, alpha_i) with alpha_i = eps sigma_i^2 /
    sigma_L^2, then x + sigma_L^2 s(x, sigma_L)."""
    ladder, eps, steps = geometric_sigmas(5.0, 0.1, 3), 2e-3, 4
    mixture = MIXTURES["2d"](process=ladder).to(DEVICE)
    x = randn([64, 2], 7, device=DEVICE) * 5.0
    got = sample_ald(mixture, x, ladder, steps=steps, step_lr=eps, seed=11)
    k = 0
    for sigma in ladder.tolist():
        t = torch.full((64,), sigma, device=DEVICE)
        for _ in range(steps):
            k += 1
            x = langevin_step(x, mixture(x, t), eps * sigma ** 2 / 0.1 ** 2, seed=11, step=k)
    x = x + 0.1 ** 2 * mixture(x, t)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ald_prediction_conversions(prediction):
    """An eps/x0/v model gives the score model's samples (same noise stream)."""
    score_model = MIXTURES["2d"](process=LADDER).to(DEVICE)
    other = MIXTURES["2d"](process=LADDER, prediction=prediction).to(DEVICE)
    torch.testing.assert_close(run_ald(other, prediction=prediction, steps=10),
                               run_ald(score_model, steps=10), rtol=0, atol=1e-3)


def test_ald_sigma_scaled():
    """NCSNv2 technique 3: a network returning sigma s(x, sigma) samples as the score model."""
    mixture = MIXTURES["2d"](process=LADDER).to(DEVICE)
    scaled = run_ald(mixture, lambda x, t: t[:, None] * mixture(x, t), sigma_scaled=True,
                     steps=10)
    torch.testing.assert_close(scaled, run_ald(mixture, steps=10), rtol=0, atol=1e-3)


def test_ald_classifier_free_guidance():
    """o_u + w (o_c - o_u) with o_c = 2 s, o_u = 3 s, w = 2 is s (fused into sample_step)."""
    mixture = MIXTURES["2d"](process=LADDER).to(DEVICE)
    guided = Denoiser(lambda x, t, k: k * mixture(x, t), model_kwargs={"k": 2.0},
                      uncond_kwargs={"k": 3.0}, guidance=2.0)
    torch.testing.assert_close(run_ald(mixture, guided, steps=10), run_ald(mixture, steps=10),
                               rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="classifier guidance"):
        sample_ald(Denoiser(mixture, classifier=lambda x, t: x, labels=[0]),
                   torch.zeros(4, 2), LADDER)


def test_ald_final_denoising_step():
    """denoise=True adds x + sigma_L^2 s(x, sigma_L) to the denoise=False chain."""
    mixture = MIXTURES["8d"](process=LADDER).to(DEVICE)
    calls = []
    raw = run_ald(mixture, steps=5, denoise=False, callback=calls.append)
    t = torch.full((NUM_SAMPLES,), float(LADDER[-1]), device=DEVICE)
    expected = raw + float(LADDER[-1]) ** 2 * mixture(raw, t)
    torch.testing.assert_close(run_ald(mixture, steps=5), expected, rtol=1e-5, atol=1e-5)
    assert [c["i"] for c in calls] == list(range(len(LADDER)))
    assert set(calls[0]) == {"i", "t", "x", "x0"}


@pytest.mark.parametrize("process, match", [(VESDE(), "ladder"), (linear(100), "ladder"),
                                            ("sigmas", "process must be")])
def test_ald_rejects_other_processes(process, match):
    x = torch.zeros(4, 2)
    with pytest.raises((ValueError, TypeError), match=match):
        sample_ald(lambda x, t: x, x, process, steps=1)


@pytest.mark.parametrize("options, match", [
    ({"step_lr": 1.0}, "step_lr"), ({"step_lr": 0.0}, "step_lr"), ({"steps": 0}, "steps"),
    ({"sigma_scaled": True, "prediction": "eps"}, "sigma_scaled"),
    ({"prediction": "noise"}, "prediction")])
def test_ald_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        sample_ald(lambda x, t: x, torch.zeros(4, 2), NoiseLadder(LADDER), **options)
