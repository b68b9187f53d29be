"""Training checkpoints: one directory per save, written atomically, read back refusing anything
that is not plain tensors and values.

A checkpoint ``<run_dir>/step_<N>/`` holds

- ``model.safetensors``: the model's state dict;
- ``ema_<rate>.safetensors``: the same with the EMA weights, one file per rate;
- ``state.pt``: optimizer, loss scaler, step, EMA update count, loss history, the objective's
  state (e.g. iDDPM's loss history), ... (``torch.save`` of tensors, numbers, strings, lists
  and dicts only: it is read with ``torch.load(weights_only=True)``);
- ``config.json``: the model preset and kwargs, process, prediction and trainer settings;
- ``manifest.json``: the SHA-256 and size of each of the files above.

What is guaranteed:

- **Atomic writes.** The directory is written under a temporary name beside its final one
  (manifest last) and renamed into place (``os.replace``), so a crash mid-save leaves the
  previous checkpoints intact and no partial one under a ``step_<N>`` name.
- **Verified reads.** ``load_checkpoint`` and ``read_weights`` (hence ``pydiffuse.load`` and a
  resume) check the whole checkpoint against its manifest before parsing any file, whichever
  part they then read: a file whose size or SHA-256 differs from when it was written, a file the
  manifest names that is missing, or a checkpoint file (``model.safetensors``,
  ``ema_*.safetensors``, ``state.pt``, ``config.json``) present but not named by the manifest
  (it would be read unverified) raises ``CheckpointError`` naming that file. Other files in the
  directory (notes, images) are never read and are ignored. The cost is one more read of each
  file (SHA-256 runs at about 1 GB/s), on save and on load.
- **No manifest, no load.** A checkpoint without ``manifest.json`` (written before manifests
  existed, or whose manifest was deleted) is refused with a message telling how to add one:
  ``write_manifest(directory)`` records the files as they are now, so run it only on a
  checkpoint you trust. Refusing rather than loading with a warning keeps a deleted manifest from
  switching the check off silently; the cost is that an old checkpoint needs that one call once.
- **Plain data only.** Weights are safetensors and ``state.pt`` is read with
  ``torch.load(weights_only=True)``, so even a checkpoint whose manifest was rewritten to match
  tampered files cannot run code: the checksums catch accidental damage (bit flips, truncated
  copies, mixed-up files), not an attacker, who can recompute them.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"step_(\d+)")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "pydiffuse-checkpoint-manifest"
# the files of a checkpoint: every one of them that is present must be named by the manifest
CHECKPOINT_FILE = re.compile(r"model\.safetensors|ema_.*\.safetensors|state\.pt|config\.json")
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint file that is missing, malformed, or holds more than tensors and values."""


def _host_tensors(state: dict) -> dict:
    # A fresh contiguous copy of each tensor: safetensors refuses tensors sharing storage.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(directory, *, model: dict, emas: dict, state: dict, config: dict) -> Path:
    """Write a checkpoint directory atomically (replacing one of the same name), with the
    ``manifest.json`` of its files.

    Args:
        directory: the checkpoint's path, e.g. ``run_dir / "step_1000"``.
        model: the model's state dict.
        emas: {rate: state dict with the EMA weights}.
        state: the trainer's state (tensors, numbers, strings, lists, dicts).
        config: JSON-serializable settings.

    Returns:
        the checkpoint's path.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(_host_tensors(model), tmp / "model.safetensors")
        for rate, ema in emas.items():
            save_file(_host_tensors(ema), tmp / f"ema_{float(rate)!r}.safetensors")
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_manifest(tmp)
        if directory.exists():          # a directory cannot be renamed over a non-empty one
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpoint_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()
                  if p.is_file() and CHECKPOINT_FILE.fullmatch(p.name))


def write_manifest(directory) -> Path:
    """Write ``<directory>/manifest.json``: the SHA-256 and size of each checkpoint file in it
    (``model.safetensors``, ``ema_*.safetensors``, ``state.pt``, ``config.json``), replacing any
    manifest there. ``save_checkpoint`` calls it; call it yourself to add a manifest to a
    checkpoint written without one (e.g. by an older pydiffuse): it records the files as they
    are, so only on a checkpoint you trust.

    Returns:
        the manifest's path.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    names = _checkpoint_files(directory)
    for name in ("model.safetensors", "config.json"):
        if name not in names:
            raise CheckpointError(f"{directory / name}: missing; {directory} is not a checkpoint")
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "files": {
        name: {"sha256": _sha256(directory / name), "size": (directory / name).stat().st_size}
        for name in names}}
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        for name in ("model.safetensors", "config.json"):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory / name}: missing; {directory} is not a "
                                      f"checkpoint")
        raise CheckpointError(
            f"{path}: missing, so the checkpoint's files cannot be verified (written by an older "
            f"pydiffuse, or the manifest was deleted); if you trust them, add one with: python -c "
            f"'from pydiffuse.training.checkpoint import write_manifest; "
            f"write_manifest(\"{directory}\")'")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not all(
                isinstance(name, str) and "/" not in name and "\\" not in name
                and name not in ("", ".", "..") and isinstance(entry["sha256"], str)
                and isinstance(entry["size"], int) for name, entry in files.items()):
            raise ValueError("unexpected layout")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a valid checkpoint manifest ({err})") from err
    return files


