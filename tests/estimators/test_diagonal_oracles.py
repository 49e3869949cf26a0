"""Every layer rule × Fisher type × engine against the float64 per-sample loop, and the exact
Fisher against dense torch.func GGN matrices."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, brute_force_diagonal, brute_force_per_sample_trace, dense_ggn, flatten
from replay import replay_draws
from zoo import CASE_AND_TYPE_IDS, CASES, CASES_AND_TYPES, build_case

import fisherkit as fk

ENGINES = ["layerwise", "vmap"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case, fisher_type", CASES_AND_TYPES, ids=CASE_AND_TYPE_IDS)
def test_diagonal_matches_per_sample_loop(case, fisher_type, engine):
    model, inputs, targets = build_case(case)
    mc_samples = 3
    fisher = fk.diagonal_fisher(
        model,
        (inputs, targets),
        case.likelihood,
        fisher_type,
        mc_samples=mc_samples,
        engine=engine,
        fallback=case.fallback,
        batch_size=4,
        seed=7,
    )
    sampled = None
    if fisher_type == "mc":
        sampled = replay_draws(model, inputs, case.likelihood, 7, mc_samples, batch_size=4)
    expected = brute_force_diagonal(model, inputs, case.likelihood, fisher_type, targets, sampled)
    assert fisher.names == tuple(n for n, p in model.named_parameters() if p.requires_grad)
    for name, got, want in zip(fisher.names, fisher.diagonals, expected):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64], msg=name)
    assert float(flatten(expected).abs().sum()) > 0


def test_predicted_fisher_of_a_gaussian_is_refused_with_the_reason():
    case = next(c for c in CASES if c.likelihood == "gaussian")
    model, inputs, _ = build_case(case)
    with pytest.raises(ValueError, match="zero for a Gaussian likelihood.*Use fisher_type='mc' or 'exact'"):
        fk.diagonal_fisher(model, inputs, "gaussian", "predicted")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", [c for c in CASES if c.name != "embedding"], ids=lambda c: c.name)
def test_exact_diagonal_matches_dense_ggn(case, engine):
    model, inputs, _ = build_case(case)
    fisher = fk.diagonal_fisher(model, inputs, case.likelihood, "exact", engine=engine, fallback=case.fallback)
    dense = dense_ggn(model, inputs, case.likelihood)
    torch.testing.assert_close(flatten(fisher.diagonals), torch.diagonal(dense), **TOLERANCES[torch.float64])


def test_ignore_index_positions_contribute_nothing():
    case = next(c for c in CASES if c.name == "sequence-output")
    model, inputs, targets = build_case(case)
    targets[0, 1:] = -100
    targets[2, 0] = -100
    for fisher_type in ["exact", "empirical"]:
        fisher = fk.diagonal_fisher(model, (inputs, targets), fisher_type=fisher_type)
        expected = brute_force_diagonal(model, inputs, "categorical", fisher_type, targets)
        torch.testing.assert_close(flatten(fisher.diagonals), flatten(expected), **TOLERANCES[torch.float64])


def test_float32_model_gives_float32_fisher_close_to_float64_oracle():
    case = CASES[0]
    model, inputs, targets = build_case(case)
    fisher = fk.diagonal_fisher(model.float(), (inputs.float(), targets), fisher_type="exact")
    expected = brute_force_diagonal(model, inputs, "categorical", "exact")
    assert all(d.dtype == torch.float32 for d in fisher.diagonals)
    torch.testing.assert_close(flatten(fisher.diagonals).double(), flatten(expected), **TOLERANCES[torch.float32])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fisher_type", ["mc", "exact", "empirical"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_per_sample_trace_matches_per_sample_loop(case, fisher_type, engine):
    model, inputs, targets = build_case(case)
    options = {"engine": engine, "fallback": case.fallback, "batch_size": 4, "seed": 7, "mc_samples": 3}
    traces = fk.per_sample_fisher_trace(model, (inputs, targets), case.likelihood, fisher_type, **options)
    sampled = None
    if fisher_type == "mc":
        sampled = replay_draws(model, inputs, case.likelihood, 7, 3, batch_size=4)
    expected = brute_force_per_sample_trace(model, inputs, case.likelihood, fisher_type, targets, sampled)
    assert traces.shape == (inputs.shape[0],) and traces.dtype == torch.float64
    torch.testing.assert_close(traces, expected, **TOLERANCES[torch.float64])
    assert float(expected.min()) > 0
