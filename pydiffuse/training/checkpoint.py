"""Training checkpoints: one directory per save, written atomically, read back refusing anything
that is not plain tensors and values.

A checkpoint ``<run_dir>/step_<N>/`` holds

- ``model.safetensors``: the model's state dict;
- ``ema_<rate>.safetensors``: the same with the EMA weights, one file per rate;
- ``state.pt``: optimizer, loss scaler, step, EMA update count, loss history, the objective's
  state (e.g. iDDPM's loss history), ... (``torch.save`` of tensors, numbers, strings, lists
  and dicts only: it is read with ``torch.load(weights_only=True)``);
- ``config.json``: the model preset and kwargs, process, prediction and trainer settings.

The directory is written under a temporary name beside its final one and renamed into place
(``os.replace``), so a crash mid-save leaves the previous checkpoints intact and no partial one
under a ``step_<N>`` name.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, malformed, or holds more than tensors and values."""


def _host_tensors(state: dict) -> dict:
    # A fresh contiguous copy of each tensor: safetensors refuses tensors sharing storage.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(directory, *, model: dict, emas: dict, state: dict, config: dict) -> Path:
    """Write a checkpoint directory atomically (replacing one of the same name).

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
        CheckpointError (naming the file) for a missing file, a safetensors file that does not
        parse, a ``state.pt`` holding anything but tensors and plain values (a pickled object is
        refused, never run), or a malformed ``config.json``.
    """
    directory = Path(directory)
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


def prune_checkpoints(run_dir, keep: int):
    """Delete all but the newest ``keep`` checkpoints, and temporary directories left by an
    interrupted save."""
    run_dir = Path(run_dir)
    for path in checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for path in run_dir.glob(".step_*"):
        shutil.rmtree(path, ignore_errors=True)


def read_weights(directory, ema: bool = True) -> tuple[dict, dict]:
    """(weights, config) of a checkpoint for inference: the EMA weights of the slowest rate when
    ``ema`` and present, else the raw ones; ``state.pt`` is not needed (a shipped checkpoint has
    none). Errors as ``load_checkpoint``."""
    directory = Path(directory)
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
