"""The opt-in rule for layers without a registered rule: per-sample gradients by ``torch.func``."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from fisherkit.rules.base import LayerCall, LayerRule


class TorchFuncRule(LayerRule):
    """Per-sample vector-Jacobian products of one module call, vmapped over samples and columns.

    Works for any module whose tensor positional inputs all carry the batch axis first and whose
    output is one tensor. Costs roughly one backward per (sample, column) batch element.
    """

    def per_sample_grads(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        params = {name: getattr(module, name).detach() for name in names}
        batched = [isinstance(arg, Tensor) for arg in call.args]

        def one_sample(sample_args: tuple, columns: Tensor) -> dict[str, Tensor]:
            args = [a.unsqueeze(0) if is_batched else a for a, is_batched in zip(sample_args, batched)]

            def forward(p: dict[str, Tensor]) -> Tensor:
                return functional_call(module, p, tuple(args), call.kwargs)

            _, pullback = vjp(forward, params)
            return vmap(pullback)(columns.unsqueeze(1))[0]

        in_dims = (tuple(0 if is_batched else None for is_batched in batched), 1)
        grads = vmap(one_sample, in_dims=in_dims)(call.args, grad_output)
        return {name: torch.movedim(g, 0, 1) for name, g in grads.items()}
