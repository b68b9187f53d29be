"""``pydiffuse.sample``: the same samples as the sampler functions, model outputs as diffusers and
learned-variance models give them, nfe counts, clear errors, and (on a GPU) CUDA graphs and a
loop without host synchronization."""

import pytest
import torch

import pydiffuse
from pydiffuse import schedules, sde
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.ops import randn
from pydiffuse.samplers import SAMPLERS, Denoiser, clear_graphs, sample_ddim, sample_ddpm
from tests.samplers.oracle_cases import mixture_2d

SCHED = schedules.linear(1000)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _mix(prediction="eps"):
    return mixture_2d(SCHED, prediction)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_as_the_sampler_function(sampler, prediction):
    mix = _mix(prediction)
    opts = dict(eta=0.5) if sampler == "ddim" else dict(variance="fixed_large")
    out = pydiffuse.sample(mix, (64, 2), process=SCHED, sampler=sampler, steps=20,
                           prediction=prediction, seed=3, **opts)
    fn = sample_ddim if sampler == "ddim" else sample_ddpm
    direct = fn(mix, randn([64, 2], 3, 0), SCHED, steps=20, prediction=prediction, seed=3,
                **opts)
    torch.testing.assert_close(out, direct, rtol=0, atol=0)


PROCESS_OF_KIND = {"discrete": lambda: SCHED, "sde": sde.VPSDE,
                   "ladder": lambda: schedules.geometric_sigmas(5.0, 0.05, 6)}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_same_as_its_function(name):
    """``pydiffuse.sample(sampler=name)``: x_T from the noise stream's step 0, then the
    registered function with the same seed, prediction and options (its ``quick`` ones)."""
    entry = SAMPLERS[name]
    process = PROCESS_OF_KIND[entry.processes[0]]()
    mix = mixture_2d(process, "v")
    out = pydiffuse.sample(mix, (32, 2), process=process, sampler=name, prediction="v", seed=3,
                           **entry.quick)
    x_T = randn([32, 2], 3, 0) * mix.process.prior_std
    direct = entry.fn(mix, x_T, process, prediction="v", seed=3, **entry.quick)
    torch.testing.assert_close(out, direct, rtol=0, atol=0)


def test_x_T():
    mix = _mix()
    x_T = randn([32, 2], 8, 0) * 0.5
    expect = sample_ddim(mix, x_T, SCHED, steps=10)
    torch.testing.assert_close(pydiffuse.sample(mix, x_T=x_T, process=SCHED, steps=10), expect)
    torch.testing.assert_close(pydiffuse.sample(mix, x_T, process=SCHED, steps=10), expect)


@pytest.mark.parametrize("sampler,steps,cfg,nfe", [
    ("ddim", 10, False, 10), ("ddim", 10, True, 20), ("ddpm", 25, False, 25),
    ("ddpm", None, False, 1000), ("ddpm", 7, True, 14),
])
def test_return_info_counts_model_calls(sampler, steps, cfg, nfe):
    calls = []

    def model(x, t, y=0):
        calls.append(1)
        return 0.1 * x + y

    guidance = dict(guidance=2.0, model_kwargs={"y": 1}, uncond_kwargs={"y": 0}) if cfg else {}
    out, info = pydiffuse.sample(model, (4, 3), process=SCHED, sampler=sampler, steps=steps,
                                 return_info=True, **guidance)
    assert info["nfe"] == len(calls) == nfe
    assert info["seconds"] >= 0 and out.shape == (4, 3)


class DiffusersLike(torch.nn.Module):
    """Returns an object with ``.sample`` (as diffusers' UNet2DModel), or a tuple."""

    class Output:
        def __init__(self, sample):
            self.sample = sample

    def __init__(self, mix, as_tuple=False):
        super().__init__()
        self.mix, self.as_tuple = mix, as_tuple

    def forward(self, x, t):
        out = self.mix(x, t)
        return (out,) if self.as_tuple else self.Output(out)


@pytest.mark.parametrize("as_tuple", [False, True])
def test_diffusers_like_outputs(as_tuple):
    mix = _mix()
    expect = pydiffuse.sample(mix, (16, 2), process=SCHED, steps=10, seed=1)
    got = pydiffuse.sample(DiffusersLike(mix, as_tuple), (16, 2), process=SCHED, steps=10, seed=1)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


class ImageMixtureLearned(torch.nn.Module):
    """An image-shaped oracle with iDDPM's learned-variance channels: [B, 2C, H, W]."""

    def __init__(self, f):
        super().__init__()
        means = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        self.mix = GaussianMixtureScore(means, 0.1, process=SCHED, prediction="eps")
        self.f = f

    def forward(self, x, t):
        eps = self.mix(x, t)
        return torch.cat([eps, torch.full_like(eps, 2 * self.f - 1)], 1)


def test_learned_variance_output():
    model = ImageMixtureLearned(0.0)
    shape = (6, 2, 4, 4)
    ddim = pydiffuse.sample(model, shape, process=SCHED, steps=10, seed=2)
    torch.testing.assert_close(ddim, pydiffuse.sample(model.mix, shape, process=SCHED, steps=10,
                                                      seed=2), rtol=0, atol=0)
    learned = pydiffuse.sample(model, shape, process=SCHED, sampler="ddpm", steps=20,
                               variance="learned_range", seed=2)
    small = pydiffuse.sample(model.mix, shape, process=SCHED, sampler="ddpm", steps=20, seed=2)
    torch.testing.assert_close(learned, small, rtol=0, atol=1e-4)


