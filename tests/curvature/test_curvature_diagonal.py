"""DiagonalFisher algebra against the same operations on its dense matrix."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, flatten

import fisherkit as fk

TOL = TOLERANCES[torch.float64]


def _fisher(seed: int) -> fk.DiagonalFisher:
    g = torch.Generator().manual_seed(seed)
    return fk.DiagonalFisher(
        ["a.weight", "a.bias"],
        [
            torch.rand(3, 2, generator=g, dtype=torch.float64) + 0.1,
            torch.rand(3, generator=g, dtype=torch.float64) + 0.1,
        ],
    )


def _vector(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]


def test_operations_match_dense():
    fisher, v = _fisher(0), _vector(1)
    dense, flat = fisher.to_dense(), flatten(v)
    torch.testing.assert_close(flatten(fisher.mv(v)), dense @ flat, **TOL)
    torch.testing.assert_close(fisher.quadratic(v), flat @ dense @ flat, **TOL)
    torch.testing.assert_close(
        flatten(fisher.solve(v, 0.3)), torch.linalg.solve(dense + 0.3 * torch.eye(9, dtype=dense.dtype), flat), **TOL
    )
    torch.testing.assert_close(
        fisher.inverse(0.3).to_dense(), torch.linalg.inv(dense + 0.3 * torch.eye(9, dtype=dense.dtype)), **TOL
    )
    torch.testing.assert_close(fisher.trace(), torch.trace(dense), **TOL)
    torch.testing.assert_close(fisher.logdet(0.2), torch.logdet(dense + 0.2 * torch.eye(9, dtype=dense.dtype)), **TOL)
    torch.testing.assert_close(flatten(fisher.diagonal()), torch.diagonal(dense), **TOL)
    combined = 0.5 * fisher + _fisher(2) * 2
    torch.testing.assert_close(combined.to_dense(), 0.5 * dense + 2 * _fisher(2).to_dense(), **TOL)


def test_dict_vectors_and_state_dict_round_trip():
    fisher, v = _fisher(0), _vector(1)
    torch.testing.assert_close(fisher.quadratic(dict(zip(fisher.names, v))), fisher.quadratic(v), **TOL)
    restored = _fisher(5)
    restored.load_state_dict(fisher.state_dict())
    torch.testing.assert_close(restored.to_dense(), fisher.to_dense(), **TOL)
    assert fisher.to(torch.float32).diagonals[0].dtype == torch.float32


def test_bad_vectors_states_and_damping_are_refused():
    fisher = _fisher(0)
    with pytest.raises(ValueError, match="expected 2 tensors"):
        fisher.mv([torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="has the model changed"):
        fisher.mv([torch.zeros(2, 3), torch.zeros(3)])
    with pytest.raises(ValueError, match="lacks parameters"):
        fisher.quadratic({"a.weight": torch.zeros(3, 2)})
    other = fk.DiagonalFisher(["b.weight"], [torch.ones(4)])
    with pytest.raises(ValueError, match="cannot be loaded"):
        fisher.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="different parameters"):
        fisher + other
    with pytest.raises(ValueError, match="damping must be"):
        fisher.solve(_vector(1), -1.0)
    singular = fk.DiagonalFisher(["w"], [torch.tensor([1.0, 0.0])])
    with pytest.raises(ValueError, match="singular; pass damping > 0"):
        singular.solve([torch.ones(2)], 0.0)
