"""Diagonal blocks: one tensor of variances per parameter."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fisherkit.curvature.block import Block, TensorList, check_damping, check_decay, tensor_sum


@dataclasses.dataclass(eq=False)
class DiagonalBlock(Block):
    """F = diag(d) over one or more parameters.

    Attributes:
        diagonals: One tensor per parameter, of that parameter's shape.
    """

    diagonals: TensorList = dataclasses.field(default_factory=list)

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

    def mv(self, vectors: TensorList) -> TensorList:
        return [d * v for d, v in zip(self.diagonals, vectors)]

    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        return [v / d for v, d in zip(vectors, self._damped(damping))]

    def inverse(self, damping: float, pi_damping: bool = False) -> DiagonalBlock:
        return DiagonalBlock(self.names, self.shapes, [d.reciprocal() for d in self._damped(damping)])

    def diagonal(self) -> TensorList:
        return [d.clone() for d in self.diagonals]

    def trace(self) -> Tensor:
        return tensor_sum(d.sum() for d in self.diagonals)

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        return tensor_sum(d.log().sum() for d in self._damped(damping))

    def to_dense(self) -> Tensor:
        return torch.diag(self.flatten(self.diagonals))

    def scaled(self, scalar: float) -> DiagonalBlock:
        return DiagonalBlock(self.names, self.shapes, [d * scalar for d in self.diagonals])

    def __add__(self, other: Block) -> Block:
        if isinstance(other, DiagonalBlock):
            return DiagonalBlock(self.names, self.shapes, [a + b for a, b in zip(self.diagonals, other.diagonals)])
        return super().__add__(other)

    def ema_(self, other: Block, decay: float) -> None:
        if not isinstance(other, DiagonalBlock):
            super().ema_(other, decay)
            return
        decay = check_decay(decay)
        for mine, new in zip(self.diagonals, other.diagonals):
            mine.mul_(decay).add_(new, alpha=1 - decay)
