"""A sample depends on its seed only: not on the batch it sits in, its position there, or the
backend (the device-independence claim, made testable on the CPU: the reference backend in plain
torch against the compiled CPU kernels)."""

import pytest
import torch

import pydiffuse
from pydiffuse import schedules
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.ops import backend
from tests.samplers.oracle_cases import mixture_2d

SCHED = schedules.linear(1000)
SAMPLERS = {
    "ddpm": dict(sampler="ddpm", steps=50, variance="fixed_large"),
    "ddim": dict(sampler="ddim", steps=20, eta=0.7),
}


IMAGE = GaussianMixtureScore(torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0)),
                             0.2, process=SCHED, prediction="eps")


def _sample(name, batch, seed, image=False):
    mix, event = (IMAGE, (2, 3, 3)) if image else (mixture_2d(SCHED, "eps"), (2,))
    return pydiffuse.sample(mix, (batch, *event), process=SCHED, seed=seed, **SAMPLERS[name])


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_prefix_of_a_batch(name, image):
    """One int seed: the first k samples of a batch of n are a batch of k."""
    big, small = _sample(name, 300, 7, image), _sample(name, 40, 7, image)
    torch.testing.assert_close(big[:40], small, rtol=0, atol=1e-6)
    assert not torch.equal(big[:40], big[40:80])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_per_sample_seeds_follow_their_sample(name):
    seeds = list(range(1000, 1064))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    out = _sample(name, 64, seeds)
    permuted = _sample(name, 64, [seeds[i] for i in perm])
    torch.testing.assert_close(permuted, out[perm], rtol=0, atol=1e-6)
    alone = _sample(name, 1, [seeds[5]])
    torch.testing.assert_close(alone, out[5:6], rtol=0, atol=1e-6)


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_reference_backend_agrees(name, image):
    """Same seeds, same samples on the reference (plain torch) and cpu (compiled) backends."""
    cpu = _sample(name, 200, 3, image)
    with backend("reference"):
        ref = _sample(name, 200, 3, image)
    torch.testing.assert_close(ref, cpu, rtol=0, atol=1e-4)
    assert not torch.equal(ref, _sample(name, 200, 4, image))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_seed_none_differs_between_calls(name):
    assert not torch.allclose(_sample(name, 16, None), _sample(name, 16, None))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_samples(name):
    torch.testing.assert_close(_sample(name, 16, 9), _sample(name, 16, 9), rtol=0, atol=0)
