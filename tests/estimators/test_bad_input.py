"""Each documented bad input gets its documented error, and nothing is left behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkit as fk


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_output_shape_that_does_not_fit_the_likelihood():
    model = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="C >= 2 classes"):
        fk.diagonal_fisher(model, torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"targets of shape \(5, 2\) do not fit"):
        fk.diagonal_fisher(_mlp(), (torch.randn(5, 4), torch.zeros(5, 2, dtype=torch.long)), fisher_type="empirical")


def test_labels_out_of_range_for_the_empirical_fisher():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*\[0, 3\]"):
        fk.diagonal_fisher(_mlp(), (torch.randn(5, 4), torch.tensor([0, 1, 3, 2, 1])), fisher_type="empirical")
    with pytest.raises(ValueError, match="targets in \\{0, 1\\}"):
        fk.diagonal_fisher(_mlp(), (torch.randn(5, 4), torch.full((5, 3), 2.0)), "bernoulli", "empirical")


def test_empirical_without_labels():
    with pytest.raises(ValueError, match="needs the dataset's labels"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4), fisher_type="empirical")


def test_empty_data():
    with pytest.raises(ValueError, match="no samples"):
        fk.diagonal_fisher(_mlp(), [])


def test_nan_in_a_gradient_names_the_parameter():
    model = _mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fk.diagonal_fisher(model, torch.randn(5, 4))
    model = _mlp()
    x = torch.randn(5, 4)
    x[0, 0] = 1e30  # finite outputs after the ReLU/saturation, overflowing squared gradients
    model[0].weight.data.fill_(1e-12)
    model[2].weight.data.fill_(1e10)
    with pytest.raises(ValueError, match=r"parameter '0\.weight' has NaN or Inf"):
        fk.diagonal_fisher(model, x, fisher_type="exact")


def test_batchnorm_in_train_mode():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    for engine in ("layerwise", "vmap"):
        with pytest.raises(ValueError, match=r"BatchNorm.*\['1'\].*model.eval\(\)"):
            fk.diagonal_fisher(model, torch.randn(6, 4), engine=engine)


def test_unsupported_layer_is_an_error_without_the_fallback():
    model = nn.Sequential(nn.Linear(4, 5), nn.PReLU(), nn.Linear(5, 3))
    with pytest.raises(fk.UnsupportedModelError, match=r"1 \(PReLU\).*fallback=True"):
        fk.diagonal_fisher(model, torch.randn(6, 4), fallback=False)


def test_default_fallback_warns_once_naming_the_module():
    model = nn.Sequential(nn.Linear(4, 5), nn.PReLU(), nn.Linear(5, 3))
    x = torch.randn(6, 4)
    with pytest.warns(UserWarning, match=r"no layer rule for 1 \(PReLU\).*exact but slower") as caught:
        default = fk.diagonal_fisher(model, x, seed=0)
    assert len([w for w in caught if "no layer rule" in str(w.message)]) == 1
    explicit = fk.diagonal_fisher(model, x, fallback=True, seed=0)
    assert "1.weight" in default.names
    torch.testing.assert_close(default.to_dense(), explicit.to_dense())


class _ReadsAChildsWeight(nn.Module):
    """Uses ``embed.weight`` directly as an output layer: the Embedding rule sees only one of its uses."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 3)

    def forward(self, tokens):
        return nn.functional.linear(self.embed(tokens), self.embed.weight)


def test_a_parameter_used_outside_its_module_is_refused_by_name():
    model, tokens = _ReadsAChildsWeight(), torch.randint(0, 6, (4, 5))
    with pytest.raises(fk.UnsupportedModelError, match=r"'embed.weight' is used 2 time.*sees 1 call.*engine='vmap'"):
        fk.diagonal_fisher(model, tokens)
    with pytest.raises(fk.UnsupportedModelError, match=r"'embed.weight' is used 2 time"):
        fk.kfac_fisher(model, tokens)


def test_inputs_and_model_on_different_devices():
    with pytest.raises(ValueError, match="is on meta but the model's parameters are on cpu"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4, device="meta"))


def test_frozen_parameters_are_left_out_and_reported():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"left out of the Fisher: \['0.weight'\]"):
        fisher = fk.diagonal_fisher(model, torch.randn(5, 4))
    assert fisher.names == ("0.bias", "2.weight", "2.bias")
    with pytest.raises(ValueError, match="Parameters without requires_grad are not part"):
        fisher.quadratic(list(model.parameters()))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown fisher_type 'true'"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4), fisher_type="true")
    with pytest.raises(ValueError, match="mc_samples must be a positive integer"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4), mc_samples=0)
    with pytest.raises(ValueError, match="unknown engine"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4), engine="fast")
    with pytest.raises(ValueError, match="either seed or generator"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4), seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"returned a tuple of 2 entries.*output=<index>"):
        fk.diagonal_fisher(_TupleModel(), torch.randn(5, 4))
    with pytest.raises(TypeError, match=r"unknown estimator option\(s\) \['mc_sample'\]"):
        fk.diagonal_fisher(_mlp(), torch.randn(5, 4), mc_sample=2)
    for bad in ({"batch_size": 0}, {"batch_size": -3}, {"memory_budget": -1}, {"mc_samples": True}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive integer"):
            fk.diagonal_fisher(_mlp(), torch.randn(5, 4), **bad)


def test_tuple_output_served_by_the_output_option():
    model, x = _TupleModel(), torch.randn(5, 4)
    picked = fk.diagonal_fisher(model, x, output=0, seed=0)
    wrapped = fk.diagonal_fisher(nn.Sequential(model.linear), x, seed=0)
    torch.testing.assert_close(picked.diagonals[0], wrapped.diagonals[0])


class _TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x), x


def test_hooks_are_removed_when_the_forward_raises():
    model = _mlp()
    with pytest.raises(RuntimeError):
        fk.diagonal_fisher(model, torch.randn(5, 7))
    assert all(not m._forward_hooks for m in model.modules())


class _FunctionalDropout(nn.Module):
    """Dropout the way Hugging Face attention applies it: a rate attribute and F.dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.attention_dropout = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.linear(x), self.attention_dropout, self.training)


@pytest.mark.parametrize(
    "model, named",
    [
        (nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)), r"\['1'\]"),
        (_FunctionalDropout(), r"\['<root>'\]"),
    ],
    ids=["dropout-module", "functional-dropout"],
)
def test_dropout_in_train_mode_is_refused_naming_the_module(model, named):
    data = (torch.randn(6, 4), torch.randint(0, 3, (6,)))
    for estimate in (fk.diagonal_fisher, fk.kfac_fisher):
        with pytest.raises(ValueError, match=named + r".*dropout in train mode.*model.eval\(\)"):
            estimate(model.train(), data)
    model.eval()  # the same model in eval mode is a fixed function: estimated as usual
    assert float(fk.diagonal_fisher(model, data).trace()) > 0


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        fk.diagonal_fisher(model, torch.randn(6, 4))
