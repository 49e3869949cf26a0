"""Builds fisherkit with its optional compiled extension ``fisherkit._C``.

The extension (C++ CPU ops; the GPU kernels are Triton's, compiled at run time) is built against
the torch already installed, so install with
``pip install --no-build-isolation .``. Without torch at build time, or with
``FISHERKIT_BUILD_EXT=0``, a pure-Python package is installed and the torch reference serves.
"""

import glob
import os

from setuptools import setup


def extension_modules() -> tuple[list, dict]:
    if os.environ.get("FISHERKIT_BUILD_EXT", "1") == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("fisherkit: torch is not importable at build time; installing without fisherkit._C")
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    extension = cpp_extension.CppExtension(
        "fisherkit._C",
        sources,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"]},
        define_macros=[("FISHERKIT_TORCH_VERSION", f'"{torch.__version__}"')],
    )
    return [extension], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
