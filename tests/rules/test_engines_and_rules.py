"""Model structures the engines must get right, the rule registry, explain(), and data forms."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, brute_force_diagonal, flatten
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from zoo import Scale

import fisherkit as fk
from fisherkit.plan import build_plan
from fisherkit.rules.base import single_grad

TOL = TOLERANCES[torch.float64]


def _data(batch: int = 6, features: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, features, generator=g, dtype=torch.float64), torch.randint(0, 3, (batch,), generator=g)


def _check_against_oracle(model, x, y, **kwargs):
    for fisher_type in ("exact", "empirical"):
        fisher = fk.diagonal_fisher(model, (x, y), fisher_type=fisher_type, **kwargs)
        torch.testing.assert_close(
            flatten(fisher.diagonals), flatten(brute_force_diagonal(model, x, "categorical", fisher_type, y)), **TOL
        )


def test_inplace_activation_after_a_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).double()
    _check_against_oracle(model, *_data(), engine="layerwise")


class _Twice(nn.Module):
    """One Linear applied twice in one forward: gradients add up before squaring."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


def test_module_called_twice_per_forward():
    torch.manual_seed(0)
    _check_against_oracle(_Twice().double(), *_data(), engine="layerwise")


def test_tied_weights_on_every_engine_equal_the_per_sample_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[2].weight = model[0].weight
    assert fk.plan.build_plan(model).tied == ["0.weight"]
    for engine in ("auto", "layerwise", "vmap"):
        _check_against_oracle(model, *_data(), engine=engine)
    x, y = _data()
    want = brute_force_diagonal(model, x, "categorical", "empirical", y)
    kfac = fk.kfac_fisher(model, (x, y), fisher_type="empirical")  # tied modules: exact diagonal blocks
    assert type(next(b for b in kfac.blocks if b.names == ("0.weight",))).__name__ == "DiagonalBlock"
    torch.testing.assert_close(kfac.diagonal()[0], want[0], **TOL)


class _TiedEmbeddingLM(nn.Module):
    """An embedding and an output layer that share one matrix, called in one forward."""

    def __init__(self, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4, padding_idx=padding_idx)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_tied_embedding_and_head_sum_their_contributions_before_squaring(padding_idx):
    torch.manual_seed(0)
    model = _TiedEmbeddingLM(padding_idx).double()
    tokens = torch.randint(0, 7, (5, 3))
    labels = torch.randint(0, 7, (5, 3))
    want = brute_force_diagonal(model, tokens, "categorical", "empirical", labels)
    fisher = fk.diagonal_fisher(model, (tokens, labels), fisher_type="empirical")
    assert fisher.names == ("embed.weight", "mix.weight", "mix.bias")
    torch.testing.assert_close(flatten(fisher.diagonals), flatten(want), **TOL)
    kfac = fk.kfac_fisher(model, (tokens, labels), fisher_type="empirical")
    kinds = {block.names: type(block).__name__ for block in kfac.blocks}
    assert kinds == {("embed.weight",): "DiagonalBlock", ("mix.weight", "mix.bias"): "KroneckerBlock"}
    torch.testing.assert_close(kfac.diagonal()[0], want[0], **TOL)
    per_sample = fk.block_fisher(model, (tokens, labels), fisher_type="empirical")  # the summed per-sample path
    torch.testing.assert_close(per_sample.diagonal()[0], want[0], **TOL)


class _MyLinear(nn.Linear):
    pass


def test_subclasses_use_the_parent_rule_and_users_can_register_rules():
    torch.manual_seed(0)
    model = nn.Sequential(_MyLinear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    assert "LinearRule" in fk.explain(model).splitlines()[1]
    _check_against_oracle(model, *_data(), engine="layerwise")

    class Doubling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(5, dtype=torch.float64))

        def forward(self, x):
            return 2 * x * self.weight

    @fk.register_rule(Doubling)
    class DoublingRule(fk.LayerRule[Doubling]):  # the module type parameter is optional
        def per_sample_grads(self, module, call, grad_output, names):
            return {"weight": 2 * grad_output * call.input}

    model = nn.Sequential(nn.Linear(4, 5), Doubling(), nn.Tanh(), nn.Linear(5, 3)).double()
    assert "DoublingRule" in fk.explain(model)
    _check_against_oracle(model, *_data(), engine="layerwise")


def test_engines_refuse_an_entry_without_a_rule_and_rules_of_one_output_refuse_several():
    model = nn.Sequential(Scale(2))
    (entry,) = build_plan(model, fallback=False).entries
    with pytest.raises(fk.UnsupportedModelError, match=r"0 \(Scale\).*register_rule.*fallback=True"):
        _ = entry.layer_rule
    with pytest.raises(TypeError, match="one output tensor; got 2"):
        single_grad((torch.zeros(1), torch.zeros(1)))


