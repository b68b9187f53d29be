"""Small helpers shared across the package's layers (the bottom layer: no pydiffuse imports):
writable-path checks, progress bars, the per-sample broadcast of a [B] coefficient, and the
deprecated aliases of names that moved up a layer."""

import os
import tempfile
import warnings
from pathlib import Path

from tqdm.auto import tqdm


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_writable(path, flag: str, *, directory: bool = False) -> Path:
    """Fail now, not after the work: ``path`` (a file to write, or with ``directory`` a folder to
    write in) is not an existing folder (file); an existing file is writable (access(2), which
    refuses read-only mounts even to root); else the nearest existing folder above it is a
    directory this process can create files in (tried: a temporary file, removed at once; so
    it holds for root and read-only mounts alike). Missing folders in between are not made
    here: the writer makes them."""
    path = Path(path)
    if os.path.lexists(path):
        if directory:
            _require(path.is_dir(), f"{flag} {path}: exists and is not a directory")
        else:
            _require(not path.is_dir(), f"{flag} {path}: is a directory, not a file")
            _require(os.access(path, os.W_OK), f"{flag} {path}: the file is not writable")
            return path
    folder = path if directory and path.is_dir() else path.parent
    while not os.path.exists(folder) and folder != folder.parent:
        folder = folder.parent
    _require(folder.is_dir(), f"{flag} {path}: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write in {folder} "
                           f"({err.strerror or err})") from None
    return path


def progress_bar(total: int, progress, desc: str, iterable=None):
    """A tqdm bar of ``total`` steps over ``iterable`` or updated by hand (progress None: only on
    a terminal)."""
    return tqdm(iterable, total=total, desc=desc,
                disable=None if progress is None else not progress, leave=False)


def steps_bar(n: int, progress, desc: str):
    """range(n) with a tqdm bar (progress None: only on a terminal)."""
    return progress_bar(n, progress, desc, range(n))


def per_sample(coef, x):
    """A [B] coefficient (tensor) broadcast over x's trailing dimensions, in x's dtype and
    device."""
    return coef.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class MovedNames:
    """The deprecated aliases of a module whose names moved to a module above it, as the
    module's ``__getattr__`` (PEP 562): ``__getattr__ = MOVED = MovedNames(__name__)``.

    The old module cannot import the new home (that would be an import up the layers), so the
    new names are registered from above (``pydiffuse/__init__.py`` does it for every alias,
    and ``import pydiffuse.anything`` runs it first); reading an old name warns
    (DeprecationWarning, once per place) and returns the object of the new home. Aliases are kept
    one release."""

    def __init__(self, module: str):
        self.module, self.names = module, {}

    def register(self, home: str, **objects) -> None:
        """Serve each of ``objects`` under its old name, announced as ``<home>.<name>``."""
        self.names.update({name: (home, obj) for name, obj in objects.items()})

    def __call__(self, name: str):
        if name not in self.names:
            raise AttributeError(f"module {self.module!r} has no attribute {name!r}")
        home, obj = self.names[name]
        warnings.warn(f"{self.module}.{name} moved to {home}.{name}; the old name is a deprecated "
                      "alias that will be removed in the next release", DeprecationWarning,
                      stacklevel=2)
        return obj
