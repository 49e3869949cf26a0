"""The capability table of the ops: which implementation serves which call, chosen in one place.

Each op registers its implementations here, one per backend, each with the calls it refuses
(``Implementation.refusal``: the reason, or None when it serves). ``implementation`` picks the one
that runs, before autograd records anything:

- an explicit ``backend=`` is strict: an unknown, unavailable or refusing backend is a
  ``ValueError`` that says why, never a silent substitute;
- otherwise ``$FISHERKIT_BACKEND`` goes first where it serves, then the fastest available for the
  tensors' device (C++ on CPU, Triton on CUDA), then the torch reference, which serves every call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fisherkit.ops.extension import extension_status, warn_extension_unavailable

BACKEND_ENV = "FISHERKIT_BACKEND"
BACKENDS = ("reference", "cpp", "triton")
DEVICE_PREFERENCE = {"cpu": ("cpp", "reference"), "cuda": ("triton", "reference")}

Refusal = Callable[..., str | None]


def serves_every_call(*args: Any) -> str | None:
    """The refusal of an implementation without limits."""
    return None


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of an op.

    Attributes:
        op: The op's name (``"sqgrad_accumulate"``, …).
        backend: ``"reference"``, ``"cpp"`` or ``"triton"``.
        run: Called with the op's arguments (without ``backend``).
        refusal: The op's arguments → why this implementation cannot serve them, or None.
    """

    op: str
    backend: str
    run: Callable[..., Any]
    refusal: Refusal = serves_every_call


_TABLE: dict[str, dict[str, Implementation]] = {}


def register_implementation(implementation: Implementation) -> None:
    """Adds (or replaces) ``implementation`` in the capability table."""
    if implementation.backend not in BACKENDS:
        raise ValueError(f"unknown backend {implementation.backend!r}; the backends are {BACKENDS}.")
    _TABLE.setdefault(implementation.op, {})[implementation.backend] = implementation


def backend_unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run in this process (not built, not installed, no device), or None.
    Asking about Triton imports it (and registers its ops); asking about C++ loads the extension."""
    if backend == "cpp":
        status = extension_status()
        return None if status.available else f"fisherkit._C is unavailable: {status.reason}"
    if backend == "triton":
        from fisherkit.ops.triton import triton_status

        triton = triton_status()
        return None if triton.available else f"Triton is unavailable: {triton.reason}"
    return None


def implementations(op: str) -> dict[str, Implementation]:
    """The registered implementations of ``op`` by backend (Triton's after Triton was asked for)."""
    return dict(_TABLE[op])


def implementation(op: str, *args: Any, backend: str | None = None) -> Implementation:
    """The implementation of ``op`` that runs on ``args`` (the op's arguments, without ``backend``).

    Raises:
        ValueError: An explicit ``backend`` that is unknown, unavailable, has no implementation of
            ``op`` or refuses these arguments (the message says why and what serves them).
    """
    if backend is not None:
        return _explicit(op, backend, args)
    tensors = [a for a in args if isinstance(a, Tensor)]
    device = "cpu" if all(t.device.type == "cpu" for t in tensors) else tensors[0].device.type
    preferred = os.environ.get(BACKEND_ENV, "")
    if preferred and preferred not in BACKENDS:
        raise ValueError(f"unknown backend {preferred!r} in ${BACKEND_ENV}; choose one of {BACKENDS}.")
    order = ((preferred,) if preferred else ()) + DEVICE_PREFERENCE.get(device, ("reference",))
    for name in order:
        if backend_unavailable(name) is None:  # first: asking about Triton registers its implementations
            chosen = _TABLE[op].get(name)
            if chosen is not None and chosen.refusal(*args) is None:
                return chosen
        elif name == "cpp" and "cpp" in _TABLE[op]:
            warn_extension_unavailable()
    return _TABLE[op]["reference"]


def _explicit(op: str, backend: str, args: tuple[Any, ...]) -> Implementation:
    if backend == "auto":
        return implementation(op, *args)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'.")
    reason = backend_unavailable(backend)
    chosen = _TABLE[op].get(backend)
    if reason is None:
        reason = f"{op} has no {backend} implementation" if chosen is None else chosen.refusal(*args)
    if reason is not None or chosen is None:
        raise ValueError(
            f"{op}: backend {backend!r} cannot serve this call: {reason}. Use backend='auto' (or None) to let "
            "the implementation that serves it run."
        )
    return chosen
