"""k-diffusion's sampling module, the peer of the sigma-view samplers, loaded for the tests.

``import k_diffusion`` imports every module of the package (its models, evaluation with
clean-fid and CLIP, torchvision, ...); its samplers need only scipy, torchsde, torchdiffeq and
``utils.append_dims``. So ``sampling.py`` is loaded from the installed package under a private
name, beside a stand-in ``utils`` holding that one helper. Skips when k-diffusion (a test
dependency, installed by the Makefile with --no-deps) or the samplers' imports are missing.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

NAME = "_kdiffusion_for_tests"


def append_dims(x, ndim):
    """x with trailing singleton dimensions up to ``ndim``."""
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))


def load_sampling():
    """k_diffusion.sampling as a module, or a pytest skip."""
    if f"{NAME}.sampling" in sys.modules:
        return sys.modules[f"{NAME}.sampling"]
    for dep in ("scipy.integrate", "torchsde", "torchdiffeq"):
        pytest.importorskip(dep)
    spec = importlib.util.find_spec("k_diffusion")      # finds the package, runs nothing
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)",
                    allow_module_level=True)
    package = types.ModuleType(NAME)
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType(f"{NAME}.utils")
    utils.append_dims = append_dims
    package.utils = utils
    sys.modules[NAME], sys.modules[f"{NAME}.utils"] = package, utils
    path = Path(spec.submodule_search_locations[0]) / "sampling.py"
    sampling_spec = importlib.util.spec_from_file_location(f"{NAME}.sampling", path)
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules[f"{NAME}.sampling"] = module
    sampling_spec.loader.exec_module(module)
    return module
