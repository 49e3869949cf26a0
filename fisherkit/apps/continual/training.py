"""Training through a scenario's tasks, evaluation, and the continual-learning metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fisherkit.apps.continual.model import MaskedMLP
from fisherkit.apps.continual.scenarios import Scenario, Split, Task
from fisherkit.curvature.block import tensor_sum
from fisherkit.regularizers.regularizer import Regularizer

EVALUATION_ROWS = 4096  # rows evaluated at once (permuted inputs are materialized a chunk at a time)


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf: the learning rate or the penalty strength is too large."""


@dataclass
class TrainConfig:
    """How each task is trained.

    Attributes:
        epochs: Passes over each task's training data.
        batch_size: Samples per step.
        lr: Learning rate of the optimizer.
        optimizer: ``"adam"`` or ``"sgd"``.
        hidden: Hidden widths of the MLP.
        fisher_samples: Training samples per task used to consolidate (EWC, MAS); None for all.
    """

    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    hidden: tuple[int, ...] = (256, 256)
    fisher_samples: int | None = 1000


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over the model's parameters."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adam or sgd.")


def _batches(split: Split, batch_size: int, generator: torch.Generator) -> list[Split]:
    x, y = split
    return [(x[i], y[i]) for i in torch.randperm(len(x), generator=generator).split(batch_size)]


def train_task(
    model: MaskedMLP,
    task: Task,
    config: TrainConfig,
    regularizers: list[Regularizer],
    generator: torch.Generator,
) -> None:
    """Trains ``task`` with the regularizers' penalties, then lets them consolidate."""
    model.train()
    model.active = task.active
    optimizer = make_optimizer(model, config)
    for regularizer in regularizers:
        regularizer.begin_task(optimizer)
    for _ in range(config.epochs):
        for x, y in _batches(task.train, config.batch_size, generator):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            for regularizer in regularizers:
                loss = loss + regularizer.penalty()
            if not bool(torch.isfinite(loss)):
                raise TrainingDiverged(
                    f"training diverged on task {task.name!r} (loss {float(loss)}); lower the learning rate "
                    f"or the penalty strength."
                )
            loss.backward()
            optimizer.step()
    x, y = task.train
    count = len(x) if config.fisher_samples is None else config.fisher_samples
    for regularizer in regularizers:
        regularizer.end_task((x[:count], y[:count]))


def train_jointly(model: MaskedMLP, tasks: list[Task], config: TrainConfig, generator: torch.Generator) -> None:
    """The upper bound: every step sums one batch of every task (each through its own output units)."""
    model.train()
    optimizer = make_optimizer(model, config)
    for _ in range(config.epochs):
        per_task = [_batches(task.train, config.batch_size, generator) for task in tasks]
        for step in range(max(len(b) for b in per_task)):
            optimizer.zero_grad()
            losses = []
            for task, batches in zip(tasks, per_task):
                x, y = batches[step % len(batches)]
                model.active = task.active
                losses.append(nn.functional.cross_entropy(model(x), y))
            tensor_sum(losses).backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model: MaskedMLP, task: Task, split: str = "test") -> float:
    """Accuracy on a task's ``"test"`` or ``"valid"`` split, through its output units."""
    model.eval()
    model.active = task.active
    x, y = getattr(task, split)
    correct = 0
    for start in range(0, len(x), EVALUATION_ROWS):
        part = slice(start, start + EVALUATION_ROWS)
        correct += int((model(x[part]).argmax(1) == y[part]).sum())
    return correct / len(x)


def accuracy_row(model: MaskedMLP, scenario: Scenario, split: str) -> list[float]:
    """The model's accuracy on every task's ``split`` (``"valid"`` or ``"test"``)."""
    return [accuracy(model, task, split) for task in scenario.tasks]


@dataclass
class Metrics:
    """Summaries of an accuracy matrix R (R[j][i]: accuracy on task i after training task j).

    Attributes:
        average: Mean accuracy over all tasks after the last one.
        backward_transfer: mean_{i<T} R[T][i] − R[i][i] (negative: forgetting).
        forgetting: mean_{i<T} max_{j<T} R[j][i] − R[T][i].
    """

    average: float
    backward_transfer: float
    forgetting: float

    @classmethod
    def of(cls, matrix: Tensor) -> Metrics:
        """From a ``(T, T)`` accuracy matrix; a single final row (joint training) has no transfer terms."""
        last = matrix[-1]
        if matrix.shape[0] == 1 or matrix.shape[0] != matrix.shape[1]:
            return cls(float(last.mean()), float("nan"), float("nan"))
        earlier = matrix.shape[0] - 1
        transfer = float((last[:earlier] - torch.diagonal(matrix)[:earlier]).mean())
        forgetting = float((matrix[:earlier, :earlier].max(0).values - last[:earlier]).mean())
        return cls(float(last.mean()), transfer, forgetting)
