"""Builds fisherkit with its optional compiled extension ``fisherkit._C``.

The extension (C++ CPU ops, plus CUDA sources under ``csrc/cuda`` when a CUDA torch and nvcc are
present) is built against the torch already installed, so install with
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
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    use_cuda = bool(cuda_sources) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    extension_class = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    compile_args = {"cxx": ["-O3", "-std=c++17"]}
    if use_cuda:
        sources += cuda_sources
        compile_args["nvcc"] = ["-O3", "-std=c++17"]
    extension = extension_class(
        "fisherkit._C",
        sources,
        extra_compile_args=compile_args,
        define_macros=[("FISHERKIT_TORCH_VERSION", f'"{torch.__version__}"')],
    )
    return [extension], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
