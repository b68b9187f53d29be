"""pydiffuse.nn.GroupNorm and AdaGroupNorm against torch.nn.GroupNorm (+ SiLU) and ADM's
scale-shift norm written in plain torch, on every backend."""

import pytest
import torch
import torch.nn.functional as F

from pydiffuse.nn import AdaGroupNorm, GroupNorm
from pydiffuse.ops import backend
from pydiffuse.ops._dispatch import unavailable_reason
from tests.conftest import backend_device
from tests.ops.helpers import TOLERANCES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _close(actual, expected, dtype=torch.float32, scale=1.0):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(),
                               atol=tol["atol"] * scale, rtol=tol["rtol"])


def _randomized(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize("act", (None, "silu"))
@pytest.mark.parametrize("affine", (True, False))
@pytest.mark.parametrize("shape", ((2, 8, 6, 5), (3, 8, 11), (2, 8)))
def test_group_norm_matches_torch(backend_name, shape, affine, act):
    device = backend_device(backend_name)
    theirs = _randomized(torch.nn.GroupNorm(2, 8, eps=1e-6, affine=affine)).to(device)
    ours = GroupNorm(2, 8, eps=1e-6, affine=affine, act=act).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape, device=device)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ours(x_ours)
    expected = theirs(x_theirs)
    if act == "silu":
        expected = F.silu(expected)
    _close(y, expected)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    expected.backward(grad_y)
    _close(x_ours.grad, x_theirs.grad)
    if affine:
        for p, q in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
            _close(p.grad, q.grad, scale=max(1.0, q.grad.abs().max().item()))


def test_group_norm_state_dict_both_ways():
    theirs = _randomized(torch.nn.GroupNorm(2, 6))
    ours = GroupNorm(2, 6, act="silu")
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    back = torch.nn.GroupNorm(2, 6)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, theirs.weight) and torch.equal(back.bias, theirs.bias)
    assert GroupNorm(2, 6, affine=False).state_dict() == {}
    assert "act='silu'" in repr(ours)


def test_group_norm_defaults_and_bad_arguments():
    norm = GroupNorm(2, 6)
    assert torch.equal(norm.weight, torch.ones(6)) and torch.equal(norm.bias, torch.zeros(6))
    with pytest.raises(ValueError, match="divisible by num_groups"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match="act must be"):
        GroupNorm(2, 6, act="gelu")
    with pytest.raises(ValueError, match="divisible"):
        AdaGroupNorm(4, 6, 3)


def _adm_scale_shift_norm(module, x, emb):
    """guided-diffusion ResBlock with use_scale_shift_norm: out_norm(h) * (1 + scale) + shift,
    then out_layers' SiLU."""
    scale, shift = module.proj(emb).chunk(2, dim=1)
    extra = [1] * (x.ndim - 2)
    h = F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
    h = h * (1 + scale.reshape(*scale.shape, *extra)) + shift.reshape(*shift.shape, *extra)
    return F.silu(h) if module.act == "silu" else h


@pytest.mark.parametrize("act", (None, "silu"))
@pytest.mark.parametrize("shape", ((2, 8, 6, 5), (1, 8, 4, 3, 5)))
def test_ada_group_norm_matches_adm(backend_name, shape, act):
    device = backend_device(backend_name)
    torch.manual_seed(0)
    module = _randomized(AdaGroupNorm(2, 8, 16, act=act)).to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    emb = torch.randn(shape[0], 16, device=device, requires_grad=True)
    y = module(x, emb)
    params = [x, emb] + list(module.parameters())
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, grad_y)
    expected = _adm_scale_shift_norm(module, x, emb)
    expected_grads = torch.autograd.grad(expected, params, grad_y)
    _close(y, expected)
    for g, e in zip(grads, expected_grads):
        _close(g, e, scale=max(1.0, e.abs().max().item()))


@pytest.mark.skipif(bool(unavailable_reason("cpu", "cpu")), reason="pydiffuse._C not built")
def test_fullgraph_compile_of_group_norm_module():
    torch.manual_seed(0)
    norm = _randomized(GroupNorm(4, 8, act="silu"))
    x = torch.randn(2, 8, 7, 6, requires_grad=True)

    def step(x):
        return norm(x).square().mean()

    with backend("cpu"):
        loss = step(x)
        expected = torch.autograd.grad(loss, [x, norm.weight, norm.bias])
        compiled = torch.compile(step, fullgraph=True)
        loss_c = compiled(x)
        actual = torch.autograd.grad(loss_c, [x, norm.weight, norm.bias])
    torch.testing.assert_close(loss_c, loss)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
