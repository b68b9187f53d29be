"""The CUDA kernels compile with nvcc for sm_80 and sm_90, warnings as errors (CI has no GPU).

The sources are what CMakeLists.txt globs, csrc/cuda/*.cu, compiled with its CUDA flags, one
nvcc call per (file, arch) so that a failure names both: sample_step.cu (144 kernels) takes about
10 s, the others 1-3 s each (one call for both archs with ``--threads 0`` saved little on 2
cores). The CUDA bindings, built only against a CUDA torch, are compiled too: each op's host file
csrc/cpu/<op>.cpp with PYDIFFUSE_WITH_CUDA, checked for errors only (-fsyntax-only: its CPU
kernel is the CPU build's). The CPU wheel ships the c10/cuda headers but not the generated
c10/cuda/impl/cuda_cmake_macros.h, which C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips.
"""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
ARCHS = ("80", "90")
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
# the host files that hold a CUDA binding
BINDINGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp")
                  if "PYDIFFUSE_WITH_CUDA" in p.read_text())
HOST_FLAGS = ["-Xcompiler", "-Wall,-Wextra,-Werror"]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile CUDA")


def _nvcc(args, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "-I", str(ROOT / "csrc"), "-Werror", "all-warnings",
           *HOST_FLAGS, *args, "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}{result.stderr}"


def test_cmake_lists_cuda_sources():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"file\(GLOB PYDIFFUSE_CUDA_SOURCES .*csrc/cuda/\*\.cu", cmake), \
        "CMakeLists.txt no longer globs csrc/cuda/*.cu: list the sources here"
    assert SOURCES, "no csrc/cuda/*.cu"
    assert len(BINDINGS) >= 6, BINDINGS


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("source", SOURCES)
def test_kernels_compile(source, arch, tmp_path):
    _nvcc(["-O3", "--use_fast_math", f"-gencode=arch=compute_{arch},code=sm_{arch}", source],
          tmp_path)


@needs_nvcc
@pytest.mark.parametrize("source", BINDINGS)
def test_bindings_compile(source, tmp_path):
    from torch.utils.cpp_extension import include_paths

    includes = [arg for path in include_paths() for arg in ("-isystem", path)]
    _nvcc(["-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DPYDIFFUSE_WITH_CUDA", "-Xcompiler",
           "-fsyntax-only", *includes, source], tmp_path)
