"""NGD in the training loops people write: param groups, gradient accumulation, evaluation and
logging forwards, parameters without gradients, layers it cannot precondition, hooks that go with
the optimizer, states of another configuration, and default settings that train a BERT."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from oracles import EXACT, brute_force_dense
from torch import nn
from zoo import Scale

import fisherkit as fk

F64 = torch.float64


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _data(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator, dtype=F64), torch.randint(0, 2, (n,), generator=generator)


def _exact(model: nn.Module, **options) -> fk.NGD:
    """NGD whose step is a closed form: exact Fisher of the last step's batches, no averaging, no clipping."""
    settings = {"structure": "block", "fisher_type": "exact", "ema_decay": 0.0, "stats_every": 1, "inverse_every": 1}
    return fk.NGD(model, kl_clip=None, pi_damping=False, **{**settings, **options})


def _module_blocks(dense: torch.Tensor, model: nn.Module) -> list[tuple[slice, torch.Tensor]]:
    """The per-module diagonal blocks of a dense Fisher over ``model``'s parameters (weight, bias)."""
    blocks, start = [], 0
    for module in (m for m in model.modules() if isinstance(m, nn.Linear)):
        size = sum(p.numel() for p in module.parameters())
        blocks.append((slice(start, start + size), dense[start : start + size, start : start + size]))
        start += size
    return blocks


def _cross_entropy_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> None:
    (weight * nn.functional.cross_entropy(model(x), y)).backward()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _expected_step(model: nn.Module, x: torch.Tensor, settings: list[tuple[float, float, float]]) -> torch.Tensor:
    """θ − η_g (F_b + λ_g I)⁻¹ (∇ + w_g θ) per module block b, with F from the float64 per-sample oracle."""
    fisher = brute_force_dense(copy.deepcopy(model), x, "categorical", "exact")
    theta, grad = _flat(model.parameters()), _flat(p.grad for p in model.parameters())
    expected = theta.clone()
    for (rows, block), (lr, decay, damping) in zip(_module_blocks(fisher, model), settings):
        damped = block + damping * torch.eye(block.shape[0], dtype=F64)
        expected[rows] -= lr * torch.linalg.solve(damped, grad[rows] + decay * theta[rows])
    return expected


def test_every_param_group_steps_with_its_own_lr_weight_decay_and_damping():
    model = _mlp()
    groups = [
        {"params": model[0].parameters(), "lr": 0.3, "weight_decay": 0.01, "damping": 0.1},
        {"params": model[2].parameters(), "lr": 0.05, "damping": 1.0},
    ]
    optimizer = _exact(model, params=groups)
    x, y = _data(0)
    optimizer.zero_grad()
    _cross_entropy_backward(model, x, y)
    expected = _expected_step(model, x, [(0.3, 0.01, 0.1), (0.05, 0.0, 1.0)])
    optimizer.step()
    torch.testing.assert_close(_flat(model.parameters()), expected)


def test_a_group_added_later_is_preconditioned_and_stepped():
    model = _mlp()
    optimizer = _exact(model, params=model[0].parameters(), lr=0.2, damping=0.5)
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.1})
    x, y = _data(1)
    optimizer.zero_grad()
    _cross_entropy_backward(model, x, y)
    expected = _expected_step(model, x, [(0.2, 0.0, 0.5), (0.1, 0.0, 0.5)])
    optimizer.step()
    torch.testing.assert_close(_flat(model.parameters()), expected)


def test_accumulated_micro_batches_all_count_and_evaluation_forwards_never_do():
    model = _mlp()
    optimizer = _exact(model, damping=0.3)
    (x1, y1), (x2, y2), (x_eval, _) = _data(2), _data(3), _data(4)
    optimizer.zero_grad()
    _cross_entropy_backward(model, x1, y1, 0.5)
    with torch.no_grad():
        model(x_eval)  # evaluation under no_grad
    model(x_eval).sum()  # a logging forward with gradients on, never backpropagated
    _cross_entropy_backward(model, x2, y2, 0.5)
    fk.diagonal_fisher(model, x_eval)  # another estimator's forwards are not training batches
    expected = _expected_step(model, torch.cat([x1, x2]), [(0.1, 0.0, 0.3)] * 2)
    optimizer.step()
    torch.testing.assert_close(_flat(model.parameters()), expected)


