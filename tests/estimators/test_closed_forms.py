"""Analytic cases: softmax regression's exact Fisher in closed form; MC converging to exact."""

from __future__ import annotations

import torch
from oracles import TOLERANCES, flatten
from torch import nn

import fisherkit as fk


def test_softmax_regression_exact_fisher_closed_form():
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    x = torch.randn(37, 6, dtype=torch.float64)
    fisher = fk.diagonal_fisher(model, x, fisher_type="exact", batch_size=10)
    with torch.no_grad():
        p = model(x).softmax(-1)
    variance = p * (1 - p)  # diagonal of diag(p) − ppᵀ
    weight = (variance.T @ x**2) / len(x)  # F[c,i] = mean_n p_nc (1 − p_nc) x_ni²
    bias = variance.mean(0)
    torch.testing.assert_close(fisher.diagonals[0], weight, **TOLERANCES[torch.float64])
    torch.testing.assert_close(fisher.diagonals[1], bias, **TOLERANCES[torch.float64])


def test_linear_gaussian_exact_fisher_is_input_second_moment_over_variance():
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    x = torch.randn(50, 3, dtype=torch.float64)
    fisher = fk.diagonal_fisher(model, x, fk.Gaussian(variance=0.25), "exact")
    expected_weight = (x**2).mean(0).expand(2, 3) / 0.25
    torch.testing.assert_close(fisher.diagonals[0], expected_weight, **TOLERANCES[torch.float64])
    torch.testing.assert_close(
        fisher.diagonals[1], torch.full((2,), 4.0, dtype=torch.float64), **TOLERANCES[torch.float64]
    )


def test_mc_converges_to_exact_like_one_over_sqrt_samples():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    exact = flatten(fk.diagonal_fisher(model, x, fisher_type="exact").diagonals)
    errors = {}
    for samples in (1, 4, 16, 64, 256):
        mc = flatten(fk.diagonal_fisher(model, x, mc_samples=samples, seed=3).diagonals)
        errors[samples] = float((mc - exact).norm() / exact.norm())
    # the MC estimate is unbiased with variance ∝ 1/k: its error must shrink like 1/√k
    for samples in (4, 16, 64, 256):
        assert errors[samples] <= 2.0 * errors[1] / samples**0.5, errors
    assert errors[256] < 0.05, errors
