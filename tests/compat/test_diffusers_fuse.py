"""pydiffuse.compat.diffusers.fuse / unfuse on diffusers UNets and pipelines with random weights.

The truth is the unpatched diffusers model run in float64; the fused model's error against it
must be at most twice diffusers' own error in the same dtype (flash-attention's rule), plus
1e-6 relative for float32 rounding. unfuse must give diffusers' outputs bit for bit, and the
state_dict must stay the same tensors."""

import copy
import logging

import pytest
import torch

pytest.importorskip("diffusers", reason="pydiffuse.compat.diffusers needs diffusers")

from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler,  # noqa: E402
                       DiffusionPipeline, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       LMSDiscreteScheduler, PNDMScheduler, UNet2DConditionModel, UNet2DModel)
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

from pydiffuse.compat.diffusers import (FUSED_SCHEDULERS, FusedDDIMScheduler, FusedDDPMScheduler,  # noqa: E402
                                        FuseReport, fuse, unfuse)
from pydiffuse.compat.diffusers.attention import FusedAttnProcessor  # noqa: E402
from pydiffuse.compat.diffusers.convolutions import conv2d_packed  # noqa: E402
from pydiffuse.ops import backend  # noqa: E402
from pydiffuse.ops._dispatch import unavailable_reason  # noqa: E402