def _zeros(x, t):
    return torch.zeros_like(x)


def _logits(x, t):
    """A two-class classifier for the label checks."""
    return torch.stack([x[:, 0], -x[:, 0]], 1)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(sampler="ddpn"), ValueError, "unknown sampler"),
    (dict(prediction="epsilon"), ValueError, "prediction must be one of"),
    (dict(x_T=torch.zeros(4, 2)), ValueError, "exactly one"),
    (dict(shape=None), ValueError, "exactly one"),
    (dict(shape=(0, 2)), ValueError, "shape must be"),
    (dict(shape=(2.5,)), ValueError, "shape must be"),
    (dict(shape="4,2"), ValueError, "shape must be"),
    (dict(shape=()), ValueError, "shape must be"),
    (dict(process=sde.VPSDE()), ValueError, "ddim sampler needs a discrete"),
    (dict(sampler="ddpm", process=sde.VPSDE()), ValueError, "ddpm sampler needs a discrete"),
    (dict(process="linear"), TypeError, "process must be"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=1001), ValueError, "steps"),
    (dict(steps=2.5), ValueError, "steps"),
    (dict(sampler="ddpm", steps=0), ValueError, "steps"),
    (dict(sampler="ddpm", steps=1001), ValueError, "steps"),
    (dict(eta=-1.0), ValueError, "eta"),
    (dict(eta=float("nan")), ValueError, "eta must be finite"),
    (dict(eta=float("inf")), ValueError, "eta must be finite"),
    (dict(clip=float("nan")), ValueError, "clip must be finite"),
    (dict(clip=0.0), ValueError, "clip must be > 0"),
    (dict(sampler="ddpm", clip=-1.0), ValueError, "clip must be > 0"),
    (dict(guidance=float("nan"), uncond_kwargs={}), ValueError, "guidance .* finite"),
    (dict(guidance=-2.0, uncond_kwargs={}), ValueError, "guidance .* >= 0"),
    (dict(classifier=_logits, labels=[0] * 4, classifier_scale=float("inf")), ValueError,
     "classifier_scale must be finite"),
    (dict(classifier=_logits, labels=[0.0] * 4), TypeError, "labels must be integer"),
    (dict(classifier=_logits, labels=torch.zeros(3, dtype=torch.long)), ValueError,
     "labels has 3 entries for a batch of 4"),
    (dict(classifier=_logits, labels=[0, 1, 2, 1]), ValueError, r"labels must lie in \[0, 2\)"),
    (dict(classifier=_logits, labels=[0, -1, 0, 1]), ValueError, r"labels must lie in \[0, 2\)"),
    (dict(seed=2**63), ValueError, "seed must fit in 64 signed bits"),
    (dict(model=lambda x, t: x[:, :1]), ValueError, "returned shape"),
    (dict(model=lambda x, t: "eps"), TypeError, "returned str"),
    (dict(model=object()), TypeError, "callable"),
    (dict(guidance=2.0), ValueError, "uncond_kwargs"),
    (dict(model=Denoiser(_zeros), guidance=2.0, uncond_kwargs={}), ValueError, "Denoiser"),
    (dict(classifier=lambda x, t: x), ValueError, "labels"),
    (dict(seed=[1, 2]), ValueError, "seed has 2 values"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(cuda_graph=True), ValueError, "CUDA"),
    (dict(cuda_graph=True, callback=print), ValueError, "callback"),
])
def test_errors(kwargs, err, match):
    args = dict(model=_zeros, shape=(4, 2), process=SCHED, steps=5)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        pydiffuse.sample(args.pop("model"), args.pop("shape"), **args)


class TimeTableModel(torch.nn.Module):
    """A capturable eps model: eps = c[t] x (a device table indexed by the step)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("c", torch.linspace(0.1, 0.9, 1000))

    def forward(self, x, t):
        return self.c[t].reshape(-1, *[1] * (x.ndim - 1)) * x


@CUDA
def test_cuda_graph_replays_the_eager_result():
    clear_graphs()
    model = TimeTableModel().cuda()
    args = dict(process=SCHED, sampler="ddim", steps=10, eta=0.5)
    for seed in (1, 2):            # the first call captures, the second replays
        eager = pydiffuse.sample(model, (8, 3, 8, 8), seed=seed, **args)
        graph = pydiffuse.sample(model, (8, 3, 8, 8), seed=seed, cuda_graph=True, **args)
        torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)
    from pydiffuse.samplers import cuda_graph
    assert len(cuda_graph._graphs) == 1
    clear_graphs()


@CUDA
def test_ddim_loop_has_no_host_syncs():
    """Every step after the first runs under sync debug mode "error" (set by the callback, after
    the sampler's one-time setup has copied its tables to the device)."""
    model = TimeTableModel().cuda()

    def arm(info):
        torch.cuda.set_sync_debug_mode("error")

    try:
        out = pydiffuse.sample(model, (8, 3, 8, 8), process=SCHED, sampler="ddim", steps=10,
                               eta=0.5, seed=0, callback=arm)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.is_cuda and torch.isfinite(out).all()
