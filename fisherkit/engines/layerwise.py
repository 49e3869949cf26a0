"""The layerwise engine: hooks capture layer inputs and output edges; one backward per column
chunk returns the output gradients of every layer at once; the layer rules do the rest."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fisherkit.capture import Capture
from fisherkit.engines.base import ColumnsFn, ModelCall
from fisherkit.engines.engine import Engine
from fisherkit.engines.tied import TiedUse
from fisherkit.engines.visitors import Visitor
from fisherkit.errors import UnsupportedModelError
from fisherkit.plan import Plan, PlanEntry
from fisherkit.rules import TorchFuncRule
from fisherkit.rules.base import LayerCall, OutputGrad


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
        self._uses_checked = False

    def _forward(self, call: ModelCall) -> tuple[Capture, Tensor]:
        modules = [e.module for e in self.plan.entries]
        several = [e.module for e in self.plan.entries if isinstance(e.rule, TorchFuncRule)]
        with torch.enable_grad(), Capture(modules, call.batch_size, several) as capture:
            output = call(self.model)
        return capture, output

    def visit(self, call: ModelCall, columns_fn: ColumnsFn, visitor: Visitor) -> int:
        """Runs the batch and shows ``visitor`` every layer's inputs once and its output gradients
        once per column chunk, and the per-sample gradients of tied parameters summed over the
        modules sharing them; returns the batch size."""
        capture, output = self._forward(call)
        if not self._uses_checked:
            check_parameter_uses(self.plan, capture, output)
            self._uses_checked = True
        columns = columns_fn(output)
        entries = [e for e in self.plan.entries if capture.calls[e.module]]
        for entry in entries:
            if entry.own_names:
                visitor.inputs(entry, capture.calls[entry.module])
        calls = [layer_call for e in entries for layer_call in capture.calls[e.module]]
        bytes_per_column = output.element_size() * sum(shape.numel() for c in calls for shape in c.output_shapes)
        chunk = max(1, self.memory_budget // max(1, bytes_per_column))
        pieces = columns.split(chunk)
        for index, piece in enumerate(pieces):
            last = index + 1 == len(pieces)
            grads = self._output_grads(output, calls, piece, retain=not last)
            by_call = dict(zip(map(id, calls), grads))
            del grads
            for name, uses in tied_uses(entries, capture, by_call).items():
                visitor.tied_uses(name, uses)
            for entry in entries:
                entry_calls = capture.calls[entry.module]
                entry_grads = [by_call.pop(id(layer_call)) for layer_call in entry_calls]
                if entry.own_names:
                    visitor.grads(entry, entry_calls, entry_grads)
                if last:  # release this layer's inputs before the next layer's temporaries
                    capture.calls[entry.module] = []
            visitor.chunk_done()
        return output.shape[0]

    @staticmethod
    def _output_grads(output: Tensor, calls: list[LayerCall], columns: Tensor, retain: bool) -> list[OutputGrad]:
        """``(K, B, ...)`` gradients of s·f w.r.t. every recorded layer output (zeros when unused):
        a tensor per call, or a tuple of them for a call with several output tensors."""
        batched = columns.shape[0] > 1
        tracked = [(call, index) for call in calls for index, edge in enumerate(call.output_edges) if edge is not None]
        edges = [edge for call in calls for edge in call.output_edges if edge is not None]
        grads = (
            torch.autograd.grad(
                output,
                edges,
                grad_outputs=columns if batched else columns[0],
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=batched,
            )
            if tracked
            else ()
        )
        found = {(id(call), index): grad for (call, index), grad in zip(tracked, grads) if grad is not None}
        shaped: list[OutputGrad] = []
        for call in calls:
            per_output = []
            for index, shape in enumerate(call.output_shapes):
                grad = found.get((id(call), index))
                if grad is None:
                    per_output.append(columns.new_zeros((columns.shape[0], *shape)))
                else:
                    per_output.append(grad if batched else grad.unsqueeze(0))
            shaped.append(per_output[0] if len(per_output) == 1 else tuple(per_output))
        return shaped


def tied_uses(entries: list[PlanEntry], capture: Capture, by_call: dict[int, OutputGrad]) -> dict[str, list[TiedUse]]:
    """Every use of each tied parameter in this batch, by canonical name."""
    uses: dict[str, list[TiedUse]] = {}
    for entry in entries:
        calls = capture.calls[entry.module]
        grads = [by_call[id(call)] for call in calls]
        for local in entry.tied_names:
            uses.setdefault(entry.full_name(local), []).append(TiedUse(entry, local, calls, grads))
    return uses


def check_parameter_uses(plan: Plan, capture: Capture, output: Tensor) -> None:
    """Refuses a parameter that the forward uses more often than its rules see it.

    A layer rule accounts for one use of each of its module's parameters per captured call; a
    parameter also read outside that module's forward (``F.linear(x, self.embed.weight)``, a module
    attribute added in a parent's forward, a compiled graph that ignores hooks) would get a
    per-sample gradient that misses those uses. The uses are counted in the autograd graph of the
    output: the edges into each parameter's gradient accumulator. Fallback modules are exempt
    (their ``torch.func`` gradients cover every use inside their forward).

    Raises:
        UnsupportedModelError: Naming the parameter, its module and the fixes.
    """
    expected: dict[int, int] = {}
    owner: dict[int, tuple[str, PlanEntry]] = {}
    exempt: set[int] = set()
    for entry in plan.entries:
        for local in entry.local_names:
            key = id(entry.module.get_parameter(local))
            if isinstance(entry.rule, TorchFuncRule):
                exempt.add(key)
                continue
            calls = [c for c in capture.calls[entry.module] if c.tracked]
            expected[key] = expected.get(key, 0) + len(calls)
            owner.setdefault(key, (entry.full_name(local), entry))
    for key, found in _accumulator_uses(output).items():
        if key in exempt or key not in owner or found <= expected[key]:
            continue
        name, entry = owner[key]
        raise UnsupportedModelError(
            f"parameter {name!r} is used {found} time(s) in the forward, but the rule of "
            f"{entry.path or '<root>'} ({type(entry.module).__name__}) sees {expected[key]} call(s): the model reads "
            f"it outside that module's forward, or runs a compiled graph that skips forward hooks, so its per-sample "
            f"gradient would miss uses. Call the module instead of reading its parameter, register a rule for the "
            f"module whose forward uses it, or use engine='vmap'."
        )


def _accumulator_uses(output: Tensor) -> dict[int, int]:
    """``{id(leaf tensor): number of graph edges into its gradient accumulator}`` below ``output``."""
    uses: dict[int, int] = {}
    seen: set[int] = set()
    stack = [output.grad_fn] if output.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:
                uses[id(variable)] = uses.get(id(variable), 0) + 1
            elif id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return uses
