"""Writing samples: a labelled PNG grid (Pillow) or a ``.npz`` array."""

from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(x: torch.Tensor, nrow: int = 8, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] tiled into one uint8 image [rows, cols, C] (C 1 or 3),
    ``nrow`` per row, each enlarged ``scale`` times (nearest), ``pad`` pixels apart."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"a grid needs images [N, 1 or 3, H, W], got {list(x.shape)}")
    imgs = to_uint8(x).repeat(scale, 1).repeat(scale, 2)
    n, h, w, c = imgs.shape
    rows = -(-n // nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(imgs):
        r, k = divmod(i, nrow)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + k * (w + pad):pad + k * (w + pad) + w] = img
    return out


def save_png(array: np.ndarray, path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def sample_format(path) -> str:
    """What ``save_samples`` writes to ``path``: "npz" (suffix .npz) or "png" (.png, any case);
    ValueError for any other suffix (checked before sampling by ``pydiffuse sample``)."""
    suffix = Path(path).suffix
    if suffix == ".npz":
        return "npz"
    if suffix.lower() == ".png":
        return "png"
    raise ValueError(f"--out must end in .png or .npz, got {path}")


def save_samples(x: torch.Tensor, path, *, labels=None, nrow: int = 8, scale: int = 4) -> Path:
    """``.npz`` (x as float32 [N, ...], optional y) or a PNG grid, by the path's suffix
    (``sample_format``); missing parent directories are created."""
    path = Path(path)
    if sample_format(path) == "npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"x": x.detach().float().cpu().numpy()}
        if labels is not None:
            arrays["y"] = torch.as_tensor(labels).cpu().numpy()
        np.savez(path, **arrays)
        return path
    return save_png(grid(x, nrow, scale), path)
