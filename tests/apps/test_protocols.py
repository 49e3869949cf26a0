"""The published protocols as presets: what each builds against the paper's settings, the growing
head against the masked head the papers train, joint training on a union of tasks against its
loss written out, and the ``cl --protocol`` command as a user meets it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from idx_files import idx_bytes, write_file
from oracles import TOLERANCES
from torch import nn

from fisherkit import EWC
from fisherkit.apps.cli import main as cli_main
from fisherkit.apps.continual.datasets import IDX_FILES, Dataset, prepared
from fisherkit.apps.continual.model import MaskedMLP
from fisherkit.apps.continual.protocols import PROTOCOLS
from fisherkit.apps.continual.scenarios import split_scenario
from fisherkit.apps.continual.training import TrainConfig, UnionSplit, batches, train_task, train_union


def _images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 784, generator=generator), torch.arange(count) % 10


def _mnist_like(train: int = 200, test: int = 50) -> Dataset:
    return Dataset("toy", *_images(train, 0), *_images(test, 1))


def test_every_protocol_builds_the_papers_network_and_training():
    data = _mnist_like()
    expected = {  # features, hidden, outputs, tasks, batch, length per task (from the papers' code)
        "vandeven2019-split-task": (784, (400, 400), 10, 5, 128, 2000),
        "vandeven2019-split-domain": (784, (400, 400), 2, 5, 128, 2000),
        "vandeven2019-split-class": (784, (400, 400), 10, 5, 128, 2000),
        "vandeven2019-permuted-task": (1024, (1000, 1000), 100, 10, 128, 5000),
        "vandeven2019-permuted-domain": (1024, (1000, 1000), 10, 10, 128, 5000),
        "vandeven2019-permuted-class": (1024, (1000, 1000), 100, 10, 128, 5000),
        "hsu2018-split-task": (1024, (400, 400), 10, 5, 128, 4),
        "hsu2018-split-domain": (1024, (400, 400), 2, 5, 128, 4),
        "hsu2018-split-class": (1024, (400, 400), 10, 5, 128, 4),
        "zenke2017-permuted": (784, (2000, 2000), 10, 10, 256, 20),
    }
    assert set(PROTOCOLS) == set(expected)
    for name, (features, hidden, outputs, tasks, batch, length) in expected.items():
        protocol = PROTOCOLS[name]
        scenario, config = protocol.scenario(data), protocol.config()
        assert (scenario.num_features, config.hidden, scenario.num_outputs, len(scenario.tasks)) == (
            features, hidden, outputs, tasks), name  # fmt: skip
        assert config.batch_size == batch and (config.iterations or config.epochs) == length, name
        assert not config.reset_optimizer and config.optimizer == "adam", name
        assert all(len(task.valid[1]) == 0 for task in scenario.tasks), name  # every training sample is trained on
        if scenario.setting == "class":
            per_task = outputs // tasks
            assert [task.outputs for task in scenario.tasks] == [per_task * (i + 1) for i in range(tasks)], name
        assert "predicted" == protocol.fisher_type and set(protocol.strengths) <= set(protocol.methods)


def test_van_de_ven_draws_the_class_order_and_permutations_per_seed_the_others_do_not():
    data = _mnist_like()
    split = PROTOCOLS["vandeven2019-split-task"].scenario(data)
    names = [[t.name for t in split.for_seed(seed).tasks] for seed in (0, 1)]
    assert names[0] != names[1] and sorted(sum((n.split()[1].split(",") for n in names[1]), [])) == list("0123456789")
    permuted = PROTOCOLS["vandeven2019-permuted-domain"].scenario(data)
    first = [permuted.for_seed(seed).tasks[0].train[0].permutation for seed in (0, 1)]
    assert first[0] is not None and not torch.equal(first[0], first[1])  # every task permuted, per seed
    zenke = PROTOCOLS["zenke2017-permuted"].scenario(data)
    assert zenke.for_seed(3) is zenke and zenke.tasks[0].train[0].permutation is None
    hsu = PROTOCOLS["hsu2018-split-task"].scenario(data)
    assert [t.name for t in hsu.for_seed(2).tasks] == [f"classes {2 * i},{2 * i + 1}" for i in range(5)]


def test_preparation_pads_with_zeros_and_normalizes_as_the_papers_loaders():
    data = _mnist_like(20, 5)
    ready = prepared(data, pad=2, normalize=(0.1, 0.2752))
    images = ready.train_x.reshape(-1, 32, 32)
    torch.testing.assert_close(images[:, 2:30, 2:30], (data.train_x.reshape(-1, 28, 28) - 0.1) / 0.2752)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    torch.testing.assert_close(images[:, border], torch.full_like(images[:, border], -0.1 / 0.2752))
    with pytest.raises(ValueError, match="padding needs square images"):
        prepared(Dataset("odd", torch.rand(3, 10), torch.zeros(3), torch.rand(1, 10), torch.zeros(1)), pad=1)


def _digits_like() -> Dataset:
    generator = torch.Generator().manual_seed(4)
    x, y = torch.rand(240, 12, generator=generator), torch.arange(240) % 6
    x[torch.arange(240), y] += 1.0  # learnable
    return Dataset("toy", x[:180], y[:180], x[180:], y[180:])


def test_a_growing_head_trains_as_the_masked_head_of_the_papers():
    """The class-incremental head that grows by each task's classes equals the papers' fixed head
    whose unseen units are masked out (same initial rows), with one Adam and EWC through all tasks."""
    scenario = split_scenario(_digits_like(), "class", num_tasks=3, valid_fraction=0.0)
    config = TrainConfig(batch_size=32, lr=0.01, hidden=(8,), fisher_samples=None, iterations=6, reset_optimizer=False)
    torch.manual_seed(0)
    masked = MaskedMLP(12, (8,), 6)
    growing = copy.deepcopy(masked)
    with torch.no_grad():  # the growing head starts with the first task's rows of the same initialization
        growing.net[-1] = nn.Linear(8, 2)
        growing.head.weight.copy_(masked.head.weight[:2])
        growing.head.bias.copy_(masked.head.bias[:2])
    ewc_masked = EWC(masked, 50.0, fisher_type="predicted")
    ewc_growing = EWC(growing, 50.0, fisher_type="predicted")
    optimizer_masked = torch.optim.Adam(masked.parameters(), lr=0.01)
    optimizer_growing = None
    generator_masked, generator_growing = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for task in scenario.tasks:
        growing.grow(task.outputs)
        with torch.no_grad():
            growing.head.weight[-2:] = masked.head.weight[task.outputs - 2 : task.outputs]
            growing.head.bias[-2:] = masked.head.bias[task.outputs - 2 : task.outputs]
        optimizer_growing = train_task(growing, task, config, [ewc_growing], generator_growing, optimizer_growing)
        # the papers' loop: every unit exists, the unseen ones are masked out of the softmax
        masked.train()
        masked.active = torch.arange(task.outputs)
        ewc_masked.begin_task(optimizer_masked)
        for x, y in batches(task.train, config, generator_masked):
            optimizer_masked.zero_grad()
            (nn.functional.cross_entropy(masked(x), y) + ewc_masked.penalty()).backward()
            optimizer_masked.step()
        ewc_masked.end_task(task.train)
        assert growing.head.out_features == task.outputs
    for (name, got), (_, want) in zip(growing.named_parameters(), masked.named_parameters()):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32], msg=name)


def test_the_optimizer_continues_through_tasks_unless_reset():
    scenario = split_scenario(_digits_like(), "task", num_tasks=3, valid_fraction=0.0)
    model = MaskedMLP(12, (8,), 6)
    kept = TrainConfig(batch_size=32, hidden=(8,), iterations=2, reset_optimizer=False)
    first = train_task(model, scenario.tasks[0], kept, [], torch.Generator().manual_seed(0))
    assert train_task(model, scenario.tasks[1], kept, [], torch.Generator().manual_seed(0), first) is first
    steps = first.state[model.net[0].weight]["step"]
    assert int(steps) == 4  # the moments of both tasks
    fresh = train_task(model, scenario.tasks[2], TrainConfig(hidden=(8,), iterations=1), [], torch.Generator(), first)
    assert fresh is not first and int(fresh.state[model.net[0].weight]["step"]) == 1


def test_joint_training_steps_on_the_union_with_each_task_through_its_own_units():
    scenario = split_scenario(_digits_like(), "task", num_tasks=3, valid_fraction=0.0)
    union = UnionSplit(scenario.tasks)
    key = torch.tensor([70, 3, 130, 65, 1])
    inputs, labels, owners = union.batch(key)
    sizes = [len(t.train[1]) for t in scenario.tasks]
    expected = []  # (task, row) of each union row, grouped by task as the batch returns them
    for index in sorted(key.tolist(), key=lambda i: (i >= sizes[0]) + (i >= sizes[0] + sizes[1])):
        task = (index >= sizes[0]) + (index >= sizes[0] + sizes[1])
        expected.append((task, index - sum(sizes[:task])))
    assert owners.tolist() == [t for t, _ in expected]
    torch.testing.assert_close(inputs, torch.stack([scenario.tasks[t].train[0][r] for t, r in expected]))
    assert labels.tolist() == [int(scenario.tasks[t].train[1][r]) for t, r in expected]

    torch.manual_seed(0)
    model = MaskedMLP(12, (8,), 6)
    reference = copy.deepcopy(model)
    config = TrainConfig(batch_size=len(union), lr=0.1, optimizer="sgd", hidden=(8,), iterations=1)
    train_union(model, scenario.tasks, config, torch.Generator().manual_seed(0))
    loss = sum(  # the full-batch loss written out: the mean over every sample of its task's cross-entropy
        nn.functional.cross_entropy(reference(t.train[0])[:, t.active], t.train[1], reduction="sum")
        for t in scenario.tasks
    ) / len(union)
    loss.backward()
    with torch.no_grad():
        for (name, got), want in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(got, want - 0.1 * want.grad, **TOLERANCES[torch.float32], msg=name)


def _idx_directory(path: Path, train: int = 300, test: int = 60) -> Path:
    for split, count, seed in (("train", train, 0), ("test", test, 1)):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(count) % 10
        images = torch.randint(0, 60, (count, 28, 28), generator=generator)
        images[torch.arange(count), labels * 2, 5:20] = 255  # a learnable stroke per class
        write_file(path / IDX_FILES[f"{split}_images"], idx_bytes(images))
        write_file(path / IDX_FILES[f"{split}_labels"], idx_bytes(labels))
    return path


def test_a_protocol_runs_end_to_end_with_its_settings_and_the_published_numbers(tmp_path, capsys):
    data, out = _idx_directory(tmp_path), tmp_path / "r.json"
    cli_main(["cl", "--protocol", "hsu2018-split-class", "--data-dir", str(data), "--epochs", "1", "--seeds", "1",
              "--methods", "naive", "ewc", "mas", "joint", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert (
        "settings: protocol hsu2018-split-class (Hsu et al. 2018): split-" in captured.out
        and "padded to 32×32; normalized with mean 0.1, std 0.2752; MLP 1024-400-400-10, Adam lr 0.001 (one "
        "optimizer through all tasks), batch 128, 1 epochs per task (the protocol's 4, shortened for a CPU "
        "budget)"
        in captured.out
    )
    assert (
        "ewc λ=1200" in captured.out and "EWC's Fisher 'predicted' on up to 60,000 training sample(s)" in captured.out
    )
    assert "| naive | " in captured.out and "| 19.71 |" in captured.out and "| joint | " in captured.out
    naive_row = next(line for line in captured.out.splitlines() if line.startswith("| naive |") and "19.71" in line)
    assert naive_row.endswith("| -77.8 |")  # the published distance to joint: 19.71 − 97.53
    assert "ewc (1200, predicted), seed 0: task 5/5 trained" in captured.err
    record = json.loads(out.read_text())
    assert record["protocol"]["name"] == "hsu2018-split-class" and record["protocol"]["published"]["mas"] == 19.52
    assert "arXiv:1810.12488" in record["protocol"]["paper"] and "λ = 2 · reg_coef" in record["protocol"]["conversions"]
    assert [m["method"] for m in record["methods"]] == ["naive", "ewc", "mas", "joint"]


@pytest.mark.parametrize(
    "options, words",
    [
        (["--lr", "0.1"], "--lr is set by --protocol vandeven2019-split-task; drop it"),
        (["--strength", "5"], "--strength is set by --protocol vandeven2019-split-task; drop it"),
        (["--search"], "--search is set by --protocol"),
        (["--epochs", "3"], "--epochs is set by --protocol vandeven2019-split-task; drop it .*--iterations shortens"),
        (["--iterations", "0"], "--iterations must be at least 1"),
        (["--methods", "mas"], "compares naive, joint, ewc, online-ewc, si; it has no setting for mas"),
    ],
)
def test_options_a_protocol_sets_are_refused_before_any_work(options, words, capsys):
    with pytest.raises(SystemExit, match=words):
        cli_main(["cl", "--protocol", "vandeven2019-split-task", *options])
    assert "trained" not in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_runs_end_to_end_on_a_tiny_budget(name, tmp_path, capsys):
    protocol = PROTOCOLS[name]
    data = _idx_directory(tmp_path, train=120, test=30)
    cli_main(["cl", "--protocol", name, "--data-dir", str(data), protocol.budget_option, "1", "--seeds", "1"])
    out = capsys.readouterr().out
    assert out.startswith(f"settings: protocol {name} ({protocol.source.label})")
    for method in protocol.methods:
        published = protocol.published.get(method)
        rows = [line for line in out.splitlines() if line.startswith(f"| {protocol.method(method).label} |")]
        assert len(rows) == 2, method  # the summary table, then the comparison with the paper
        assert (f"| {published:.2f} |" if published is not None else " | — | — |") in rows[1], (method, rows[1])
