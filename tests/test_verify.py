"""``fk.verify``: the fast paths on a user's model against a per-sample autograd loop — agreeing
where the rules are right, and naming the parameter where a rule is wrong."""

import contextlib

import torch
from torch import nn
from zoo import CASES, build_case

import fisherkit as fk
from fisherkit.rules import registry
from fisherkit.rules.linear import LinearRule


@contextlib.contextmanager
def registered(module_type, rule_class):
    saved = dict(registry._RULES)
    fk.register_rule(module_type)(rule_class)
    try:
        yield
    finally:
        registry._RULES.clear()
        registry._RULES.update(saved)


def test_every_zoo_model_verifies():
    for case in CASES:
        model, inputs, targets = build_case(case)
        result = fk.verify(model, (inputs, targets), case.likelihood, fallback=case.fallback)
        assert result.ok, f"{case.name}:\n{result.report()}"
        assert result.worst < 1e-9


class _Projection(nn.Linear):
    pass


class _BatchSumRule(LinearRule):
    """Wrong on purpose: squares the batch sum of the gradients instead of summing squares."""

    def accumulate_sqgrad(self, module, call, grad_output, out):
        out["weight"].add_(torch.einsum("kno,ni->oi", grad_output, call.input).square())
        out["bias"].add_(grad_output.sum((0, 1)).square())


def test_a_wrong_rule_is_caught_and_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), _Projection(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    with registered(_Projection, _BatchSumRule):
        result = fk.verify(model, x, samples=6)
    assert not result.ok
    wrong = {c.name: c for c in result.parameters if c.sqgrad_error > 0.1}
    assert sorted(wrong) == ["2.bias", "2.weight"]
    assert all("_BatchSumRule" in c.module for c in wrong.values())
    assert "MISMATCH" in result.report()
    assert result.parameters[0].sqgrad_error < 1e-9  # the built-in Linear rule is right


def test_verify_reads_user_batches_and_reports_tied_parameters():
    torch.manual_seed(0)
    embed = nn.Embedding(7, 4)
    head = nn.Linear(4, 7, bias=False)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.Tanh(), head).double()
    tokens = torch.randint(0, 7, (5, 3))
    result = fk.verify(model, [{"input": tokens}], inputs=("input",))
    assert result.ok, result.report()
    assert [c.module for c in result.parameters] == ["0 (EmbeddingRule) + 2 (LinearRule)"]
