"""The layerwise engine: hooks capture layer inputs and output edges; one backward per column
chunk returns the output gradients of every layer at once; the layer rules do the rest."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fisherkit.capture import Capture
from fisherkit.engines.base import ColumnsFn, Engine, ModelCall, PerSampleConsumer
from fisherkit.plan import Plan, PlanEntry
from fisherkit.rules.base import LayerCall


class LayerwiseEngine(Engine):
    """Backpropagates all columns in one batched backward (``is_grads_batched``) to the layer
    outputs only, so no weight gradients are formed; rules square and sum per-sample gradients,
    without materializing them where they have a fast path.

    Args:
        model: The model.
        plan: From ``build_plan``; must pass ``plan.require_layerwise()``.
        memory_budget: Bytes for the batched output gradients; columns are split into chunks to fit.
    """

    def __init__(self, model: nn.Module, plan: Plan, memory_budget: int) -> None:
        plan.require_layerwise()
        self.model = model
        self.plan = plan
        self.memory_budget = memory_budget

    def _forward(self, call: ModelCall) -> tuple[Capture, Tensor]:
        with torch.enable_grad(), Capture(entry.module for entry in self.plan.entries) as capture:
            output = call(self.model)
        return capture, output

    def visit(self, call: ModelCall, columns_fn: ColumnsFn, visitor: LayerVisitor) -> int:
        """Runs the batch and shows ``visitor`` every layer's inputs once and its output gradients
        once per column chunk; returns the batch size."""
        capture, output = self._forward(call)
        columns = columns_fn(output)
        entries = [e for e in self.plan.entries if capture.calls[e.module]]
        for entry in entries:
            visitor.inputs(entry, capture.calls[entry.module])
        calls = [call for e in entries for call in capture.calls[e.module]]
        bytes_per_column = output.element_size() * sum(c.output_shape.numel() for c in calls)
        chunk = max(1, self.memory_budget // max(1, bytes_per_column))
        pieces = columns.split(chunk)
        for index, piece in enumerate(pieces):
            last = index + 1 == len(pieces)
            grads = self._output_grads(output, calls, piece, retain=not last)
            by_call = dict(zip(map(id, calls), grads))
            del grads
            for entry in entries:
                entry_calls = capture.calls[entry.module]
                visitor.grads(entry, entry_calls, [by_call.pop(id(call)) for call in entry_calls])
                if last:  # release this layer's inputs before the next layer's temporaries
                    capture.calls[entry.module] = []
            visitor.chunk_done()
        return output.shape[0]

    def accumulate_sqgrad(self, call: ModelCall, columns_fn: ColumnsFn, sums: dict[str, Tensor]) -> int:
        return self.visit(call, columns_fn, _SquaredGradients(sums))

    def accumulate_sqnorm(self, call: ModelCall, columns_fn: ColumnsFn, norms: Tensor) -> int:
        return self.visit(call, columns_fn, _SquaredNorms(norms))

    def per_sample_grads(self, call: ModelCall, columns_fn: ColumnsFn, consume: PerSampleConsumer) -> int:
        return self.visit(call, columns_fn, _PerSampleGradients(consume))

    @staticmethod
    def _output_grads(output: Tensor, calls: list[LayerCall], columns: Tensor, retain: bool) -> list[Tensor]:
        """``(K, B, ...)`` gradients of s·f w.r.t. every recorded layer output (zeros when unused)."""
        batched = columns.shape[0] > 1
        tracked = [c for c in calls if c.output_edge is not None]
        grads = (
            torch.autograd.grad(
                output,
                [c.output_edge for c in tracked],
                grad_outputs=columns if batched else columns[0],
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=batched,
            )
            if tracked
            else ()
        )
        by_call = {id(call): grad for call, grad in zip(tracked, grads) if grad is not None}
        shaped = []
        for call in calls:
            if id(call) not in by_call:
                shaped.append(columns.new_zeros((columns.shape[0], *call.output_shape)))
            else:
                shaped.append(by_call[id(call)] if batched else by_call[id(call)].unsqueeze(0))
        return shaped


class LayerVisitor:
    """What an estimator does with a batch's captured layers (every method may be left as is)."""

    def inputs(self, entry: PlanEntry, calls: list[LayerCall]) -> None:
        """Called once per batch with a module's captured calls, before any gradient."""

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[Tensor]) -> None:
        """Called once per column chunk with ``(K, B, ...)`` output gradients, one per call."""

    def chunk_done(self) -> None:
        """Called after every module has seen a column chunk."""


def entry_per_sample_grads(entry: PlanEntry, calls: list[LayerCall], grads: list[Tensor]) -> dict[str, Tensor]:
    """``{full parameter name: (K, B, *shape)}`` per-sample gradients of one module, summed over its calls."""
    total: dict[str, Tensor] = {}
    for call, grad in zip(calls, grads):
        for name, value in entry.rule.per_sample_grads(entry.module, call, grad, entry.local_names).items():
            total[name] = total[name] + value if name in total else value
    return {entry.full_name(name): value for name, value in total.items()}


def accumulate_entry_sqgrad(
    entry: PlanEntry, calls: list[LayerCall], grads: list[Tensor], out: dict[str, Tensor]
) -> None:
    """Adds one module's squared per-sample gradient sums into ``out`` (keyed by direct name); a
    module called several times in one forward gets its per-call gradients added before squaring."""
    if len(calls) == 1:
        entry.rule.accumulate_sqgrad(entry.module, calls[0], grads[0], out)
        return
    for name, value in entry_per_sample_grads(entry, calls, grads).items():
        local = name.rsplit(".", 1)[-1]
        out[local].add_(value.square().sum((0, 1)))


class _SquaredGradients(LayerVisitor):
    def __init__(self, sums: dict[str, Tensor]) -> None:
        self.sums = sums

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[Tensor]) -> None:
        out = {name: self.sums[entry.full_name(name)] for name in entry.local_names}
        accumulate_entry_sqgrad(entry, calls, grads, out)


class _SquaredNorms(LayerVisitor):
    """Adds every module's Σ_k ‖per-sample gradient‖² into ``norms`` (``(B,)``); a module called
    several times in one forward gets its per-call gradients added before the norm is taken."""

    def __init__(self, norms: Tensor) -> None:
        self.norms = norms

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[Tensor]) -> None:
        if len(calls) == 1:
            out = self.norms.new_zeros(grads[0].shape[:2])
            entry.rule.accumulate_sqnorm(entry.module, calls[0], grads[0], entry.local_names, out)
            self.norms.add_(out.sum(0))
            return
        for value in entry_per_sample_grads(entry, calls, grads).values():
            self.norms.add_(value.to(self.norms.dtype).flatten(2).square().sum((0, 2)))


class _PerSampleGradients(LayerVisitor):
    """Collects every module's per-sample gradients of a column chunk and hands them on together."""

    def __init__(self, consume: PerSampleConsumer) -> None:
        self.consume = consume
        self.chunk: dict[str, Tensor] = {}

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[Tensor]) -> None:
        for name, value in entry_per_sample_grads(entry, calls, grads).items():
            self.chunk[name] = value.flatten(0, 1)

    def chunk_done(self) -> None:
        self.consume(self.chunk)
        self.chunk = {}
