"""Gaussian likelihood with a fixed variance (mean-squared-error regression)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fisherkit.likelihoods.base import Likelihood, check_batch_dims, elementwise_columns


class Gaussian(Likelihood):
    """p(y | f) = N(y; f, σ² I) over every output element; outputs ``(B, *)``.

    ``variance=1`` matches the loss ½‖f − y‖²; ``nn.MSELoss`` (mean) differs only by a constant
    factor in the loss, never in this Fisher, whose output block is I / σ².

    Args:
        variance: σ², a positive float.
    """

    name = "gaussian"

    def __init__(self, variance: float = 1.0) -> None:
        if not variance > 0:
            raise ValueError(f"gaussian likelihood needs a positive variance; got {variance}.")
        self.variance = float(variance)

    def check(self, output: Tensor, target: Tensor | None, check_values: bool = True) -> None:
        if output.dim() < 1 or not output.dtype.is_floating_point:
            raise ValueError(
                f"gaussian likelihood needs floating-point outputs of shape (B, *); got "
                f"{tuple(output.shape)} of dtype {output.dtype}."
            )
        if target is not None:
            check_batch_dims(output, target, tuple(output.shape), "gaussian likelihood")
            if not target.dtype.is_floating_point:
                raise ValueError(f"gaussian likelihood needs floating-point targets; got {target.dtype}.")

    def sample(self, output: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype, device=output.device)
        return output.detach() + math.sqrt(self.variance) * noise

    def log_prob(self, output: Tensor, target: Tensor) -> Tensor:
        squared = ((target - output) ** 2).reshape(output.shape[0], -1)
        per_element = -0.5 * squared / self.variance - 0.5 * math.log(2 * math.pi * self.variance)
        return per_element.sum(1)

    def grad_nll(self, output: Tensor, target: Tensor) -> Tensor:
        return (output.detach() - target) / self.variance

    def sqrt_output_fisher(self, output: Tensor, target: Tensor | None) -> Tensor:
        """Columns e_j / σ, one per output element: ``(E, B, *)``."""
        scale = torch.full_like(output.detach(), 1.0 / math.sqrt(self.variance))
        return elementwise_columns(scale)
