"""The noise stream N(seed, step, b, j): its statistics, that it is one function everywhere, and
opcheck of the randn ops."""

import math
import os
import subprocess
import sys

import pytest
import torch

from pydiffuse.ops import StepCoefs, backend, randn, sample_step
from pydiffuse.ops._dispatch import unavailable_reason
from pydiffuse.ops.reference import philox4x32
from tests.conftest import backend_device
from tests.ops.helpers import (ELEMENT_SHAPES, make, needs_triton, on_triton_device,
                               opcheck_triton, split_rows, triton_ops)

N = 1 << 18


def _corr(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_philox_known_answer():
    """Philox4x32-10 test vectors of the Random123 distribution (kat_vectors)."""
    key = torch.tensor(0, dtype=torch.int64)
    words = philox4x32(key, 0, 0, 0, 0)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    key = torch.tensor(-1, dtype=torch.int64)  # both key words 0xFFFFFFFF
    words = philox4x32(key, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert [int(w) for w in words] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    key = torch.tensor(0x299F31D0A4093822, dtype=torch.int64)  # k0 = low word, k1 = high word
    words = philox4x32(key, 0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
    assert [int(w) for w in words] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_statistics_are_standard_normal():
    with backend("reference"):
        z = randn([4, N // 4], 0).double().flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    kurtosis = float(((z - z.mean()) ** 4).mean() / z.var() ** 2)
    assert abs(kurtosis - 3) < 0.1
    # The mass within one and two standard deviations, against the normal CDF.
    for k, mass in ((1, 0.682689), (2, 0.954500)):
        share = float((z.abs() < k).double().mean())
        assert abs(share - mass) < 5 * math.sqrt(mass * (1 - mass) / n)


def test_independent_between_steps_samples_seeds_and_neighbours():
    with backend("reference"):
        base = randn([2, N // 2], 3, step=10)
        limit = 5 / math.sqrt(N // 2)
        assert abs(_corr(base, randn([2, N // 2], 3, step=11))) < limit
        assert abs(_corr(base, randn([2, N // 2], 4, step=10))) < limit
        assert abs(_corr(base[0], base[1])) < limit * math.sqrt(2)
        assert abs(_corr(base[:, 1:], base[:, :-1])) < limit


def test_every_backend_gives_the_reference_stream(backend_name):
    device = backend_device(backend_name)
    for seed, shape, step in ((0, [3, 1000], 0), (2**40 + 7, [2, 3, 5, 7], 123),
                              ([9, 8], [2, 33], 4)):
        z = randn(shape, seed, step, device=device)
        with backend("reference"):
            expected = randn(shape, seed, step, device=device)
        torch.testing.assert_close(z, expected, atol=1e-5, rtol=0)


def test_independent_of_batch_size(backend_name):
    device = backend_device(backend_name)
    torch.testing.assert_close(randn([8, 40], 21, 3, device=device)[:3],
                               randn([3, 40], 21, 3, device=device), atol=0, rtol=0)


def test_per_sample_seed_follows_the_sample(backend_name):
    """With one seed per sample, a sample's noise is the same wherever it sits in the batch."""
    device = backend_device(backend_name)
    batch = randn([3, 2, 5], [11, 22, 33], 7, device=device)
    alone = randn([1, 2, 5], [22], 7, device=device)
    torch.testing.assert_close(batch[1:2], alone, atol=0, rtol=0)
    torch.testing.assert_close(randn([1, 2, 5], 22, 7, device=device), alone, atol=0, rtol=0)


@pytest.mark.parametrize("shape", ELEMENT_SHAPES, ids=str)
def test_blocks_across_samples_give_each_sample_its_stream(backend_name, shape):
    """Samples of any size (blocks spanning many samples): the reference stream, one seed or one
    per sample, and a batch's noise is its rows' noise drawn apart (the leading rows with one
    seed, any rows with per-sample seeds)."""
    device = backend_device(backend_name)
    seeds = list(range(100, 100 + shape[0]))
    one, own = randn(shape, 9, 6, device=device), randn(shape, seeds, 6, device=device)
    with backend("reference"):
        torch.testing.assert_close(one, randn(shape, 9, 6, device=device), atol=1e-5, rtol=0)
        torch.testing.assert_close(own, randn(shape, seeds, 6, device=device), atol=1e-5, rtol=0)
    head, tail = split_rows(shape[0])
    torch.testing.assert_close(randn([head.stop, *shape[1:]], 9, 6, device=device), one[head],
                               atol=0, rtol=0)
    parts = [randn([r.stop - r.start, *shape[1:]], seeds[r], 6, device=device)
             for r in (head, tail)]
    torch.testing.assert_close(torch.cat(parts), own, atol=0, rtol=0)


def test_independent_of_memory_layout(backend_name):
    """A seeded step on channels_last data draws the same noise as on contiguous data."""
    device = backend_device(backend_name)
    x = make((2, 3, 4, 6), torch.float32, device)
    coefs = StepCoefs(s=1.0)
    contiguous = sample_step(x, x, coefs, seed=5, step=1)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(sample_step(x_cl, x_cl, coefs, seed=5, step=1), contiguous,
                               atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_the_rounded_stream(backend_name, dtype):
    """Within one ulp of the rounded float32 stream (Triton's interpreter truncates to bf16)."""
    device = backend_device(backend_name)
    z32 = randn([2, 77], 1, device=device)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(randn([2, 77], 1, device=device, dtype=dtype), z32.to(dtype),
                               atol=1e-6, rtol=ulp)


OPCHECK_CASES = {"randn": (torch.tensor([3], dtype=torch.int64), [2, 7], 4, torch.float32)}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case):
    torch.library.opcheck(torch.ops.pydiffuse.randn.default, OPCHECK_CASES[case])


@needs_triton
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_triton(case):
    opcheck_triton(triton_ops().randn.default, on_triton_device(OPCHECK_CASES[case]))


_LANES_SCRIPT = """
import hashlib, sys, torch
from pydiffuse.ops import StepCoefs, langevin_step, randn, sample_step
parts = [randn(s, 7, 3).flatten() for s in ([3, 77], [64, 4, 8, 8], [1000, 1], [5, 2],
                                            [2, 4099], [17, 3, 5])]
parts.append(randn([9, 33], list(range(9)), 11).flatten())            # per-sample seeds
x = torch.linspace(-1, 1, 2 * 3 * 50).reshape(2, 3, 50)
parts.append(sample_step(x, x, StepCoefs(mx=1.0, s=1.0), seed=[4, 5], step=2).flatten())
parts.append(langevin_step(x, x, 0.1, seed=3, step=1).flatten())
import pydiffuse._C
print(hashlib.sha256(torch.cat(parts).numpy().tobytes()).hexdigest(), pydiffuse._C.philox_lanes())
"""


@pytest.mark.skipif(bool(unavailable_reason("cpu", "cpu")), reason="pydiffuse._C not built")
def test_every_philox_lane_width_gives_the_same_stream():
    """The CPU kernels run Philox in AVX-512 or AVX2 lanes (``csrc/cpu/philox_lanes.cpp``, the
    widest the CPU has) or a scalar loop: PYDIFFUSE_PHILOX_SIMD caps it, so every path runs
    here, and each must give the stream bit for bit (tails of a partial lane group, per-sample
    seeds, 1- and 2-element samples, the noise inside sample_step and langevin_step)."""
    digests, lanes = {}, {}
    for cap in ("", "avx2", "off"):
        env = {**os.environ, "PYDIFFUSE_PHILOX_SIMD": cap}
        run = subprocess.run([sys.executable, "-c", _LANES_SCRIPT], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        digests[cap], lanes[cap] = run.stdout.split()
    assert len(set(digests.values())) == 1, digests
    assert lanes["off"] == "scalar" and lanes["avx2"] in ("avx2", "scalar"), lanes
