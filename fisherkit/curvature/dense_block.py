"""Dense blocks: the full matrix over a layer's parameters (block-diagonal Fisher) or the model's."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fisherkit.curvature.block import Block, TensorList, check_damping, check_decay


@dataclasses.dataclass(eq=False)
class DenseBlock(Block):
    """F = M, a ``(p, p)`` symmetric PSD matrix, parameters flattened in ``names`` order.

    Attributes:
        matrix: ``(p, p)``.
    """

    matrix: Tensor

    def _damped_cholesky(self, damping: float) -> Tensor:
        damping = check_damping(damping)
        key = ("cholesky", damping)
        if key not in self._cache:
            damped = self.matrix + damping * torch.eye(self.numel, dtype=self.matrix.dtype, device=self.matrix.device)
            factor, info = torch.linalg.cholesky_ex(damped)
            if int(info) != 0:
                raise ValueError(
                    f"block {self.label}: F + {damping}·I is singular or not positive definite; pass damping > 0."
                )
            self._cache = {key: factor}
        return self._cache[key]

    def mv(self, vectors: TensorList) -> TensorList:
        return self.unflatten(self.matrix @ self.flatten(vectors))

    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        flat = self.flatten(vectors).to(self.matrix.dtype).unsqueeze(1)
        return self.unflatten(torch.cholesky_solve(flat, self._damped_cholesky(damping)).squeeze(1))

    def inverse(self, damping: float, pi_damping: bool = False) -> DenseBlock:
        return DenseBlock(self.names, self.shapes, torch.cholesky_inverse(self._damped_cholesky(damping)))

    def diagonal(self) -> TensorList:
        return self.unflatten(torch.diagonal(self.matrix).clone())

    def trace(self) -> Tensor:
        return torch.trace(self.matrix)

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        return 2 * torch.diagonal(self._damped_cholesky(damping)).log().sum()

    def to_dense(self) -> Tensor:
        return self.matrix.clone()

    def scaled(self, scalar: float) -> DenseBlock:
        return DenseBlock(self.names, self.shapes, self.matrix * scalar)

    def __add__(self, other: Block) -> Block:
        if isinstance(other, Block) and other.names == self.names:
            return DenseBlock(self.names, self.shapes, self.matrix + other.to_dense().to(self.matrix))
        return super().__add__(other)

    def ema_(self, other: Block, decay: float) -> None:
        decay = check_decay(decay)
        self.matrix.mul_(decay).add_(other.to_dense().to(self.matrix), alpha=1 - decay)
        self._cache = {}
