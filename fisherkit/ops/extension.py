"""Guarded loading of the compiled extension ``fisherkit._C``.

Importing fisherkit never requires the extension: a missing, broken, or mismatched build is
recorded here (``extension_status()``) and the torch reference serves instead.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch

DISABLE_ENV = "FISHERKIT_DISABLE_EXT"


@dataclass(frozen=True)
class ExtensionStatus:
    """Whether ``fisherkit._C`` is usable, and why not when it is not."""

    available: bool
    reason: str
    built_for_torch: str | None = None


@lru_cache(maxsize=1)
def extension_status() -> ExtensionStatus:
    """Loads ``fisherkit._C`` once (registering its ``fisherkit::`` ops) and reports the outcome."""
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return ExtensionStatus(False, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    try:
        module = importlib.import_module("fisherkit._C")
    except ImportError as error:
        return ExtensionStatus(
            False,
            f"not importable ({error}); build it with `pip install --no-build-isolation -e .` beside the torch you run",
        )
    built_for = getattr(module, "torch_version", None)
    running = torch.__version__.split("+")[0]
    if built_for is None or built_for.split("+")[0] != running:
        return ExtensionStatus(
            False, f"built for torch {built_for} but torch {torch.__version__} is running; rebuild it", built_for
        )
    from fisherkit.ops.fakes import register_fakes

    register_fakes()
    return ExtensionStatus(True, "loaded", built_for)


def cpu_refusal(*args: object) -> str | None:
    """The C++ kernels' refusal: they run on CPU tensors only."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if all(t.device.type == "cpu" for t in tensors):
        return None
    return "its kernels run on CPU tensors only"


@lru_cache(maxsize=1)
def warn_extension_unavailable() -> None:
    """Warns once, naming the fix, that the torch reference serves CPU calls ``fisherkit._C``
    would (unless ``FISHERKIT_DISABLE_EXT`` chose so): a slow path is never silent."""
    status = extension_status()
    if status.available or os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return
    warnings.warn(
        f"fisherkit's compiled CPU kernels are unavailable ({status.reason}); the torch reference serves "
        f"their calls, slower. Build them beside this torch with `pip install --no-build-isolation fisherkit` "
        f"(a C++ compiler and torch's headers needed), or set {DISABLE_ENV}=1 to silence this.",
        RuntimeWarning,
        stacklevel=4,
    )
