"""The package's layers (issue 14), enforced in ``make test``.

1. ``lint-imports`` keeps every contract of ``[tool.importlinter]`` in pyproject.toml: the layers
   (no module imports a module of a higher layer, siblings written ``a | b`` do not import each
   other, every top-level module is placed), only the entry points import the ``pydiffuse``
   facade, no import cycle between sibling modules at any depth, and private modules are imported
   only inside their package (except ``ops._packing`` / ``ops._checks``). import-linter reads
   imports inside functions too.

2. No import inside a function hides a dependency. The rule, checked on the source of
   ``pydiffuse/``:

   - In the entry points (``cli.py``, ``cli_checks.py``, ``bench``, ``demo.py``,
     ``_demo_loop.py``) an import inside a function may name any module: the command line imports
     its subcommands' modules lazily; those imports are still held to the layers by 1.
   - Everywhere else, an import inside a function must be of a third-party package that is
     optional or slow to import (``LAZY_PACKAGES``: PIL, scikit-learn, matplotlib, diffusers,
     triton, torch's submodules, ...), never of a pydiffuse module (absolute or relative) and
     never of the standard library (put those at the top).
   - Nowhere may ``importlib.import_module`` / ``__import__`` load a pydiffuse module by name
     (which no import graph sees), except the optional compiled backends that ``ops`` loads when
     they are there: ``pydiffuse._C`` (the C++/CUDA extension) and ``pydiffuse.triton_kernels``
     (built from ``triton_kernels/``, outside ``pydiffuse/``). A name computed at run time is
     refused too, but in ``pydiffuse/samplers/__init__.py``, which imports every module of its
     own package so that each registers its samplers (``SAMPLERS``): import-linter reads those
     modules' files all the same, so their own imports are held to the contracts, and the edges
     it cannot see, from a package to its own modules, can break no layer.

3. The names that moved up a layer keep working under their old public paths, with a
   DeprecationWarning, and the public names of every package are still there.
"""

import ast
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pydiffuse"
ENTRY_POINTS = ("cli", "cli_checks", "bench", "demo", "_demo_loop")
LAZY_PACKAGES = ("PIL", "sklearn", "matplotlib", "diffusers", "triton", "torch", "scipy",
                 "IPython")
