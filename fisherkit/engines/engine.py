"""The engine protocol: an engine runs a batch and shows a ``Visitor`` what it needs; squared
gradients, squared norms and per-sample gradients are the three visits every estimator uses."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from fisherkit.engines.base import ColumnsFn, ModelCall, PerSampleConsumer
from fisherkit.engines.visitors import PerSampleGradients, SquaredGradients, SquaredNorms, Visitor


class Engine(ABC):
    """Runs a batch and differentiates Σ_k s_k · f_n for the visitor; the columns s
    (``(K, B, *output.shape[1:])``) come from ``columns_fn(output)``, so the Fisher type lives with
    the estimator and the engine only differentiates.
    """

    @abstractmethod
    def visit(self, call: ModelCall, columns_fn: ColumnsFn, visitor: Visitor) -> int:
        """Runs the batch, shows ``visitor`` what this engine sees (layers, or whole-model per-sample
        gradients) and returns the batch size."""

    def accumulate_sqgrad(self, call: ModelCall, columns_fn: ColumnsFn, sums: dict[str, Tensor]) -> int:
        """Adds the batch's squared per-sample gradients into ``sums`` (keyed by parameter name,
        float32 or float64, parameter-shaped) and returns the batch size."""
        return self.visit(call, columns_fn, SquaredGradients(sums))

    def accumulate_sqnorm(self, call: ModelCall, columns_fn: ColumnsFn, norms: Tensor) -> int:
        """Adds Σ_k ‖∇_θ(s_{k,n}·f_n)‖² of every sample n into ``norms`` (``(B,)``, float32 or
        float64) and returns the batch size."""
        return self.visit(call, columns_fn, SquaredNorms(norms))

    def per_sample_grads(self, call: ModelCall, columns_fn: ColumnsFn, consume: PerSampleConsumer) -> int:
        """Calls ``consume`` with ``{name: (M, *param.shape)}`` per-sample gradients ∇_θ(s_{k,n}·f_n),
        M rows per chunk (columns × samples, the same row order for every name), chunk by chunk
        within the memory budget; returns the batch size."""
        return self.visit(call, columns_fn, PerSampleGradients(consume))
