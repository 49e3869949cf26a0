"""The matrix-free Fisher operator and its solvers against dense torch.func matrices."""

from __future__ import annotations

import pytest
import torch
from oracles import ITERATIVE, TOLERANCES, brute_force_dense, dense_ggn, flatten
from replay import replay_draws
from torch import nn

import fisherkit as fk

TOL = TOLERANCES[torch.float64]


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    x = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    return model, x, y


def test_exact_products_equal_the_dense_ggn():
    model, x, _ = _model_and_data()
    operator = fk.FisherOperator(model, x, batch_size=4)
    torch.testing.assert_close(operator.to_dense(), dense_ggn(model, x, "categorical"), **TOL)


@pytest.mark.parametrize("fisher_type", ["mc", "empirical"])
def test_sampled_and_empirical_products_equal_the_per_sample_loop(fisher_type):
    model, x, y = _model_and_data()
    operator = fk.FisherOperator(model, (x, y), fisher_type=fisher_type, mc_samples=2, batch_size=4, seed=5)
    sampled = replay_draws(model, x, "categorical", 5, 2, 4) if fisher_type == "mc" else None
    expected = brute_force_dense(model, x, "categorical", fisher_type, y, sampled)
    torch.testing.assert_close(operator.to_dense(), expected, **TOL)


def test_solvers_match_dense_linear_algebra():
    model, x, _ = _model_and_data()
    operator = fk.FisherOperator(model, x)
    dense = dense_ggn(model, x, "categorical")
    eye = torch.eye(dense.shape[0], dtype=torch.float64)
    v = [torch.randn(s, dtype=torch.float64) for s in operator.shapes]
    solved = flatten(operator.solve(v, 0.1, tol=1e-10))
    torch.testing.assert_close(solved, torch.linalg.solve(dense + 0.1 * eye, flatten(v)), **ITERATIVE)
    torch.testing.assert_close(operator.quadratic(v), flatten(v) @ dense @ flatten(v), **TOL)
    ritz = operator.eigenvalues(iterations=operator.dim)
    torch.testing.assert_close(ritz[-1], torch.linalg.eigvalsh(dense)[-1], **ITERATIVE)
    estimate, error = operator.trace_estimate(probes=400, seed=1)
    assert torch.equal(operator.trace(probes=400, seed=1), estimate)
    assert float(error) > 0
    assert abs(float(estimate - torch.trace(dense))) < 4 * float(error)
    with pytest.raises(ValueError, match="did not reach"):
        operator.solve(v, 0.1, tol=1e-12, max_iter=2)


def test_the_operator_and_the_representations_share_verbs_that_mean_the_same():
    model, x, _ = _model_and_data()
    dense = dense_ggn(model, x, "categorical")
    v = [torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) for s in model_shapes(model)]
    eye = torch.eye(dense.shape[0], dtype=torch.float64)
    operator, stored = fk.FisherOperator(model, x), fk.full_fisher(model, x, fisher_type="exact")
    for fisher in (operator, stored):
        assert isinstance(fisher, fk.curvature.FisherVerbs)
        torch.testing.assert_close(flatten(fisher.mv(v)), dense @ flatten(v), **TOL)
        torch.testing.assert_close(fisher.quadratic(v), flatten(v) @ dense @ flatten(v), **TOL)
        solved = flatten(fisher.solve(v, 0.1))  # the operator by CG to a relative residual of 1e-6
        torch.testing.assert_close(solved, torch.linalg.solve(dense + 0.1 * eye, flatten(v)), rtol=1e-5, atol=1e-7)
        assert fisher.trace().dim() == 0
        torch.testing.assert_close(fisher.to_dense(), dense, **TOL)
    torch.testing.assert_close(stored.trace(), torch.trace(dense), **TOL)


def model_shapes(model: nn.Module) -> list[torch.Size]:
    return [p.shape for p in model.parameters()]


class _TimeMajorRecurrent(nn.Module):
    """Batch-first inputs through an ``nn.LSTM(batch_first=False)``, which no layer rule serves."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        steps, _ = self.lstm(x.transpose(0, 1))
        return self.head(steps[-1])


def test_the_operator_serves_modules_that_the_layer_rules_refuse():
    torch.manual_seed(0)
    model = _TimeMajorRecurrent().double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    with pytest.raises(fk.UnsupportedModelError, match="batch_first=True"):
        fk.diagonal_fisher(model, x, fallback=True)
    operator = fk.FisherOperator(model, x, batch_size=2)
    torch.testing.assert_close(operator.to_dense(), dense_ggn(model, x, "categorical"), **TOL)
