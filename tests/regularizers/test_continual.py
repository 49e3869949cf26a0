"""EWC, online EWC, SI and MAS against hand-computed oracles; scenarios, data, metrics, resume, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from idx_files import idx_bytes, write_file
from oracles import EXACT, TOLERANCES, brute_force_dense, brute_force_diagonal
from torch import nn

from fisherkit.apps.cli import main as cli_main
from fisherkit.apps.continual import (
    MaskedMLP,
    Metrics,
    TrainConfig,
    load_idx_directory,
    permuted_scenario,
    split_scenario,
)
from fisherkit.apps.continual.datasets import Dataset
from fisherkit.apps.continual.training import train_task
from fisherkit.regularizers import EWC, MAS, SynapticIntelligence

TOL = TOLERANCES[torch.float64]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _nudge(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_ewc_penalty_is_half_lambda_times_the_fisher_quadratic():
    model, data = _model(), _data(1)
    ewc = EWC(model, strength=3.0, fisher_type="exact")
    assert float(ewc.penalty()) == 0.0  # nothing consolidated yet
    ewc.end_task(data)
    anchor = _flat(model)
    fisher = torch.cat([f.reshape(-1) for f in brute_force_diagonal(model, data[0], "categorical", "exact")])
    _nudge(model, 2)
    difference = _flat(model) - anchor
    torch.testing.assert_close(ewc.penalty(), 1.5 * (fisher * difference.square()).sum(), **TOL)
    assert set(ewc.breakdown()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_kfac_ewc_penalty_uses_the_kronecker_blocks():
    model, data = _model(), _data(1, n=1)  # one sample: KFAC equals the true layer blocks
    ewc = EWC(model, strength=2.0, structure="kfac", fisher_type="exact")
    ewc.end_task(data)
    anchor = _flat(model)
    dense = brute_force_dense(model, data[0], "categorical", "exact")
    mask = torch.zeros_like(dense, dtype=torch.bool)
    mask[:25, :25] = True
    mask[25:, 25:] = True
    _nudge(model, 3)
    difference = _flat(model) - anchor
    torch.testing.assert_close(ewc.penalty(), difference @ (dense * mask) @ difference, **TOL)
    assert set(ewc.breakdown()) == {"0.weight, 0.bias", "2.weight, 2.bias"}


def test_online_ewc_decays_the_old_fisher_and_keeps_one_anchor():
    model = _model()
    ewc = EWC(model, strength=1.0, mode="online", decay=0.6, fisher_type="exact")
    first, second = _data(1), _data(2)
    ewc.end_task(first)
    fisher_1 = brute_force_dense(model, first[0], "categorical", "exact").diagonal()
    _nudge(model, 4)
    ewc.end_task(second)
    fisher_2 = brute_force_dense(model, second[0], "categorical", "exact").diagonal()
    anchor = _flat(model)
    _nudge(model, 5)
    difference = _flat(model) - anchor
    expected = 0.5 * ((0.6 * fisher_1 + fisher_2) * difference.square()).sum()
    torch.testing.assert_close(ewc.penalty(), expected, **TOL)
    assert len(ewc.anchors) == 1 and len(ewc.fishers[0]) == 1


def test_separate_ewc_covers_parameters_added_later_and_refuses_shapes_that_did_not_grow():
    model = _model()
    ewc = EWC(model, strength=1.0, fisher_type="exact")
    ewc.end_task(_data(1))
    model.add_module("head", nn.Linear(3, 2).double())  # a new head: not penalized until consolidated
    assert float(ewc.penalty().detach()) == 0.0
    with torch.no_grad():
        model[2].weight = nn.Parameter(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"consolidated with shape \(3, 5\); only growth along its axes"):
        ewc.penalty()


def _grow_head(model: nn.Module, classes: int) -> None:
    """What a growing classifier (Avalanche's IncrementalClassifier) does: a new, larger output layer
    holding the old rows first."""
    old = model[2]
    new = nn.Linear(old.in_features, classes).double()
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    model[2] = new


def _nudged_copy_with_old_head(model: nn.Module, rows: int) -> nn.Module:
    old = copy.deepcopy(model)
    layer = nn.Linear(model[2].in_features, rows).double()
    with torch.no_grad():
        layer.weight.copy_(model[2].weight[:rows])
        layer.bias.copy_(model[2].bias[:rows])
    old[2] = layer
    return old


@pytest.mark.parametrize("make", [
    lambda m: EWC(m, strength=2.0, fisher_type="exact"),
    lambda m: EWC(m, strength=2.0, fisher_type="exact", mode="online", decay=0.5, structure="kfac"),
    lambda m: SynapticIntelligence(m, strength=2.0),
    lambda m: MAS(m, strength=2.0),
], ids=["ewc", "online-kfac-ewc", "si", "mas"])  # fmt: skip
def test_a_grown_head_is_penalized_on_its_consolidated_rows_only(make):
    model = _model()
    regularizer = make(model)
    x, y = _data(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    regularizer.begin_task(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    regularizer.end_task([(x, y)])
    _grow_head(model, 5)
    _nudge(model, 3)
    penalty = regularizer.penalty()
    # the same penalty as the model cut back to the rows that were consolidated
    cut = _nudged_copy_with_old_head(model, 3)
    regularizer.model = cut
    expected = regularizer.penalty().detach()
    regularizer.model = model
    torch.testing.assert_close(penalty.detach(), expected, **TOLERANCES[torch.float64])
    assert float(expected) > 0
    penalty.backward()
    assert torch.equal(model[2].weight.grad[3:], torch.zeros(2, 5, dtype=torch.float64))
    assert float(model[2].weight.grad[:3].abs().max()) > 0
    # the next task trains and consolidates the grown head
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    regularizer.begin_task(optimizer)
    x2, y2 = _data(2)
    y2 = y2 + 2  # classes 2-4
    for _ in range(3):
        optimizer.zero_grad()
        (nn.functional.cross_entropy(model(x2), y2) + regularizer.penalty()).backward()
        optimizer.step()
    regularizer.end_task([(x2, y2)])
    _nudge(model, 4)
    model.zero_grad()
    regularizer.penalty().backward()
    assert float(model[2].weight.grad[3:].abs().max()) > 0  # consolidated now


def _si_run(c: float, steps: int, lr: float, penalty_weight: float) -> tuple[SynapticIntelligence, dict]:
    """SI on L(w) = ½‖w − a‖² with plain SGD, second task, penalty weighted in the loss."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    si = SynapticIntelligence(model, strength=c, damping=0.1)
    targets = [
        torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64),
        torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64),
    ]
    record = {"omega": torch.zeros(1, 3, dtype=torch.float64)}
    for task, a in enumerate(targets):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        si.begin_task(optimizer)
        start = model.weight.detach().clone()
        record["omega"] = torch.zeros(1, 3, dtype=torch.float64)
        for _ in range(steps):
            w = model.weight.detach().clone()
            optimizer.zero_grad()
            loss = 0.5 * (model.weight - a).square().sum() + penalty_weight * si.penalty()
            loss.backward()
            optimizer.step()
            task_grad = w - a  # the gradient of the task loss alone
            record["omega"] += -task_grad * (model.weight.detach() - w)
        if task == 0:
            change = model.weight.detach() - start
            record["importance"] = record["omega"] / (change.square() + 0.1)
        si.end_task()
    return si, record


