"""The quadratic form vᵀ F v of one block as a differentiable function of v.

Autograd through ``block.mv`` would replay every product backwards; since F is symmetric the
gradient is 2F v, which the forward pass already computed. ``quadratic_form`` keeps that product
and returns it scaled in the backward pass: one ``mv`` per evaluation and a single multiply per
parameter for the gradient — the EWC penalty's hot path (``block_quadratic``, v = θ − θ*) and
``Curvature.quadratic``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fisherkit.curvature.block import Block


def quadratic_form(block: Block, vectors: Sequence[Tensor]) -> Tensor:
    """vᵀ F v over the block's parameters; its gradient in v is 2F v, kept from the forward pass.

    Args:
        block: The Fisher block (any kind; F symmetric).
        vectors: v, in ``block.names`` order and shapes.

    Returns:
        A 0-dim tensor in the vectors' dtype. Differentiable once (no double backward).
    """
    return _QuadraticForm.apply(block, *vectors)


def block_quadratic(block: Block, params: Sequence[Tensor], anchors: Sequence[Tensor]) -> Tensor:
    """(θ − θ*)ᵀ F (θ − θ*) over the block's parameters (the EWC penalty of one block); its
    gradient in θ is 2F(θ − θ*).

    Args:
        block: The Fisher block.
        params: The current parameters, in ``block.names`` order.
        anchors: θ*, the same shapes.
    """
    return quadratic_form(block, [p - a for p, a in zip(params, anchors)])


class _QuadraticForm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, block: Block, *vectors: Tensor) -> Tensor:
        products = [p.to(v.dtype) for p, v in zip(block.mv(list(vectors)), vectors)]
        ctx.save_for_backward(*products)
        return torch.stack([torch.dot(v.flatten(), p.flatten()) for v, p in zip(vectors, products)]).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        products = ctx.saved_tensors
        return (None, *torch._foreach_mul(products, 2 * grad))
