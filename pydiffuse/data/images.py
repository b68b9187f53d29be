"""Image data from disk: a folder of image files (Pillow) and ``.npz`` arrays, as float32
[C, H, W] images in [-1, 1]."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, C] -> float32 [..., C, H, W] in [-1, 1]: x / 127.5 - 1."""
    x = torch.tensor(array, dtype=torch.float32) / 127.5 - 1
    return x.movedim(-1, -3).contiguous()


def resize_center_crop(image, size: int):
    """Scale a PIL image so its shorter side is ``size`` (bicubic, antialiased when shrinking),
    then cut the central size x size square."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageFolder(Dataset):
    """The images under ``root``, each resized and centre-cropped to size x size
    (``resize_center_crop``) and scaled to [-1, 1].

    With subfolders, ``root/<class>/**/<image>`` is labelled by its class's index in the sorted
    subfolder names (``classes``) and items are (x, y); without, the images directly in root
    are unlabelled and items are x.

    Args:
        root: the folder.
        size: the output side.
        channels: 3 (RGB) or 1 (grayscale).

    Items: x float32 [channels, size, size] (and y an int).
    """

    def __init__(self, root, size: int, *, channels: int = 3):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.root, self.size, self.mode = root, size, "RGB" if channels == 3 else "L"
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = [d.name for d in subdirs] or None
        self.files = ([(f, i) for i, d in enumerate(subdirs) for f in _images(d.rglob("*"))]
                      if subdirs else [(f, None) for f in _images(root.iterdir())])
        if not self.files:
            raise ValueError(f"no images ({', '.join(EXTENSIONS)}) under {root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as image:
            image = resize_center_crop(image.convert(self.mode), self.size)
        x = _from_uint8(np.asarray(image, dtype=np.uint8).reshape(self.size, self.size, -1))
        return x if label is None else (x, label)


def _images(paths) -> list:
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in EXTENSIONS)


def npz_dataset(path, *, x_key: str = "x", y_key: str = "y") -> TensorDataset:
    """Images (or any arrays) from a ``.npz``: ``x`` and optional labels ``y`` (or numpy's
    default names ``arr_0`` / ``arr_1``, as guided-diffusion writes its samples).

    uint8 x is taken as images [N, H, W, C] (or [N, H, W]) and becomes float32 [N, C, H, W] in
    [-1, 1]; float x is kept as it is (as float32). Read with ``allow_pickle=False``.

    Returns:
        TensorDataset(x) or TensorDataset(x, y) with y int64.
    """
    with np.load(path, allow_pickle=False) as arrays:
        keys = (x_key, y_key) if x_key in arrays else ("arr_0", "arr_1")
        if keys[0] not in arrays:
            raise KeyError(f"{path}: no array {x_key!r} (or arr_0); it holds {list(arrays)}")
        x, y = arrays[keys[0]], arrays.get(keys[1])
    if x.dtype == np.uint8:
        x = _from_uint8(x[..., None] if x.ndim == 3 else x)
    elif np.issubdtype(x.dtype, np.floating):
        x = torch.from_numpy(x).to(torch.float32)
    else:
        raise TypeError(f"{path}: {keys[0]} must be uint8 images or floats, got {x.dtype}")
    if y is None:
        return TensorDataset(x)
    if len(y) != len(x):
        raise ValueError(f"{path}: {len(y)} labels for {len(x)} items")
    return TensorDataset(x, torch.from_numpy(y).to(torch.int64))
