"""Batches and outputs as users have them — dicts, model outputs with ``logits``, tuples, causal
LMs, padding, segmentation logits — and compiled models, each against a float64 per-sample loop
over torch's own cross-entropy written here."""

import pytest
import torch
from oracles import TOLERANCES, brute_force_diagonal, flatten
from torch import nn
from torch.nn import functional

import fisherkit as fk

TOL = TOLERANCES[torch.float64]
VOCAB, LENGTH, BATCH = 7, 5, 4


class TinyLM(nn.Module):
    """Token and position embeddings (positions as a ``(1, T)`` buffer broadcast over the batch),
    a causal mixing layer, and a head; returns a dict with ``logits`` like a model output."""

    def __init__(self, as_dict: bool = True) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, 6)
        self.positions = nn.Embedding(LENGTH, 6)
        self.register_buffer("position_ids", torch.arange(LENGTH).unsqueeze(0))
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, VOCAB)
        self.as_dict = as_dict

    def forward(self, input_ids, attention_mask=None):
        hidden = self.tokens(input_ids) + self.positions(self.position_ids[:, : input_ids.shape[1]])
        weights = torch.tril(torch.ones(input_ids.shape[1], input_ids.shape[1], dtype=hidden.dtype))
        hidden = torch.tanh(self.mix(weights @ hidden / weights.sum(1, keepdim=True)))
        logits = self.head(hidden)
        return {"logits": logits} if self.as_dict else logits


def _tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[1, 3:] = 0
    mask[3, 2:] = 0
    return ids, mask


