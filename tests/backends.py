"""The op backends this machine can test — the reference, the C++ extension when it is built, and
Triton on a GPU or, without one, in Triton's CPU interpreter (when Triton is installed) — and what
each is documented to serve, stated here independently of the capability table it checks.
``conftest.py`` selects the interpreter without a GPU."""

from __future__ import annotations

import inspect

import pytest
import torch

from fisherkit.ops import extension_status, implementation
from fisherkit.ops.triton import triton_status

BACKENDS = (
    ["reference"]
    + (["cpp"] if extension_status().available else [])
    + (["triton"] if triton_status().available else [])
)
CPP_OPS = ("persample_sqnorm", "kfac_factor_update")  # sqgrad_accumulate has no C++ kernel


def serves(op: str, backend: str, accumulator: torch.Tensor, positions: int | None = None) -> bool:
    """Whether ``backend`` serves ``op`` for this accumulator (and number of shared positions):
    the reference always, C++ its two ops on CPU, Triton row-major float32 accumulators with T > 1."""
    if backend == "reference":
        return True
    if backend == "cpp":
        return op in CPP_OPS
    row_major = accumulator.dim() < 2 or accumulator.stride(-1) == 1
    return accumulator.dtype == torch.float32 and (positions is None or positions > 1) and row_major


def run_on(op: str, backend: str, function, *args, positions: int | None = None, **kwargs) -> bool:
    """Runs ``function(*args, backend=backend)`` when ``backend`` serves the call, after asserting
    that it is the implementation the capability table picks; otherwise asserts the call is refused
    with the reason. Returns whether it ran."""
    if not serves(op, backend, args[0], positions):
        with pytest.raises(ValueError, match=rf"{op}: backend '{backend}' cannot serve this call: .*backend='auto'"):
            function(*args, backend=backend, **kwargs)
        return False
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = [value for name, value in bound.arguments.items() if name != "backend"]
    assert implementation(op, *arguments, backend=backend).backend == backend
    function(*args, backend=backend, **kwargs)
    return True
