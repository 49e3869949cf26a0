"""Top eigenpairs, the low-rank Fisher and SciPy operators against dense torch.func matrices and the
float64 per-sample loop."""

from __future__ import annotations

import pytest
import torch
from oracles import ITERATIVE, TOLERANCES, brute_force_dense, brute_force_diagonal, dense_ggn, flatten
from replay import replay_draws
from torch import nn

import fisherkit as fk

scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
TOL = TOLERANCES[torch.float64]


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))


def test_the_operator_gives_the_top_eigenpairs_of_the_dense_fisher():
    model, x, _ = _model_and_data()
    dense = dense_ggn(model, x, "categorical")
    expected_values, expected_vectors = torch.linalg.eigh(dense)
    values, vectors = fk.FisherOperator(model, x).eigenpairs(3, iterations=dense.shape[0])
    torch.testing.assert_close(values, expected_values.flip(0)[:3], **ITERATIVE)
    overlaps = (vectors.T @ expected_vectors.flip(1)[:, :3]).diagonal().abs()  # eigenvectors up to sign
    torch.testing.assert_close(overlaps, torch.ones(3, dtype=torch.float64), **ITERATIVE)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(3, dtype=torch.float64), **ITERATIVE)


def test_the_low_rank_fisher_keeps_the_top_eigenpairs_and_the_exact_diagonal():
    model, x, _ = _model_and_data()
    dense = dense_ggn(model, x, "categorical")
    low = fk.fisher(model, x, "lowrank", fisher_type="exact", rank=4, iterations=dense.shape[0])
    torch.testing.assert_close(flatten(low.diagonal()), dense.diagonal(), **ITERATIVE)
    (block,) = low.blocks
    torch.testing.assert_close(block.values, torch.linalg.eigvalsh(dense).flip(0)[:4], **ITERATIVE)
    full_rank = fk.fisher(model, x, "lowrank", fisher_type="exact", rank=dense.shape[0], iterations=dense.shape[0])
    torch.testing.assert_close(full_rank.to_dense(), dense, **ITERATIVE)


def test_the_mc_low_rank_fisher_uses_one_set_of_labels():
    model, x, _ = _model_and_data()
    draws = replay_draws(model, x, "categorical", seed=3, mc_samples=2, batch_size=5)
    expected = brute_force_dense(model, x, "categorical", "mc", sampled=draws)
    low = fk.fisher(model, x, "lowrank", fisher_type="mc", mc_samples=2, seed=3, batch_size=5, rank=expected.shape[0])
    torch.testing.assert_close(low.to_dense(), expected, **ITERATIVE)
    diagonal = brute_force_diagonal(model, x, "categorical", "mc", sampled=draws)
    small = fk.fisher(model, x, "lowrank", fisher_type="mc", mc_samples=2, seed=3, batch_size=5, rank=2)
    torch.testing.assert_close(flatten(small.diagonal()), flatten(diagonal), **ITERATIVE)
    unseeded = fk.fisher(model, x, "lowrank", fisher_type="mc", rank=2)  # draws from seed 0
    diagonal = brute_force_diagonal(
        model, x, "categorical", "mc", sampled=replay_draws(model, x, "categorical", 0, 1, 256)
    )
    torch.testing.assert_close(flatten(unseeded.diagonal()), flatten(diagonal), **ITERATIVE)
    with pytest.raises(ValueError, match="pass seed=... instead of generator="):
        fk.fisher(model, x, "lowrank", generator=torch.Generator(), rank=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scipy_operators_multiply_as_the_fisher_in_its_dtype(dtype):
    model, x, _ = _model_and_data()
    model = model.to(dtype)
    x = x.to(dtype)
    dense = dense_ggn(model, x, "categorical").to(dtype)
    v = torch.randn(dense.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(2))
    tolerance = TOLERANCES[dtype]
    fishers = [fk.kfac_fisher(model, x, fisher_type="exact"), fk.FisherOperator(model, x)]
    for fisher in fishers:
        operator = fisher.to_scipy()
        assert (
            operator.shape == dense.shape
            and operator.dtype == {torch.float64: "float64", torch.float32: "float32"}[dtype]
        )
        product = torch.from_numpy(operator @ v.numpy())
        assert product.dtype == dtype
        names = fisher.names
        shapes = dict(model.named_parameters())
        parts = v.split([shapes[n].numel() for n in names])
        expected = flatten(fisher.mv([p.reshape(shapes[n].shape) for p, n in zip(parts, names)]))
        torch.testing.assert_close(product, expected.to(dtype), **tolerance)
    operator = fishers[1].to_scipy()
    torch.testing.assert_close(torch.from_numpy(operator @ v.numpy()), dense @ v, **tolerance)
    if dtype == torch.float64:  # SciPy's own solvers on the operator
        top = scipy_linalg.eigsh(operator, k=1, which="LA", tol=1e-12)[0]
        torch.testing.assert_close(torch.from_numpy(top), torch.linalg.eigvalsh(dense)[-1:], **ITERATIVE)