def _causal_loop(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """(1/N) Σ_n (∇ log p(x_{n,t+1} | x_{n,≤t}) summed over real next tokens)², one sample at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    for n in range(ids.shape[0]):
        logits = model(ids[n : n + 1])["logits"][0, :-1]
        labels = ids[n, 1:].masked_fill(mask[n, 1:] == 0, -100)
        logp = -functional.cross_entropy(logits, labels, reduction="sum", ignore_index=-100)
        for total, grad in zip(sums, torch.autograd.grad(logp, params)):
            total += grad.square()
    return [s / ids.shape[0] for s in sums]


def test_dict_batches_of_a_causal_lm_use_the_shifted_labels_and_skip_padding():
    torch.manual_seed(0)
    model, (ids, mask) = TinyLM().double(), _tokens()
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    fisher = fk.diagonal_fisher(model, [batch], fisher_type="empirical", causal=True)
    want = _causal_loop(model, ids, mask)
    torch.testing.assert_close(flatten(fisher.diagonals), flatten(want), **TOL)
    position = fisher.names.index("positions.weight")
    torch.testing.assert_close(fisher.diagonals[position], want[position], **TOL)  # a (1, T) broadcast input


def test_without_labels_padded_positions_contribute_nothing():
    torch.manual_seed(0)
    model, (ids, mask) = TinyLM().double(), _tokens()
    unlabelled = fk.diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask}], "categorical", "exact")
    ignore = ids.masked_fill(mask == 0, -100)  # the oracle leaves out positions labelled -100
    model_plain = TinyLM(as_dict=False).double()
    model_plain.load_state_dict(model.state_dict())
    want = brute_force_diagonal(model_plain, ids, "categorical", "exact", ignore)
    torch.testing.assert_close(flatten(unlabelled.diagonals), flatten(want), **TOL)
    everything = fk.diagonal_fisher(model, [{"input_ids": ids}], "categorical", "exact")
    assert float(flatten(everything.diagonals).sum()) > float(flatten(unlabelled.diagonals).sum())


def test_tuple_dict_and_selected_outputs_agree_with_the_loop():
    torch.manual_seed(0)
    plain = TinyLM(as_dict=False).double()
    ids, _ = _tokens()
    labels = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
    want = flatten(brute_force_diagonal(plain, ids, "categorical", "empirical", labels))
    as_dict = TinyLM().double()
    as_dict.load_state_dict(plain.state_dict())
    forms = {
        "tuple": fk.diagonal_fisher(plain, (ids, labels), fisher_type="empirical"),
        "dict": fk.diagonal_fisher(as_dict, [{"input_ids": ids, "labels": labels}], fisher_type="empirical"),
        "key": fk.diagonal_fisher(as_dict, [(ids, labels)], fisher_type="empirical", output="logits"),
        "function": fk.diagonal_fisher(as_dict, (ids, labels), fisher_type="empirical", output=lambda o: o["logits"]),
        "named target": fk.diagonal_fisher(
            as_dict, [{"input_ids": ids, "y": labels}], fisher_type="empirical", target="y", inputs=("input_ids",)
        ),
    }
    for form, fisher in forms.items():
        torch.testing.assert_close(flatten(fisher.diagonals), want, **TOL, msg=form)


def test_ambiguous_or_wrong_layouts_are_errors_that_name_the_fix():
    model, (ids, mask) = TinyLM(), _tokens()
    with pytest.raises(ValueError, match=r"looks like an attention mask.*inputs=\(0, 1\), target=None"):
        fk.diagonal_fisher(model, [[ids, mask]])
    fk.diagonal_fisher(model, [[ids, mask]], inputs=(0, 1), target=None)  # both given to the model
    with pytest.raises(ValueError, match=r"target='label' is not a key of the batch; its keys are \['input_ids'\]"):
        fk.diagonal_fisher(model, [{"input_ids": ids}], target="label")
    with pytest.raises(ValueError, match=r"inputs \['ids'\] are not keys"):
        fk.diagonal_fisher(model, [{"input_ids": ids}], inputs=("ids",))
    with pytest.raises(ValueError, match=r"attention mask of shape \(4, 3\) does not fit model outputs"):
        fk.diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask[:, :3]}])
    with pytest.raises(TypeError, match=r"output='scores' selects nothing"):
        fk.diagonal_fisher(model, [{"input_ids": ids}], output="scores")
    with pytest.raises(TypeError, match="a batch must be a tensor of inputs, a sequence"):
        fk.diagonal_fisher(model, [3])


def test_segmentation_logits_need_their_class_axis_and_then_match_cross_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).double()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 4, 5))
    with pytest.raises(ValueError, match=r"say which holds the classes: fisherkit.Categorical\(class_dim=1\)"):
        fk.diagonal_fisher(model, (x, y))
    fisher = fk.diagonal_fisher(model, (x, y), fk.Categorical(class_dim=1), "empirical")
    params = list(model.parameters())
    sums = [torch.zeros_like(p) for p in params]
    for n in range(3):
        logp = -functional.cross_entropy(model(x[n : n + 1]), y[n : n + 1], reduction="sum")  # classes on dim 1
        for total, grad in zip(sums, torch.autograd.grad(logp, params)):
            total += grad.square()
    torch.testing.assert_close(flatten(fisher.diagonals), flatten([s / 3 for s in sums]), **TOL)
    exact = fk.diagonal_fisher(model, (x, y), fk.Categorical(class_dim=1), "exact")
    moved = nn.Sequential(model, _ClassesLast())
    torch.testing.assert_close(
        flatten(exact.diagonals), flatten(brute_force_diagonal(moved, x, "categorical", "exact")), **TOL
    )


class _ClassesLast(nn.Module):
    def forward(self, logits):
        return logits.movedim(1, -1)


@pytest.mark.parametrize("run_before", [False, True], ids=["fresh", "already-run"])
def test_a_compiled_model_gives_the_eager_fisher(run_before):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    compiled = torch.compile(model, backend="eager")  # dynamo's graph capture, which skips later hooks
    if run_before:
        compiled(x)
    fisher = fk.diagonal_fisher(compiled, (x, y), fisher_type="empirical")
    assert fisher.names[0] == "_orig_mod.0.weight"  # the compiled module's own parameter names
    want = brute_force_diagonal(model, x, "categorical", "empirical", y)
    torch.testing.assert_close(flatten(fisher.diagonals), flatten(want), **TOL)
    kfac = fk.kfac_fisher(compiled, (x, y), fisher_type="empirical")
    assert float(kfac.trace()) > 0


class _TakesADict(nn.Module):
    """A model whose one positional input is a dict (as laplace-torch calls models on dict batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, batch):
        return self.net(batch["features"]) * batch["scale"]


@pytest.mark.parametrize("engine", ["layerwise", "vmap"])
def test_a_dict_given_as_the_positional_input_is_split_by_samples(engine):
    torch.manual_seed(0)
    model = _TakesADict().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    scale = torch.tensor(1.5, dtype=torch.float64)  # shared by every sample: passed whole
    data = [({"features": x[:4], "scale": scale}, y[:4]), ({"features": x[4:], "scale": scale}, y[4:])]
    fisher = fk.diagonal_fisher(model, data, fisher_type="empirical", engine=engine, memory_budget=2**10)
    scaled = nn.Sequential(model.net, Scaled(1.5))
    expected = brute_force_diagonal(scaled, x, "categorical", "empirical", y)
    torch.testing.assert_close(flatten(fisher.diagonals), flatten(expected), **TOL)


class Scaled(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor
