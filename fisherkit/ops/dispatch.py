"""The one place that chooses an op's backend, per call, before autograd records anything."""

from __future__ import annotations

import os

from torch import Tensor

from fisherkit.ops.extension import extension_status

BACKEND_ENV = "FISHERKIT_BACKEND"
BACKENDS = ("reference", "cpp", "triton")


def choose_backend(requested: str | None, *tensors: Tensor) -> str:
    """Returns the backend an op runs on.

    Order: the explicit ``requested`` argument, then ``$FISHERKIT_BACKEND``, then the fastest
    available for the tensors' device: ``cpp`` on CPU when the extension loaded, ``triton`` on CUDA
    when Triton works, else ``reference``. Triton is imported only when it is asked for or the
    tensors are on a GPU; ``triton`` on CPU tensors runs in Triton's interpreter
    (``TRITON_INTERPRET=1``), for tests.

    Raises:
        ValueError: An unknown backend, or one that cannot serve these tensors.
    """
    choice = requested or os.environ.get(BACKEND_ENV) or "auto"
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if choice == "auto":
        if on_cpu:
            return "cpp" if extension_status().available else "reference"
        return "triton" if all(t.is_cuda for t in tensors) and _triton_available() else "reference"
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; choose one of {BACKENDS} or 'auto'.")
    if choice == "cpp":
        if not on_cpu:
            raise ValueError("backend 'cpp' runs on CPU tensors only; use 'reference' or 'auto'.")
        status = extension_status()
        if not status.available:
            raise ValueError(f"backend 'cpp' requested but fisherkit._C is unavailable: {status.reason}")
    if choice == "triton" and not _triton_available():
        from fisherkit.ops.triton_backend import triton_status

        raise ValueError(f"backend 'triton' requested but unavailable: {triton_status().reason}")
    return choice


def _triton_available() -> bool:
    from fisherkit.ops.triton_backend import triton_status

    return triton_status().available