def test_explain_lists_rules_frozen_and_unsupported():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Scale(2), nn.Flatten(), nn.Linear(2, 3))
    model[3].bias.requires_grad_(False)
    text = fk.explain(model, fallback=False)
    assert "ConvRule" in text and "none (unsupported)" in text
    assert "left out (requires_grad=False): 3.bias" in text
    assert "TorchFuncRule (fallback, slow)" in fk.explain(model)
    assert "TorchFuncRule (fallback, slow)" in fk.explain(model, fallback=True)
    assert "ElementwiseScaleRule (x̂ ⊙ weight, checked per call; else fallback)" in fk.explain(nn.PReLU())


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


def test_data_forms_agree():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = _data(10)
    reference = fk.diagonal_fisher(model, (x, y), fisher_type="empirical", batch_size=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    batches = [(x[:7], y[:7]), [x[7:], y[7:]]]
    for data in (loader, batches):
        fisher = fk.diagonal_fisher(model, data, fisher_type="empirical", progress=False)
        torch.testing.assert_close(flatten(fisher.diagonals), flatten(reference.diagonals), **TOL)
    exact = fk.diagonal_fisher(model, x, fisher_type="exact", batch_size=4)
    from_batches = fk.diagonal_fisher(model, [x[:5], x[5:]], fisher_type="exact", progress=True)
    torch.testing.assert_close(flatten(exact.diagonals), flatten(from_batches.diagonals), **TOL)


def test_model_with_several_inputs():
    torch.manual_seed(0)
    model = _TwoInputs().double()
    x, y = _data(5)
    z = torch.randn(5, 2, dtype=torch.float64)
    per_engine = [
        fk.diagonal_fisher(model, [((x, z), y)], fisher_type="empirical", engine=e) for e in ("layerwise", "vmap")
    ]
    expected = [g**2 for g in _brute_two_inputs(model, x, z, y)]
    for fisher in per_engine:
        torch.testing.assert_close(flatten(fisher.diagonals), flatten(expected), **TOL)


def _brute_two_inputs(model, x, z, y):
    totals = [torch.zeros_like(p) for p in model.parameters()]
    for n in range(len(x)):
        loss = nn.functional.cross_entropy(model(x[n : n + 1], z[n : n + 1]), y[n : n + 1])
        for t, g in zip(totals, torch.autograd.grad(loss, list(model.parameters()))):
            t += g**2 / len(x)
    return [t.sqrt() for t in totals]


def test_seed_reproducibility_and_memory_budget_chunking():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, _ = _data(9)
    first = fk.diagonal_fisher(model, x, mc_samples=4, seed=11)
    again = fk.diagonal_fisher(model, x, mc_samples=4, seed=11, memory_budget=1)  # one column / sample at a time
    other = fk.diagonal_fisher(model, x, mc_samples=4, seed=12)
    torch.testing.assert_close(flatten(first.diagonals), flatten(again.diagonals), **TOL)
    assert not torch.allclose(flatten(first.diagonals), flatten(other.diagonals))
    vmap_chunked = fk.diagonal_fisher(model, x, fisher_type="exact", engine="vmap", memory_budget=1)
    layerwise = fk.diagonal_fisher(model, x, fisher_type="exact", memory_budget=1)
    torch.testing.assert_close(flatten(vmap_chunked.diagonals), flatten(layerwise.diagonals), **TOL)


class _PartlyFrozenForward(nn.Module):
    """The first layer runs under no_grad: no gradient reaches it, so its Fisher is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen_path = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            x = torch.tanh(self.frozen_path(x))
        return self.head(x)


def test_layer_run_under_no_grad_gets_zero_fisher_on_both_engines():
    torch.manual_seed(0)
    model = _PartlyFrozenForward().double()
    x, y = _data()
    for engine in ("layerwise", "vmap"):
        fisher = fk.diagonal_fisher(model, (x, y), fisher_type="empirical", engine=engine)
        assert float(fisher.diagonals[0].abs().sum()) == 0.0 and float(fisher.diagonals[1].abs().sum()) == 0.0
        expected = brute_force_diagonal(model, x, "categorical", "empirical", y)
        torch.testing.assert_close(flatten(fisher.diagonals), flatten(expected), **TOL)


class _UnusedBranch(nn.Module):
    """A layer whose output never reaches the model output: its Fisher is zero for every type."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        self.unused(x)
        return self.used(x)


def test_layer_whose_output_is_unused_gets_zero_fisher():
    torch.manual_seed(0)
    model = _UnusedBranch().double()
    x, y = _data()
    for fisher_type in ("mc", "exact", "empirical"):
        fisher = fk.diagonal_fisher(model, (x, y), fisher_type=fisher_type, engine="layerwise", seed=0)
        assert float(fisher.diagonals[2].abs().sum()) == 0.0 and float(fisher.diagonals[3].abs().sum()) == 0.0
        assert float(fisher.diagonals[0].abs().sum()) > 0.0
