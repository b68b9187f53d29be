"""One name per op through every layer (DESIGN.md, issue 14): ``pydiffuse/ops/<op>.py``,
``csrc/cpu/<op>.cpp`` (its schema, Meta kernel and bindings), ``csrc/cuda/<op>.cu``,
``triton_kernels/<op>.py``, ``tests/ops/test_<op>.py``, and the ``<op>`` row of
``pydiffuse bench``; the Triton kernels import nothing from pydiffuse but the packed layout; the
renamed ops modules stay importable one release, with a DeprecationWarning."""

import ast
import importlib
import inspect
import pathlib
import sys
import warnings

import pytest

import pydiffuse.ops as ops
from pydiffuse import bench

ROOT = pathlib.Path(__file__).resolve().parents[2]
# every op: a host file csrc/cpu/<op>.cpp that defines the schema <op> (a new op is found here)
OPS = tuple(sorted(p.stem for p in (ROOT / "csrc" / "cpu").glob("*.cpp")
                   if "TORCH_LIBRARY_FRAGMENT" in p.read_text()))


def test_the_ops_are_found():
    assert {"sample_step", "lincomb", "langevin_step", "randn", "attention",
            "group_norm"} <= set(OPS)


@pytest.mark.parametrize("op", OPS)
def test_one_name_through_every_layer(op):
    for path in (f"pydiffuse/ops/{op}.py", f"csrc/cpu/{op}.cpp", f"csrc/cuda/{op}.cu",
                 f"triton_kernels/{op}.py", f"tests/ops/test_{op}.py"):
        assert (ROOT / path).is_file(), path
    assert f'm.def("{op}(' in (ROOT / f"csrc/cpu/{op}.cpp").read_text().replace('(\n      "', '("')
    function = getattr(ops, op)
    assert inspect.isfunction(function) and function.__module__ == f"pydiffuse.ops.{op}"
    assert op in ops.__all__
    assert op in bench.CASE_NAMES


def _pydiffuse_imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "pydiffuse")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "pydiffuse":
            yield node.module


def test_triton_kernels_import_only_the_packed_layout_from_pydiffuse():
    """No upward import: autograd and capabilities live in pydiffuse/ops; the kernels read only
    the coefficient rows of ops/_packing.py, a leaf module."""
    found = {str(p.relative_to(ROOT)): sorted(set(_pydiffuse_imports(p)))
             for p in sorted((ROOT / "triton_kernels").glob("*.py"))}
    assert {m for names in found.values() for m in names} <= {"pydiffuse.ops._packing"}, found
    assert not list(_pydiffuse_imports(ROOT / "pydiffuse" / "ops" / "_packing.py"))
    source = (ROOT / "pydiffuse" / "ops" / "_packing.py").read_text()
    assert "from ." not in source and "import pydiffuse" not in source


@pytest.mark.parametrize("old, names", [
    ("step", {"sample_step": "sample_step", "lincomb": "lincomb"}),
    ("langevin", {"langevin_step": "langevin_step"}),
    ("noise", {"randn": "randn"}),
])
def test_renamed_modules_are_deprecated_aliases(old, names):
    sys.modules.pop(f"pydiffuse.ops.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"pydiffuse.ops.{old}")
    deprecations = [w for w in caught if w.category is DeprecationWarning]
    assert len(deprecations) == 1, caught
    assert f"pydiffuse.ops.{old} is deprecated" in str(deprecations[0].message)
    for name, new in names.items():
        assert getattr(module, name) is getattr(ops, name)
        assert f"pydiffuse.ops.{new}" in str(deprecations[0].message)