@pytest.mark.parametrize("penalty_weight", [1.0, 0.5])
def test_si_path_integral_excludes_its_own_penalty(penalty_weight):
    si, record = _si_run(c=0.7, steps=5, lr=0.3, penalty_weight=penalty_weight)
    first_importance = record["importance"]
    # second task's ω, hand-simulated, must match the hooks' ω (kept in SI after end_task via importance)
    torch.testing.assert_close(si.omega["weight"].double(), record["omega"], **TOLERANCES[torch.float32])
    assert float((si.importance["weight"].double() - first_importance).abs().sum()) > 0


def test_si_refuses_a_task_without_steps_and_negative_strength():
    model = _model()
    si = SynapticIntelligence(model, 1.0)
    si.begin_task(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="saw no optimizer step"):
        si.end_task()
    with pytest.raises(ValueError, match="must be >= 0"):
        SynapticIntelligence(model, -1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        EWC(model, -0.5)


def test_mas_importance_is_the_mean_absolute_gradient_of_the_output_norm():
    model, (x, _) = _model(), _data(1)
    mas = MAS(model, strength=2.0)
    mas.end_task(x)
    params = list(model.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for n in range(len(x)):
        grads = torch.autograd.grad(model(x[n : n + 1]).square().sum(), params)
        for e, g in zip(expected, grads):
            e += g.abs() / len(x)
    for (name, _), want in zip(model.named_parameters(), expected):
        torch.testing.assert_close(mas.importance[name], want, **TOL)
    anchor = _flat(model)
    _nudge(model, 6)
    difference = _flat(model) - anchor
    flat_importance = torch.cat([e.reshape(-1) for e in expected])
    torch.testing.assert_close(mas.penalty(), 2.0 * (flat_importance * difference.square()).sum(), **TOL)


def _tiny_scenario():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 6, generator=g)
    y = (x[:, 0] * 4).long().clamp(max=3)
    data = Dataset("toy", x[:160], y[:160], x[160:], y[160:])
    return split_scenario(data, "task", num_tasks=2)


@pytest.mark.parametrize(
    "make", [lambda m: EWC(m, 10.0, seed=0), lambda m: SynapticIntelligence(m, 0.5), lambda m: MAS(m, 1.0)]
)
def test_a_run_stopped_between_tasks_resumes_identically(make, tmp_path):
    scenario, config = _tiny_scenario(), TrainConfig(epochs=2, batch_size=16, hidden=(8,))

    def fresh():
        torch.manual_seed(0)
        model = MaskedMLP(6, (8,), 4)
        return model, make(model), torch.Generator().manual_seed(1)

    model, regularizer, generator = fresh()
    for task in scenario.tasks:
        train_task(model, task, config, [regularizer], generator)
    uninterrupted = _flat(model)

    model, regularizer, generator = fresh()
    train_task(model, scenario.tasks[0], config, [regularizer], generator)
    torch.save(
        {"model": model.state_dict(), "reg": regularizer.state_dict(), "rng": generator.get_state()}, tmp_path / "c.pt"
    )
    checkpoint = torch.load(tmp_path / "c.pt", weights_only=False)
    model, regularizer, generator = fresh()
    model.load_state_dict(checkpoint["model"])
    regularizer.load_state_dict(checkpoint["reg"])
    generator.set_state(checkpoint["rng"])
    train_task(model, scenario.tasks[1], config, [regularizer], generator)
    torch.testing.assert_close(_flat(model), uninterrupted, **EXACT)


def test_si_resumes_inside_a_task():
    def run(split_at: int | None):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        si = SynapticIntelligence(model, 1.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        si.begin_task(optimizer)
        x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
        for step in range(6):
            if step == split_at:
                state, opt_state, weights = si.state_dict(), optimizer.state_dict(), model.state_dict()
                model = nn.Linear(3, 2)
                model.load_state_dict(weights)
                optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
                optimizer.load_state_dict(opt_state)
                si = SynapticIntelligence(model, 1.0)
                si.load_state_dict(state)
                si.attach(optimizer)
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
        return si.omega["weight"]

    torch.testing.assert_close(run(3), run(None), **EXACT)


def test_states_of_another_model_are_refused():
    model = _model()
    ewc = EWC(model, 1.0, fisher_type="exact")
    ewc.end_task(_data(1))
    other = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    with pytest.raises(ValueError, match="saved for a model"):
        EWC(other, 1.0, fisher_type="exact").load_state_dict(ewc.state_dict())
    with pytest.raises(ValueError, match="cannot be loaded into MAS"):
        MAS(model, 1.0).load_state_dict(ewc.state_dict())


def test_split_and_permuted_scenarios():
    g = torch.Generator().manual_seed(0)
    data = Dataset(
        "toy", torch.rand(300, 5, generator=g), torch.arange(300) % 6, torch.rand(60, 5), torch.arange(60) % 6
    )
    task_il = split_scenario(data, "task", num_tasks=3)
    assert task_il.num_outputs == 6 and [t.active.tolist() for t in task_il.tasks] == [[0, 1], [2, 3], [4, 5]]
    assert all(set(t.train[1].tolist()) == {0, 1} for t in task_il.tasks)
    domain = split_scenario(data, "domain", num_tasks=3)
    assert domain.num_outputs == 2 and domain.tasks[2].active is None
    class_il = split_scenario(data, "class", num_tasks=3)
    assert set(class_il.tasks[2].test[1].tolist()) == {4, 5}
    total = sum(len(t.train[0]) + len(t.valid[0]) for t in class_il.tasks)
    assert total == 300
    permuted = permuted_scenario(data, num_tasks=3, train_per_task=100)
    torch.testing.assert_close(permuted.tasks[0].test[0][:], data.test_x)
    assert not torch.equal(permuted.tasks[1].test[0][:], data.test_x)
    torch.testing.assert_close(permuted.tasks[1].test[0][:].sort(1).values, data.test_x.sort(1).values)
    # one copy of the images for every task, permuted as rows are read
    train = permuted.tasks[2].train[0]
    assert train.images is data.train_x and len(train) + len(permuted.tasks[2].valid[0]) == 100
    rows = torch.tensor([3, 0, 7])
    torch.testing.assert_close(train[rows], data.train_x[train.rows[rows]][:, train.permutation])
    assert set(permuted.tasks[2].train[1].tolist()) <= set(range(6))
    with pytest.raises(ValueError, match="do not split"):
        split_scenario(data, "task", num_tasks=4)


def test_idx_directories_are_read_raw_or_gzipped_and_missing_files_are_explained(tmp_path):
    images = torch.randint(0, 256, (5, 3, 2))
    labels = torch.tensor([3, 1, 4, 1, 5])
    write_file(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), compress=True)
    write_file(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels), compress=False)
    write_file(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(images[:2]), compress=False)
    write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels[:2]), compress=True)
    data = load_idx_directory(tmp_path)
    torch.testing.assert_close(data.train_x, images.reshape(5, 6).float() / 255)
    assert data.train_y.tolist() == [3, 1, 4, 1, 5] and data.test_x.shape == (2, 6)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte.*MNIST-format"):
        load_idx_directory(tmp_path)


def test_metrics_of_an_accuracy_matrix():
    matrix = torch.tensor([[0.9, 0.1, 0.0], [0.7, 0.8, 0.2], [0.6, 0.5, 0.95]])
    metrics = Metrics.of(matrix)
    assert metrics.average == pytest.approx((0.6 + 0.5 + 0.95) / 3)
    assert metrics.backward_transfer == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert metrics.forgetting == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)


def test_cl_command_prints_the_table(capsys):
    cli_main(["cl", "--scenario", "split-digits", "--methods", "naive", "ewc", "si", "--strength", "1",
              "--seeds", "1", "--epochs", "1", "--hidden", "16"])  # fmt: skip
    out = capsys.readouterr().out
    assert "| naive |" in out and "| ewc (1) |" in out and "| si (1) |" in out
    assert "split-digits, task-incremental, 5 tasks" in out


def test_the_command_reports_its_version(capsys):
    from fisherkit import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fisherkit {__version__}"
