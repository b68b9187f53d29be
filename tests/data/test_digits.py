"""The embedded 8x8 digits: the scaling of scikit-learn's images, and a split that is
deterministic, disjoint, complete and stratified."""

import pytest
import torch
from sklearn.datasets import load_digits

from pydiffuse.data.digits import digits


def _rows(x: torch.Tensor) -> set:
    return {r.numpy().tobytes() for r in x}


def test_all_is_sklearn_scaled_to_unit_range():
    x, y = digits("all").tensors
    ref = load_digits()
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert y.dtype == torch.long and y.tolist() == ref.target.tolist()
    torch.testing.assert_close(x, torch.as_tensor(ref.images, dtype=torch.float32)[:, None] / 8 - 1,
                               rtol=0, atol=0)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


@pytest.mark.parametrize("seed,fraction", [(0, 0.2), (1, 0.2), (0, 0.5)])
def test_split_is_disjoint_complete_and_stratified(seed, fraction):
    (xtr, ytr), (xte, yte) = (digits(s, seed=seed, test_fraction=fraction).tensors
                              for s in ("train", "test"))
    x_all, y_all = digits("all").tensors
    assert _rows(xtr).isdisjoint(_rows(xte))
    assert _rows(xtr) | _rows(xte) == _rows(x_all)  # the 1797 images are distinct
    n_c = y_all.bincount(minlength=10)
    assert yte.bincount(minlength=10).tolist() == [round(fraction * n) for n in n_c.tolist()]
    assert (ytr.bincount(minlength=10) + yte.bincount(minlength=10)).tolist() == n_c.tolist()


def test_split_is_deterministic_and_seeded():
    a, b = digits("test").tensors, digits("test", seed=0).tensors
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert len(digits("train")) == 1438 and len(a[0]) == 359
    assert _rows(a[0]) != _rows(digits("test", seed=1).tensors[0])


def test_items_are_pairs():
    x, y = digits("test")[5]
    assert x.shape == (1, 8, 8) and y.ndim == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "val"}, "split must be one of"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        digits(**kwargs)
