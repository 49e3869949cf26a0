"""``fisherkit env``: what this installation can use, and why something is unavailable."""

from __future__ import annotations

import importlib.util
import platform

import torch

from fisherkit import __version__
from fisherkit.ops.extension import extension_status


def _triton_status() -> str:
    if importlib.util.find_spec("triton") is None:
        return "not installed (pip install 'fisherkit[triton]' on a CUDA machine)"
    try:
        import triton
    except Exception as error:  # a broken install must not break the report
        return f"installed but failed to import: {error}"
    from fisherkit.ops.triton import triton_status

    status = triton_status()
    return f"{triton.__version__}; kernels {'available' if status.available else 'unavailable'}: {status.reason}"


def _cuda_status() -> str:
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if not torch.cuda.is_available():
        return f"torch built with CUDA {torch.version.cuda}, but no usable GPU/driver"
    return f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}"


def report() -> str:
    """The environment report as text."""
    extension = extension_status()
    lines = [
        f"fisherkit   {__version__}",
        f"python      {platform.python_version()}",
        f"torch       {torch.__version__} ({torch.get_num_threads()} threads)",
        f"cuda        {_cuda_status()}",
        f"triton      {_triton_status()}",
        f"_C          {'available' if extension.available else 'unavailable'}: {extension.reason}",
    ]
    return "\n".join(lines)


def main() -> None:
    """Prints ``report()``."""
    print(report())


if __name__ == "__main__":
    main()
