"""Bernoulli likelihood over logits (binary and multi-label classification)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits

from fisherkit.likelihoods.base import Likelihood, check_batch_dims, elementwise_columns


class Bernoulli(Likelihood):
    """p(y | f) = Π_j σ(f_j)^{y_j} (1 − σ(f_j))^{1 − y_j}; outputs ``(B, *)`` logits, targets in {0, 1}.

    Matches ``binary_cross_entropy_with_logits``; the output Fisher is diag(σ(f)(1 − σ(f))).
    """

    name = "bernoulli"

    def check(self, output: Tensor, target: Tensor | None, check_values: bool = True) -> None:
        if output.dim() < 1 or not output.dtype.is_floating_point:
            raise ValueError(
                f"bernoulli likelihood needs floating-point logits of shape (B, *); got "
                f"{tuple(output.shape)} of dtype {output.dtype}."
            )
        if target is None:
            return
        check_batch_dims(output, target, tuple(output.shape), "bernoulli likelihood")
        if check_values and target.numel() and not bool(((target == 0) | (target == 1)).all()):
            raise ValueError(
                "bernoulli likelihood needs targets in {0, 1}; found other values "
                f"(min {float(target.min())}, max {float(target.max())})."
            )

    def sample(self, output: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.bernoulli(output.detach().sigmoid(), generator=generator)

    def mode(self, output: Tensor) -> Tensor:
        """1 where σ(f) > ½ (a positive logit), else 0."""
        return (output.detach() > 0).to(output.dtype)

    def log_prob(self, output: Tensor, target: Tensor) -> Tensor:
        per_element = -binary_cross_entropy_with_logits(output, target.to(output.dtype), reduction="none")
        return per_element.reshape(output.shape[0], -1).sum(1)

    def grad_nll(self, output: Tensor, target: Tensor) -> Tensor:
        return output.detach().sigmoid() - target.to(output.dtype)

    def sqrt_output_fisher(self, output: Tensor, target: Tensor | None) -> Tensor:
        """Columns e_j √(p_j (1 − p_j)), one per output element: ``(E, B, *)``."""
        probs = output.detach().sigmoid()
        return elementwise_columns((probs * (1 - probs)).sqrt())
