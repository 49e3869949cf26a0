"""The quadratic form (θ − θ*)ᵀ F (θ − θ*) of one block as a differentiable function of θ.

Autograd through ``block.mv`` would replay every product backwards; since F is symmetric the
gradient is 2F(θ − θ*), which the forward pass already computed. ``block_quadratic`` keeps that
product and returns it scaled in the backward pass: one ``mv`` per evaluation and a single
multiply-add per parameter for the gradient (the EWC penalty's hot path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fisherkit.curvature.block import Block


def block_quadratic(block: Block, params: Sequence[Tensor], anchors: Sequence[Tensor]) -> Tensor:
    """(θ − θ*)ᵀ F (θ − θ*) over the block's parameters; its gradient in θ is 2F(θ − θ*).

    Args:
        block: The Fisher block (any kind; F symmetric).
        params: The current parameters, in ``block.names`` order.
        anchors: θ*, the same shapes.

    Returns:
        A 0-dim tensor in the parameters' dtype. Differentiable once (no double backward).
    """
    return _BlockQuadratic.apply(block, len(params), *params, *anchors)


class _BlockQuadratic(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, block: Block, count: int, *tensors: Tensor) -> Tensor:
        params, anchors = tensors[:count], tensors[count:]
        differences = torch._foreach_sub(params, anchors)
        products = [p.to(d.dtype) for p, d in zip(block.mv(differences), differences)]
        ctx.save_for_backward(*products)
        return torch.stack([torch.dot(d.flatten(), p.flatten()) for d, p in zip(differences, products)]).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        products = ctx.saved_tensors
        return (None, None, *torch._foreach_mul(products, 2 * grad), *([None] * len(products)))
