"""The ``pydiffuse`` command's checks and error policy: each command checks its arguments and
where it will write before any work, and ``user_error`` decides which exceptions are a user's
mistake (one line on stderr, exit 2) and which are bugs (a traceback); see ``pydiffuse.cli``.
"""

import linecache
import re
from pathlib import Path

DEBUG_ENV = "PYDIFFUSE_DEBUG"
PACKAGE_DIR = Path(__file__).resolve().parent
INT64 = (-2 ** 63, 2 ** 63 - 1)


class CommandError(ValueError):
    """A mistake in the command line (or a failure the user can act on), found by the command:
    printed as one line."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise CommandError(message)


def at_least(args, lows: dict) -> None:
    """Each integer option of ``lows`` ({attribute: lowest value}) that was given is >= it."""
    for name, low in lows.items():
        value = getattr(args, name, None)
        require(value is None or value >= low,
                 f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def check_seed(seed: int) -> None:
    """Any signed 64-bit seed (the noise stream's key and torch.manual_seed take one)."""
    require(INT64[0] <= seed <= INT64[1], f"--seed must fit in a signed 64-bit int, got {seed}")


def check_device(device) -> None:
    """--device: cpu or cuda[:N], a CUDA one only where torch sees it."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CommandError(f"--device must be cpu or cuda (or cuda:N), got {device!r}") from None
    require(dev.type in ("cpu", "cuda"), f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        why = "" if torch.version.cuda else f" (this torch {torch.__version__} has no CUDA)"
        require(torch.cuda.is_available(),
                 f"--device {device}: no CUDA device is available{why}; use --device cpu")
        count = torch.cuda.device_count()
        require(dev.index is None or dev.index < count,
                 f"--device {device}: there are {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def parse_labels(text: str, n: int) -> list:
    """--labels "3" or "0,1,2": integer class indices, one (for every sample) or --n of them."""
    labels, parts = [], text.split(",")
    whole = f" in {text!r}" if len(parts) > 1 else ""
    for part in parts:
        try:
            labels.append(int(part))
        except ValueError:
            raise CommandError(f"--labels must be comma-separated integer class indices, got "
                               f"{part.strip()!r}{whole}") from None
    negative = [v for v in labels if v < 0]
    require(not negative, f"--labels must be class indices >= 0, got {negative}{whole}")
    require(len(labels) in (1, n), f"--labels gives {len(labels)} labels for --n {n}: give one "
             f"label (used for every sample) or one per sample")
    return labels


def check_labels_for(pipe, labels, guidance, ckpt) -> None:
    """After loading, before sampling: labels and guidance only for a class-conditional model,
    and labels among its classes."""
    if labels is None and guidance is None:
        return
    null = getattr(pipe.model, "null_label", None)
    from pydiffuse.lsgm import LSGMPipeline

    flags = "/".join(f for f, v in (("--labels", labels), ("--guidance", guidance))
                     if v is not None)
    require(null is not None and not isinstance(pipe, LSGMPipeline),
             f"{flags}: {ckpt} is not a class-conditional model (it takes no labels)")
    high = [v for v in labels if v >= null]
    require(not high, f"--labels must be class indices in [0, {null}) ({ckpt} has {null} "
             f"classes; {null} is its null label), got {high}")


def load_config(path) -> dict:
    """config.load_config, with a malformed YAML file in one line and a missing file pointing at
    the shipped configs."""
    import yaml

    from pydiffuse import config

    if not Path(path).is_file():
        where = "; see pydiffuse train --help for the shipped configs" if shipped_configs() else ""
        raise FileNotFoundError(f"no config file at {path}{where}")
    try:
        return config.load_config(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CommandError(f"{path}: not valid YAML: {problem}{at}") from None


_YAML_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def check_config(cfg: dict, path) -> None:
    """What the builders would otherwise meet as a TypeError deep in a constructor: each typed
    section's keywords bound to its builder's signature (the model's for an lsgm preset, the
    Trainer's for ``train``), and numbers YAML reads as strings (1e-3 needs a dot: 1.0e-3)."""
    import inspect

    from pydiffuse import config, training

    for section, spec in cfg.items():
        for key, value in (spec.items() if isinstance(spec, dict) else ()):
            if isinstance(value, str) and _YAML_FLOAT.fullmatch(value):
                raise CommandError(f"{path}: {section}.{key}: YAML reads {value} as a string; "
                                   f"write {float(value)!r} (a number needs a dot before the "
                                   f"exponent)")
    # section -> {type: (builder, whether it takes the process first)}
    sections = {"process": {k: (v, False) for k, v in config.PROCESSES.items()},
                "objective": config.OBJECTIVES,
                "data": {k: (v, False) for k, v in config.DATASETS.items()}}
    for section, table in sections.items():
        spec = cfg[section]
        if section == "data" and isinstance(spec, dict):
            spec = {k: v for k, v in spec.items() if k != "labels"}
        (builder, takes_process), kwargs = config._typed(spec, section, table)
        try:
            inspect.signature(builder).bind(*[None] * takes_process, **kwargs)
        except TypeError as err:
            raise CommandError(f"{path}: config section {section!r} (type {spec['type']!r}): "
                               f"{err}") from None
    model = cfg["model"]
    if isinstance(model, dict) and model.get("preset") == "lsgm":
        from pydiffuse.nn.lsgm import build_lsgm

        try:
            inspect.signature(build_lsgm).bind(None, **{k: v for k, v in model.items()
                                                        if k != "preset"})
        except TypeError as err:
            raise CommandError(f"{path}: config section 'model' (preset 'lsgm'): {err}") from None
    train = cfg.get("train") or {}
    require(isinstance(train, dict), f"{path}: config section 'train' must be a mapping")
    try:
        inspect.signature(training.Trainer).bind(
            None, None, None, run_dir=None, **{k: v for k, v in train.items()
                                               if k not in ("steps", "run_dir")})
    except TypeError as err:
        raise CommandError(f"{path}: config section 'train' (Trainer options): {err}") from None


def save_failure(err):
    """The frame of ``save_checkpoint`` that ``err`` (an I/O-like error) came through, if any."""
    import traceback

    if not (isinstance(err, (OSError, RuntimeError))
            or type(err).__name__ == "SafetensorError"):
        return None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if (frame.f_code.co_name == "save_checkpoint"
                and frame.f_globals.get("__name__") == "pydiffuse.training.checkpoint"):
            return frame
    return None


def one_line(err: BaseException) -> str:
    """An error's message on one line; an OSError as "<file>: <reason>"."""
    if isinstance(err, OSError) and err.strerror:
        names = [str(f) for f in (err.filename, err.filename2) if f is not None]
        text = f"{' -> '.join(names)}: {err.strerror}" if names else err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _raised_by_pydiffuse(err: BaseException) -> tuple:
    """(whether the innermost frame of err's traceback is pydiffuse's code, whether that line is
    a ``raise`` statement): a message pydiffuse chose, or Python's own error in its code."""
    tb = err.__traceback__
    if tb is None:
        return False, False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    try:
        ours = Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        ours = False
    return ours, linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def user_error(err: BaseException) -> str | None:
    """The one-line message of an error the user can act on, or None for a bug (whose
    traceback must stay visible): see the module's docstring."""
    ours, raised = _raised_by_pydiffuse(err)
    if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
        return one_line(err)
    if isinstance(err, ValueError):
        return None if ours and not raised else one_line(err)
    if isinstance(err, (TypeError, RuntimeError, LookupError)) and ours and raised:
        return one_line(err.args[0] if isinstance(err, KeyError) and err.args else err)
    return None


def shipped_configs() -> list:
    """The run configurations beside the package (a source checkout's configs/*.yaml), else in
    ./configs; [] where there are none (an installed package ships no configs/)."""
    for folder in (PACKAGE_DIR.parent / "configs", Path("configs")):
        found = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        if found:
            return found
    return []
