"""Builds pydiffuse._C by driving CMake (ninja generator): CMakeLists.txt owns the sources.

Build against the torch already installed: ``pip install --no-build-isolation -e .``
"""

import os
import pathlib
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch

        out_dir = pathlib.Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # A persistent build folder keeps rebuilds incremental (editable installs included).
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info.major}{sys.version_info.minor}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DPYDIFFUSE_TORCH_CUDA={'ON' if torch.version.cuda else 'OFF'}",
        ]
        if os.environ.get("PYDIFFUSE_CUDA_ARCHS"):
            args.append(f"-DPYDIFFUSE_CUDA_ARCHS={os.environ['PYDIFFUSE_CUDA_ARCHS']}")
        subprocess.run(args, check=True)
        subprocess.run(["cmake", "--build", str(build_dir)], check=True)


setup(
    packages=find_packages(include=["pydiffuse", "pydiffuse.*"]) + ["pydiffuse.triton_kernels"],
    package_dir={"pydiffuse.triton_kernels": "triton_kernels"},
    package_data={"pydiffuse": ["weights/*/*.safetensors", "weights/*/*.json"]},
    ext_modules=[CMakeExtension("pydiffuse._C")],
    cmdclass={"build_ext": CMakeBuild},
)
