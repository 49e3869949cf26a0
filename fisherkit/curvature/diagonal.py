"""The diagonal Fisher: one tensor of variances per parameter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor

from fisherkit.curvature.base import Curvature, TensorList
from fisherkit.curvature.diagonal_block import DiagonalBlock


class DiagonalFisher(Curvature):
    """F ≈ diag(d), stored as parameter-shaped tensors (one ``DiagonalBlock`` per parameter).

    Scaling: estimators fill ``d`` with the per-sample mean, d = (1/N) Σ_n E_y[g_n ⊙ g_n] with
    g_n = ∇_θ log p(y | x_n). Multiply by N for the dataset Fisher.

    Args:
        names: Parameter names, in order.
        diagonals: One tensor per parameter, of that parameter's shape.
    """

    def __init__(self, names: Sequence[str], diagonals: Sequence[Tensor]) -> None:
        shapes = [d.shape for d in diagonals]
        blocks = [DiagonalBlock((name,), (shape,), [d]) for name, shape, d in zip(names, shapes, diagonals)]
        super().__init__(names, shapes, blocks)

    @property
    def diagonals(self) -> TensorList:
        """The stored diagonals in ``names`` order (not copies)."""
        return self._gather([cast(DiagonalBlock, block).diagonals for block in self.blocks])
