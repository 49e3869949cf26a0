"""Which inputs of a call carry the batch axis, and the same call on fewer samples.

A tensor whose first axis has the batch's size B is batched; any other value (a shared attention
mask, a ``(1, T)`` buffer, a flag) is passed whole to every sample. The model call of a batch
(``fisherkit.engines.base.ModelCall``) and a captured layer call (the ``torch.func`` fallback)
slice and vmap their inputs by these rules alike.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

Dims = tuple[tuple[int | None, ...], dict[str, int | None]]
"""``torch.func.vmap`` dimensions of positional and keyword inputs: 0 batched, None shared."""


def batch_dims(args: tuple[Any, ...], kwargs: dict[str, Any], batch_size: int) -> Dims:
    """0 for each tensor whose first axis has ``batch_size`` entries, None for every other value."""

    def dim(value: Any) -> int | None:
        return 0 if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size else None

    return tuple(dim(a) for a in args), {k: dim(v) for k, v in kwargs.items()}


def take_rows(args: tuple[Any, ...], kwargs: dict[str, Any], dims: Dims, part: slice) -> tuple[tuple, dict]:
    """The inputs of the samples ``part``: batched inputs sliced, shared ones whole."""
    arg_dims, kwarg_dims = dims
    return (
        tuple(a[part] if d == 0 else a for a, d in zip(args, arg_dims)),
        {k: v[part] if kwarg_dims[k] == 0 else v for k, v in kwargs.items()},
    )


def add_batch_axis(args: tuple[Any, ...], kwargs: dict[str, Any], dims: Dims) -> tuple[tuple, dict]:
    """One sample's inputs (inside ``vmap``, batch axis removed) as a batch of one."""
    arg_dims, kwarg_dims = dims
    return (
        tuple(a.unsqueeze(0) if d == 0 else a for a, d in zip(args, arg_dims)),
        {k: v.unsqueeze(0) if kwarg_dims[k] == 0 else v for k, v in kwargs.items()},
    )
