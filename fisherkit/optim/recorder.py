"""The training batches of a step: the inputs of exactly the forwards that were backpropagated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import RemovableHandle

from fisherkit.engines.base import inside_estimation


@dataclass
class RecordedForward:
    """One forward's detached inputs (a tensor, a list of tensors, or keyword inputs) and whether
    a backward pass has reached its outputs."""

    inputs: Any
    backpropagated: bool = False


class BackpropagatedForwards:
    """Records the forwards of ``model`` whose outputs a backward pass reaches.

    A forward pre-hook keeps the inputs of every forward run with gradients enabled; a forward
    hook puts a gradient hook on its outputs that marks the forward as backpropagated. Forwards
    under ``torch.no_grad`` or made by fisherkit's estimators are never recorded, forwards never
    backpropagated (evaluation, logging) are left out of ``backpropagated()``. The hooks stay
    until ``close()`` (optimizers call it when they are garbage-collected).

    Args:
        model: The model whose forwards are recorded.
    """

    def __init__(self, model: nn.Module) -> None:
        self.records: list[RecordedForward] = []
        self.paused = False
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._record_inputs, with_kwargs=True),
            model.register_forward_hook(self._watch_outputs),
        ]

    def _record_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.paused or not torch.is_grad_enabled() or inside_estimation():
            return
        if args and kwargs:
            raise TypeError(
                "NGD records a model called with positional inputs (model(x), model(*xs)) or with keyword "
                "inputs (model(**batch)), not both."
            )
        if kwargs:
            inputs: Any = {k: v.detach() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        else:
            detached = [a.detach() if isinstance(a, Tensor) else a for a in args]
            inputs = detached[0] if len(detached) == 1 else detached
        self.records.append(RecordedForward(inputs))

    def _watch_outputs(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.paused or not torch.is_grad_enabled() or inside_estimation() or not self.records:
            return
        record = self.records[-1]

        def mark(grad: Tensor) -> None:
            record.backpropagated = True

        for leaf in tree_leaves(output):  # as Capture reads outputs: tensors, nested tuples, ModelOutput
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                leaf.register_hook(mark)

    def backpropagated(self) -> list[Any]:
        """The inputs of the backpropagated forwards since the last ``clear``, oldest first."""
        return [r.inputs for r in self.records if r.backpropagated]

    def clear(self) -> None:
        """Forgets every record (a step consumed them)."""
        self.records = []

    def close(self) -> None:
        """Removes the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.records = []

    @property
    def closed(self) -> bool:
        return not self._handles
