"""UNet.from_diffusers and pydiffuse.load of a diffusers folder: the converted UNet's outputs
against the diffusers UNet2DModel's (float32: within float error of each other; both against a
float64 run of diffusers', the converted one within twice diffusers' own error plus 1e-6), and
clear errors naming what UNet cannot express."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import pydiffuse  # noqa: E402
from pydiffuse.nn import UNet  # noqa: E402
from pydiffuse.nn.blocks import Downsample  # noqa: E402

CONFIGS = {
    # google/ddpm-cifar10-32's config (TensorFlow DDPM's sinusoid and padding), narrower
    "ddpm": dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, attention_head_dim=None,
                 flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    # ADM-style: scale-shift norm, heads of 8 channels, [sin, cos] order, eps 1e-6, learned sigma
    "adm": dict(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8,
                resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8,
                flip_sin_to_cos=False, norm_eps=1e-6, out_channels=6,
                down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D")),
}
T = torch.tensor([3, 800])


def theirs(name, **overrides):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(sample_size=16, layers_per_block=2,
                                  **dict(CONFIGS[name], **overrides)).eval()
    with torch.no_grad():  # away from the zero-initialised layers
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_outputs_as_diffusers(name):
    model = theirs(name)
    ours = UNet.from_diffusers(model).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x, T).sample
        truth = model.double()(x.double(), T).sample
        out = ours(x, T)
    assert out.shape == expected.shape
    assert rel(out, truth) <= 2 * rel(expected, truth) + 1e-6, (rel(out, truth),
                                                                rel(expected, truth))


@pytest.mark.parametrize("overrides, message", [
    (dict(down_block_types=("SkipDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D")),
     "block type 'SkipDownBlock2D'"),
    (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
    (dict(center_input_sample=True), "center_input_sample=True"),
    (dict(downsample_padding=2), "downsample_padding=2"),
    (dict(up_block_types=("UpBlock2D",) * 4), "mirroring down_block_types"),
    (dict(resnet_time_scale_shift="scale_shift"), "middle attention has a GroupNorm"),
])
def test_unsupported_configurations_are_named(overrides, message):
    config = dict(theirs("ddpm").config, **overrides)
    with pytest.raises(ValueError, match=message):
        UNet.from_diffusers(config, {})


def test_load_reads_a_diffusers_pipeline_folder(tmp_path):
    model = theirs("ddpm")
    model.save_pretrained(tmp_path / "unet")  # config.json, diffusion_pytorch_model.safetensors
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=200, beta_end=0.03,
                                        prediction_type="v_prediction")
    scheduler.save_config(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text("{}")
    pipe = pydiffuse.load(tmp_path)
    assert pipe.prediction == "v" and pipe.event_shape == (3, 16, 16)
    torch.testing.assert_close(pipe.process.betas.float(), scheduler.betas)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel(pipe.model(x, T), model(x, T).sample) < 1e-5
    model.save_pretrained(tmp_path / "alone" / "model")  # no scheduler: diffusers' defaults
    alone = pydiffuse.load(tmp_path / "alone" / "model")
    assert alone.prediction == "eps" and len(alone.process.betas) == 1000
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(ValueError, match="a diffusers VQModel; pydiffuse.load reads "
                                         "UNet2DModel folders"):
        pydiffuse.load(tmp_path)


def test_downsample_padding_is_checked():
    with pytest.raises(ValueError, match="padding must be 0 or 1, got 2"):
        Downsample(4, padding=2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_to_diffusers_round_trip_is_exact(name):
    model = theirs(name)
    back = UNet.from_diffusers(model).to_diffusers().eval()
    state, original = back.state_dict(), model.state_dict()
    assert list(state) == list(original)
    assert all(torch.equal(state[k], original[k]) for k in state)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x, T).sample, model(x, T).sample)


def test_to_diffusers_of_a_pydiffuse_unet():
    torch.manual_seed(0)
    ours = UNet(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), head_channels=8, num_groups=8,
                scale_shift=True).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = ours.to_diffusers().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel(model(x, T).sample, ours(x, T)) < 1e-5
    with pytest.raises(ValueError, match="no counterpart of UNet's resblock_updown=True"):
        UNet(image_size=16, model_channels=16, channel_mult=(1, 2), num_groups=8,
             resblock_updown=True).to_diffusers()
    with pytest.raises(ValueError, match="not num_heads=2: give head_channels"):
        UNet(image_size=16, model_channels=16, channel_mult=(1, 2), num_groups=8,
             num_heads=2).to_diffusers()
