"""The vmap engine: whole-model per-sample gradients with ``torch.func``, chunked to a budget.

It serves every model ``torch.func`` can trace, tied weights included, at the cost of
materializing per-sample gradients chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from fisherkit.engines.base import ColumnsFn, Engine, ModelInputs, PerSampleConsumer, call_model


class VmapEngine(Engine):
    """Per-sample vector-Jacobian products of the whole model, vmapped over samples and columns.

    Args:
        model: The model.
        names: Trainable parameter names to differentiate (others stay fixed).
        memory_budget: Bytes for the per-sample gradients of one chunk of samples.
    """

    def __init__(self, model: nn.Module, names: list[str], memory_budget: int) -> None:
        self.model = model
        self.names = names
        self.memory_budget = memory_budget

    def per_sample_grads(self, inputs: ModelInputs, columns_fn: ColumnsFn, consume: PerSampleConsumer) -> int:
        def flatten(_: slice, grads: dict[str, Tensor]) -> None:
            consume({name: g.flatten(0, 1) for name, g in grads.items()})

        return self._visit(inputs, columns_fn, flatten)

    def accumulate_sqnorm(self, inputs: ModelInputs, columns_fn: ColumnsFn, norms: Tensor) -> int:
        def add_norms(part: slice, grads: dict[str, Tensor]) -> None:
            for g in grads.values():
                norms[part].add_(g.to(norms.dtype).flatten(1).square().sum(1))

        return self._visit(inputs, columns_fn, add_norms)

    def _visit(
        self, inputs: ModelInputs, columns_fn: ColumnsFn, each: Callable[[slice, dict[str, Tensor]], None]
    ) -> int:
        """Calls ``each(samples, {name: (b, K, *param.shape)})`` chunk by chunk; returns the batch size."""
        named = dict(self.model.named_parameters())
        params = {name: named[name].detach() for name in self.names}
        with torch.no_grad():
            output = call_model(self.model, inputs)
        columns = columns_fn(output)
        is_tensor = isinstance(inputs, Tensor)

        def one_sample(sample_inputs: ModelInputs, sample_columns: Tensor) -> dict[str, Tensor]:
            batched_inputs = sample_inputs.unsqueeze(0) if is_tensor else [x.unsqueeze(0) for x in sample_inputs]

            def forward(p: dict[str, Tensor]) -> Tensor:
                return functional_call(self.model, p, (batched_inputs,) if is_tensor else tuple(batched_inputs))

            _, pullback = vjp(forward, params)
            return vmap(pullback)(sample_columns.unsqueeze(1))[0]

        batch = output.shape[0]
        bytes_per_sample = 3 * columns.shape[0] * sum(p.numel() * p.element_size() for p in params.values())
        chunk = max(1, self.memory_budget // max(1, bytes_per_sample))
        per_sample = vmap(one_sample, in_dims=(0, 1))
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            sample_inputs = inputs[part] if is_tensor else [x[part] for x in inputs]
            each(part, per_sample(sample_inputs, columns[:, part]))
        return batch

    def accumulate_sqgrad(self, inputs: ModelInputs, columns_fn: ColumnsFn, sums: dict[str, Tensor]) -> int:
        def add_squares(grads: dict[str, Tensor]) -> None:
            for name, g in grads.items():
                sums[name].add_(g.square().sum(0))

        return self.per_sample_grads(inputs, columns_fn, add_squares)
