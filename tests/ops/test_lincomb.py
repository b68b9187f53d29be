"""lincomb on every backend against the reference."""

import pytest
import torch

from pydiffuse.ops import lincomb
from tests.conftest import backend_device
from tests.ops.helpers import DTYPES, LAYOUTS, SHAPES, assert_close, make, per_sample, reference_of


@pytest.mark.parametrize("count", [1, 2, 5])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend_name, shape, dtype, layout, count):
    device = backend_device(backend_name)
    tensors = [make(shape, dtype, device, layout) for _ in range(count)]
    coefs = [0.5 if i % 2 else per_sample(shape[0], device) for i in range(count)]
    result = lincomb(tensors, coefs)
    assert result.shape == tensors[0].shape and result.dtype == dtype
    assert_close(result, reference_of(lincomb, tensors, coefs), dtype)


def test_coefficient_tensor_forms(backend_name):
    """coefs as a [n] tensor and as an [n, B] tensor mean the same as the list form."""
    device = backend_device(backend_name)
    a, b = make((3, 10), torch.float32, device), make((3, 10), torch.float32, device)
    expected = 2 * a - 0.5 * b
    torch.testing.assert_close(lincomb([a, b], torch.tensor([2.0, -0.5], device=device)), expected)
    table = torch.tensor([[2.0] * 3, [-0.5] * 3], device=device)
    torch.testing.assert_close(lincomb([a, b], table), expected)
