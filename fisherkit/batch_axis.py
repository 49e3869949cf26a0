"""Which inputs of a call carry the batch axis, and the same call on fewer samples.

A tensor whose first axis has the batch's size B is batched; any other value (a shared attention
mask, a ``(1, T)`` buffer, a flag) is passed whole to every sample. The model call of a batch
(``fisherkit.engines.base.ModelCall``) and a captured layer call (the ``torch.func`` fallback)
slice and vmap their inputs by these rules alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils._pytree import tree_map

Dims = tuple[tuple[Any, ...], dict[str, Any]]
"""``torch.func.vmap`` dimensions of positional and keyword inputs: 0 batched, None shared; an input
that is a dict, list or tuple of values (a dict batch given as one argument) has one of these per
entry."""


def batch_dims(args: tuple[Any, ...], kwargs: dict[str, Any], batch_size: int) -> Dims:
    """0 for each tensor whose first axis has ``batch_size`` entries, None for every other value
    (inside dicts, lists and tuples too)."""

    def dim(value: Any) -> int | None:
        return 0 if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size else None

    return tuple(tree_map(dim, a) for a in args), {k: tree_map(dim, v) for k, v in kwargs.items()}


def _map_batched(fn: Callable[[Tensor], Tensor], value: Any, dims: Any) -> Any:
    """``fn`` applied to the batched tensors of ``value`` (its ``dims`` are 0), the rest kept."""
    return tree_map(lambda leaf, dim: fn(leaf) if dim == 0 else leaf, value, dims)


def take_rows(args: tuple[Any, ...], kwargs: dict[str, Any], dims: Dims, part: slice) -> tuple[tuple, dict]:
    """The inputs of the samples ``part``: batched inputs sliced, shared ones whole."""
    arg_dims, kwarg_dims = dims
    return (
        tuple(_map_batched(lambda t: t[part], a, d) for a, d in zip(args, arg_dims)),
        {k: _map_batched(lambda t: t[part], v, kwarg_dims[k]) for k, v in kwargs.items()},
    )


def add_batch_axis(args: tuple[Any, ...], kwargs: dict[str, Any], dims: Dims) -> tuple[tuple, dict]:
    """One sample's inputs (inside ``vmap``, batch axis removed) as a batch of one."""
    arg_dims, kwarg_dims = dims
    return (
        tuple(_map_batched(lambda t: t.unsqueeze(0), a, d) for a, d in zip(args, arg_dims)),
        {k: _map_batched(lambda t: t.unsqueeze(0), v, kwarg_dims[k]) for k, v in kwargs.items()},
    )
