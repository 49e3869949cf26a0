"""The low-rank representation against dense linear algebra on U diag(λ) Uᵀ + diag(d) built here."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, flatten

import fisherkit as fk

TOL = TOLERANCES[torch.float64]
SHAPES = (torch.Size([3, 4]), torch.Size([4]))


def _block(rank: int = 3, zero_remainder: bool = False):
    gen = torch.Generator().manual_seed(0)
    vectors, _ = torch.linalg.qr(torch.randn(16, rank, generator=gen, dtype=torch.float64))
    values = torch.rand(rank, generator=gen, dtype=torch.float64) + 0.5
    remainder = (
        torch.zeros(16, dtype=torch.float64) if zero_remainder else torch.rand(16, generator=gen, dtype=torch.float64)
    )
    dense = vectors @ torch.diag(values) @ vectors.T + torch.diag(remainder)
    return fk.LowRankBlock(("w", "b"), SHAPES, values, vectors, remainder), dense


def _vector(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]


def test_the_algebra_equals_dense_linear_algebra():
    block, dense = _block()
    fisher = fk.Curvature(("w", "b"), SHAPES, [block])
    v, eye = _vector(), torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(fisher.to_dense(), dense, **TOL)
    torch.testing.assert_close(flatten(fisher.mv(v)), dense @ flatten(v), **TOL)
    torch.testing.assert_close(fisher.quadratic(v), flatten(v) @ dense @ flatten(v), **TOL)
    torch.testing.assert_close(flatten(fisher.solve(v, 0.1)), torch.linalg.solve(dense + 0.1 * eye, flatten(v)), **TOL)
    torch.testing.assert_close(fisher.logdet(0.1), torch.linalg.slogdet(dense + 0.1 * eye)[1], **TOL)
    torch.testing.assert_close(flatten(fisher.diagonal()), dense.diagonal(), **TOL)
    torch.testing.assert_close(fisher.trace(), dense.trace(), **TOL)
    torch.testing.assert_close(fisher.inverse(0.1).to_dense(), torch.linalg.inv(dense + 0.1 * eye), **TOL)
    torch.testing.assert_close((2.5 * fisher).to_dense(), 2.5 * dense, **TOL)
    restored = fk.Curvature.from_state_dict(fisher.state_dict())
    torch.testing.assert_close(restored.to_dense(), dense, **TOL)


def test_a_zero_remainder_needs_damping_and_invalid_fields_are_refused():
    block, dense = _block(zero_remainder=True)
    with pytest.raises(ValueError, match="zero entries.*pass damping > 0"):
        block.solve(_vector(), 0.0)
    eye = torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(block.logdet(0.3), torch.linalg.slogdet(dense + 0.3 * eye)[1], **TOL)
    with pytest.raises(ValueError, match=r"vectors of shape \(16, 3\)"):
        fk.LowRankBlock(("w", "b"), SHAPES, block.values, block.vectors[:10], block.remainder)
    with pytest.raises(ValueError, match="eigenvalues must be > 0"):
        fk.LowRankBlock(("w", "b"), SHAPES, -block.values, block.vectors, block.remainder)


def test_moving_averages_need_the_same_eigenvectors():
    block, dense = _block()
    other = fk.LowRankBlock(block.names, block.shapes, 2 * block.values, block.vectors, 3 * block.remainder)
    expected = 0.25 * dense + 0.75 * other.to_dense()
    block.ema_(other, 0.25)
    torch.testing.assert_close(block.to_dense(), expected, **TOL)
    rotated, _ = _block(rank=2)
    with pytest.raises(ValueError, match="moving average"):
        block.ema_(rotated, 0.5)
