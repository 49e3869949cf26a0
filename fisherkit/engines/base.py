"""The contract shared by the engines that turn a batch into squared per-sample gradient sums."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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
        """Every input tensor."""
        return [v for v in (*self.args, *self.kwargs.values()) if isinstance(v, Tensor)]


class Engine(ABC):
    """Adds Σ_{k,n} (∇_θ s_{k,n}·f_n)² of one batch into per-parameter accumulators.

    The columns s (``(K, B, *output.shape[1:])``) come from ``columns_fn(output)``, so the Fisher
    type lives with the estimator and the engine only differentiates.
    """

    @abstractmethod
    def accumulate_sqgrad(self, call: ModelCall, columns_fn: ColumnsFn, sums: dict[str, Tensor]) -> int:
        """Adds the batch's squared per-sample gradients into ``sums`` (keyed by parameter name,
        float32 or float64, parameter-shaped) and returns the batch size."""

    @abstractmethod
    def accumulate_sqnorm(self, call: ModelCall, columns_fn: ColumnsFn, norms: Tensor) -> int:
        """Adds Σ_k ‖∇_θ(s_{k,n}·f_n)‖² of every sample n into ``norms`` (``(B,)``, float32 or
        float64) and returns the batch size."""

    @abstractmethod
    def per_sample_grads(self, call: ModelCall, columns_fn: ColumnsFn, consume: PerSampleConsumer) -> int:
        """Calls ``consume`` with ``{name: (M, *param.shape)}`` per-sample gradients ∇_θ(s_{k,n}·f_n),
        M rows per chunk (columns × samples, the same row order for every name), chunk by chunk
        within the memory budget; returns the batch size."""