T = torch.tensor([10, 700])
UNET2D = {
    "attention": dict(block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=8,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "scale_shift": dict(block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=16,
                        resnet_time_scale_shift="scale_shift",
                        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "AttnUpBlock2D")),
    "odd_channels_no_attention": dict(block_out_channels=(24, 36), norm_num_groups=6,
                                      add_attention=False,
                                      down_block_types=("DownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "UpBlock2D")),
}


def perturbed(model):
    """Random weights away from diffusers' init (zero-init layers would hide errors)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def unet2d(name):
    torch.manual_seed(0)
    return perturbed(UNet2DModel(sample_size=16, layers_per_block=1, **UNET2D[name]))


def cond_unet():
    torch.manual_seed(0)
    return perturbed(UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=48, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))


def inputs(model, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    channels, size = model.config.in_channels, model.config.sample_size
    args = [torch.randn(2, channels, size, size, generator=g).to(dtype), T]
    if isinstance(model, UNet2DConditionModel):  # a 77-token context, Nq != Nk
        args.append(torch.randn(2, 77, model.config.cross_attention_dim, generator=g).to(dtype))
    return args


@torch.no_grad()
def run(model, args):
    return model(*args).sample


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def assert_within_twice_torch_error(model, dtype):
    truth = run(copy.deepcopy(model).double(), [a.double() if a.is_floating_point() else a
                                                for a in inputs(model)])
    stock = copy.deepcopy(model).to(dtype)
    args = inputs(model, dtype)
    expected = run(stock, args)
    fused = fuse(stock)
    out = run(fused, args)
    assert out.dtype == dtype and out.shape == expected.shape
    assert out.is_contiguous()  # diffusers' layout, whatever the fused layers work in
    assert rel(out, truth) <= 2 * rel(expected, truth) + 1e-6, (rel(out, truth),
                                                                 rel(expected, truth))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(UNET2D))
def test_unet2d_matches_diffusers(name, dtype):
    assert_within_twice_torch_error(unet2d(name), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_attention_unet_matches_diffusers(dtype):
    assert_within_twice_torch_error(cond_unet(), dtype)


@pytest.mark.parametrize("make", [lambda: unet2d("scale_shift"), cond_unet])
def test_unfuse_restores_bits_and_state_dict_is_unchanged(make):
    model = make()
    args = inputs(model)
    before = run(model, args)
    state = model.state_dict()
    _, report = fuse(model, return_report=True)
    assert any(isinstance(m.processor, FusedAttnProcessor) for m in _attentions(model))
    fused_state = model.state_dict()
    assert list(fused_state) == list(state)
    assert all(fused_state[k] is state[k] or fused_state[k].data_ptr() == state[k].data_ptr()
               for k in state)
    assert not torch.equal(run(model, args), before)  # the fused kernels did run
    assert unfuse(model) is model
    assert torch.equal(run(model, args), before)
    assert not any(isinstance(m.processor, FusedAttnProcessor) for m in _attentions(model))
    fuse(model)  # fusable again once unfused


def test_save_pretrained_of_a_fused_model_loads_in_plain_diffusers(tmp_path):
    model = unet2d("attention")
    args = inputs(model)
    expected = run(model, args)
    fuse(model).save_pretrained(tmp_path)
    assert torch.equal(run(UNet2DModel.from_pretrained(tmp_path).eval(), args), expected)


def _attentions(model):
    return [m for m in model.modules() if hasattr(m, "processor")]


def test_report_counts_every_fused_module():
    model = cond_unet()
    _, report = fuse(model, return_report=True)
    blocks = sum(type(m).__name__ == "FusedResnetBlock2D" for m in model.modules())
    assert blocks == 8  # 2 down (1 per level), 4 up (2 per level), 2 in the middle
    kinds = list(report.fused.values())
    assert kinds.count("ResnetBlock2D: 2 GroupNorm + SiLU") == blocks
    assert kinds.count("output GroupNorm + SiLU") == 1
    assert kinds.count("cross-attention") == kinds.count("self-attention") == 4
    assert not report.unfused
    assert "8 x ResnetBlock2D" in str(report)


def test_custom_processor_is_left_unfused_and_reported(caplog):
    model = unet2d("attention")
    custom = _attentions(model)[0]
    custom.set_processor(AttnProcessor())
    args = inputs(model)
    with caplog.at_level(logging.WARNING, logger="pydiffuse.compat.diffusers.fuse"):
        fuse(model)
    assert "AttnProcessor, not AttnProcessor2_0" in caplog.text
    assert type(custom.processor) is AttnProcessor
    unfuse(model)
    _, report = fuse(model, return_report=True)
    assert [why for why in report.unfused.values()] == [
        "its processor is AttnProcessor, not AttnProcessor2_0"]
    assert rel(run(model, args), run(unfuse(model), args)) < 1e-5


@pytest.mark.skipif(bool(unavailable_reason("triton", "cpu")), reason="triton unavailable")
def test_head_dim_the_gpu_kernels_lack_stays_unfused():
    """Head dim 8 is not among the Triton / CUDA kernels' (32, 64, 128): left unfused and
    reported at fuse time, and a processor set on the CPU falls back to diffusers' attention
    when the backend changes under it."""
    model = unet2d("attention")
    with backend("triton"):
        _, report = fuse(model, return_report=True)
    assert len(report.unfused) == 4
    assert all("head dim D = 8 is not supported by the 'triton'" in why
               for why in report.unfused.values())
    assert "attention" not in str(report.fused)
    unfuse(model)
    args = inputs(model)
    expected = run(model, args)
    fuse(model, norms=False, convolutions=False)
    with backend("triton"):
        assert torch.equal(run(model, args), expected)


def test_attention_mask_and_float64_run_diffusers_code():
    model = cond_unet()
    args = inputs(model)
    mask = torch.ones(2, 77, dtype=torch.bool)
    mask[:, 40:] = False  # the fused kernel takes no mask: ignoring it would change the output
    with torch.no_grad():
        masked = model(*args, encoder_attention_mask=mask).sample
        fuse(model)
        assert rel(model(*args, encoder_attention_mask=mask).sample, masked) < 1e-5
        unfuse(model)
    model.double()
    args = [a.double() if a.is_floating_point() else a for a in args]
    expected = run(model, args)
    fuse(model)
    assert torch.equal(run(model, args), expected)  # no fused kernel takes float64


def test_ddim_and_ddpm_pipelines_give_the_same_images():
    for pipeline_cls, scheduler_cls, fused_cls in ((DDIMPipeline, DDIMScheduler,
                                                    FusedDDIMScheduler),
                                                   (DDPMPipeline, DDPMScheduler,
                                                    FusedDDPMScheduler)):
        pipe = pipeline_cls(unet=unet2d("attention"),
                            scheduler=scheduler_cls(num_train_timesteps=50))
        expected = pipe(batch_size=2, num_inference_steps=4, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images
        assert fuse(pipe) is pipe and type(pipe.scheduler) is fused_cls
        images = pipe(batch_size=2, num_inference_steps=4, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        assert abs(images - expected).max() < 1e-4
        unfuse(pipe)
        assert type(pipe.scheduler) is scheduler_cls


class ContextPipeline(DiffusionPipeline):
    """A text-conditional pipeline as StableDiffusionPipeline calls its UNet (which needs
    transformers' CLIP to build): unet(x, t, encoder_hidden_states=context) at each step."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, context, steps, generator=None):
        x = torch.randn(context.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(0))
        self.scheduler.set_timesteps(steps)
        noise = {} if generator is None else {"generator": generator}  # stochastic steps' draws
        for t in self.scheduler.timesteps:
            x = self.scheduler.scale_model_input(x, t)
            out = self.unet(x, t, encoder_hidden_states=context).sample
            x = self.scheduler.step(out, t, x, **noise).prev_sample
        return x


@pytest.mark.parametrize("scheduler_cls,options", [
    (EulerDiscreteScheduler, {}), (EulerAncestralDiscreteScheduler, {}),
    (DPMSolverMultistepScheduler, {}), (PNDMScheduler, {"skip_prk_steps": True})],
    ids=lambda v: getattr(v, "__name__", ""))
def test_the_new_drop_ins_are_swapped_in(scheduler_cls, options):
    """Euler, Euler ancestral, DPM-Solver++ and PNDM pipelines get their drop-ins (issue 18);
    the same generator gives the same images; unfuse restores the scheduler."""
    pipe = ContextPipeline(cond_unet(), scheduler_cls(num_train_timesteps=50, **options))
    context = torch.randn(2, 77, 48)
    stochastic = scheduler_cls is EulerAncestralDiscreteScheduler

    def run():
        return pipe(context, 3, torch.Generator().manual_seed(3) if stochastic else None)

    expected = run()
    _, report = fuse(pipe, return_report=True)
    assert type(pipe.scheduler) is FUSED_SCHEDULERS[scheduler_cls.__name__]
    assert report.fused["scheduler"].startswith(scheduler_cls.__name__)
    assert rel(run(), expected) < 1e-3
    unfuse(pipe)
    assert type(pipe.scheduler) is scheduler_cls


def test_other_schedulers_and_refused_options_are_kept_with_a_message():
    context = torch.randn(2, 77, 48)
    for scheduler, why in ((LMSDiscreteScheduler(num_train_timesteps=50),
                            "LMSDiscreteScheduler has no fused step"),
                           (DPMSolverMultistepScheduler(num_train_timesteps=50,
                                                        algorithm_type="dpmsolver",
                                                        final_sigmas_type="sigma_min"),
                            "does not support algorithm_type='dpmsolver'")):
        pipe = ContextPipeline(cond_unet(), scheduler)
        expected = pipe(context, 3)
        _, report = fuse(pipe, return_report=True)
        assert type(pipe.scheduler) is type(scheduler)
        assert why in report.unfused["scheduler"]
        assert rel(pipe(context, 3), expected) < 1e-5


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="UNet2DModel, UNet2DConditionModel or a "
                                        "DiffusionPipeline.*torch.nn.modules.linear.Linear"):
        fuse(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="nothing in this UNet2DModel can be fused "
                                         r"\(norms=False"):
        fuse(unet2d("odd_channels_no_attention"), norms=False, convolutions=False)
    mish = UNet2DModel(sample_size=8, block_out_channels=(8,), norm_num_groups=4, act_fn="mish",
                       add_attention=False, layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",))
    _, report = fuse(mish, convolutions=False, return_report=True)  # conv_act is a SiLU anyway
    assert list(report.fused) == ["conv_norm_out"]
    assert set(report.unfused.values()) == {"its non-linearity is Mish, not SiLU"}
    model = unet2d("attention")
    with pytest.raises(ValueError, match="not fused"):
        unfuse(model)
    fuse(model)
    with pytest.raises(ValueError, match="fused already"):
        fuse(model)
    assert isinstance(fuse(unet2d("attention"), return_report=True)[1], FuseReport)


def test_torch_compile_fullgraph():
    model = fuse(unet2d("attention"))
    args = inputs(model)
    expected = run(model, args)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.equal(run(compiled, args), expected)  # the same kernels, traced


def test_packed_convolution_op():
    x = torch.randn(2, 5, 9, 7)
    weight, bias, residual = torch.randn(6, 5, 3, 3), torch.randn(6), torch.randn(2, 6, 5, 4)
    args = (x, weight, bias, residual, [1, 1], [2, 2], [1, 1], 1)
    expected = torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1) + residual
    torch.testing.assert_close(conv2d_packed(*args), expected, atol=1e-5, rtol=1e-5)
    torch.library.opcheck(conv2d_packed, args)


def test_packed_convolutions_follow_weight_changes_and_gradients():
    """The reordered weights are rebuilt when the weights change (no stale cache), and a forward
    that tracks gradients runs torch's convolution, whose gradients reach the weights."""
    model = fuse(unet2d("attention"), norms=False, attention=False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 25 and all(type(m).__name__ == "PackedConv2d" for m in convs)
    args = inputs(model)
    first = run(model, args)
    other = unet2d("attention")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    model.load_state_dict(other.state_dict())
    assert rel(run(model, args), run(other, args)) < 1e-5
    assert rel(run(model, args), first) > 1e-2
    model(*args).sample.square().mean().backward()
    assert model.conv_in.weight.grad is not None and model.conv_in.weight.grad.abs().sum() > 0
