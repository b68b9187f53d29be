"""The MLP score network on [B, D]: shapes, conditioning, time inputs, the 1/sigma output, second
derivatives (exact score matching), sampling, bad inputs. (Gradients: tests/nn/test_unet.py.)"""

import pytest
import torch

import pydiffuse
from pydiffuse import schedules
from pydiffuse.nn.mlp import MLP
from pydiffuse.nn.presets import create_model
from tests.nn.test_unet import perturbed


def test_preset_shape():
    model, kwargs = create_model("mlp")
    assert kwargs["dim"] == 2
    assert model(torch.randn(5, 2), torch.arange(5)).shape == (5, 2)


@pytest.mark.parametrize("learned_sigma, width", [(False, 3), (True, 6)])
def test_learned_sigma(learned_sigma, width):
    model = MLP(dim=3, hidden=16, depth=1, learned_sigma=learned_sigma)
    assert model(torch.randn(4, 3), torch.tensor(7)).shape == (4, width)  # a scalar t broadcasts


def test_class_conditioning_and_null_label():
    torch.manual_seed(0)
    model = perturbed(MLP(hidden=32, depth=2, num_classes=3))
    x = torch.randn(1, 2).expand(4, 2)
    with torch.no_grad():
        out = model(x, torch.full((4,), 10), torch.arange(4))  # labels 0, 1, 2 and the null 3
    gaps = torch.cdist(out, out) + torch.eye(4) * 1e9
    assert gaps.min() > 1e-4


def test_inv_sigma_and_time_free():
    torch.manual_seed(0)
    base = perturbed(MLP(hidden=32, depth=2, time_input=None))
    scaled = MLP(hidden=32, depth=2, time_input=None, output_scale="inv_sigma").eval()
    scaled.load_state_dict(base.state_dict())
    x, sigma = torch.randn(3, 2), torch.tensor([0.01, 0.5, 20.0])
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, sigma) * sigma[:, None], base(x, sigma))
        torch.testing.assert_close(base(x, sigma), base(x, sigma.flip(0)))  # no time input


def test_second_derivatives():
    """The Jacobian trace of exact score matching (Hyvärinen 2005) differentiates once more."""
    torch.manual_seed(0)
    model = perturbed(MLP(hidden=32, depth=2)).train()
    x = torch.randn(4, 2, requires_grad=True)
    out = model(x, torch.arange(4))
    trace = sum(torch.autograd.grad(out[:, i].sum(), x, create_graph=True)[0][:, i]
                for i in range(2))
    trace.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == ["out.bias"]  # the only parameter the Jacobian does not depend on


def test_samples_through_pydiffuse_sample():
    torch.manual_seed(0)
    model = perturbed(create_model("mlp")[0])
    out = pydiffuse.sample(model, (16, 2), process=schedules.linear(1000), sampler="ddim",
                           steps=3)
    assert out.shape == (16, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.randn(4, 3), torch.arange(4)), r"x must be \[B, 2\]"),
    (lambda m: m(torch.randn(4, 2, 1), torch.arange(4)), r"x must be \[B, 2\]"),
    (lambda m: m(torch.randn(4, 2), torch.arange(3)), r"t must be \[B\]"),
    (lambda m: m(torch.randn(4, 2), torch.arange(4), torch.arange(4)),
     "without class conditioning"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(MLP())


def test_bad_construction():
    with pytest.raises(ValueError, match="needs time_input"):
        MLP(output_scale="inv_sigma")
    with pytest.raises(ValueError, match="class-conditional: pass y"):
        MLP(num_classes=2)(torch.randn(1, 2), torch.tensor([3]))
