"""pydiffuse.nn.SelfAttention2d against the same block in plain torch (torch.nn.GroupNorm,
F.scaled_dot_product_attention) with the same weights, on every backend."""

import pytest
import torch
import torch.nn.functional as F

from pydiffuse.nn import SelfAttention2d
from tests.conftest import DEVICE, backend_device


def _plain_torch(block, x):
    """The DDPM / ADM attention block written out in torch."""
    b, c, h, w = x.shape
    heads, ch = block.num_heads, block.head_channels
    hn = F.group_norm(x, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
    q, k, v = F.conv2d(hn, block.qkv.weight, block.qkv.bias).chunk(3, dim=1)
    q, k, v = (t.reshape(b, heads, ch, h * w).transpose(-1, -2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
    return x + F.conv2d(out, block.proj.weight, block.proj.bias)


def _randomized(block):
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return block


# (channels, heads, head_channels, groups, H, W); the Triton interpreter gets the small ones.
CASES = ((64, 2, None, 32, 5, 7), (64, None, 32, 8, 8, 8), (96, 3, None, 32, 9, 11))


@pytest.mark.parametrize("case", CASES)
def test_matches_plain_torch(backend_name, case):
    channels, heads, head_channels, groups, h, w = case
    interpreted = backend_name == "triton" and DEVICE.type == "cpu"
    if interpreted and h * w > 64:
        pytest.skip("the Triton interpreter runs tiny sizes only")
    device = backend_device(backend_name)
    torch.manual_seed(0)
    block = _randomized(SelfAttention2d(channels, num_heads=heads, head_channels=head_channels,
                                        num_groups=groups)).to(device)
    x = torch.randn(2, channels, h, w, device=device)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = block(x_ours)
    expected = _plain_torch(block, x_theirs)
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x_ours, *block.parameters()], grad)
    theirs = torch.autograd.grad(expected, [x_theirs, *block.parameters()], grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-4 * max(1.0, b.abs().max().item()), rtol=1e-4)


def test_fresh_block_is_identity_and_heads():
    block = SelfAttention2d(64, head_channels=16)
    assert block.num_heads == 4 and block.head_channels == 16
    x = torch.randn(1, 64, 4, 4)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=64), "exactly one"),
    (dict(channels=64, num_heads=2, head_channels=32), "exactly one"),
    (dict(channels=64, num_heads=3), "divisible by num_heads"),
    (dict(channels=64, head_channels=24), "divisible by head_channels"),
    (dict(channels=48, num_heads=2), "divisible by num_groups"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelfAttention2d(**kwargs)


def test_bad_input_shape():
    block = SelfAttention2d(32, num_heads=1, num_groups=8)
    with pytest.raises(ValueError, match=r"x must be \[B, 32, H, W\]"):
        block(torch.randn(1, 16, 4, 4))
