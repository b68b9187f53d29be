"""pydiffuse.compat.diffusers: the fused schedulers' ``step`` against diffusers' own over every
config axis, inside diffusers pipelines, ``pydiffuse.sample`` on a diffusers UNet, config round
trips, the noise-stream path, and the errors of what is not supported.

Parity is judged against diffusers' arithmetic run in float64 (the same scheduler with float64
``alphas_cumprod`` on float64 data): the fused step must be within 1e-5 relative (L2) of it,
plus twice the error of diffusers' own float32 step, which reaches 1e-4 where 1 - alpha_bar
cancels in float32. Noise drawn from a generator must be diffusers' draw exactly (the
generators end in the same state)."""

import importlib
import itertools
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers", reason="pydiffuse.compat.diffusers needs diffusers")

from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler,  # noqa: E402
                       UNet2DModel)
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

import pydiffuse  # noqa: E402
from pydiffuse.compat.diffusers import (FusedDDIMScheduler, FusedDDPMScheduler,  # noqa: E402
                                        schedule_from_diffusers)

SHAPE = (2, 3, 8, 8)
BETAS = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
SPACINGS = ("leading+1", "trailing", "linspace")
X0_MODES = {"none": {"clip_sample": False},
            "clip": {"clip_sample": True, "clip_sample_range": 0.8},
            "threshold": {"thresholding": True, "dynamic_thresholding_ratio": 0.9,
                          "sample_max_value": 1.5}}
DDIM_OPTIONS = list(itertools.product((0.0, 0.6), (False, True)))  # eta, use_clipped
TOL = 1e-5


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def spacing_config(spacing: str) -> dict:
    name, _, offset = spacing.partition("+")
    return {"timestep_spacing": name, "steps_offset": int(offset or 0)}


def in_float64(scheduler):
    """The scheduler with diffusers' arithmetic in float64: the truth the tests measure by."""
    for name in ("alphas_cumprod", "final_alpha_cumprod", "one"):
        if hasattr(scheduler, name):
            setattr(scheduler, name, getattr(scheduler, name).double())
    return scheduler


def assert_parity(fused, stock, truth, where):
    for name in ("prev_sample", "pred_original_sample"):
        mine, theirs, exact = (getattr(o, name) for o in (fused, stock, truth))
        err, own = rel(mine, exact), rel(theirs, exact)
        assert err <= TOL + 2 * own, f"{name} {where}: {err:.2e} from float64 (diffusers {own:.2e})"


def generator(seed=5):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("x0_mode", X0_MODES)
@pytest.mark.parametrize("set_alpha_to_one", (True, False))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("beta_schedule", BETAS)
def test_ddim_step_matches_diffusers(beta_schedule, prediction, spacing, set_alpha_to_one,
                                     x0_mode):
    config = dict(beta_schedule=beta_schedule, prediction_type=prediction,
                  set_alpha_to_one=set_alpha_to_one, **spacing_config(spacing),
                  **X0_MODES[x0_mode])
    stock, truth = DDIMScheduler(**config), in_float64(DDIMScheduler(**config))
    fused = FusedDDIMScheduler.from_config(stock.config)
    for s in (stock, truth, fused):
        s.set_timesteps(4)
    data = generator(0)
    for eta, use_clipped in DDIM_OPTIONS:
        x = torch.randn(SHAPE, generator=data)
        for t in stock.timesteps:
            out = 2 * torch.randn(SHAPE, generator=data)
            z = torch.randn(SHAPE, generator=data)
            kw = dict(eta=eta, use_clipped_model_output=use_clipped)
            mine = fused.step(out, t, x, variance_noise=z, **kw)
            theirs = stock.step(out, t, x, variance_noise=z, **kw)
            exact = truth.step(out.double(), t, x.double(), variance_noise=z.double(), **kw)
            assert_parity(mine, theirs, exact, f"t={int(t)} eta={eta} clipped={use_clipped}")
            if eta > 0:  # the generator path draws diffusers' noise
                g1, g2 = generator(), generator()
                a = fused.step(out, t, x, generator=g1, **kw).prev_sample
                b = stock.step(out, t, x, generator=g2, **kw).prev_sample
                assert torch.equal(g1.get_state(), g2.get_state())
                assert rel(a, b) <= TOL + 2 * rel(theirs.prev_sample, exact.prev_sample)
            x = theirs.prev_sample


DDPM_SPACINGS = SPACINGS + ("none", "custom")


@pytest.mark.parametrize("variance_type",
                         ("fixed_small", "fixed_small_log", "fixed_large", "learned_range"))
