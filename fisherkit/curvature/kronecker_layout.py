"""How a layer's parameters form the matrix a Kronecker factorization acts on, and factor helpers.

A Kronecker block sees its parameters as a ``(groups, rows, cols)`` stack of matrices X: the
weight reshaped to ``(groups, rows, cols − 1)`` with the bias as the last column when the block
has one (``nn.Linear``: rows = outputs, cols = inputs + 1; a grouped conv: one matrix per group;
``nn.Embedding``: rows = vocabulary, cols = embedding dimension). With row-major flattening,
vec(L X R) = (L ⊗ R) vec(X), so F = L ⊗ R per group.

A factor is dense ``(groups, n, n)`` or diagonal ``(groups, n)`` (the embedding's token
frequencies, never a dense vocabulary × vocabulary matrix).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from fisherkit.curvature.block import TensorList
from fisherkit.errors import NonFiniteFisherError


@dataclass(frozen=True)
class KroneckerLayout:
    """The matrix view of a weight (and optional bias).

    Attributes:
        groups: Independent matrices (conv groups; 1 otherwise).
        rows: Rows per group (the left factor's size).
        has_bias: The last column of each matrix is the bias.
        transposed: The weight is stored ``(inputs, outputs)`` (Hugging Face ``Conv1D``): its
            transpose is the ``(rows, cols − 1)`` matrix. One group only.
    """

    groups: int
    rows: int
    has_bias: bool
    transposed: bool = False

    def to_view(self, vectors: TensorList, batch_dims: int = 0) -> Tensor:
        """``[weight, (bias)]`` → ``(groups, rows, cols)``, after ``batch_dims`` leading axes."""
        lead = vectors[0].shape[:batch_dims]
        stored = vectors[0].transpose(-1, -2) if self.transposed else vectors[0]
        weight = stored.reshape(*lead, self.groups, self.rows, -1)
        if not self.has_bias:
            return weight
        return torch.cat([weight, vectors[1].reshape(*lead, self.groups, self.rows, 1).to(weight.dtype)], -1)

    def from_view(self, view: Tensor, shapes: tuple[torch.Size, ...]) -> TensorList:
        """``(groups, rows, cols)`` → ``[weight, (bias)]`` of ``shapes``."""
        weight = view[..., :-1] if self.has_bias else view
        if self.transposed:
            weight = weight.transpose(-1, -2)
        weight = weight.reshape(shapes[0])
        return [weight, view[..., -1].reshape(shapes[1])] if self.has_bias else [weight]

    def flat_index(self, shapes: tuple[torch.Size, ...], device: torch.device) -> Tensor:
        """``(groups, rows, cols)`` positions of every view entry in the flattened parameters."""
        sizes = [s.numel() for s in shapes]
        ranges = [
            torch.arange(sum(sizes[:i]), sum(sizes[: i + 1]), device=device).reshape(s) for i, s in enumerate(shapes)
        ]
        return self.to_view(ranges)


def is_diagonal(factor: Tensor) -> bool:
    """A diagonal factor is stored as ``(groups, n)``; a dense one as ``(groups, n, n)``."""
    return factor.dim() == 2


def factor_diagonal(factor: Tensor) -> Tensor:
    """``(groups, n)`` diagonal of a factor."""
    return factor if is_diagonal(factor) else torch.diagonal(factor, dim1=-2, dim2=-1)


def factor_dense(factor: Tensor) -> Tensor:
    """``(groups, n, n)``."""
    return torch.diag_embed(factor) if is_diagonal(factor) else factor


def apply_left(factor: Tensor | None, view: Tensor) -> Tensor:
    """L X per group; ``None`` is the identity."""
    if factor is None:
        return view
    return factor.unsqueeze(-1) * view if is_diagonal(factor) else factor @ view


def apply_right(view: Tensor, factor: Tensor | None) -> Tensor:
    """X R per group (R symmetric); ``None`` is the identity."""
    if factor is None:
        return view
    return view * factor.unsqueeze(-2) if is_diagonal(factor) else view @ factor


def transpose(basis: Tensor | None) -> Tensor | None:
    """The basis with its last two axes swapped (None stays None)."""
    return None if basis is None else basis.transpose(-1, -2)


THREADED_EIGH_SIZE = 1024  # factors this wide or wider are decomposed on every intra-op thread


def factor_eigh(factor: Tensor, label: str) -> tuple[Tensor, Tensor | None]:
    """Eigenvalues ``(groups, n)`` (clamped at 0) and eigenvectors ``(groups, n, n)`` (None when diagonal).

    Checks for NaN/Inf first; decomposes at unit scale in float64 (no float32 convergence failures)
    and, on CPU, factors below ``THREADED_EIGH_SIZE`` on one thread: LAPACK's threaded eigh of
    factors with zero rows (dead units) was measured at 7 s per 512 × 512 call on a loaded 2-core
    machine, against 0.05 s on one thread. Larger factors use every intra-op thread: a 4,608-wide
    factor (ResNet-18's last convolutions) took 39 s on one thread and 20 s on two (float32: 27 s
    and 16 s, not taken for the robustness above).

    Raises:
        ValueError: Non-finite entries, or no convergence even in float64; ``label`` names the layer.
    """
    if not bool(torch.isfinite(factor).all()):
        raise NonFiniteFisherError(f"Kronecker factor of {label} has NaN or Inf entries; its statistics overflowed.")
    if is_diagonal(factor):
        return factor.clamp(min=0), None
    scale = factor.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(factor.dtype).tiny)
    try:
        with _single_threaded(factor.device, factor.shape[-1] < THREADED_EIGH_SIZE):
            values, vectors = torch.linalg.eigh((factor / scale).double())
    except torch.linalg.LinAlgError as error:
        raise ValueError(f"eigendecomposition of a Kronecker factor of {label} failed in float64") from error
    values, vectors = values.to(factor.dtype), vectors.to(factor.dtype)
    return (values * scale.squeeze(-1)).clamp(min=0), vectors


def shifted_inverse(factor: Tensor, shift: Tensor, label: str) -> Tensor:
    """``(F + shift·I)⁻¹`` per group by a float64 Cholesky factorization (no eigendecomposition;
    float32 Cholesky was measured 5-8× less accurate than rounding the float64 inverse).

    Args:
        factor: ``(groups, n, n)`` or diagonal ``(groups, n)``.
        shift: ``(groups, 1)`` non-negative shifts.
        label: Names the layer in errors.

    Raises:
        ValueError: Non-finite entries, or ``F + shift·I`` not positive definite (a singular factor
            with zero damping); ``label`` names the layer.
    """
    if not bool(torch.isfinite(factor).all()):
        raise NonFiniteFisherError(f"Kronecker factor of {label} has NaN or Inf entries; its statistics overflowed.")
    if is_diagonal(factor):
        shifted = factor + shift
        if bool((shifted <= 0).any()):
            raise ValueError(f"block {label}: a damped Kronecker factor is singular; pass damping > 0.")
        return shifted.reciprocal()
    eye = torch.eye(factor.shape[-1], dtype=torch.float64, device=factor.device)
    root, info = torch.linalg.cholesky_ex(factor.double() + shift.double().unsqueeze(-1) * eye)
    if bool((info != 0).any()):
        raise ValueError(f"block {label}: a damped Kronecker factor is singular in float64; pass damping > 0.")
    return torch.cholesky_inverse(root).to(factor.dtype)


@contextmanager
def _single_threaded(device: torch.device, when: bool = True) -> Iterator[None]:
    """Runs CPU work on one intra-op thread (``when`` it is True), restoring the thread count afterwards."""
    if device.type != "cpu" or not when:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rotate_in(view: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """Q_Lᵀ X Q_R: coordinates in the Kronecker eigenbasis."""
    return apply_right(apply_left(transpose(left), view), right)


def rotate_out(view: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """Q_L X Q_Rᵀ: back from the Kronecker eigenbasis."""
    return apply_right(apply_left(left, view), transpose(right))


def dense_kronecker(left: Tensor, right: Tensor) -> Tensor:
    """``(groups, r·c, r·c)``: L ⊗ R per group."""
    left, right = factor_dense(left), factor_dense(right)
    return torch.stack([torch.kron(a.contiguous(), b.contiguous()) for a, b in zip(left, right)])


def scatter_groups(per_group: Tensor, index: Tensor, size: int) -> Tensor:
    """Places ``(groups, m, m)`` matrices at the flat positions ``index`` ``(groups, m)`` of a ``(size, size)``."""
    dense = per_group.new_zeros(size, size)
    for block, positions in zip(per_group, index):
        dense[positions.unsqueeze(1), positions.unsqueeze(0)] = block
    return dense
