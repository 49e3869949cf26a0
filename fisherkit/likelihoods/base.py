"""The output distribution p(y | f) that turns model outputs f into a Fisher.

Index conventions: n batch (the sample axis, always first), ``*`` any further output axes,
k columns (MC draws or square-root columns of the output Fisher).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Likelihood(ABC):
    """A conditional distribution p(y | f) over targets given model outputs.

    Subclasses provide sampling, the log-density, its closed-form gradient with respect to the
    outputs, and a square root of the output-space Fisher. The per-sample log-likelihood is the sum
    over every axis but the first: a ``(B, T, C)`` sequence output is one sample per row ``n``.
    """

    name: str = ""

    def event_axis(self, output: Tensor) -> int:
        """The output axis that holds one distribution's parameters (a class axis); the other
        methods see outputs with it moved last. Default: the last axis."""
        return output.dim() - 1

    @abstractmethod
    def check(self, output: Tensor, target: Tensor | None, check_values: bool = True) -> None:
        """Raises ``ValueError`` when ``output`` (and ``target``, when given) do not fit.

        Args:
            output: Model outputs.
            target: Targets or ``None``; their shape and dtype are always checked.
            check_values: Also check every target value (labels in range); skipped when the
                targets only mark ignored positions (``mc`` and ``exact`` Fisher types).
        """

    @abstractmethod
    def sample(self, output: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draws y ~ p(y | f) with the shape and dtype of a target for ``output``."""

    def mode(self, output: Tensor) -> Tensor:
        """The most probable target for ``output`` (shape and dtype of a target), for
        ``fisher_type="predicted"``.

        Raises:
            ValueError: The likelihood defines none (the default), or its gradient vanishes there.
        """
        raise ValueError(
            f"fisher_type='predicted' needs the most probable target, which the {type(self).__name__} likelihood "
            f"does not define (a mode() method); use fisher_type='mc' or 'exact'."
        )

    @abstractmethod
    def log_prob(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-sample log p(y_n | f_n), shape ``(B,)``, differentiable in ``output``."""

    @abstractmethod
    def grad_nll(self, output: Tensor, target: Tensor) -> Tensor:
        """∇_f [−log p(y | f)] in closed form, shape of ``output``; ignored positions are zero."""

    @abstractmethod
    def sqrt_output_fisher(self, output: Tensor, target: Tensor | None) -> Tensor:
        """Columns S of a square root of the output Fisher: Σ_k S_k S_kᵀ = E_y[∇_f log p ∇_f log pᵀ].

        Args:
            output: Model outputs ``(B, *)``.
            target: Dataset targets, used only to mask ignored positions; may be ``None``.

        Returns:
            ``(K, B, *)`` with K columns, block-diagonal over samples.
        """

    def mask(self, output: Tensor, target: Tensor | None) -> Tensor | None:
        """Boolean mask of the output positions that count, broadcastable to ``output``; None = all."""
        return None


def check_batch_dims(output: Tensor, target: Tensor, expected: tuple[int, ...], what: str) -> None:
    """Raises ``ValueError`` unless ``target.shape == expected`` (a shared helper for the checks)."""
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{what}: targets of shape {tuple(target.shape)} do not fit model outputs of shape "
            f"{tuple(output.shape)}; expected targets of shape {expected}."
        )


def split_positions(columns: Tensor) -> Tensor:
    """Turns ``(K, B, P..., C)`` columns valid at every position into ``(P·K, B, P..., C)`` columns
    that are each nonzero at one position, so that distinct positions never mix in one column."""
    num_columns, batch = columns.shape[:2]
    position_shape = columns.shape[2:-1]
    num_positions = 1
    for size in position_shape:
        num_positions *= size
    flat = columns.reshape(num_columns, batch, num_positions, columns.shape[-1])
    out = flat.new_zeros(num_positions, num_columns, batch, num_positions, columns.shape[-1])
    index = torch.arange(num_positions, device=columns.device)
    out[index, :, :, index] = flat.permute(2, 0, 1, 3)
    return out.reshape(num_positions * num_columns, batch, *position_shape, columns.shape[-1])


def elementwise_columns(scale: Tensor) -> Tensor:
    """Square-root columns of a diagonal output Fisher with ``scale²`` on the diagonal.

    Args:
        scale: ``(B, *)`` square roots of the diagonal entries.

    Returns:
        ``(E, B, *)`` with E = prod(*): column e holds ``scale[:, e]`` at element e, zero elsewhere.
    """
    if scale.dim() == 1:
        return scale.unsqueeze(0)
    return split_positions(scale.unsqueeze(0).unsqueeze(-1)).squeeze(-1)
