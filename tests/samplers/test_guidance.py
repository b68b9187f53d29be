"""Classifier-free guidance through the fused op against the unfused formula in a hand-written
loop; classifier guidance with the exact classifier of a Gaussian mixture (the component
posterior) samples exactly one component."""

import pytest
import torch

from pydiffuse import schedules
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.ops import randn
from pydiffuse.samplers import Denoiser, sample_ddim, sample_ddpm
from tests.samplers.oracle_cases import MIXTURES, NUM_SAMPLES, distance_to_truth

THRESHOLD = 0.25          # as test_ddpm_ddim: the noise floor is 0.13, good runs 0.05-0.15
# one component: noise floor 0.023; guided DDIM measures 0.035, DDPM (ADM's mean shift) 0.048
COMPONENT_THRESHOLD = 0.1
SCHED = schedules.linear(1000)
STEPS = 20
POSITIONS = [i * 1000 // STEPS for i in range(STEPS)]


class LabelModel(torch.nn.Module):
    """A small conditional eps model: eps = (0.2 + t / 2000) x + shift[y] (y = -1: null)."""

    def __init__(self, dim=3, classes=4):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("shift", torch.randn(classes + 1, dim, generator=gen))
        self.calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return (0.2 + t.float()[:, None] / 2000) * x + self.shift[y + 1]


def _manual_loop(model, x, c, null, w, sampler, eta, seed):
    """DDPM (fixed small) or DDIM over POSITIONS in plain torch, o = o_u + w (o_c - o_u)."""
    ab = SCHED.alphas_cumprod[POSITIONS]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    for k in range(STEPS):
        i = STEPS - 1 - k
        t = torch.full((len(x),), POSITIONS[i])
        o_u = model(x, t, null)
        o = o_u + w * (model(x, t, c) - o_u)
        a, s, a_prev = ab[i].sqrt().item(), (1 - ab[i]).sqrt().item(), ab_prev[i].item()
        x0 = (x - s * o) / a
        z = randn(list(x.shape), seed, k + 1)
        if sampler == "ddim":
            sd = eta * ((1 - a_prev) / (1 - ab[i].item()) * (1 - ab[i].item() / a_prev)) ** 0.5
            x = a_prev ** 0.5 * x0 + (1 - a_prev - sd * sd) ** 0.5 * o + sd * z
        else:
            beta = 1 - ab[i].item() / a_prev
            mean = (a_prev ** 0.5 * beta * x0 + (1 - beta) ** 0.5 * (1 - a_prev) * x) / (s * s)
            x = mean + (beta * (1 - a_prev) / (s * s)) ** 0.5 * z
    return x


def _sample(sampler, den, x_T, eta=0.5, seed=5):
    if sampler == "ddim":
        return sample_ddim(den, x_T, SCHED, steps=STEPS, eta=eta, seed=seed)
    return sample_ddpm(den, x_T, SCHED, respacing=POSITIONS, seed=seed)


@pytest.mark.parametrize("w", [1.0, 3.0, 7.5])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cfg_fused_equals_unfused(sampler, w):
    model = LabelModel()
    x_T = randn([64, 3], 11, 0)
    c, null = torch.full((64,), 2), torch.full((64,), -1)
    den = Denoiser(model, guidance=w, model_kwargs={"y": c}, uncond_kwargs={"y": null})
    fused = _sample(sampler, den, x_T)
    assert den.nfe == 2 * STEPS
    expect = _manual_loop(model, x_T, c, null, w, sampler, 0.5, 5)
    torch.testing.assert_close(fused, expect, rtol=1e-4, atol=1e-4)
    # the loop is sensitive to w: a different w is far from this one
    assert (_manual_loop(model, x_T, c, null, w + 0.5, sampler, 0.5, 5) - expect).abs().max() > 0.01


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cfg_scale_one_is_the_conditional_model(sampler):
    model = LabelModel()
    x_T = randn([64, 3], 11, 0)
    c = torch.arange(64) % 4
    guided = _sample(sampler, Denoiser(model, guidance=1.0, model_kwargs={"y": c},
                                       uncond_kwargs={"y": torch.full((64,), -1)}), x_T)
    plain = _sample(sampler, Denoiser(model, model_kwargs={"y": c}), x_T)
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


# -- classifier guidance with the exact classifier ----------------------------------------------

def _components(mix, prediction):
    """Each component of the mixture as its own oracle (Sigma_k = U diag(lambda) U^T)."""
    covs = mix.eigvecs @ torch.diag_embed(mix.eigvals) @ mix.eigvecs.mT
    return [GaussianMixtureScore(mix.means[k:k + 1], covs[k:k + 1], process=SCHED,
                                 prediction=prediction) for k in range(len(covs))]


class ExactClassifier:
    """log p(y | x_t) = log_softmax_k(log w_k + log N_k(x_t; a mu_k, a^2 Sigma_k + sigma^2 I))."""

    def __init__(self, mix):
        self.log_weights, self.components = mix.log_weights, _components(mix, "eps")

    def __call__(self, x, t):
        return torch.stack([lw + c.log_prob(x, t)
                            for lw, c in zip(self.log_weights, self.components)], -1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_ddim_classifier_guidance_is_the_component_exactly(prediction):
    """eps - sigma grad log p(y | x_t) = -sigma grad log p_t(x | y): DDIM (any eta) with the
    exact classifier at scale 1 is DDIM on component y's own oracle, sample by sample (per-sample
    seeds, so each row's noise follows it into the sub-batch)."""
    mix = MIXTURES["2d"](SCHED, prediction)
    labels = torch.arange(300) % 3
    seeds = torch.arange(100, 400)
    x_T = randn([300, 2], seeds, 0)
    den = Denoiser(mix, classifier=ExactClassifier(mix), labels=labels)
    guided = sample_ddim(den, x_T, SCHED, steps=STEPS, eta=0.5, prediction=prediction,
                         seed=seeds)
    for k, comp in enumerate(_components(mix, prediction)):
        rows = labels == k
        alone = sample_ddim(comp, x_T[rows], SCHED, steps=STEPS, eta=0.5, prediction=prediction,
                            seed=seeds[rows])
        torch.testing.assert_close(guided[rows], alone, rtol=0, atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("label", [0, 2])
def test_classifier_guidance_samples_one_component(sampler, label):
    """Scale 1: the samples are component `label`'s; scale 0: the whole mixture."""
    mix = MIXTURES["2d"](SCHED, "eps")
    comp = _components(mix, "eps")[label]
    x_T = randn([NUM_SAMPLES, 2], 0, 0)

    def run(scale):
        den = mix if scale is None else Denoiser(mix, classifier=ExactClassifier(mix),
                                                 classifier_scale=scale, labels=label)
        if sampler == "ddim":
            return sample_ddim(den, x_T, SCHED, steps=50, seed=0)
        return sample_ddpm(den, x_T, SCHED, steps=100, seed=0)

    guided, unguided = run(1.0), run(0.0)
    assert distance_to_truth(guided, comp) < COMPONENT_THRESHOLD
    assert distance_to_truth(guided, mix) > THRESHOLD          # not the mixture
    assert distance_to_truth(unguided, mix) < THRESHOLD
    assert distance_to_truth(unguided, comp) > THRESHOLD
    torch.testing.assert_close(unguided, run(None), rtol=0, atol=1e-6)
    assert distance_to_truth(run(-1.0), comp) > THRESHOLD      # the wrong sign fails


def _guided_diffusion_ddim(model, cond_fn, x, clip, eta, seed):
    """openai/guided-diffusion's ddim_sample with cond_fn and clip_denoised, over POSITIONS:
    p_mean_variance clips x0; condition_score shifts the eps of the clipped x0 by
    -sqrt(1 - ab) cond_fn and recomputes x0 from it (unclipped); the step uses that x0 and its
    eps."""
    ab = SCHED.alphas_cumprod[POSITIONS]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    for k in range(STEPS):
        i = STEPS - 1 - k
        t = torch.full((len(x),), POSITIONS[i])
        recip, recipm1 = (1 / ab[i]).sqrt().item(), (1 / ab[i] - 1).sqrt().item()
        x0 = (recip * x - recipm1 * model(x, t)).clamp(-clip, clip)        # p_mean_variance
        eps = (recip * x - x0) / recipm1                                   # condition_score
        eps = eps - (1 - ab[i]).sqrt().item() * cond_fn(x, t)
        x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1                                   # ddim_sample
        sd = eta * ((1 - ab_prev[i]) / (1 - ab[i]) * (1 - ab[i] / ab_prev[i])).sqrt().item()
        x = (ab_prev[i].sqrt().item() * x0 + (1 - ab_prev[i] - sd * sd).sqrt().item() * eps
             + sd * randn(list(x.shape), seed, k + 1, dtype=x.dtype))
    return x


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_guided_clipped_ddim_equals_guided_diffusion(dtype, tol):
    """Classifier guidance with clip, step for step as guided-diffusion orders it (clip x0, then
    shift eps, x0 not clipped again); the other order (shift, then clip) is far from it. In
    float64 to float64 rounding (the classifier's gradient taken in float64 too)."""
    mix = MIXTURES["2d"](SCHED, "eps")
    classifier, scale, labels = ExactClassifier(mix), 2.0, torch.arange(256) % 3

    def cond_fn(x, t):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(classifier(x_in, t), -1)[torch.arange(len(x)), labels]
            return scale * torch.autograd.grad(log_p.sum(), x_in)[0]

    x_T = randn([256, 2], 3, 0, dtype=dtype)
    den = Denoiser(mix, classifier=classifier, classifier_scale=scale, labels=labels)
    ours = sample_ddim(den, x_T, SCHED, steps=STEPS, eta=0.5, clip=1.0, seed=7)
    expect = _guided_diffusion_ddim(mix, cond_fn, x_T, 1.0, 0.5, 7)
    assert ours.dtype == expect.dtype == dtype
    torch.testing.assert_close(ours, expect, rtol=0, atol=tol)
    assert (ours.abs() > 1.0).any()                  # the x0 shifted past the clip is kept
