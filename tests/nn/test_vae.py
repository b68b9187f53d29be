"""LSGM's models: the discretized logistic is a probability mass on the grid, the VAE's shapes and
input checks, and the mixed score with alpha -> 0 is exactly the Normal prior's eps."""

import math

import pytest
import torch

from pydiffuse.nn import MLP, ConvVAE, MixedScore, build_lsgm
from pydiffuse.nn.vae import discretized_logistic_nll
from pydiffuse.sde import VPSDE


def test_discretized_logistic_is_a_probability_mass():
    """P summed over the 17 levels is 1 for any mean and scale (the edge bins reach to -+inf;
    a version with plain edge bins sums to < 1: 0.93 for mean 0.9, scale 0.3, checked by hand),
    and an inner bin is sigmoid(a) - sigmoid(b) computed directly in float64."""
    gen = torch.Generator().manual_seed(0)
    levels = torch.linspace(-1, 1, 17)
    mean = torch.rand(5, generator=gen) * 3 - 1.5
    log_scale = torch.rand(5, generator=gen) * 4 - 4
    x = levels[None, :, None].expand(5, 17, 1).reshape(-1, 1)
    m = mean[:, None, None].expand(5, 17, 1).reshape(-1, 1)
    s = log_scale[:, None, None].expand(5, 17, 1).reshape(-1, 1)
    p = torch.exp(-discretized_logistic_nll(x, m, s)).reshape(5, 17)
    torch.testing.assert_close(p.sum(1), torch.ones(5), atol=1e-5, rtol=0)
    k, h = 6, 1 / 16
    direct = (torch.sigmoid((levels[k].double() + h - mean.double()) / log_scale.double().exp())
              - torch.sigmoid((levels[k].double() - h - mean.double()) / log_scale.double().exp()))
    torch.testing.assert_close(p[:, k].double(), direct, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("latent_shape", [(6,), (3, 4, 4)])
def test_vae_shapes_and_checks(latent_shape):
    vae = ConvVAE(8, 1, latent_shape, channels=8)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    mu, log_sigma = vae.encode(x)
    assert mu.shape == log_sigma.shape == (5, *latent_shape)
    assert vae.decode_mean(mu).shape == (5, 1, 8, 8)
    assert vae.decode_mean(mu).abs().max() <= 1
    assert vae.nll(x, mu).shape == (5,)
    with pytest.raises(ValueError, match="x must be"):
        vae.encode(torch.zeros(5, 1, 6, 6))
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(torch.zeros(5, 7))
    with pytest.raises(ValueError, match="latent_shape"):
        ConvVAE(8, 1, (3, 2, 2))


def test_gaussian_entropy_closed_form():
    log_sigma = torch.tensor([[0.1, -0.4, 0.0]])
    want = sum(0.5 * math.log(2 * math.pi * math.e * math.exp(2 * v)) for v in (0.1, -0.4, 0.0))
    assert ConvVAE.gaussian_entropy(log_sigma).item() == pytest.approx(want, rel=1e-6)


def test_mixed_score_alpha_zero_is_the_normal_prior_exactly():
    """alpha = sigmoid(-inf) = 0: eps = sigma_t z_t bit for bit, which is -sigma_t grad log
    N(z_t; 0, I), the eps of the VP-diffused N(0, I) (its marginal at every t). With alpha = 1
    it is the network's own output; a broken mixing with m_t in place of sigma_t would differ by
    (sigma_t - m_t) z_t, far above zero at these t."""
    sde = VPSDE()
    net = MLP(dim=4, hidden=16, depth=1, time_input="unit")
    torch.nn.init.normal_(net.out.weight)           # a network whose output is not zero
    mixed = MixedScore(net, (4,), sde, logit_init=-math.inf)
    z = torch.randn(6, 4)
    t = torch.tensor([1e-5, 0.01, 0.1, 0.4, 0.7, 1.0])
    sigma = sde.marginal(t)[1].float()[:, None]
    zr = z.clone().requires_grad_(True)
    normal_score = torch.autograd.grad(
        torch.distributions.Normal(0.0, 1.0).log_prob(zr).sum(), zr)[0]
    out = mixed(z, t)
    assert torch.equal(out, sigma * z)
    assert torch.equal(out, -sigma * normal_score)
    mixed.mixing_logit.data.fill_(math.inf)
    assert torch.equal(mixed(z, t), net(z, t))


def test_build_lsgm_picks_the_prior_network():
    flat, _ = build_lsgm(VPSDE(), latent_shape=[5], vae={"channels": 8},
                         prior={"hidden": 16, "depth": 1})
    assert isinstance(flat.prior.net, MLP)
    conv, kwargs = build_lsgm(VPSDE(), latent_shape=[2, 4, 4], vae={"channels": 8},
                              prior={"model_channels": 16, "num_groups": 4,
                                     "head_channels": 16})
    assert type(conv.prior.net).__name__ == "UNet" and kwargs["latent_shape"] == [2, 4, 4]
    z = torch.randn(3, 2, 4, 4)
    assert conv.prior(z, torch.full((3,), 0.5)).shape == z.shape
    with pytest.raises(TypeError, match="VPSDE"):
        MixedScore(flat.prior.net, (5,), object())
