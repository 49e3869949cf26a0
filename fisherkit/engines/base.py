"""The contract shared by the engines that turn a batch into squared per-sample gradient sums."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from torch import Tensor, nn

ModelInputs = Tensor | Sequence[Tensor]
ColumnsFn = Callable[[Tensor], Tensor]
PerSampleConsumer = Callable[[dict[str, Tensor]], None]


def call_model(model: nn.Module, inputs: ModelInputs) -> Tensor:
    """``model(x)`` for a tensor, ``model(*x)`` for a sequence of tensors; the output must be a tensor."""
    output = model(inputs) if isinstance(inputs, Tensor) else model(*inputs)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}; fisherkit needs a model whose output is one "
            f"tensor of predictions. Wrap it so that forward returns the logits or means."
        )
    return output


class Engine(ABC):
    """Adds Σ_{k,n} (∇_θ s_{k,n}·f_n)² of one batch into per-parameter accumulators.

    The columns s (``(K, B, *output.shape[1:])``) come from ``columns_fn(output)``, so the Fisher
    type lives with the estimator and the engine only differentiates.
    """

    @abstractmethod
    def accumulate_sqgrad(self, inputs: ModelInputs, columns_fn: ColumnsFn, sums: dict[str, Tensor]) -> int:
        """Adds the batch's squared per-sample gradients into ``sums`` (keyed by parameter name,
        float32 or float64, parameter-shaped) and returns the batch size."""

    @abstractmethod
    def accumulate_sqnorm(self, inputs: ModelInputs, columns_fn: ColumnsFn, norms: Tensor) -> int:
        """Adds Σ_k ‖∇_θ(s_{k,n}·f_n)‖² of every sample n into ``norms`` (``(B,)``, float32 or
        float64) and returns the batch size."""

    @abstractmethod
    def per_sample_grads(self, inputs: ModelInputs, columns_fn: ColumnsFn, consume: PerSampleConsumer) -> int:
        """Calls ``consume`` with ``{name: (M, *param.shape)}`` per-sample gradients ∇_θ(s_{k,n}·f_n),
        M rows per chunk (columns × samples, the same row order for every name), chunk by chunk
        within the memory budget; returns the batch size."""