@pytest.mark.parametrize("x0_mode", X0_MODES)
@pytest.mark.parametrize("spacing", DDPM_SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("beta_schedule", BETAS)
def test_ddpm_step_matches_diffusers(beta_schedule, prediction, spacing, x0_mode, variance_type,
                                     monkeypatch):
    config = dict(beta_schedule=beta_schedule, prediction_type=prediction,
                  variance_type=variance_type, **X0_MODES[x0_mode])
    if spacing in SPACINGS:
        config.update(spacing_config(spacing))
    stock, truth = DDPMScheduler(**config), in_float64(DDPMScheduler(**config))
    fused = FusedDDPMScheduler.from_config(stock.config)
    for s in (stock, truth, fused):
        if spacing in SPACINGS:
            s.set_timesteps(4)
        elif spacing == "custom":
            s.set_timesteps(timesteps=[900, 500, 120, 3])
    # "none": diffusers' default timesteps (every t, previous t - 1), here a few of them
    timesteps = [999, 500, 1, 0] if spacing == "none" else stock.timesteps
    channels = 6 if variance_type == "learned_range" else 3
    data = generator(1)
    x = torch.randn(SHAPE, generator=data)
    for t in timesteps:
        out = 2 * torch.randn((2, channels, 8, 8), generator=data)
        out[:, 3:] = out[:, 3:].clamp(-1, 1)  # learned_range's v in [-1, 1]
        g1, g2 = generator(), generator()
        mine = fused.step(out, t, x, generator=g1)
        theirs = stock.step(out, t, x, generator=g2)
        assert torch.equal(g1.get_state(), g2.get_state())
        z = torch.randn(SHAPE, generator=generator()).double()
        with monkeypatch.context() as m:  # the same draw in float64
            m.setattr(scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: z)
            exact = truth.step(out.double(), t, x.double())
        assert_parity(mine, theirs, exact, f"t={int(t)}")
        x = theirs.prev_sample


def test_parity_tells_the_eps_conventions_apart():
    """With clipping active, eps from the clipped x0 (use_clipped_model_output=True) lands far
    outside the tolerance of diffusers' default (eps from the unclipped prediction)."""
    stock = DDIMScheduler(clip_sample=True)
    fused = FusedDDIMScheduler.from_config(stock.config)
    for s in (stock, fused):
        s.set_timesteps(10)
    data = generator(2)
    x, out = torch.randn(SHAPE, generator=data), torch.randn(SHAPE, generator=data)
    t = stock.timesteps[0]
    theirs = stock.step(out, t, x).prev_sample
    assert rel(fused.step(out, t, x).prev_sample, theirs) < TOL
    assert rel(fused.step(out, t, x, use_clipped_model_output=True).prev_sample, theirs) > 1e-2


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("pipeline, stock_cls, fused_cls, kwargs", [
    (DDPMPipeline, DDPMScheduler, FusedDDPMScheduler, {}),
    (DDIMPipeline, DDIMScheduler, FusedDDIMScheduler, {"eta": 0.0}),
    (DDIMPipeline, DDIMScheduler, FusedDDIMScheduler, {"eta": 0.5}),
    (DDPMPipeline, DDIMScheduler, FusedDDIMScheduler, {}),
])
def test_pipeline_with_fused_scheduler(unet, pipeline, stock_cls, fused_cls, kwargs):
    pipe = pipeline(unet=unet, scheduler=stock_cls())
    pipe.set_progress_bar_config(disable=True)
    run = dict(batch_size=2, num_inference_steps=2, output_type="pt", **kwargs)
    g1, g2 = generator(), generator()
    theirs = pipe(generator=g1, **run).images
    pipe.scheduler = fused_cls.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, fused_cls)
    mine = pipe(generator=g2, **run).images
    assert torch.equal(g1.get_state(), g2.get_state())
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("process", ("linear", "from_diffusers"))
def test_pydiffuse_sample_on_a_diffusers_unet(unet, process):
    """pydiffuse.sample's DDIM (eta = 0, uniform spacing = diffusers' leading) on a diffusers
    UNet2DModel equals the diffusers loop with the fused and the stock scheduler."""
    config = DDIMScheduler(beta_start=1e-4, beta_end=0.02, clip_sample=False).config
    schedule = (pydiffuse.schedules.linear(1000, 1e-4, 0.02) if process == "linear"
                else schedule_from_diffusers(config))
    with torch.no_grad():
        ours = pydiffuse.sample(unet, (2, 3, 8, 8), process=schedule, sampler="ddim", steps=5,
                                seed=3)
        x_T = pydiffuse.ops.randn([2, 3, 8, 8], 3, 0) * schedule.prior_std  # sample's x_T
        for cls in (FusedDDIMScheduler, DDIMScheduler):
            scheduler = cls.from_config(config)
            scheduler.set_timesteps(5)
            x = x_T
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t).sample, t, x).prev_sample
            assert rel(ours, x) < TOL, cls.__name__


@pytest.mark.parametrize("config", [
    {}, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"}, {"trained_betas": [0.1, 0.2, 0.3, 0.4]},
    {"rescale_betas_zero_snr": True}])
def test_schedule_from_diffusers(config):
    stock = DDPMScheduler(**config)
    schedule = schedule_from_diffusers(stock.config)
    assert torch.equal(schedule.betas, stock.betas.double())
    assert torch.equal(schedule_from_diffusers(stock).betas, schedule.betas)
    if not config:  # diffusers' "linear" is pydiffuse's linear with the same values
        torch.testing.assert_close(pydiffuse.schedules.linear(1000, 1e-4, 0.02).alphas_cumprod,
                                   schedule.alphas_cumprod, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fused_cls, stock_cls", [(FusedDDIMScheduler, DDIMScheduler),
                                                  (FusedDDPMScheduler, DDPMScheduler)])
