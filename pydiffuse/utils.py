"""Small helpers shared across the package's layers (no pydiffuse imports)."""

import os
import tempfile
from pathlib import Path


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
