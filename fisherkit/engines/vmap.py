"""The vmap engine: whole-model per-sample gradients with ``torch.func``, chunked to a budget.

It serves every model ``torch.func`` can trace, tied weights included, at the cost of
materializing per-sample gradients chunk by chunk.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from fisherkit.batch_axis import add_batch_axis
from fisherkit.engines.base import ColumnsFn, ModelCall
from fisherkit.engines.engine import Engine
from fisherkit.engines.visitors import Visitor


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

    def visit(self, call: ModelCall, columns_fn: ColumnsFn, visitor: Visitor) -> int:
        """Calls ``visitor.per_sample(samples, {name: (b, K, *param.shape)})`` chunk by chunk of
        samples; returns the batch size."""
        named = dict(self.model.named_parameters())
        params = {name: named[name].detach() for name in self.names}
        with torch.no_grad():
            output = call(self.model)
        columns = columns_fn(output)
        dims = call.in_dims()

        def one_sample(args: tuple, kwargs: dict[str, Any], sample_columns: Tensor) -> dict[str, Tensor]:
            sample_call = ModelCall(*add_batch_axis(args, kwargs, dims), call.select, 1)

            def forward(p: dict[str, Tensor]) -> Tensor:
                return sample_call(lambda *a, **k: functional_call(self.model, p, a, k))

            pullback = vjp(forward, params)[1]
            return vmap(pullback)(sample_columns.unsqueeze(1))[0]

        batch = output.shape[0]
        bytes_per_sample = 3 * columns.shape[0] * sum(p.numel() * p.element_size() for p in params.values())
        chunk = max(1, self.memory_budget // max(1, bytes_per_sample))
        per_sample = vmap(one_sample, in_dims=(*dims, 1))
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            rows = call.rows(part)
            visitor.per_sample(part, per_sample(rows.args, rows.kwargs, columns[:, part]))
        return batch
