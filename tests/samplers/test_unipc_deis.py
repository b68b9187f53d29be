"""UniPC-bh2 and DEIS against their peers, diffusers' UniPCMultistepScheduler and
DEISMultistepScheduler run as a loop over the same levels with the same model, against the exact
Gaussian-mixture oracle on every process kind, and their orders on a Gaussian's exact flow."""

import pytest
import torch

from pydiffuse import schedules
from pydiffuse.samplers import SAMPLERS
from pydiffuse.samplers.edm import edm_sigmas

from .oracle_cases import flow_map, gaussian, mixture_8d, mixture_distance, x_T
from .test_edm import PROCESSES, THRESHOLD

PEERS = {"unipc": "UniPCMultistepScheduler", "deis": "DEISMultistepScheduler"}
STEPS = 15          # recommended on the mixture


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps,prediction", [(8, "eps"), (20, "v")])
def test_same_samples_as_diffusers(name, order, steps, prediction):
    """diffusers' scheduler with its default config (lower_order_final) on the linear schedule,
    stepped on pydiffuse's float64 levels of its timesteps (its own are float32 of a float32
    alphas_cumprod); DEIS's last level there is sigma(t = 0), here 0: given as 1e-30, whose
    step is the sigma = 0 step to float64 rounding. Same x_T, same model, float64."""
    diffusers = pytest.importorskip("diffusers")
    process = schedules.linear(1000)
    mix = mixture_8d(process, prediction)
    peer = getattr(diffusers, PEERS[name])(num_train_timesteps=1000, beta_schedule="linear",
                                           solver_order=order, prediction_type={
                                               "eps": "epsilon", "v": "v_prediction"}[prediction])
    peer.set_timesteps(steps)
    a, std = process.marginal(peer.timesteps.double())
    sig = torch.cat([std / a, torch.zeros(1, dtype=torch.float64)])
    peer.sigmas = sig.clone()
    if name == "deis":
        peer.sigmas[-1] = 1e-30
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = x * float(a[0] * sig[0])          # x_T at the first level (ours rescales x_T)
    for t in peer.timesteps:
        theirs = peer.step(mix(theirs, t.expand(len(x))).double(), t, theirs).prev_sample
    ours = SAMPLERS[name](mix, x * process.prior_std, process, sigmas=sig, order=order,
                          prediction=prediction)
    # float64 on the default backend: coefficients in float64 (issue 17), float64 rounding
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("process_name,mixture_name,prediction", [
    ("linear", "2d", "eps"), ("vp", "8d", "v"), ("ve", "2d", "x0"), ("ladder", "2d", "eps")])
def test_samples_mixture(name, process_name, mixture_name, prediction):
    assert mixture_distance(SAMPLERS[name], PROCESSES[process_name](), mixture_name, prediction,
                            steps=STEPS) < THRESHOLD


@pytest.mark.parametrize("name", PEERS)
def test_wrong_score_fails(name):
    assert mixture_distance(SAMPLERS[name], PROCESSES["vp"](), scale=1.25, steps=STEPS) \
        > THRESHOLD


@pytest.mark.parametrize("name,order,expected,steps", [
    ("unipc", 1, 2, 16), ("unipc", 2, 3, 16), ("unipc", 3, 4, 16),
    ("deis", 1, 1, 16), ("deis", 2, 2, 16), ("deis", 3, 3, 32)])
def test_orders(name, order, expected, steps):
    """The error at sigma_min (before the last step, to sigma = 0) against the Gaussian's exact
    flow: doubling the steps divides it by 2^order; UniC raises UniP-p's order to p + 1
    (float64; v-prediction; Karras grid, for DEIS-3, which is slower to reach its order there,
    an exponential one)."""
    process = PROCESSES["vp"]()
    g = gaussian(process, "v")
    x = x_T(process, 2, n=256, seed=5).double()
    lo, hi = min(process.sigma_range), max(process.sigma_range)
    err = []
    for n in (steps, 2 * steps):
        grid = schedules.append_zero(schedules.exponential_sigmas(n, lo, hi)
                                     if (name, order) == ("deis", 3)
                                     else schedules.karras_sigmas(n, lo, hi))
        times, sig, a = edm_sigmas(process, sigmas=grid)
        ref = flow_map(g, x, float(a[0]), float(a[0] * sig[0]), float(a[-2]),
                       float(a[-2] * sig[-2]))
        seen = {}
        SAMPLERS[name](g, x, process, sigmas=grid, prediction="v", order=order,
                       callback=lambda d: seen.__setitem__(d["i"], d["x"]))
        err.append((seen[n - 2] - ref).pow(2).mean().sqrt())
    assert 2 ** expected * 0.75 < err[0] / err[1] < 2 ** expected * 1.35


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("kwargs,match", [
    ({"order": 4}, "order"), ({"order": 0}, "order"), ({"order": 2.0}, "order"),
    ({"sigmas": torch.tensor([3.0, 1.0, 2.0, 0.0])}, "decreasing"),
    ({"sigmas": torch.tensor([3.0, 1.0, 0.5])}, "end in 0")])
def test_bad_input(name, kwargs, match):
    process = PROCESSES["ve"]()
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](mixture_8d(process), torch.zeros(4, 8), process, **kwargs)