BY_NAME_ALLOWED = ("pydiffuse._C", "pydiffuse.triton_kernels")
COMPUTED_NAME_ALLOWED = ("pydiffuse.samplers",)     # a package importing its own modules


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.is_file():
        pytest.fail(f"{lint} is missing: `make test` installs import-linter (or "
                    f"{Path(sys.executable).parent / 'pip'} install import-linter)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([str(lint), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports failed (exit {proc.returncode}):\n{report}"
    assert "0 broken" in report, report


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_entry_point(module: str) -> bool:
    top = module.split(".")[1] if "." in module else ""
    return top in ENTRY_POINTS


def _imported(node, module: str, is_package: bool) -> list:
    """The absolute names an import node brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        return [node.module]
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return [".".join(base + ([node.module] if node.module else []))]


def _function_imports(tree):
    """(import node, enclosing function) of every import inside a function body."""
    found = []

    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if func is not None and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, func))
            walk(child, inner)

    walk(tree, None)
    return found


def _by_name_imports(tree):
    """(call, name) of importlib.import_module(...) / __import__(...): the literal name, or
    None for a name computed at run time."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        arg = node.args[0]
        if called in ("import_module", "__import__"):
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            yield node, arg.value if literal else None


def test_no_import_inside_a_function_hides_a_dependency():
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50, files
    for path in files:
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node, func in _function_imports(tree):
            for name in _imported(node, module, path.name == "__init__.py"):
                top = name.split(".")[0]
                if _is_entry_point(module):
                    continue
                if top == "pydiffuse":
                    problems.append(f"{where}:{node.lineno} imports {name} inside {func.name}(): "
                                    "import it at the top (a cycle means it belongs lower)")
                elif top not in LAZY_PACKAGES:
                    problems.append(f"{where}:{node.lineno} imports {name} inside {func.name}(): "
                                    "only optional or slow third-party packages "
                                    f"({', '.join(LAZY_PACKAGES)}) are imported lazily")
        for node, name in _by_name_imports(tree):
            if name is None and module not in COMPUTED_NAME_ALLOWED:
                problems.append(f"{where}:{node.lineno} loads a module by a computed name: "
                                "import it")
            elif name is not None and name.startswith("pydiffuse") \
                    and not name.startswith(BY_NAME_ALLOWED):
                problems.append(f"{where}:{node.lineno} loads {name} by name: import it")
    assert not problems, "\n".join(problems)


def test_the_rule_sees_what_it_must():
    """The checker itself: a lazy pydiffuse import and a lazy stdlib import are caught, a
    relative one resolved, an optional package passed."""
    tree = ast.parse("def f():\n    from ..samplers import sample\n    import json\n"
                     "    import PIL.Image\n")
    names = [n for node, _ in _function_imports(tree)
             for n in _imported(node, "pydiffuse.training.trainer", False)]
    assert names == ["pydiffuse.samplers", "json", "PIL.Image"]
    assert _imported(ast.parse("from . import x").body[0], "pydiffuse.nn", True) == \
        ["pydiffuse.nn"]
    assert _is_entry_point("pydiffuse.cli") and not _is_entry_point("pydiffuse.pipeline")
    calls = list(_by_name_imports(ast.parse("import importlib\n"
                                            "importlib.import_module('pydiffuse.lsgm')\n"
                                            "importlib.import_module(f'pydiffuse.{x}')\n")))
    assert [name for _, name in calls] == ["pydiffuse.lsgm", None]


# -- the moved names: old public paths still work -------------------------------------------

def _moved(module, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    assert [w.category for w in caught] == [DeprecationWarning], caught
    assert "moved to" in str(caught[0].message)
    assert caught[0].filename == __file__          # points at the caller
    return value


def test_moved_names_warn_and_work():
    import pydiffuse
    from pydiffuse import loading, pipeline, samplers, training
    from pydiffuse.training import distributed

    assert pydiffuse.load is loading.load
    assert _moved(pipeline, "load") is loading.load
    assert _moved(pipeline, "export") is loading.export
    assert _moved(training, "sample_to_npz") is samplers.sample_to_npz
    assert _moved(distributed, "sample_to_npz") is samplers.sample_to_npz
    with pytest.warns(DeprecationWarning, match="pydiffuse.loading.load"):
        from pydiffuse.pipeline import load
    assert load is loading.load
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pipeline.nothing


def test_public_names_stay():
    """Every name the packages exported before the move, at its old path (no warning)."""
    import pydiffuse
    from pydiffuse import data, likelihood, nn, samplers, training
    from pydiffuse.samplers import ddpm, ode
    from pydiffuse.training import trainer

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for package in (pydiffuse, data, likelihood, nn, samplers, training):
            for name in package.__all__:
                assert hasattr(package, name), (package.__name__, name)
        assert samplers.Denoiser is nn.Denoiser
        vlb = importlib.import_module("pydiffuse.likelihood.vlb")   # likelihood.vlb: the function
        for name in ("gather_rows", "p_mean_logvar", "vlb_columns", "vlb_terms", "prior_kl",
                     "normal_kl", "discretized_gaussian_log_likelihood", "VARIANCES"):
            assert callable(getattr(vlb, name)) or name == "VARIANCES"
        assert ddpm.VARIANCES == ("fixed_small", "fixed_large", "learned_range")
        assert callable(ddpm.ddpm_table) and callable(ode.controlled_step)
        for name in ("StepBatches", "mix_seed", "seed_all", "STEP_STREAM", "DATA_STREAM",
                     "INIT_STREAM", "seeded_init", "Trainer"):
            assert hasattr(trainer, name), name
        assert trainer.StepBatches is data.StepBatches
        assert set(training.distributed.__dict__) >= {"setup", "teardown", "info", "barrier",
                                                      "shard_range", "all_reduce_sum",
                                                      "DistInfo"}
