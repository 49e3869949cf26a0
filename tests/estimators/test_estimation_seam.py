"""One estimation seam: ``fk.fisher`` and its structure registry, the options type, and consumers
that take a Fisher or a structure name through it."""

import copy

import pytest
import torch
from oracles import brute_force_diagonal
from torch import nn

import fisherkit as fk
from fisherkit.regularizers import EWC


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return model, torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))


@pytest.mark.parametrize(
    "structure, named",
    [
        ("diagonal", fk.diagonal_fisher),
        ("kfac", fk.kfac_fisher),
        ("ekfac", fk.ekfac_fisher),
        ("block", fk.block_fisher),
        ("full", fk.full_fisher),
    ],
)
def test_fisher_serves_every_structure_like_its_named_estimator(structure, named):
    model, x, y = _model_and_data()
    generic = fk.fisher(model, (x, y), structure, fisher_type="empirical", batch_size=5)
    direct = named(model, (x, y), fisher_type="empirical", batch_size=5)
    torch.testing.assert_close(generic.to_dense(), direct.to_dense())
    oracle = brute_force_diagonal(model, x, "categorical", "empirical", targets=y)
    if structure in ("diagonal", "block", "full"):  # these are exact on the diagonal
        torch.testing.assert_close(_flat(generic.diagonal()), _flat(oracle))


def test_structure_options_reach_only_their_structure():
    model, x, y = _model_and_data()
    reduce = fk.fisher(model, (x, y), "kfac", fisher_type="empirical", approximation="reduce")
    torch.testing.assert_close(
        reduce.to_dense(), fk.kfac_fisher(model, (x, y), fisher_type="empirical", approximation="reduce").to_dense()
    )
    with pytest.raises(TypeError, match=r"unknown estimator option\(s\) \['approximation'\]"):
        fk.fisher(model, (x, y), "diagonal", approximation="reduce")
    with pytest.raises(ValueError, match=r"unknown Fisher structure 'dense'; choose one of \('diagonal'"):
        fk.fisher(model, (x, y), "dense")


def test_a_registered_structure_is_served_to_fisher_and_ewc():
    def scaled_diagonal(job, data, factor=2.0):
        from fisherkit.estimators.diagonal import estimate_diagonal

        return estimate_diagonal(job, data) * factor

    model, x, y = _model_and_data()
    fk.register_structure("twice-diagonal", scaled_diagonal, ("factor",))  # the conftest fixture removes it
    twice = fk.fisher(model, (x, y), "twice-diagonal", fisher_type="empirical", factor=3.0)
    once = fk.diagonal_fisher(model, (x, y), fisher_type="empirical")
    torch.testing.assert_close(_flat(twice.diagonal()), 3.0 * _flat(once.diagonal()))
    ewc = EWC(model, 1.0, structure="twice-diagonal", fisher_type="empirical", factor=3.0)
    ewc.end_task((x, y))
    torch.testing.assert_close(_flat(ewc.fishers[0][0].diagonal()), _flat(twice.diagonal()))


def test_ewc_checks_its_options_at_construction_and_accepts_a_given_fisher():
    model, x, y = _model_and_data()
    with pytest.raises(ValueError, match="unknown fisher_type 'hessian'"):
        EWC(model, 1.0, fisher_type="hessian")
    with pytest.raises(TypeError, match=r"unknown estimator option\(s\) \['samples'\]"):
        EWC(model, 1.0, samples=3)
    with pytest.raises(ValueError, match="unknown Fisher structure"):
        EWC(model, 1.0, structure="tridiagonal")
    given = fk.kfac_fisher(model, (x, y), fisher_type="empirical")
    ewc = EWC(model, 4.0)
    ewc.consolidate(given)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    shift = [torch.full_like(p, 0.1) for p in model.parameters()]
    torch.testing.assert_close(ewc.penalty(), 0.5 * 4.0 * given.quadratic(shift))


def test_non_finite_statistics_raise_their_own_error_type():
    model, x, _ = _model_and_data()
    x = x.clone()
    x[0, 0] = float("inf")
    with pytest.raises(fk.NonFiniteFisherError, match=r"'0.weight' has NaN or Inf entries"):
        fk.diagonal_fisher(model, x)
    assert issubclass(fk.NonFiniteFisherError, ValueError)


def test_mas_takes_the_shared_options_and_checks_them_at_construction():
    from fisherkit.regularizers import MAS

    model, x, _ = _model_and_data()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        MAS(model, 1.0, batch_size=0)
    whole, chunked = MAS(model, 1.0), MAS(model, 1.0, batch_size=5, engine="vmap")
    whole.end_task(x)
    chunked.end_task(x)
    for name in whole.importance:
        torch.testing.assert_close(whole.importance[name], chunked.importance[name])


class _NoRule(nn.Module):
    """A parameterized module without a layer rule, before the chosen subnetwork."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.full((4,), 0.1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


def test_the_parameters_option_estimates_a_subnetwork_and_needs_no_rule_elsewhere():
    _, x, _ = _model_and_data()
    torch.manual_seed(0)
    model = nn.Sequential(_NoRule(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    chosen = ["3.weight", "3.bias"]
    oracle = brute_force_diagonal(copy.deepcopy(model), x, "categorical", "exact")
    names = [n for n, _ in model.named_parameters()]
    for estimate in (fk.diagonal_fisher, fk.block_fisher):
        fisher = estimate(model, x, fisher_type="exact", parameters=chosen, fallback=False)
        assert fisher.names == tuple(chosen)
        for name, diagonal in zip(chosen, fisher.diagonal()):
            torch.testing.assert_close(diagonal, oracle[names.index(name)])
    kfac = fk.kfac_fisher(model, x, fisher_type="exact", parameters=chosen, fallback=False)
    frozen = copy.deepcopy(model)
    for name, parameter in frozen.named_parameters():
        parameter.requires_grad_(name in chosen)
    with pytest.warns(UserWarning, match="left out of the Fisher"):  # the same subnetwork, by freezing
        torch.testing.assert_close(kfac.to_dense(), fk.kfac_fisher(frozen, x, fisher_type="exact").to_dense())
    with pytest.raises(ValueError, match=r"parameters \['3.wieght'\] are not trainable parameters.*named_parameters"):
        fk.diagonal_fisher(model, x, parameters=["3.wieght"])
    with pytest.raises(TypeError, match=r"parameters must be a sequence of parameter names"):
        fk.diagonal_fisher(model, x, parameters="3.weight")


def test_the_layer_structures_refuse_the_vmap_engine_instead_of_ignoring_it():
    model, x, _ = _model_and_data()
    for estimate in (fk.kfac_fisher, fk.ekfac_fisher):
        with pytest.raises(fk.UnsupportedModelError, match=r"needs each layer's inputs.*engine='auto' or 'layerwise'"):
            estimate(model, x, engine="vmap")
    vmap = fk.diagonal_fisher(model, x, engine="vmap", fisher_type="exact")  # the same visits, without layers
    oracle = brute_force_diagonal(copy.deepcopy(model), x, "categorical", "exact")
    torch.testing.assert_close(_flat(vmap.diagonal()), _flat(oracle))
