"""Image folders (Pillow) and .npz arrays: scaling to [-1, 1], resize and centre crop, labels from
subfolders, uint8 vs float arrays."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pydiffuse.data import ImageFolder, npz_dataset


def solid(path, size, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def scaled(*values):
    return torch.tensor(values, dtype=torch.float32) / 127.5 - 1


def test_labels_from_subfolders(tmp_path):
    solid(tmp_path / "dogs" / "a.png", (32, 32), (255, 0, 127))
    solid(tmp_path / "cats" / "b.png", (20, 12), (0, 255, 64))
    solid(tmp_path / "cats" / "deeper" / "c.jpg", (9, 9), (10, 10, 10))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path, 8)
    assert data.classes == ["cats", "dogs"] and len(data) == 3
    assert [data[i][1] for i in range(3)] == [0, 0, 1]       # cats/b, cats/deeper/c, dogs/a
    x = data[2][0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, scaled(255, 0, 127)[:, None, None].expand(3, 8, 8), atol=1e-6)
    batch_x, batch_y = next(iter(DataLoader(data, batch_size=3)))
    assert batch_x.shape == (3, 3, 8, 8) and batch_x.min() >= -1 and batch_x.max() <= 1
    assert batch_y.dtype == torch.int64


def test_centre_crop_of_a_wide_image(tmp_path):
    # 16 x 8: red | green (middle 8 columns) | blue; at size 8 no resize, the crop is all green
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    image[:, :4, 0] = image[:, 4:12, 1] = image[:, 12:, 2] = 255
    Image.fromarray(image).save(tmp_path / "wide.png")
    x = ImageFolder(tmp_path, 8)[0]                         # no subfolders: unlabelled
    assert isinstance(x, torch.Tensor)
    assert torch.equal(x, scaled(0, 255, 0)[:, None, None].expand(3, 8, 8))
    small = ImageFolder(tmp_path, 4)[0]                     # 8 x 4 after the resize
    assert small.shape == (3, 4, 4)
    assert (small[1] > small[0]).all() and (small[1] > small[2]).all()


def test_grayscale(tmp_path):
    Image.new("L", (10, 10), 200).save(tmp_path / "g.png")
    x = ImageFolder(tmp_path, 5, channels=1)[0]
    assert x.shape == (1, 5, 5) and torch.allclose(x, scaled(200).expand(1, 5, 5), atol=1e-6)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path, 8)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path, 8, channels=2)


def test_npz_uint8_images_with_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)   # NHWC
    np.savez(tmp_path / "d.npz", x=images, y=np.arange(5))
    x, y = npz_dataset(tmp_path / "d.npz").tensors
    assert x.shape == (5, 3, 4, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert y.tolist() == list(range(5))


def test_npz_floats_and_default_names(tmp_path):
    floats = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float64)
    np.savez(tmp_path / "f.npz", floats)                             # arr_0, no labels
    (x,) = npz_dataset(tmp_path / "f.npz").tensors
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(floats).float())
    gray = np.full((2, 3, 3), 255, dtype=np.uint8)                   # NHW -> N1HW
    np.savez(tmp_path / "g.npz", x=gray)
    assert torch.equal(npz_dataset(tmp_path / "g.npz").tensors[0], torch.ones(2, 1, 3, 3))


@pytest.mark.parametrize("arrays, error", [
    ({"z": np.zeros(3)}, KeyError),
    ({"x": np.zeros((3, 2), dtype=np.int32)}, TypeError),
    ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, ValueError),
])
def test_npz_errors(tmp_path, arrays, error):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error):
        npz_dataset(tmp_path / "bad.npz")
