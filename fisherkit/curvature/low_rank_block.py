"""Low-rank blocks: the top eigenpairs of a Fisher plus a diagonal remainder."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fisherkit.curvature.block import DENSE_FALLBACK_LIMIT, Block, TensorList, check_damping, check_decay
from fisherkit.curvature.dense_block import DenseBlock


@dataclasses.dataclass(eq=False)
class LowRankBlock(Block):
    """F = U diag(λ) Uᵀ + diag(d) over the flattened parameters of the block.

    U holds k orthonormal eigenvectors of the Fisher with eigenvalues λ > 0 (the largest, as the
    ``"lowrank"`` structure finds them with ``FisherOperator.eigenpairs``); the diagonal remainder
    d ≥ 0 is what the eigenpairs leave of the Fisher's diagonal, so that diag(F) is kept exactly.
    Solves and log-determinants use the Woodbury identity and the matrix determinant lemma:
    O(p k²), never a (p, p) matrix.

    Attributes:
        values: ``(k,)`` eigenvalues λ, positive.
        vectors: ``(p, k)`` orthonormal eigenvectors U (p = the block's parameters, flattened in
            ``names`` order).
        remainder: ``(p,)`` diagonal d ≥ 0.
    """

    values: Tensor
    vectors: Tensor
    remainder: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.values.shape[0]
        if self.vectors.shape != (self.numel, k) or self.remainder.shape != (self.numel,):
            raise ValueError(
                f"block {self.label}: a LowRankBlock of {self.numel} parameters needs vectors of shape "
                f"({self.numel}, {k}) and a remainder of shape ({self.numel},); got {tuple(self.vectors.shape)} "
                f"and {tuple(self.remainder.shape)}."
            )
        if bool((self.values <= 0).any()) or bool((self.remainder < 0).any()):
            raise ValueError(f"block {self.label}: eigenvalues must be > 0 and the diagonal remainder >= 0.")

    def _damped_remainder(self, damping: float) -> Tensor:
        damped = self.remainder + check_damping(damping)
        if bool((damped <= 0).any()):
            raise ValueError(
                f"block {self.label}: the diagonal remainder has zero entries, so the Woodbury solve needs "
                f"damping > 0; pass damping > 0."
            )
        return damped

    def _capacitance(self, damped: Tensor) -> Tensor:
        """``(k, k)`` I + Λ^½ Uᵀ D⁻¹ U Λ^½ (symmetric positive definite)."""
        root = self.values.sqrt()
        scaled = self.vectors * root / damped.sqrt().unsqueeze(-1)
        return torch.eye(root.shape[0], dtype=root.dtype, device=root.device) + scaled.T @ scaled

    def mv(self, vectors: TensorList) -> TensorList:
        flat = self.flatten(vectors).to(self.values.dtype)
        return self.unflatten(self.vectors @ (self.values * (self.vectors.T @ flat)) + self.remainder * flat)

    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        """Woodbury: (D + U Λ Uᵀ)⁻¹ = D⁻¹ − D⁻¹ U Λ^½ C⁻¹ Λ^½ Uᵀ D⁻¹, C the capacitance."""
        damped = self._damped_remainder(damping)
        flat = self.flatten(vectors).to(self.values.dtype) / damped
        root = self.values.sqrt()
        inner = torch.linalg.solve(self._capacitance(damped), root * (self.vectors.T @ flat))
        return self.unflatten(flat - (self.vectors @ (root * inner)) / damped)

    def inverse(self, damping: float, pi_damping: bool = False) -> DenseBlock:
        """(F + damping·I)⁻¹ densely (diagonal minus low rank: not of this form), for blocks of up to
        ``DENSE_FALLBACK_LIMIT`` parameters; use ``solve`` for larger ones."""
        if self.numel > DENSE_FALLBACK_LIMIT:
            raise ValueError(
                f"block {self.label}: the inverse of a LowRankBlock of {self.numel} parameters would be a dense "
                f"{self.numel}² matrix; use solve (Woodbury, O(p k²)) instead."
            )
        eye = torch.eye(self.numel, dtype=self.values.dtype, device=self.values.device)
        columns = [self.flatten(self.solve(self.unflatten(column), damping)) for column in eye]
        return DenseBlock(self.names, self.shapes, torch.stack(columns, 1))

    def diagonal(self) -> TensorList:
        return self.unflatten(self.remainder + (self.vectors.square() * self.values).sum(-1))

    def trace(self) -> Tensor:
        return self.remainder.sum() + (self.vectors.square() * self.values).sum()

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        """Matrix determinant lemma: log det D + log det C."""
        damped = self._damped_remainder(damping)
        return damped.log().sum() + torch.linalg.slogdet(self._capacitance(damped))[1]

    def to_dense(self) -> Tensor:
        return (self.vectors * self.values) @ self.vectors.T + torch.diag(self.remainder)

    def scaled(self, scalar: float) -> LowRankBlock:
        return dataclasses.replace(self, values=self.values * scalar, remainder=self.remainder * scalar)

    def ema_(self, other: Block, decay: float) -> None:
        """Eigenvalues and remainder average in place when both blocks share the eigenvectors; any
        other moving average is refused (the average of two low-rank terms is not one)."""
        if not (isinstance(other, LowRankBlock) and torch.equal(other.vectors, self.vectors)):
            super().ema_(other, decay)
            return
        decay = check_decay(decay)
        self.values.mul_(decay).add_(other.values, alpha=1 - decay)
        self.remainder.mul_(decay).add_(other.remainder, alpha=1 - decay)
