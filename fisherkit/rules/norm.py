"""Normalization layers' affine parameters: LayerNorm, RMSNorm, GroupNorm, BatchNorm (eval mode).

Each layer computes y = x̂ ⊙ w + b from a normalized input x̂, so the per-sample gradients are
∇w = Σ g ⊙ x̂ and ∇b = Σ g, summed over every axis the parameter is shared across.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import torch
from torch import Tensor, nn

from fisherkit.rules.base import LayerCall, LayerRule, requested
from fisherkit.rules.registry import register_rule


class AffineNormRule(LayerRule):
    """Shared per-sample gradient math; subclasses say how x̂ is formed and where w lives.

    Attributes:
        channel_first: True when w is per channel (axis 1, e.g. ``(B, C, *S)``); False when w
            covers the trailing ``normalized_shape`` axes.
    """

    channel_first = False

    def normalized(self, module: nn.Module, x: Tensor) -> Tensor:
        """x̂ of the input, same shape as ``x``."""
        raise NotImplementedError

    def _reduce(self, tensor: Tensor, param_shape: torch.Size) -> Tensor:
        """Sums ``(K, B, ...)`` over the axes the parameter is shared across → ``(K, B, *param_shape)``."""
        columns, batch = tensor.shape[:2]
        if self.channel_first:
            return tensor.reshape(columns, batch, param_shape[0], -1).sum(-1)
        return tensor.reshape(columns, batch, -1, *param_shape).sum(2)

    def per_sample_grads(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        grads = {}
        if requested(names, module, "weight"):
            x_hat = self.normalized(module, call.input.to(grad_output.dtype))
            grads["weight"] = self._reduce(grad_output * x_hat, module.get_parameter("weight").shape)
        if requested(names, module, "bias"):
            grads["bias"] = self._reduce(grad_output, module.get_parameter("bias").shape)
        return grads


@register_rule(nn.LayerNorm)
class LayerNormRule(AffineNormRule):
    """x̂ = (x − mean) / √(var + eps) over the trailing ``normalized_shape`` axes."""

    def normalized(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.LayerNorm, module)
        axes = tuple(range(-len(norm.normalized_shape), 0))
        mean = x.mean(axes, keepdim=True)
        var = x.var(axes, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + norm.eps)


@register_rule(nn.RMSNorm)
class RMSNormRule(AffineNormRule):
    """x̂ = x / √(mean(x²) + eps) over the trailing ``normalized_shape`` axes."""

    def normalized(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.RMSNorm, module)
        axes = tuple(range(-len(norm.normalized_shape), 0))
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.square().mean(axes, keepdim=True) + eps)


@register_rule(nn.GroupNorm)
class GroupNormRule(AffineNormRule):
    """x̂ from statistics over each group of channels and all spatial positions; w per channel."""

    channel_first = True

    def normalized(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.GroupNorm, module)
        grouped = x.reshape(x.shape[0], norm.num_groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        var = grouped.var(-1, keepdim=True, unbiased=False)
        return ((grouped - mean) * torch.rsqrt(var + norm.eps)).reshape(x.shape)


@register_rule(nn.modules.batchnorm._BatchNorm)
class BatchNormRule(AffineNormRule):
    """Eval-mode BatchNorm: x̂ = (x − running_mean) / √(running_var + eps), w per channel.

    Train-mode BatchNorm normalizes with batch statistics, which couples samples; ``build_plan``
    refuses any model holding one (with or without affine parameters).
    """

    channel_first = True

    def normalized(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.modules.batchnorm._BatchNorm, module)
        assert norm.running_mean is not None and norm.running_var is not None  # build_plan refuses them missing
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = norm.running_mean.to(x.dtype).reshape(shape)
        var = norm.running_var.to(x.dtype).reshape(shape)
        return (x - mean) * torch.rsqrt(var + norm.eps)