def test_empirical_fisher_under_accumulation_takes_one_target_tensor_per_forward():
    model = _mlp()
    optimizer = _exact(model, fisher_type="empirical", damping=0.2, structure="full")
    (x1, y1), (x2, y2) = _data(5), _data(6)
    optimizer.zero_grad()
    _cross_entropy_backward(model, x1, y1)
    _cross_entropy_backward(model, x2, y2)
    words = r"1 target tensor\(s\) for 2 backpropagated forward\(s\).*one target tensor per forward"
    with pytest.raises(ValueError, match=words):
        optimizer.step(targets=y1)
    x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
    fisher = brute_force_dense(copy.deepcopy(model), x, "categorical", "empirical", targets=y)
    theta, grad = _flat(model.parameters()), _flat(p.grad for p in model.parameters())
    expected = theta - 0.1 * torch.linalg.solve(fisher + 0.2 * torch.eye(fisher.shape[0], dtype=F64), grad)
    optimizer.step(targets=[y1, y2])
    torch.testing.assert_close(_flat(model.parameters()), expected)


def test_parameters_without_gradients_do_not_move():
    model = _mlp()
    optimizer = fk.NGD(model, lr=0.1, momentum=0.9, stats_every=1)
    x, y = _data(7)
    optimizer.zero_grad()
    _cross_entropy_backward(model, x, y)
    optimizer.step()  # a momentum buffer exists now
    before = _flat(model.parameters())
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # no backward: nothing moves, as with torch's optimizers
    torch.testing.assert_close(_flat(model.parameters()), before, **EXACT)
    optimizer.zero_grad()
    _cross_entropy_backward(model, x, y)
    model[0].weight.grad = None
    frozen = model[0].weight.detach().clone()
    optimizer.step()
    assert torch.equal(model[0].weight.detach(), frozen)
    assert not torch.equal(model[2].weight.detach(), before[14:22].reshape(2, 4))


class _BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        self.scale = Scale(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale(self.norm(self.conv(x)).relu().mean((2, 3))))


