"""The deprecation warning of an ops module that was renamed (one name per op, issue 14): its old
path stays importable for one release as an alias that re-exports the new module's names."""

import warnings


def warn_moved(old: str, new: str) -> None:
    """A DeprecationWarning, on the line that imports ``old``, that it is now ``new``."""
    # stacklevel 3: above this function and the alias module's body, the importer (warnings
    # skips importlib's own frames)
    warnings.warn(f"{old} is deprecated: its names moved to {new}; the old module is an alias "
                  "that will be removed in the next release", DeprecationWarning, stacklevel=3)
