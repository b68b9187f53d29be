"""Inputs and tolerances shared by the op tests."""

import torch

from pydiffuse.ops import backend

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Kernels compute in float32 from the same inputs as the reference and round once: the gap is a
# few float32 ulps before rounding, so at most about one ulp of the storage dtype after it.
TOLERANCES = {
    torch.float32: dict(atol=3e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
# [B, ...] shapes with per-sample sizes 1, 7, 97, 1025 and a 4-D one for channels_last.
SHAPES = ((1, 1), (3, 7), (2, 97), (1, 1025), (2, 3, 5, 7))
LAYOUTS = ("contiguous", "channels_last", "strided")


def make(shape, dtype, device, layout="contiguous", generator=None, scale=1.0):
    """Fresh random data in the requested memory layout."""
    t = torch.randn(shape, generator=generator, dtype=torch.float32) * scale
    t = t.to(device=device, dtype=dtype)
    if layout == "channels_last" and t.ndim == 4:
        return t.to(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([t, t], dim=-1)[..., ::2]  # every other element: non-contiguous view
    return t


def per_sample(batch, device, low=-1.0, high=1.0):
    return torch.empty(batch, device=device).uniform_(low, high)


def reference_of(fn, *args, **kwargs):
    """fn run on the reference backend with float32 copies of every tensor argument."""
    def up(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.float().contiguous()
        if isinstance(a, (list, tuple)):
            return type(a)(up(v) for v in a)
        return a
    with backend("reference"):
        return fn(*up(args), **{k: up(v) for k, v in kwargs.items()})


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), **TOLERANCES[dtype])
