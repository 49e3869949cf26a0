"""The op backends this machine can test: the reference, the C++ extension when it is built, and
Triton on a GPU or, without one, in Triton's CPU interpreter (when Triton is installed)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

from fisherkit.ops import extension_status  # noqa: E402
from fisherkit.ops.triton_backend import triton_status  # noqa: E402

BACKENDS = (
    ["reference"]
    + (["cpp"] if extension_status().available else [])
    + (["triton"] if triton_status().available else [])
)