def test_batchnorm_and_modules_without_a_rule_take_plain_steps_and_are_listed_once():
    torch.manual_seed(0)
    model = _BatchNormNet().double().train()
    words = r"plain gradient.*norm.weight \(BatchNorm.*scale.scale \(no layer rule for Scale"
    with pytest.warns(UserWarning, match=words):
        optimizer = fk.NGD(model, lr=0.1, kl_clip=None, fallback=False, stats_every=1)
    assert set(optimizer.passed_through) == {"norm.weight", "norm.bias", "scale.scale"}
    x = torch.randn(8, 1, 6, 6, dtype=F64)
    y = torch.randint(0, 2, (8,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    plain = {n: (p.detach() - 0.1 * p.grad).clone() for n, p in model.named_parameters()}
    optimizer.step()
    assert model.training  # the estimate ran in eval mode and left the train mode as it was
    named = dict(model.named_parameters())
    for name in optimizer.passed_through:
        torch.testing.assert_close(named[name].detach(), plain[name], **EXACT)
    assert not torch.allclose(named["conv.weight"].detach(), plain["conv.weight"])  # preconditioned


def test_the_recording_hooks_go_with_the_optimizer():
    model = _mlp()
    optimizer = fk.NGD(model)
    assert len(model._forward_pre_hooks) == len(model._forward_hooks) == 1
    del optimizer
    gc.collect()
    assert not model._forward_pre_hooks and not model._forward_hooks
    for _ in range(3):  # one optimizer after another: never more than one recorder
        optimizer = fk.NGD(model)
        gc.collect()
    assert len(model._forward_pre_hooks) == 1
    optimizer.close()
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_states_of_another_structure_or_fisher_type_are_refused_at_load():
    model = _mlp()
    saved = fk.NGD(model, structure="kfac").state_dict()
    for other in ({"structure": "diagonal"}, {"fisher_type": "exact"}):
        with pytest.raises(ValueError, match=r"structure 'kfac' and fisher_type 'mc' cannot be loaded.*settings"):
            fk.NGD(model, **other).load_state_dict(saved)


def test_param_groups_that_ngd_cannot_serve_are_refused_by_name():
    model, stranger = _mlp(), nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"entries \[0, 1\] of this param group are not parameters of that model"):
        fk.NGD(model, params=[{"params": stranger.parameters()}])
    with pytest.raises(ValueError, match="pass it as NGD\\(damping=...\\)"):
        fk.NGD(model, params=[{"params": model.parameters(), "damping": fk.LevenbergMarquardt()}])
    with pytest.raises(ValueError, match="lr > 0"):
        fk.NGD(model, params=[{"params": model.parameters(), "lr": -1.0}])
    split = [{"params": [model[0].weight], "damping": 0.1}, {"params": [model[0].bias, *model[2].parameters()]}]
    optimizer = _exact(model, params=split)
    x, y = _data(8)
    _cross_entropy_backward(model, x, y)
    before = _flat(model.parameters())
    with pytest.raises(ValueError, match=r"block '0.weight, 0.bias' have different dampings.*one damping"):
        optimizer.step()
    torch.testing.assert_close(_flat(model.parameters()), before, **EXACT)


def test_the_default_settings_train_a_small_bert_without_diverging():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config).train()  # dropout on, as in training
    optimizer = fk.NGD(model)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(50):
        ids = torch.randint(2, 64, (16, 12), generator=generator)
        labels = (ids[:, 0] < 33).long()
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(loss < 1.5 for loss in losses)  # never diverges (chance is ln 2 ≈ 0.69)
    assert sum(losses[-10:]) / 10 < 0.3  # and learns the task


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"damping": -1.0}, ValueError, "damping must be a number >= 0"),
        ({"stats_every": 0}, ValueError, "stats_every must be a positive integer"),
        ({"inverse_every": 1.5}, ValueError, "inverse_every must be a positive integer"),
        ({"kl_clip": 0.0}, ValueError, "kl_clip must be positive"),
        ({"fisher_type": "hessian"}, ValueError, "unknown fisher_type 'hessian'"),
        ({"mc_samples": True}, ValueError, "mc_samples must be a positive integer"),
        ({"structure": "tridiagonal"}, ValueError, "unknown"),
        ({"structure": "lowrank"}, ValueError, "low-rank Fisher.*structure=.kfac."),
        ({"momentum": -0.5}, ValueError, "momentum >= 0"),
    ],
)
def test_bad_settings_are_refused_at_construction(options, error, words):
    with pytest.raises(error, match=words):
        fk.NGD(_mlp(), **options)


def test_a_learning_rate_scheduler_sets_the_step_ngd_takes():
    model = _mlp()
    optimizer = _exact(model, lr=0.4, damping=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.25)
    x, y = _data(9)
    for lr in (0.4, 0.1):  # the scheduler's value at each step, not the constructor's
        optimizer.zero_grad()
        _cross_entropy_backward(model, x, y)
        expected = _expected_step(model, x, [(lr, 0.0, 0.2)] * 2)
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(_flat(model.parameters()), expected)


def test_a_damping_schedule_is_read_at_every_step():
    model = _mlp()
    optimizer = _exact(model, lr=0.3, damping=lambda step: 0.5 / (1 + step))
    x, y = _data(11)
    for damping in (0.5, 0.25, 0.5 / 3):  # the schedule's value at steps 0, 1, 2
        optimizer.zero_grad()
        _cross_entropy_backward(model, x, y)
        expected = _expected_step(model, x, [(0.3, 0.0, damping)] * 2)
        optimizer.step()
        torch.testing.assert_close(_flat(model.parameters()), expected)


def test_a_state_with_scheduled_dampings_saves_and_resumes():
    import io

    model = _mlp()
    optimizer = _exact(model, damping=lambda step: 0.5 / (1 + step))
    x, y = _data(10)
    _cross_entropy_backward(model, x, y)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # the lambda is not part of the state
    resumed = _exact(model, damping=lambda step: 0.5 / (1 + step))
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    assert callable(resumed.param_groups[0]["damping"]) and resumed.preconditioner.steps == 1
