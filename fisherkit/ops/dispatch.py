"""The one place that chooses an op's backend, per call, before autograd records anything."""

from __future__ import annotations

import os

from torch import Tensor

from fisherkit.ops.extension import extension_status

BACKEND_ENV = "FISHERKIT_BACKEND"
BACKENDS = ("reference", "cpp")


def choose_backend(requested: str | None, *tensors: Tensor) -> str:
    """Returns the backend an op runs on.

    Order: the explicit ``requested`` argument, then ``$FISHERKIT_BACKEND``, then the fastest
    available for the tensors' device (``cpp`` on CPU when the extension loaded, else ``reference``).

    Raises:
        ValueError: An unknown backend, or one that cannot serve these tensors.
    """
    choice = requested or os.environ.get(BACKEND_ENV) or "auto"
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if choice == "auto":
        return "cpp" if on_cpu and extension_status().available else "reference"
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; choose one of {BACKENDS} or 'auto'.")
    if choice == "cpp":
        if not on_cpu:
            raise ValueError("backend 'cpp' runs on CPU tensors only; use 'reference' or 'auto'.")
        status = extension_status()
        if not status.available:
            raise ValueError(f"backend 'cpp' requested but fisherkit._C is unavailable: {status.reason}")
    return choice
