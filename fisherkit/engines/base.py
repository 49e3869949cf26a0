"""What the engines share: how a batch calls the model (``ModelCall``) and the types of their arguments."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from fisherkit.batch_axis import Dims, batch_dims, take_rows

ColumnsFn = Callable[[Tensor], Tensor]
PerSampleConsumer = Callable[[dict[str, Tensor]], None]
_ESTIMATING: ContextVar[bool] = ContextVar("fisherkit_estimating", default=False)


def inside_estimation() -> bool:
    """True while this thread runs a model call of a fisherkit estimator (not a training forward)."""
    return _ESTIMATING.get()


@dataclass
class ModelCall:
    """One batch's model inputs and how its predictions are read from the model's output.

    Attributes:
        args: Positional inputs.
        kwargs: Keyword inputs.
        select: From the model's raw output to the prediction tensor ``(B, *)``.
        batch_size: B, the number of samples (rows).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    select: Callable[[Any], Tensor]
    batch_size: int

    def __call__(self, model: Callable[..., Any]) -> Tensor:
        """The predictions of ``model`` (a module, or a functional form of one) on this batch.

        Code compiled with ``torch.compile`` runs eagerly here: a compiled graph skips the forward
        hooks that capture layer inputs (and would give a Fisher of zeros); eager execution computes
        the same function, so the Fisher equals the eager model's.
        """
        token = _ESTIMATING.set(True)
        try:
            with torch.compiler.set_stance("force_eager"):
                return self.select(model(*self.args, **self.kwargs))
        finally:
            _ESTIMATING.reset(token)

    def in_dims(self) -> Dims:
        """``torch.func.vmap`` dimensions of the inputs: 0 for batched tensors, None otherwise."""
        return batch_dims(self.args, self.kwargs, self.batch_size)

    def rows(self, part: slice) -> ModelCall:
        """The call on the samples ``part`` (inputs without a batch axis are kept whole)."""
        args, kwargs = take_rows(self.args, self.kwargs, self.in_dims(), part)
        return ModelCall(args, kwargs, self.select, len(range(self.batch_size)[part]))

    def tensors(self) -> list[Tensor]:
        """Every input tensor (inside dicts, lists and tuples too)."""
        return [v for v in tree_leaves((self.args, self.kwargs)) if isinstance(v, Tensor)]
