"""``nn.ConvTranspose1d/2d/3d``: the weight gradient is a correlation of the input with the
unfolded output gradient, so the Linear-type kernels serve it.

A transposed convolution sends input location p to output locations p·s − pad + k·d. Unfolding
the output gradient g with the same kernel, stride, dilation and padding gives, at every input
location p, the patch ĝ_{n,p} of the outputs it reaches (one patch per input location: output
padding only adds outputs nothing reaches through the kernel), and the per-sample gradient of a
group is ∇W_n[i, (o, k)] = Σ_p x_{n,p,i} ĝ_{n,p,(o,k)}.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional

from fisherkit.ops import sqgrad_accumulate
from fisherkit.rules.base import LayerCall, LayerRule, requested
from fisherkit.rules.conv import UNFOLD_BYTES, channel_bias_grads, sample_chunks
from fisherkit.rules.registry import register_rule


def unfold_output_grads(module: nn.modules.conv._ConvTransposeNd, grads: Tensor) -> Tensor:
    """``(K, b, O, *S_out) → (K, b, groups, L, O/groups · Π k)`` patches, L = input locations."""
    columns, batch = grads.shape[:2]
    spatial = len(module.kernel_size)
    padding = [p for pad in reversed(cast(tuple[int, ...], module.padding)) for p in (pad, pad)]  # ints only
    x = functional.pad(grads.flatten(0, 1), padding)
    for axis, (size, step, dilation) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        window = dilation * (size - 1) + 1
        x = x.unfold(2 + axis, window, step)[..., ::dilation]
    # (Kb, O, L1..Ls, k1..ks) → (Kb, L1..Ls, O, k1..ks)
    order = [0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial)]
    x = x.permute(order)
    locations = math.prod(x.shape[1 : 1 + spatial])
    x = x.reshape(columns, batch, locations, module.groups, -1)
    return x.transpose(2, 3)


@register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeRule(LayerRule[nn.modules.conv._ConvTransposeNd]):
    """Per-sample ∇W = Σ_p x_{n,p} ĝ_{n,p}ᵀ per group (module docstring), ∇b = Σ g; output
    gradients are unfolded a few samples at a time (``UNFOLD_BYTES``). KFAC serves these layers with
    diagonal blocks (no Kronecker view)."""

    def check(self, module: nn.modules.conv._ConvTransposeNd) -> None:
        if module.padding_mode != "zeros":
            raise ValueError(f"{type(module).__name__} supports padding_mode='zeros' only.")

    def _pairs(
        self, module: nn.modules.conv._ConvTransposeNd, call: LayerCall, grad_output: Tensor
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x (b, groups, L, C_in/groups), ĝ (K, b, groups, L, O/groups·Πk))`` over chunks of samples."""
        x = call.input
        batch, channels = x.shape[:2]
        inputs = x.reshape(batch, module.groups, channels // module.groups, -1).transpose(-1, -2)
        per_sample = grad_output[0, 0].numel() * math.prod(module.kernel_size) * grad_output.element_size()
        for part in sample_chunks(batch, per_sample * grad_output.shape[0], UNFOLD_BYTES):
            yield inputs[part], unfold_output_grads(module, grad_output[:, part])

    def per_sample_grads(
        self, module: nn.modules.conv._ConvTransposeNd, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        grads = {}
        columns, batch = grad_output.shape[:2]
        if requested(names, module, "weight"):
            parts = [
                torch.einsum("ngti,kngtj->kngij", x.to(g.dtype), g) for x, g in self._pairs(module, call, grad_output)
            ]
            grads["weight"] = torch.cat(parts, 1).reshape(columns, batch, *module.weight.shape)
        if requested(names, module, "bias"):
            grads["bias"] = channel_bias_grads(grad_output, module.out_channels)
        return grads

    def accumulate_sqgrad(
        self, module: nn.modules.conv._ConvTransposeNd, call: LayerCall, grad_output: Tensor, out: dict[str, Tensor]
    ) -> None:
        if "weight" in out:
            groups = module.groups
            weight = out["weight"].view(groups, module.in_channels // groups, -1)
            transposed = weight.new_zeros(groups, weight.shape[2], weight.shape[1])
            for x, g in self._pairs(module, call, grad_output):
                for group in range(groups):
                    sqgrad_accumulate(transposed[group], g[:, :, group], x[:, group])
            weight.add_(transposed.transpose(1, 2))
        if "bias" in out:
            out["bias"].add_(
                channel_bias_grads(grad_output, module.out_channels).to(out["bias"].dtype).square().sum((0, 1))
            )
