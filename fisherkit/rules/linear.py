"""``nn.Linear`` with any leading dimensions (shared positions t between n and i)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import cast

import torch
from torch import Tensor, nn

from fisherkit.curvature.kronecker_layout import KroneckerLayout
from fisherkit.ops import persample_sqnorm, sqgrad_accumulate
from fisherkit.rules.base import LayerCall, LayerRule, flatten_positions, requested
from fisherkit.rules.registry import register_rule


@register_rule(nn.Linear)
class LinearRule(LayerRule):
    """y_{n,t} = W a_{n,t} + b; per-sample ∇W = Σ_t g_{n,t} a_{n,t}ᵀ, ∇b = Σ_t g_{n,t}.

    Inputs ``(B, *, I)`` have their middle axes flattened into positions t (weight sharing).
    """

    def per_sample_grads(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        a = flatten_positions(call.input, 1, 1)
        g = flatten_positions(grad_output, 2, 1)
        grads = {}
        if requested(names, module, "weight"):
            grads["weight"] = torch.einsum("knto,nti->knoi", g, a.to(g.dtype))
        if requested(names, module, "bias"):
            grads["bias"] = g.sum(2)
        return grads

    def accumulate_sqgrad(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, out: dict[str, Tensor]
    ) -> None:
        a = flatten_positions(call.input, 1, 1)
        g = flatten_positions(grad_output, 2, 1)
        if "weight" in out:
            sqgrad_accumulate(out["weight"], g, a, bias_out=out.get("bias"))
        elif "bias" in out:
            out["bias"].add_(g.sum(2).to(out["bias"].dtype).square().sum((0, 1)))

    def accumulate_sqnorm(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, names: Collection[str], out: Tensor
    ) -> None:
        g = flatten_positions(grad_output, 2, 1)
        bias = requested(names, module, "bias")
        if requested(names, module, "weight"):
            persample_sqnorm(out, g, flatten_positions(call.input, 1, 1), bias=bias)
        elif bias:
            out.add_(g.sum(2).to(out.dtype).square().sum(-1))

    def kronecker_layout(self, module: nn.Module, names: Collection[str]) -> KroneckerLayout | None:
        if not requested(names, module, "weight"):
            return None
        return KroneckerLayout(1, cast(nn.Linear, module).out_features, requested(names, module, "bias"))

    def kronecker_inputs(self, module: nn.Module, call: LayerCall) -> Iterator[Tensor]:
        yield flatten_positions(call.input, 1, 1).unsqueeze(1)

    def kronecker_grads(self, module: nn.Module, call: LayerCall, grad_output: Tensor) -> Tensor:
        return flatten_positions(grad_output, 2, 1).unsqueeze(2)
