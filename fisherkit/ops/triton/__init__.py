"""The Triton backend: whether it can run here (checked lazily, once), and one module per op.

Triton is imported only when ``triton_status()`` is first asked, never by ``import fisherkit``;
that import registers each op module's ``fisherkit::*_triton`` custom op and its entry in the
capability table (``fisherkit.ops.dispatch``). The kernels run on CUDA tensors, or on CPU tensors
in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before Triton was imported (how CI
tests them without a GPU). Every op accumulates in float32.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

OP_MODULES = ("sqgrad_accumulate", "persample_sqnorm", "kfac_factor_update")


@dataclass(frozen=True)
class TritonStatus:
    """Whether the Triton backend can run here, and why not when it cannot."""

    available: bool
    reason: str


def interpreting() -> bool:
    """True when Triton runs its kernels in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@lru_cache(maxsize=1)
def triton_status() -> TritonStatus:
    """Imports Triton and the op modules (registering their ops) on first use; says why the backend
    is unavailable."""
    if not torch.cuda.is_available() and not interpreting():
        return TritonStatus(False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)")
    try:
        importlib.import_module("triton")
    except ImportError as error:
        return TritonStatus(False, f"Triton is not installed ({error}); pip install 'fisherkit[triton]'")
    for name in OP_MODULES:
        importlib.import_module(f"fisherkit.ops.triton.{name}")
    return TritonStatus(True, "interpreter" if interpreting() else "CUDA")
