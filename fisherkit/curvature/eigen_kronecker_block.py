"""EKFAC blocks: a Kronecker eigenbasis with a free diagonal scaling (George et al. 2018)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fisherkit.curvature.block import Block, TensorList, check_damping, check_decay
from fisherkit.curvature.kronecker_layout import (
    KroneckerLayout,
    apply_left,
    apply_right,
    rotate_in,
    rotate_out,
    scatter_groups,
    transpose,
)


@dataclasses.dataclass(eq=False)
class EigenKroneckerBlock(Block):
    """F = (Q_L ⊗ Q_R) diag(s) (Q_L ⊗ Q_R)ᵀ on the ``(groups, rows, cols)`` parameter view.

    EKFAC fills s with the second moments of per-sample gradients in the KFAC eigenbasis, the
    best diagonal for that basis in Frobenius norm; the inverse of a damped KFAC block has this
    form too. Damping is Tikhonov (``pi_damping`` does not apply).

    Attributes:
        groups, rows, has_bias, transposed: The ``KroneckerLayout``.
        left_basis: ``(groups, rows, rows)`` orthogonal, or None for the identity.
        right_basis: ``(groups, cols, cols)`` orthogonal, or None for the identity.
        scaling: ``(groups, rows, cols)`` eigenvalues.
    """

    groups: int
    rows: int
    has_bias: bool
    left_basis: Tensor | None
    right_basis: Tensor | None
    scaling: Tensor
    transposed: bool = False

    @property
    def layout(self) -> KroneckerLayout:
        return KroneckerLayout(self.groups, self.rows, self.has_bias, self.transposed)

    def _damped(self, damping: float) -> Tensor:
        damped = self.scaling + check_damping(damping)
        if bool((damped <= 0).any()):
            raise ValueError(f"block {self.label}: the EKFAC scaling has zero entries; pass damping > 0.")
        return damped

    def _apply(self, vectors: TensorList, scale: Tensor) -> TensorList:
        view = rotate_in(self.layout.to_view(vectors).to(self.scaling.dtype), self.left_basis, self.right_basis)
        return self.layout.from_view(rotate_out(view * scale, self.left_basis, self.right_basis), self.shapes)

    def mv(self, vectors: TensorList) -> TensorList:
        return self._apply(vectors, self.scaling)

    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        return self._apply(vectors, self._damped(damping).reciprocal())

    def inverse(self, damping: float, pi_damping: bool = False) -> EigenKroneckerBlock:
        return dataclasses.replace(self, scaling=self._damped(damping).reciprocal())

    def diagonal(self) -> TensorList:
        view = apply_right(apply_left(_squared(self.left_basis), self.scaling), transpose(_squared(self.right_basis)))
        return self.layout.from_view(view, self.shapes)

    def trace(self) -> Tensor:
        return self.scaling.sum()

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        return self._damped(damping).log().sum()

    def to_dense(self) -> Tensor:
        rows, cols = self.scaling.shape[1:]
        per_group = []
        for group in range(self.groups):
            left = _dense_basis(self.left_basis, group, rows, self.scaling)
            right = _dense_basis(self.right_basis, group, cols, self.scaling)
            basis = torch.kron(left.contiguous(), right.contiguous())
            per_group.append((basis * self.scaling[group].reshape(1, -1)) @ basis.T)
        index = self.layout.flat_index(self.shapes, self.scaling.device).reshape(self.groups, -1)
        return scatter_groups(torch.stack(per_group), index, self.numel)

    def scaled(self, scalar: float) -> EigenKroneckerBlock:
        return dataclasses.replace(self, scaling=self.scaling * scalar)

    def ema_(self, other: Block, decay: float) -> None:
        """s ← βs + (1−β)s', where s' is the other block's diagonal in *this* block's eigenbasis
        (exact when both share the basis; otherwise its Frobenius-best diagonal in this basis)."""
        if not isinstance(other, EigenKroneckerBlock):
            return super().ema_(other, decay)
        decay = check_decay(decay)
        left = _change_of_basis(self.left_basis, other.left_basis)
        right = _change_of_basis(self.right_basis, other.right_basis)
        projected = apply_right(apply_left(_squared(left), other.scaling), transpose(_squared(right)))
        self.scaling.mul_(decay).add_(projected, alpha=1 - decay)


def _squared(basis: Tensor | None) -> Tensor | None:
    return None if basis is None else basis.square()


def _change_of_basis(mine: Tensor | None, theirs: Tensor | None) -> Tensor | None:
    """Q_mineᵀ Q_theirs (None when both are the identity)."""
    if mine is None and theirs is None:
        return None
    if mine is None:
        return theirs
    mine_t = mine.transpose(-1, -2)
    return mine_t if theirs is None else mine_t @ theirs


def _dense_basis(basis: Tensor | None, group: int, size: int, like: Tensor) -> Tensor:
    if basis is None:
        return torch.eye(size, dtype=like.dtype, device=like.device)
    return basis[group]
