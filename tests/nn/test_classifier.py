"""ADM's noisy classifier: logits, the attention pooling against ADM's full-attention form, use in
classifier guidance, bad inputs. (Gradients and the reference backend: tests/nn/test_unet.py.)"""

import pytest
import torch

import pydiffuse
from pydiffuse import schedules
from pydiffuse.nn.classifier import AttentionPool2d, NoisyClassifier
from pydiffuse.nn.presets import create_model
from pydiffuse.nn.unet import UNet


@pytest.mark.parametrize("name, overrides", [
    ("digits-classifier", {}),
    ("adm-64-classifier", dict(model_channels=16, head_channels=16, pool_head_channels=32,
                               num_res_blocks=1, num_groups=8)),
])
def test_logits_shape(name, overrides):
    torch.manual_seed(0)
    model, kwargs = create_model(name, **overrides)
    size = kwargs["image_size"]
    x = torch.randn(3, kwargs["in_channels"], size, size)
    with torch.no_grad():
        logits = model.eval()(x, torch.tensor([0, 500, 999]))
    assert logits.shape == (3, kwargs["num_classes"]) and torch.isfinite(logits).all()


def _adm_attention_pool(pool, x):
    """ADM's AttentionPool2d: every token attends (softmax over HW + 1 keys), token 0 is kept."""
    b, c, h, w = x.shape
    tokens = x.reshape(b, c, h * w).transpose(1, 2)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + pool.positional
    q, k, v = pool.qkv(tokens).chunk(3, dim=-1)
    heads, hc = pool.heads, pool.head_channels
    q, k, v = (z.reshape(b, h * w + 1, heads, hc).transpose(1, 2) for z in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / hc ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, h * w + 1, c)
    return pool.proj(out)[:, 0]


def test_attention_pooling_matches_adm():
    torch.manual_seed(0)
    pool = AttentionPool2d(spatial=3, channels=64, head_channels=16, out_dim=5)
    x = torch.randn(2, 64, 3, 3, requires_grad=True)
    out, expect = pool(x), _adm_attention_pool(pool, x)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    grad = torch.randn(2, 5)
    ours = torch.autograd.grad(out, [x, *pool.parameters()], grad)
    theirs = torch.autograd.grad(expect, [x, *pool.parameters()], grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_guides_sampling():
    """Classifier guidance through pydiffuse.sample: the gradient of log p(y | x_t) moves the
    samples (against an unguided run with the same seed)."""
    torch.manual_seed(0)
    model = UNet(8, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), head_channels=32, num_groups=8)
    classifier = create_model("digits-classifier")[0].eval()
    common = dict(process=schedules.linear(1000), sampler="ddim", steps=3, seed=5)
    guided = pydiffuse.sample(model, (2, 1, 8, 8), classifier=classifier, classifier_scale=10.0,
                              labels=torch.tensor([1, 2]), **common)
    plain = pydiffuse.sample(model, (2, 1, 8, 8), **common)
    assert guided.shape == (2, 1, 8, 8)
    assert (guided - plain).abs().max() > 1e-4


@pytest.mark.parametrize("x, match", [
    (torch.randn(1, 1, 4, 4), "takes 8x8 images"),
    (torch.randn(1, 3, 8, 8), r"x must be \[B, 1, H, W\]"),
    (torch.randn(1, 1, 7, 7), "divisible by 2"),
])
def test_bad_inputs(x, match):
    classifier = create_model("digits-classifier")[0]
    with pytest.raises(ValueError, match=match):
        classifier(x, torch.tensor([1]))


def test_bad_construction():
    with pytest.raises(ValueError, match="image_size"):
        NoisyClassifier(image_size=6, num_classes=3, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="head_channels"):
        AttentionPool2d(spatial=2, channels=48, head_channels=32, out_dim=3)
