"""``kfac_factor_update``: the KFAC factor update factor ← β·factor + α·XᵀX (a SYRK).

With ``append_ones`` the factor has one extra row and column for a bias: X is treated as
[X, 1] without copying it (the extra row holds the column sums of X, the corner N).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fisherkit.ops.dispatch import choose_backend


def kfac_factor_update(
    factor: Tensor,
    inputs: Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    append_ones: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Sets ``factor ← beta·factor + alpha·X'ᵀX'`` in place, X' = [X, 1] when ``append_ones``.

    Args:
        factor: ``(D, D)`` or, with ``append_ones``, ``(D+1, D+1)`` symmetric float32/float64 matrix.
        inputs: ``(N, D)`` rows X (any float dtype; products are formed in ``factor.dtype``).
        alpha: Weight of the new statistics (e.g. 1/N for a mean, 1 − β for an EMA).
        beta: Decay of the old factor.
        append_ones: Treat X as having an extra column of ones (a bias folded into the factor).
        backend: ``"reference"``, ``"cpp"`` or ``None`` (see ``fisherkit.ops.dispatch``).

    Returns:
        ``factor``, exactly symmetric.
    """
    _check(factor, inputs, append_ones)
    if choose_backend(backend, factor, inputs) == "cpp":
        torch.ops.fisherkit.kfac_factor_update_(factor, inputs, float(alpha), float(beta), bool(append_ones))
    else:
        kfac_factor_update_reference(factor, inputs, alpha, beta, append_ones)
    return factor


def _check(factor: Tensor, inputs: Tensor, append_ones: bool) -> None:
    if factor.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"kfac_factor_update accumulates in float32 or float64; got factor of dtype {factor.dtype}")
    if inputs.dim() != 2:
        raise ValueError(f"kfac_factor_update needs inputs (N, D); got shape {tuple(inputs.shape)}")
    size = inputs.shape[1] + int(append_ones)
    if tuple(factor.shape) != (size, size):
        raise ValueError(
            f"kfac_factor_update: factor of shape {tuple(factor.shape)} does not fit inputs "
            f"{tuple(inputs.shape)} with append_ones={append_ones}; expected ({size}, {size})"
        )


def kfac_factor_update_reference(
    factor: Tensor, inputs: Tensor, alpha: float = 1.0, beta: float = 1.0, append_ones: bool = False
) -> Tensor:
    """The pure-torch implementation of ``kfac_factor_update`` (same contract)."""
    x = inputs.to(factor.dtype)
    dim = x.shape[1]
    block = factor[:dim, :dim]
    block.addmm_(x.T, x, beta=beta, alpha=alpha)
    block.copy_(block.tril() + block.tril(-1).T)  # exactly symmetric, like the compiled backend
    if append_ones:
        factor[dim, :dim].mul_(beta).add_(x.sum(0), alpha=alpha)
        factor[:dim, dim] = factor[dim, :dim]
        factor[dim, dim].mul_(beta).add_(alpha * x.shape[0])
    return factor
