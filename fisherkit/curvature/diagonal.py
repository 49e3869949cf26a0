"""The diagonal Fisher: one tensor of variances per parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fisherkit.curvature.base import Curvature, ParameterVector, TensorList, check_damping


class DiagonalFisher(Curvature):
    """F ≈ diag(d), stored as parameter-shaped tensors.

    Scaling: estimators fill ``d`` with the per-sample mean, d = (1/N) Σ_n E_y[g_n ⊙ g_n] with
    g_n = ∇_θ log p(y | x_n). Multiply by N for the dataset Fisher.

    Args:
        names: Parameter names, in order.
        diagonals: One tensor per parameter, of that parameter's shape.
    """

    def __init__(self, names: Sequence[str], diagonals: Sequence[Tensor]) -> None:
        super().__init__(names, [d.shape for d in diagonals])
        self.diagonals = list(diagonals)

    def mv(self, v: ParameterVector) -> TensorList:
        return [d * x for d, x in zip(self.diagonals, self.as_list(v))]

    def _damped(self, damping: float) -> TensorList:
        damping = check_damping(damping)
        damped = [d + damping for d in self.diagonals]
        for name, tensor in zip(self.names, damped):
            if bool((tensor <= 0).any()):
                raise ValueError(
                    f"parameter {name!r}: the diagonal Fisher has zero entries, so F + {damping}·I is "
                    f"singular; pass damping > 0."
                )
        return damped

    def solve(self, v: ParameterVector, damping: float) -> TensorList:
        return [x / d for x, d in zip(self.as_list(v), self._damped(damping))]

    def inverse(self, damping: float) -> DiagonalFisher:
        return DiagonalFisher(self.names, [d.reciprocal() for d in self._damped(damping)])

    def diagonal(self) -> TensorList:
        return [d.clone() for d in self.diagonals]

    def trace(self) -> Tensor:
        return sum(d.sum() for d in self.diagonals)

    def logdet(self, damping: float) -> Tensor:
        return sum(d.log().sum() for d in self._damped(damping))

    def to_dense(self) -> Tensor:
        return torch.diag(torch.cat([d.reshape(-1) for d in self.diagonals]))

    def to(self, *args: Any, **kwargs: Any) -> DiagonalFisher:
        return DiagonalFisher(self.names, [d.to(*args, **kwargs) for d in self.diagonals])

    def state_dict(self) -> dict[str, Any]:
        return {**self.state_header(), "diagonals": [d.clone() for d in self.diagonals]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.check_state_header(state)
        self.diagonals = [
            saved.to(device=d.device, dtype=d.dtype).clone() for saved, d in zip(state["diagonals"], self.diagonals)
        ]

    def __add__(self, other: DiagonalFisher) -> DiagonalFisher:
        if not isinstance(other, DiagonalFisher):
            return NotImplemented
        self.check_compatible(other)
        return DiagonalFisher(self.names, [a + b for a, b in zip(self.diagonals, other.diagonals)])

    def __mul__(self, scalar: float) -> DiagonalFisher:
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        return DiagonalFisher(self.names, [d * scalar for d in self.diagonals])

    def __repr__(self) -> str:
        total = sum(d.numel() for d in self.diagonals)
        return f"DiagonalFisher({len(self.names)} parameters, {total} entries, trace={float(self.trace()):.4g})"