def test_config_round_trip(fused_cls, stock_cls, tmp_path):
    stock = stock_cls(beta_schedule="scaled_linear", prediction_type="v_prediction",
                      steps_offset=1, clip_sample=False)
    fused = fused_cls.from_config(stock.config, seed=7)
    public = lambda s: {k: v for k, v in s.config.items() if not k.startswith("_")}  # noqa: E731
    assert fused.seed == 7 and "seed" not in fused.config
    assert public(fused) == public(stock)
    fused.save_config(tmp_path)
    loaded = fused_cls.from_pretrained(tmp_path)
    assert type(loaded) is fused_cls and loaded.seed == 0 and public(loaded) == public(stock)
    assert public(stock_cls.from_config(fused.config)) == public(stock)
    assert fused_cls(seed=3, num_train_timesteps=500).config.num_train_timesteps == 500
    for s in (stock, fused):
        s.set_timesteps(10)
    assert torch.equal(fused.timesteps, stock.timesteps)
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([10, 900])
    assert torch.equal(fused.add_noise(x, z, t), stock.add_noise(x, z, t))
    assert fused.scale_model_input(x, t) is x and fused.init_noise_sigma == stock.init_noise_sigma


@pytest.mark.parametrize("cls, kwargs", [(FusedDDIMScheduler, {"eta": 0.8}),
                                         (FusedDDPMScheduler, {})])
def test_stream_noise(cls, kwargs):
    """No generator: z = pydiffuse.ops.randn(shape, seed, t + 1), so a sample's noise is the same
    in any batch, reproducible, and N(0, 1) of the stream."""
    sched = cls(seed=11, clip_sample=False)
    stock = (DDIMScheduler if cls is FusedDDIMScheduler else DDPMScheduler)(clip_sample=False)
    for s in (sched, stock):
        s.set_timesteps(10)
    t = sched.timesteps[3]
    data = generator(4)
    x, out = torch.randn((4, 3, 8, 8), generator=data), torch.randn((4, 3, 8, 8), generator=data)
    full = sched.step(out, t, x, **kwargs).prev_sample
    assert torch.equal(sched.step(out, t, x, **kwargs).prev_sample, full)
    assert torch.equal(sched.step(out[:2], t, x[:2], **kwargs).prev_sample, full[:2])
    sched.seed = 12
    assert rel(sched.step(out, t, x, **kwargs).prev_sample, full) > 1e-2
    # the noise itself: what the step added over diffusers' step with known noise
    z_known = torch.randn(x.shape, generator=generator())
    if cls is FusedDDIMScheduler:
        prev_t = int(t) - 1000 // 10
        std = kwargs["eta"] * stock._get_variance(int(t), prev_t) ** 0.5
        known = stock.step(out, t, x, variance_noise=z_known, **kwargs).prev_sample
    else:
        std = stock._get_variance(int(t)) ** 0.5
        known = stock.step(out, t, x, generator=generator()).prev_sample
    z = (full - known) / std + z_known
    torch.testing.assert_close(z, pydiffuse.ops.randn(list(x.shape), 11, int(t) + 1),
                               rtol=0, atol=1e-3)


@pytest.mark.parametrize("variance_type", ("learned", "fixed_large_log"))
def test_unsupported_variance_types_raise(variance_type):
    sched = FusedDDPMScheduler(variance_type=variance_type)
    x = torch.randn(SHAPE)
    with pytest.raises(NotImplementedError, match=variance_type):
        sched.step(torch.cat([x, x], 1), 10, x)


def test_ddim_argument_errors():
    sched = FusedDDIMScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(x, 10, x)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="generator"):
        sched.step(x, 900, x, eta=0.5, generator=generator(), variance_noise=x)


def test_missing_diffusers_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.delitem(sys.modules, "pydiffuse.compat.diffusers")
    with pytest.raises(ImportError, match="pip install diffusers"):
        importlib.import_module("pydiffuse.compat.diffusers")


def test_pydiffuse_imports_without_diffusers():
    code = ("import sys; sys.modules['diffusers'] = None; import pydiffuse, pydiffuse.compat; "
            "pydiffuse.sample")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_timesteps_without_sync():
    """Timesteps on the GPU: the fused step finds t on the host (no read-back) and matches."""
    stock, fused = DDIMScheduler(), FusedDDIMScheduler()
    for s in (stock, fused):
        s.set_timesteps(4, device="cuda")
    x = torch.randn(SHAPE, device="cuda")
    for t in fused.timesteps:
        out = torch.randn(SHAPE, device="cuda")
        assert fused._host_timestep(t) == int(t)
        torch.testing.assert_close(fused.step(out, t, x).prev_sample,
                                   stock.step(out, t, x).prev_sample, rtol=1e-5, atol=1e-5)
