"""The step ops follow the elements, not the samples (issue 15): at shapes of many short samples
(2-D points, [N, 16] latents, 1-D data, a sample that spans several kernel blocks) every backend
gives the reference op's result and the reference noise stream, with coefficients shared by the
batch or one per sample; a batch's noise is its samples' noise wherever the batch is split."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, backend, langevin_step, lincomb, randn, sample_step
from tests.conftest import backend_device
from tests.ops.helpers import make, per_sample

# (shape, layout): 2-D points, 16-D latents, 1-D data (one element per sample), a tiny batch,
# samples over one CPU span (2048 elements) and channels-last samples of 12 elements.
SHAPES = (((1031, 2), "contiguous"), ((129, 16), "contiguous"), ((2053,), "contiguous"),
          ((3, 5), "contiguous"), ((3, 2049), "contiguous"), ((37, 3, 2, 2), "channels_last"),
          ((170, 3), "contiguous"))
IDS = ["x".join(map(str, s)) + ("-cl" if layout != "contiguous" else "") for s, layout in SHAPES]


def _data(shape, layout, device, count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [make(shape, torch.float32, device, layout, generator=gen) for _ in range(count)]


def _coefs(batch, device, shared):
    values = dict(cx=1.25, co=-0.75, ex=0.6, e0=-0.8, m0=0.9, me=0.3, mx=0.05, s=0.1)
    if shared:
        return StepCoefs(**values)
    torch.manual_seed(batch)
    return StepCoefs(**{k: v * (1 + per_sample(batch, device, -0.5, 0.5))
                        for k, v in values.items()})


def _both(fn):
    """fn() on the backend under test and on the reference backend."""
    got = fn()
    with backend("reference"):
        expected = fn()
    return got, expected


@pytest.mark.parametrize("shared", [True, False], ids=["shared-coefs", "per-sample-coefs"])
@pytest.mark.parametrize("shape,layout", SHAPES, ids=IDS)
def test_sample_step(backend_name, shape, layout, shared):
    device = backend_device(backend_name)
    x, out, z = _data(shape, layout, device, 3)
    coefs = _coefs(shape[0], device, shared)
    for kwargs in (dict(noise=z), dict(seed=11, step=5), dict(seed=list(range(shape[0])))):
        got, expected = _both(lambda: sample_step(x, out, coefs, return_x0=True, **kwargs))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-coefs", "per-sample-coefs"])
@pytest.mark.parametrize("shape,layout", SHAPES, ids=IDS)
def test_lincomb(backend_name, shape, layout, shared):
    device = backend_device(backend_name)
    tensors = _data(shape, layout, device, 4)
    coefs = [0.5, -0.25, 1.5, 0.125]
    if not shared:
        coefs = [c * per_sample(shape[0], device, 0.5, 1.5) for c in coefs]
    got, expected = _both(lambda: lincomb(tensors, coefs))
    torch.testing.assert_close(got, expected, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("adaptive", [None, "per-sample", "batch"])
@pytest.mark.parametrize("shape,layout", SHAPES, ids=IDS)
def test_langevin_step(backend_name, shape, layout, adaptive):
    device = backend_device(backend_name)
    x, score = _data(shape, layout, device, 2)
    step_size = 1e-2 * per_sample(shape[0], device, 0.5, 1.5)
    kwargs = {} if adaptive is None else dict(snr=0.16, norm="sample" if adaptive == "per-sample"
                                              else "batch")
    for size in (0.01, step_size):
        got, expected = _both(lambda: langevin_step(x, score, size, seed=3, step=2,
                                                    return_mean=True, **kwargs))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,layout", SHAPES, ids=IDS)
def test_randn_is_the_stream_and_splits(backend_name, shape, layout):
    device = backend_device(backend_name)
    got, expected = _both(lambda: randn(list(shape), 2**33 + 5, 9, device=device))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    seeds = list(range(100, 100 + shape[0]))
    whole = randn(list(shape), seeds, 9, device=device)
    cut = shape[0] // 3 + 1
    parts = [randn([len(part), *shape[1:]], part, 9, device=device)
             for part in (seeds[:cut], seeds[cut:])]
    torch.testing.assert_close(torch.cat(parts), whole, atol=0, rtol=0)
    # one seed for the batch: the first rows of a batch are the smaller batch's rows
    torch.testing.assert_close(randn([cut, *shape[1:]], 4, 9, device=device),
                               randn(list(shape), 4, 9, device=device)[:cut], atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(1031, 2), (2053,), (129, 16), (3, 2049)],
                         ids=["1031x2", "2053", "129x16", "3x2049"])
def test_cpu_kernels_read_a_shared_table_in_place(shape):
    """A table shared by the batch ([rows, 1] expanded: stride 0 over B, as the ops pack Python
    floats) and the same table materialized per sample give the same bits."""
    ops = torch.ops.pydiffuse
    x, out, z = _data(shape, "contiguous", "cpu", 3)
    batch = shape[0]
    rows = torch.tensor([1.25, -0.75, 0.6, -0.8, 0.9, 0.3, 0.05, 0.1, 2.0, 1.5, -3.0, -1.0])
    shared = rows[:, None].expand(len(rows), batch)
    seeds = torch.tensor([7])
    for args in ((z, None, 0), (None, seeds, 3)):
        for clip in (False, True):
            a = ops.sample_step(x, out, x, shared, *args, clip, False, True)
            b = ops.sample_step(x, out, x, shared.contiguous(), *args, clip, False, True)
            for u, v in zip(a, b):
                assert torch.equal(u, v)
    lin = torch.tensor([0.5, -0.25, 1.5])[:, None].expand(3, batch)
    assert torch.equal(ops.lincomb([x, out, z], lin), ops.lincomb([x, out, z], lin.contiguous()))
    lan_shared = torch.tensor([0.01, 0.16])[:, None].expand(2, batch)
    lan = lan_shared.contiguous()
    for adaptive, per_sample_norm in ((False, False), (True, True), (True, False)):
        a = ops.langevin_step(x, out, lan_shared, adaptive, per_sample_norm, None, seeds, 1, True)
        b = ops.langevin_step(x, out, lan, adaptive, per_sample_norm, None, seeds, 1, True)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
