"""The UNet (DDPM / ADM), and what every model of pydiffuse.nn shares: gradients reach every
parameter, and the fused ops give the same outputs and gradients as the reference backend."""

import contextlib
import json
import math

import pytest
import torch

import pydiffuse
from pydiffuse import ops, schedules
from pydiffuse.nn.blocks import ResBlock, timestep_embedding
from pydiffuse.nn.classifier import NoisyClassifier
from pydiffuse.nn.mlp import MLP
from pydiffuse.nn.presets import PRESETS, create_model
from pydiffuse.nn.unet import UNet

TINY = dict(image_size=8, in_channels=3, model_channels=32, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(4,), num_heads=2, num_groups=8)
ADM_TINY = dict(TINY, num_res_blocks=2, attention_resolutions=(8, 4), head_channels=16,
                scale_shift=True, resblock_updown=True, num_classes=5, learned_sigma=True,
                skip_scale=True, conv_resample=False)


def perturbed(model, std=0.05, seed=0):
    """The model with noise on every parameter: zero-initialized layers (output convs, attention
    projections) then pass signal and gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def _inputs(model, batch=2, seed=1):
    """(x, t, y) for the model: t a step index (or sigma / nothing as its time input asks)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, MLP):
        x = torch.randn(batch, model.dim, generator=gen)
    else:
        size = model.image_size
        x = torch.randn(batch, model.encoder.in_channels, size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    if model.embed.time_input == "sigma" or getattr(model, "output_scale", None) == "inv_sigma":
        t = torch.rand(batch, generator=gen) * 5 + 0.05
    y = None
    if model.embed.num_classes is not None:
        y = torch.randint(0, model.embed.num_classes + 1, (batch,), generator=gen)
    return x, t, y


def _run(model, x, t, y):
    return model(x, t) if isinstance(model, NoisyClassifier) else model(x, t, y)


MODELS = {
    "ddpm-tiny": lambda: UNet(**TINY),
    "adm-tiny": lambda: UNet(**ADM_TINY),
    "digits": lambda: create_model("digits")[0],
    "ncsnv2-tiny": lambda: UNet(**dict(TINY, time_input=None, output_scale="inv_sigma")),
    "classifier": lambda: create_model("digits-classifier")[0],
    "mlp": lambda: MLP(dim=2, hidden=32, depth=2, num_classes=3, learned_sigma=True),
    "mlp-sigma": lambda: MLP(dim=3, hidden=32, depth=2, time_input="sigma",
                             output_scale="inv_sigma"),
}


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = perturbed(MODELS[name]()).train()
    x, t, y = _inputs(model)
    _run(model, x.requires_grad_(), t, y).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["ddpm-tiny", "adm-tiny", "ncsnv2-tiny", "classifier"])
def test_fused_matches_reference_backend(name):
    torch.manual_seed(0)
    model = perturbed(MODELS[name]())
    x, t, y = _inputs(model)
    params = list(model.parameters())
    results = []
    for backend in (None, "reference"):
        xi = x.clone().requires_grad_()
        with ops.backend(backend) if backend else contextlib.nullcontext():
            out = _run(model, xi, t, y)
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
            grads = torch.autograd.grad(out, [xi] + params, grad_out)
        results.append((out, grads))
    (out, grads), (ref_out, ref_grads) = results
    assert ref_out.abs().max() > 1e-2  # a real signal, not the zero of fresh output layers
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4 * ref_out.abs().max().item())
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4 * r.abs().max().item())


@pytest.mark.parametrize("name, overrides, batch", [
    ("digits", {}, 3),
    ("cifar10-ddpm", {}, 1),
    ("adm-64", dict(model_channels=32, head_channels=32, num_classes=7), 1),
])
def test_preset_output_shapes(name, overrides, batch):
    torch.manual_seed(0)
    model, kwargs = create_model(name, **overrides)
    assert kwargs == {**PRESETS[name][1], **overrides}
    x, t, y = _inputs(model.eval(), batch)
    with torch.no_grad():
        out = model(x, t, y)
    channels = x.shape[1] * (2 if kwargs.get("learned_sigma") else 1)
    assert out.shape == (batch, channels, *x.shape[2:])
    assert torch.isfinite(out).all()


def test_preset_kwargs_rebuild_the_model_from_json():
    model, kwargs = create_model("adm-64", model_channels=32, head_channels=32, num_classes=3)
    again, _ = create_model("adm-64", **json.loads(json.dumps(kwargs)))  # as config.json keeps it
    again.load_state_dict(model.state_dict())  # strict: the same parameters and shapes


