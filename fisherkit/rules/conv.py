"""``nn.Conv1d/2d/3d`` (stride, padding of every mode, dilation, groups) via unfolded patches."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional

from fisherkit.curvature.kronecker_layout import KroneckerLayout
from fisherkit.ops import persample_sqnorm, sqgrad_accumulate
from fisherkit.rules.base import LayerCall, LayerRule, requested
from fisherkit.rules.registry import register_rule

UNFOLD_BYTES = 8 * 2**20  # patches unfolded at once; small enough to stay in cache


def unfold_patches(module: nn.modules.conv._ConvNd, x: Tensor) -> Tensor:
    """im2col for any spatial rank: ``(B, C, *S) → (B, groups, C/groups · Π k, L)``.

    The patch axis is ordered (channel, kernel offsets) like the flattened weight
    ``(O, C/groups, *k)``; L is the number of output locations (the shared positions t).
    """
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = functional.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    spatial = len(module.kernel_size)
    for axis, (size, step, dilation) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        window = dilation * (size - 1) + 1
        x = x.unfold(2 + axis, window, step)[..., ::dilation]
    # x: (B, C, L1..Ls, k1..ks) → (B, C, k1..ks, L1..Ls)
    order = [0, 1, *range(2 + spatial, 2 + 2 * spatial), *range(2, 2 + spatial)]
    x = x.permute(order)
    batch, channels = x.shape[:2]
    return x.reshape(batch, module.groups, (channels // module.groups) * math.prod(module.kernel_size), -1)


def channel_bias_grads(grad_output: Tensor, channels: int) -> Tensor:
    """Per-sample bias gradients of a convolution: ``(K, B, C, *S) → (K, B, C)``, summed over locations."""
    columns, batch = grad_output.shape[:2]
    return grad_output.reshape(columns, batch, channels, -1).sum(-1)


def sample_chunks(batch: int, bytes_per_sample: int, budget: int = UNFOLD_BYTES) -> Iterator[slice]:
    """Slices of the batch whose unfolded patches stay within ``budget`` bytes."""
    chunk = max(1, budget // max(1, bytes_per_sample))
    for start in range(0, batch, chunk):
        yield slice(start, start + chunk)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(LayerRule[nn.modules.conv._ConvNd]):
    """Per-sample ∇W_group = Σ_t g_{n,t} u_{n,t}ᵀ over output locations t of unfolded patches u.

    Patches are unfolded a few samples at a time (``UNFOLD_BYTES``), so memory stays bounded.
    """

    def kronecker_layout(self, module: nn.modules.conv._ConvNd, names: Collection[str]) -> KroneckerLayout | None:
        if not requested(names, module, "weight"):
            return None
        return KroneckerLayout(module.groups, module.out_channels // module.groups, requested(names, module, "bias"))

    def kronecker_inputs(self, module: nn.modules.conv._ConvNd, call: LayerCall) -> Iterator[Tensor]:
        """Yields ``u (b, groups, L, C/groups·Πk)`` patches, ``UNFOLD_BYTES`` at a time."""
        x = call.input
        per_sample = x[0].numel() * math.prod(module.kernel_size) * x.element_size()
        for part in sample_chunks(x.shape[0], per_sample):
            yield unfold_patches(module, x[part]).transpose(-1, -2)

    def kronecker_grads(self, module: nn.modules.conv._ConvNd, call: LayerCall, grad_output: Tensor) -> Tensor:
        columns, batch = grad_output.shape[:2]
        grads = grad_output.reshape(columns, batch, module.groups, module.out_channels // module.groups, -1)
        return grads.transpose(-1, -2)

    def per_sample_grads(
        self, module: nn.modules.conv._ConvNd, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        grads = {}
        columns, batch = grad_output.shape[:2]
        if requested(names, module, "weight"):
            parts = [
                torch.einsum("kngto,ngti->kngoi", g, u.to(g.dtype))
                for u, g in self.kronecker_pairs(module, call, grad_output)
            ]
            grads["weight"] = torch.cat(parts, 1).reshape(columns, batch, *module.weight.shape)
        if requested(names, module, "bias"):
            grads["bias"] = channel_bias_grads(grad_output, module.out_channels)
        return grads

    def accumulate_sqgrad(
        self, module: nn.modules.conv._ConvNd, call: LayerCall, grad_output: Tensor, out: dict[str, Tensor]
    ) -> None:
        if "weight" in out:
            groups = module.groups
            weight = out["weight"].view(groups, module.out_channels // groups, -1)
            bias = out["bias"].view(groups, -1) if "bias" in out else None
            for u, g in self.kronecker_pairs(module, call, grad_output):
                for group in range(groups):
                    bias_out = bias[group] if bias is not None else None
                    sqgrad_accumulate(weight[group], g[:, :, group], u[:, group], bias_out=bias_out)
        elif "bias" in out:
            bias_grads = channel_bias_grads(grad_output, module.out_channels)
            out["bias"].add_(bias_grads.to(out["bias"].dtype).square().sum((0, 1)))

    def accumulate_sqnorm(
        self, module: nn.modules.conv._ConvNd, call: LayerCall, grad_output: Tensor, names: Collection[str], out: Tensor
    ) -> None:
        bias = requested(names, module, "bias")
        if requested(names, module, "weight"):
            start = 0
            for u, g in self.kronecker_pairs(module, call, grad_output):
                part = out[:, start : start + u.shape[0]]
                for group in range(module.groups):
                    persample_sqnorm(part, g[:, :, group], u[:, group], bias=bias)
                start += u.shape[0]
        elif bias:
            out.add_(channel_bias_grads(grad_output, module.out_channels).to(out.dtype).square().sum(-1))
