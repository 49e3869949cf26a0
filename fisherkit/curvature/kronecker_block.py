"""KFAC blocks: F = L ⊗ R per group, over a layer's weight and folded bias."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fisherkit.curvature.block import Block, TensorList, check_damping, check_decay
from fisherkit.curvature.eigen_kronecker_block import EigenKroneckerBlock
from fisherkit.curvature.kronecker_layout import (
    KroneckerLayout,
    apply_left,
    apply_right,
    dense_kronecker,
    factor_diagonal,
    factor_eigh,
    rotate_in,
    rotate_out,
    scatter_groups,
    shifted_inverse,
)


@dataclasses.dataclass(eq=False)
class KroneckerBlock(Block):
    """F = L ⊗ R on the ``(groups, rows, cols)`` view of the parameters (see ``KroneckerLayout``).

    For ``nn.Linear`` and convolutions L = G (output-gradient factor) and R = A (input factor,
    with the bias folded in as a column of ones); for ``nn.Embedding`` L = A is diagonal (token
    frequencies) and R = G. Eigendecompositions are cached until the factors change.

    Damping: Tikhonov (F + λI, exact in the eigenbasis) by default; ``pi_damping=True`` uses the
    factored heuristic (L + π√λ I) ⊗ (R + √λ/π I) with π² = (tr L / dim L) / (tr R / dim R)
    (Martens & Grosse 2015).

    Attributes:
        groups, rows, has_bias, transposed: The ``KroneckerLayout``.
        left: ``(groups, rows, rows)`` or diagonal ``(groups, rows)``.
        right: ``(groups, cols, cols)`` or diagonal ``(groups, cols)``.
    """

    groups: int
    rows: int
    has_bias: bool
    left: Tensor
    right: Tensor
    transposed: bool = False

    @property
    def layout(self) -> KroneckerLayout:
        return KroneckerLayout(self.groups, self.rows, self.has_bias, self.transposed)

    def eigen(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """Cached (left values, left vectors, right values, right vectors)."""
        if "eigen" not in self._cache:
            self._cache["eigen"] = (*factor_eigh(self.left, self.label), *factor_eigh(self.right, self.label))
        return self._cache["eigen"]

    def _pi_shifts(self, damping: float) -> tuple[Tensor, Tensor]:
        """Per-group shifts (π√λ, √λ/π) of the factored damping, ``(groups, 1)`` each."""
        left_mean = factor_diagonal(self.left).mean(-1, keepdim=True)
        right_mean = factor_diagonal(self.right).mean(-1, keepdim=True)
        pi = torch.where(
            (left_mean > 0) & (right_mean > 0), (left_mean / right_mean).sqrt(), torch.ones_like(left_mean)
        )
        root = math.sqrt(damping)
        return pi * root, root / pi

    def _damped_spectrum(self, damping: float, pi_damping: bool) -> Tensor:
        """``(groups, rows, cols)`` eigenvalues of the damped matrix."""
        damping = check_damping(damping)
        left_values, _, right_values, _ = self.eigen()
        if pi_damping:
            left_shift, right_shift = self._pi_shifts(damping)
            spectrum = (left_values + left_shift).unsqueeze(-1) * (right_values + right_shift).unsqueeze(-2)
        else:
            spectrum = left_values.unsqueeze(-1) * right_values.unsqueeze(-2) + damping
        if bool((spectrum <= 0).any()):
            raise ValueError(f"block {self.label}: the damped Kronecker matrix is singular; pass damping > 0.")
        return spectrum

    def mv(self, vectors: TensorList) -> TensorList:
        view = self.layout.to_view(vectors).to(self.left.dtype)
        return self.layout.from_view(apply_right(apply_left(self.left, view), self.right), self.shapes)

    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        spectrum = self._damped_spectrum(damping, pi_damping)
        _, left_vectors, _, right_vectors = self.eigen()
        view = rotate_in(self.layout.to_view(vectors).to(self.left.dtype), left_vectors, right_vectors) / spectrum
        return self.layout.from_view(rotate_out(view, left_vectors, right_vectors), self.shapes)

    def inverse(self, damping: float, pi_damping: bool = False) -> Block:
        """π-damping keeps the Kronecker form (inverted factors); Tikhonov damping is exact only in
        the eigenbasis, so it returns an ``EigenKroneckerBlock``."""
        if pi_damping:
            left_shift, right_shift = self._pi_shifts(check_damping(damping))
            return KroneckerBlock(
                self.names, self.shapes, self.groups, self.rows, self.has_bias,
                shifted_inverse(self.left, left_shift, self.label),
                shifted_inverse(self.right, right_shift, self.label), transposed=self.transposed,
            )  # fmt: skip
        _, left_vectors, _, right_vectors = self.eigen()
        return EigenKroneckerBlock(
            self.names, self.shapes, self.groups, self.rows, self.has_bias, left_vectors, right_vectors,
            self._damped_spectrum(damping, pi_damping).reciprocal(), transposed=self.transposed,
        )  # fmt: skip

    def diagonal(self) -> TensorList:
        view = factor_diagonal(self.left).unsqueeze(-1) * factor_diagonal(self.right).unsqueeze(-2)
        return self.layout.from_view(view, self.shapes)

    def trace(self) -> Tensor:
        return (factor_diagonal(self.left).sum(-1) * factor_diagonal(self.right).sum(-1)).sum()

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        return self._damped_spectrum(damping, pi_damping).log().sum()

    def to_dense(self) -> Tensor:
        index = self.layout.flat_index(self.shapes, self.left.device).reshape(self.groups, -1)
        return scatter_groups(dense_kronecker(self.left, self.right), index, self.numel)

    def scaled(self, scalar: float) -> KroneckerBlock:
        return dataclasses.replace(self, left=self.left * scalar)

    def ema_(self, other: Block, decay: float) -> None:
        """Factor-wise: L ← βL + (1−β)L', R ← βR + (1−β)R' (the KFAC convention; the product of the
        averages is not the average of the products)."""
        if not isinstance(other, KroneckerBlock):
            return super().ema_(other, decay)
        decay = check_decay(decay)
        self.left.mul_(decay).add_(other.left, alpha=1 - decay)
        self.right.mul_(decay).add_(other.right, alpha=1 - decay)
        self._cache = {}