def test_cifar10_ddpm_parameter_count():
    model, _ = create_model("cifar10-ddpm")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 35.7e6) / 35.7e6 < 0.01, count
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.UNet2DModel(  # google/ddpm-cifar10-32's configuration
        sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    assert count == sum(p.numel() for p in theirs.parameters())


def test_class_conditioning_and_null_label():
    torch.manual_seed(0)
    model = perturbed(create_model("digits", dropout=0.0)[0])
    assert model.null_label == 10
    x = torch.randn(1, 1, 8, 8).expand(11, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.full((11,), 500), torch.arange(11))  # every label and the null one
    flat = out.flatten(1)
    gaps = torch.cdist(flat, flat) + torch.eye(11) * 1e9
    assert gaps.min() > 1e-3 * flat.norm(dim=1).max()


def test_learned_sigma_doubles_channels():
    x = torch.randn(2, 3, 8, 8)
    for learned, channels in ((False, 3), (True, 6)):
        assert UNet(**dict(TINY, learned_sigma=learned))(x, torch.tensor([3, 9])).shape[1] == \
            channels


def test_fresh_model_outputs_zero():
    """Zero-initialized output convolution (DDPM's init_scale=0, ADM's zero_module)."""
    model = UNet(**ADM_TINY)
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 5]))
    assert out.abs().max() == 0


def test_time_inputs_embed_the_same_sinusoid():
    """"unit" embeds 999 t and "sigma" 100 ln(sigma): the same network as "index" at those
    positions; "inv_sigma" divides by sigma."""
    torch.manual_seed(0)
    base = perturbed(UNet(**TINY))
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        for time_input, index in (("unit", 999 * t), ("sigma", 100 * torch.log(t))):
            other = UNet(**dict(TINY, time_input=time_input)).eval()
            other.load_state_dict(base.state_dict())
            torch.testing.assert_close(other(x, t), base(x, index), rtol=1e-5, atol=1e-5)
        scaled = UNet(**dict(TINY, time_input="sigma", output_scale="inv_sigma")).eval()
        scaled.load_state_dict(base.state_dict())
        torch.testing.assert_close(scaled(x, t) * t[:, None, None, None],
                                   base(x, 100 * torch.log(t)), rtol=1e-5, atol=1e-5)
        free = perturbed(UNet(**dict(TINY, time_input=None)))
        assert "embed.time_mlp.0.weight" not in free.state_dict()
        torch.testing.assert_close(free(x, t), free(x, t.flip(0)))  # no time input


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 3.0, 250.0])
    emb = timestep_embedding(t, 7)
    freqs = 10000.0 ** (-torch.arange(3) / 3)
    expect = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs),
                        torch.zeros(3, 1)], dim=1)
    torch.testing.assert_close(emb, expect)


def test_skip_scale_and_zero_residual():
    x = torch.randn(2, 16, 4, 4)
    for skip_scale, factor in ((False, 1.0), (True, 1 / math.sqrt(2))):
        block = ResBlock(16, 16, emb_dim=8, scale_shift=True, num_groups=4, skip_scale=skip_scale)
        torch.testing.assert_close(block(x, torch.randn(2, 8)), x * factor)


def test_bfloat16_autocast():
    """Training under autocast: half activations beside float32 norm parameters."""
    torch.manual_seed(0)
    model = perturbed(UNet(**ADM_TINY)).train()
    x, t, y = _inputs(model)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_samples_through_pydiffuse_sample():
    torch.manual_seed(0)
    model = perturbed(create_model("digits")[0])
    y = torch.tensor([0, 3, 7, 9])
    out = pydiffuse.sample(model, (4, 1, 8, 8), process=schedules.linear(1000), sampler="ddim",
                           steps=3, model_kwargs={"y": y}, guidance=2.0,
                           uncond_kwargs={"y": torch.full((4,), model.null_label)})
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("build, call, match", [
    (lambda: UNet(**TINY), lambda m: m(torch.randn(1, 4, 8, 8), torch.tensor([1])),
     r"x must be \[B, 3, H, W\]"),
    (lambda: UNet(**TINY), lambda m: m(torch.randn(1, 3, 7, 8), torch.tensor([1])),
     "must be divisible by 2"),
    (lambda: UNet(**TINY), lambda m: m(torch.randn(1, 3, 8, 8), torch.tensor([1]),
                                       torch.tensor([0])), "without class conditioning"),
    (lambda: UNet(**ADM_TINY), lambda m: m(torch.randn(1, 3, 8, 8), torch.tensor([1])),
     "class-conditional: pass y"),
    (lambda: UNet(**ADM_TINY), lambda m: m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]),
                                           torch.tensor([0.0, 1.0])), "long tensor"),
    (lambda: UNet(**TINY), lambda m: m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3])),
     r"t must be \[B\]"),
    (lambda: UNet(**dict(TINY, attention_resolutions=(3,))), None, "not a level"),
    (lambda: UNet(**dict(TINY, attention_resolutions=(1,))), None, "not a level"),
    (lambda: UNet(**dict(TINY, time_input="step")), None, "time_input must be"),
    (lambda: UNet(**dict(TINY, output_scale="inv_sigma")), None, "needs time_input"),
    (lambda: UNet(**dict(TINY, model_channels=20)), None, "divisible"),
    (lambda: create_model("unet-xl"), None, "unknown model preset"),
    (lambda: create_model("digits", channels=3), None, r"unknown option\(s\) \['channels'\]"),
])
def test_bad_inputs(build, call, match):
    with pytest.raises(ValueError, match=match):
        model = build()
        call(model)