def verify_checkpoint(directory) -> None:
    """Check every file of a checkpoint directory against its ``manifest.json`` (size, then
    SHA-256, read in 1 MiB chunks).

    Raises:
        CheckpointError naming the file: the manifest missing or malformed; a file it names
        missing or with another size or checksum; a checkpoint file present that it does not
        name.
    """
    directory = Path(directory)
    files = _read_manifest(directory)
    unlisted = [name for name in _checkpoint_files(directory) if name not in files]
    if unlisted:
        raise CheckpointError(f"{directory / unlisted[0]}: not named by {directory / MANIFEST} "
                              f"(a file added after the checkpoint was written)")
    for name, entry in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by {directory / MANIFEST})")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{path}: {size} bytes, but the manifest says {entry['size']}: "
                                  f"damaged or replaced since the checkpoint was written")
        if _sha256(path) != entry["sha256"].lower():
            raise CheckpointError(f"{path}: SHA-256 checksum mismatch with {MANIFEST}: damaged "
                                  f"or modified since the checkpoint was written")


def _read_safetensors(path: Path) -> dict:
    try:
        return load_file(path)
    except Exception as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from err


def _reason(err: Exception) -> str:
    """The useful lines of torch.load's error (not its advice to load with weights_only=False)."""
    lines = str(err).splitlines()
    detail = [ln.strip() for ln in lines[1:] if ln.strip() and not ln.startswith(
        ("Check the documentation", "Please file an issue"))]
    return "; ".join(detail) or (lines[0] if lines else type(err).__name__)


def load_checkpoint(directory) -> dict:
    """Read a checkpoint written by ``save_checkpoint``, on the CPU.

    Returns:
        {"model": state dict, "ema": {rate: state dict}, "state": dict, "config": dict}.

    Raises:
        CheckpointError (naming the file) for a checkpoint that fails ``verify_checkpoint``
        (no manifest, or a file missing, unlisted or not matching its checksum), a missing file,
        a safetensors file that does not parse, a ``state.pt`` holding anything but tensors and
        plain values (a pickled object is refused, never run), or a malformed ``config.json``.
    """
    directory = Path(directory)
    verify_checkpoint(directory)
    for name in ("model.safetensors", "state.pt", "config.json"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing; {directory} is not a checkpoint")
    emas = {}
    for path in sorted(directory.glob("ema_*.safetensors")):
        try:
            rate = float(path.name[len("ema_"):-len(".safetensors")])
        except ValueError as err:
            raise CheckpointError(f"{path}: expected ema_<rate>.safetensors") from err
        emas[rate] = _read_safetensors(path)
    try:
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{directory / 'state.pt'}: refused: it holds more than tensors and "
                              f"plain values, or is damaged ({_reason(err)})") from err
    try:
        config = json.loads((directory / "config.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"{directory / 'config.json'}: not valid JSON ({err})") from err
    return {"model": _read_safetensors(directory / "model.safetensors"), "ema": emas,
            "state": state, "config": config}


def checkpoints(run_dir) -> list[Path]:
    """The complete checkpoints ``step_<N>`` of a run directory, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    """The newest checkpoint of a run directory, or None."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def remove_checkpoint(path):
    """Delete a checkpoint directory: renamed out of the ``step_<N>`` names first (to a
    ``.step_*`` temporary name, which ``prune_checkpoints`` sweeps up if the deletion is cut
    short), so it never lies half-deleted under its name."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.removed.", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(run_dir, keep: int, protect=None):
    """Delete all but the newest ``keep`` checkpoints, never ``protect`` (the one just written,
    which may be older than others, e.g. when resuming from an older checkpoint), and temporary
    directories left by an interrupted save."""
    run_dir = Path(run_dir)
    found = checkpoints(run_dir)
    if keep <= 0:
        doomed = []
    elif protect is not None:
        others = [p for p in found if p.name != Path(protect).name]
        doomed = others[:max(0, len(others) - (keep - 1))]
    else:
        doomed = found[:-keep]
    for path in doomed:
        remove_checkpoint(path)
    for path in run_dir.glob(".step_*"):
        shutil.rmtree(path, ignore_errors=True)


def read_weights(directory, ema: bool = True) -> tuple[dict, dict]:
    """(weights, config) of a checkpoint for inference: the EMA weights of the slowest rate when
    ``ema`` and present, else the raw ones; ``state.pt`` is not needed (a shipped checkpoint has
    none, but when present it is verified too: the whole checkpoint is checked against its
    manifest, whichever file is read). Errors as ``load_checkpoint``."""
    directory = Path(directory)
    verify_checkpoint(directory)
    for name in ("model.safetensors", "config.json"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing; {directory} is not a checkpoint")
    emas = sorted(directory.glob("ema_*.safetensors"), key=lambda p: p.name[len("ema_"):])
    path = emas[-1] if ema and emas else directory / "model.safetensors"      # "0.9999" > "0.999"
    try:
        config = json.loads((directory / "config.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"{directory / 'config.json'}: not valid JSON ({err})") from err
    return _read_safetensors(path), config
