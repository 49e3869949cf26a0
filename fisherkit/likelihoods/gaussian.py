"""Gaussian likelihood with a fixed variance, shared or per output (mean-squared-error regression)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fisherkit.likelihoods.base import Likelihood, check_batch_dims, elementwise_columns


class Gaussian(Likelihood):
    """p(y | f) = N(y; f, diag(σ²)) over every output element; outputs ``(B, *)``.

    ``variance=1`` matches the loss ½‖f − y‖²; ``nn.MSELoss`` (mean) differs only by a constant
    factor in the loss, never in this Fisher, whose output block is diag(1 / σ²).

    Args:
        variance: σ² > 0: a number shared by every output, or a tensor of per-output variances
            broadcastable to one sample's output shape ``*`` (e.g. ``(C,)`` for outputs ``(B, C)``).
    """

    name = "gaussian"

    def __init__(self, variance: float | Tensor = 1.0) -> None:
        if isinstance(variance, Tensor):
            if not variance.dtype.is_floating_point or not bool(torch.isfinite(variance).all() & (variance > 0).all()):
                raise ValueError(
                    "gaussian likelihood needs a positive variance: per-output variances must be finite, positive "
                    f"floating-point values; got {variance}."
                )
            self.variance: float | Tensor = variance.detach().clone()
            return
        if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance < math.inf:
            raise ValueError(
                f"gaussian likelihood needs a positive variance: a finite number, or a tensor of per-output "
                f"variances; got {variance!r}."
            )
        self.variance = float(variance)

    def _variance(self, output: Tensor) -> float | Tensor:
        """σ² in the output's dtype and on its device, broadcastable to ``output``."""
        if isinstance(self.variance, Tensor):
            return self.variance.to(dtype=output.dtype, device=output.device)
        return self.variance

    def check(self, output: Tensor, target: Tensor | None, check_values: bool = True) -> None:
        if output.dim() < 1 or not output.dtype.is_floating_point:
            raise ValueError(
                f"gaussian likelihood needs floating-point outputs of shape (B, *); got "
                f"{tuple(output.shape)} of dtype {output.dtype}."
            )
        if isinstance(self.variance, Tensor):
            per_sample = tuple(output.shape[1:])
            try:
                fits = torch.broadcast_shapes(tuple(self.variance.shape), per_sample) == per_sample
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"gaussian likelihood: per-output variances of shape {tuple(self.variance.shape)} do not "
                    f"broadcast to one sample's outputs {per_sample} (outputs {tuple(output.shape)}); give one "
                    "variance per output element, without the batch axis."
                )
        if target is not None:
            check_batch_dims(output, target, tuple(output.shape), "gaussian likelihood")
            if not target.dtype.is_floating_point:
                raise ValueError(f"gaussian likelihood needs floating-point targets; got {target.dtype}.")

    def sample(self, output: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype, device=output.device)
        variance = self._variance(output)
        deviation = variance.sqrt() if isinstance(variance, Tensor) else math.sqrt(variance)
        return output.detach() + deviation * noise

    def mode(self, output: Tensor) -> Tensor:
        """Refused: at the mode y = f the gradient of log p vanishes, so that Fisher would be zero."""
        raise ValueError(
            "fisher_type='predicted' is zero for a Gaussian likelihood: the log-likelihood's gradient vanishes at "
            "its most probable target y = f. Use fisher_type='mc' or 'exact'."
        )

    def log_prob(self, output: Tensor, target: Tensor) -> Tensor:
        variance = torch.as_tensor(self._variance(output), dtype=output.dtype, device=output.device)
        per_element = -0.5 * (target - output) ** 2 / variance - 0.5 * torch.log(2 * math.pi * variance)
        return per_element.reshape(output.shape[0], -1).sum(1)

    def grad_nll(self, output: Tensor, target: Tensor) -> Tensor:
        return (output.detach() - target) / self._variance(output)

    def sqrt_output_fisher(self, output: Tensor, target: Tensor | None) -> Tensor:
        """Columns e_j / σ_j, one per output element: ``(E, B, *)``."""
        variance = torch.as_tensor(self._variance(output), dtype=output.dtype, device=output.device)
        scale = variance.rsqrt().expand_as(output).clone()
        return elementwise_columns(scale)
