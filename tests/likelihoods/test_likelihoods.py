"""Likelihoods against autograd and torch.func: closed-form gradients and output-Fisher roots."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from oracles import TOLERANCES, dense_ggn, log_likelihood
from torch.func import hessian

import fisherkit as fk

CASES = [
    ("categorical", fk.Categorical(), (5, 4)),
    ("categorical", fk.Categorical(), (3, 2, 4)),
    ("gaussian", fk.Gaussian(variance=0.7), (4, 3)),
    ("gaussian", fk.Gaussian(variance=0.7), (4,)),
    ("gaussian", fk.Gaussian(variance=torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)), (4, 3)),
    ("gaussian", fk.Gaussian(variance=torch.tensor([[0.5], [3.0]], dtype=torch.float64)), (4, 2, 3)),
    ("bernoulli", fk.Bernoulli(), (4, 3)),
]


def _target(lik, output, generator):
    return lik.sample(output, generator)


@pytest.mark.parametrize("name,lik,shape", CASES)
def test_grad_nll_matches_autograd_and_log_prob_matches_torch(name, lik, shape):
    generator = torch.Generator().manual_seed(0)
    output = torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)
    target = _target(lik, output, generator)
    variance = getattr(lik, "variance", 1.0)
    nll = -log_likelihood(name, output, target, variance)
    (expected,) = torch.autograd.grad(nll, output)
    torch.testing.assert_close(lik.grad_nll(output, target), expected, **TOLERANCES[torch.float64])
    per_sample = torch.stack([log_likelihood(name, output[n], target[n], variance) for n in range(shape[0])])
    if name == "gaussian":  # fisherkit's log_prob keeps the normalizing constant
        constant = torch.log(2 * math.pi * torch.as_tensor(variance, dtype=torch.float64)).expand(output[0].shape)
        per_sample = per_sample - 0.5 * constant.sum()
    torch.testing.assert_close(lik.log_prob(output, target), per_sample.detach(), **TOLERANCES[torch.float64])


@pytest.mark.parametrize("name,lik,shape", CASES)
def test_sqrt_columns_reproduce_the_output_hessian(name, lik, shape):
    output = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    columns = lik.sqrt_output_fisher(output, None)
    variance = getattr(lik, "variance", 1.0)
    for n in range(shape[0]):
        s = columns[:, n].reshape(columns.shape[0], -1)
        dummy = lik.sample(output[n : n + 1], None)[0]
        h = hessian(lambda o, d=dummy: -log_likelihood(name, o, d, variance))(output[n])
        torch.testing.assert_close(s.T @ s, h.reshape(s.shape[1], s.shape[1]), **TOLERANCES[torch.float64])


def test_per_output_gaussian_variances_give_the_ggn_and_draw_with_those_variances():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    variance = torch.tensor([0.25, 1.0, 9.0], dtype=torch.float64)
    expected = dense_ggn(copy.deepcopy(model), x, "gaussian", variance)  # J^T diag(1/σ²) J by torch.func
    for structure in ("full", "diagonal"):
        estimate = fk.fisher(model, x, structure, likelihood=fk.Gaussian(variance), fisher_type="exact")
        dense = estimate.to_dense()
        torch.testing.assert_close(dense, expected if structure == "full" else torch.diag(expected.diagonal()))
    draws = fk.Gaussian(variance).sample(torch.zeros(40000, 3), torch.Generator().manual_seed(0))
    # the sample variance of 40,000 draws has a relative standard error of √(2/40000) = 0.007: 0.03 is 4 of them
    torch.testing.assert_close(draws.var(0).double(), variance, rtol=0.03, atol=0)


@pytest.mark.parametrize(
    "variance, words",
    [
        (torch.tensor([1.0, -1.0]), "positive variance"),
        (torch.tensor([1, 2]), "positive variance"),
        (True, "positive variance"),
        (float("inf"), "positive variance"),
    ],
)
def test_bad_gaussian_variances_are_refused(variance, words):
    with pytest.raises(ValueError, match=words):
        fk.Gaussian(variance)


def test_per_output_variances_that_do_not_fit_the_outputs_are_refused():
    with pytest.raises(ValueError, match=r"do not broadcast to one sample's outputs \(3,\).*without the batch axis"):
        fk.diagonal_fisher(torch.nn.Linear(2, 3), torch.randn(4, 2), likelihood=fk.Gaussian(torch.ones(4, 3)))


def test_categorical_sampling_follows_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    draws = fk.Categorical().sample(logits.expand(20000, 3), torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=3).double() / 20000
    # each frequency has a standard error of at most √(0.25/20000) = 0.0035: 0.015 is 4 of them
    torch.testing.assert_close(frequencies, logits.softmax(-1)[0].double(), atol=0.015, rtol=0)


def test_unknown_likelihood_and_bad_variance():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        fk.diagonal_fisher(torch.nn.Linear(2, 2), torch.randn(3, 2), likelihood="poisson")
    with pytest.raises(ValueError, match="positive variance"):
        fk.Gaussian(variance=0.0)


def test_categorical_root_has_c_minus_1_columns_and_is_stable_for_saturated_softmax():
    logits = torch.tensor([[60.0, 0.0, -60.0], [-60.0, 0.0, 60.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    columns = fk.Categorical().sqrt_output_fisher(logits, None)
    assert columns.shape == (2, 3, 3)
    assert bool(torch.isfinite(columns).all())
    p = logits.softmax(-1)
    for n in range(3):
        s = columns[:, n]
        torch.testing.assert_close(s.T @ s, torch.diag(p[n]) - torch.outer(p[n], p[n]), **TOLERANCES[torch.float64])
