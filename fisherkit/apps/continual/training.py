"""Training through a scenario's tasks, evaluation, and the continual-learning metrics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fisherkit.apps.continual.model import MaskedMLP
from fisherkit.apps.continual.scenarios import Scenario, Split, Task
from fisherkit.curvature.block import tensor_sum
from fisherkit.regularizers.regularizer import Regularizer, zero_padded

EVALUATION_ROWS = 1024  # rows evaluated at once (permuted inputs are materialized a chunk at a time)
CONSOLIDATION_ROWS = 256  # rows per consolidation batch: MAS holds a batch's per-sample gradients of each layer


JOINT_TRAINING = ("union", "cumulative")  # TrainConfig.joint


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf: the learning rate or the penalty strength is too large."""


@dataclass
class TrainConfig:
    """How each task is trained.

    Attributes:
        epochs: Passes over each task's training data (when ``iterations`` is None).
        batch_size: Samples per step.
        lr: Learning rate of the optimizer.
        optimizer: ``"adam"`` or ``"sgd"``.
        hidden: Hidden widths of the MLP.
        fisher_samples: Training samples per task used to consolidate (EWC, MAS); None for all.
        iterations: Optimizer steps per task, each on the next batch of the task's shuffled training
            data (reshuffled when it runs out); None: ``epochs`` passes instead.
        reset_optimizer: A fresh optimizer for every task; False: one optimizer (and its moment
            estimates) through all tasks, as the published protocols train.
        joint: The joint-training baseline: ``"union"`` trains once on the union of every task's
            data; ``"cumulative"`` trains after each task on the union of the tasks so far (the
            "offline" baseline of van de Ven & Tolias 2019).
    """

    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    hidden: tuple[int, ...] = (256, 256)
    fisher_samples: int | None = 1000
    iterations: int | None = None
    reset_optimizer: bool = True
    joint: str = "union"

    def __post_init__(self) -> None:
        if self.joint not in JOINT_TRAINING:
            raise ValueError(f"unknown joint training {self.joint!r}; choose one of {JOINT_TRAINING}.")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over the model's parameters."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adam or sgd.")


def continued_optimizer(
    model: nn.Module, config: TrainConfig, previous: torch.optim.Optimizer | None
) -> torch.optim.Optimizer:
    """The optimizer for the next task: a fresh one when ``config.reset_optimizer`` (or for the
    first task); else ``previous``, rebuilt over the model's current parameters when one was
    replaced by a larger one (a head that grew): its state (Adam's step count and moments) moves to
    the new parameter zero-padded, so the new units start as the unused units of a fixed head would."""
    if previous is None or config.reset_optimizer:
        return make_optimizer(model, config)
    before = [p for group in previous.param_groups for p in group["params"]]
    current = list(model.parameters())
    if [id(p) for p in before] == [id(p) for p in current]:
        return previous
    optimizer = make_optimizer(model, config)
    for old, new in zip(before, current, strict=True):
        if old in previous.state:
            state = previous.state[old]
            optimizer.state[new] = {
                key: zero_padded(value, new.shape) if isinstance(value, Tensor) and value.shape == old.shape else value
                for key, value in state.items()
            }
    return optimizer


def batch_rows(count: int, config: TrainConfig, generator: torch.Generator) -> Iterator[Tensor]:
    """Row indices of the training batches over ``count`` samples: ``config.epochs`` shuffled
    passes, or ``config.iterations`` batches drawn pass after shuffled pass."""
    steps = 0
    for epoch in itertools.count():
        if config.iterations is None and epoch == config.epochs:
            return
        for rows in torch.randperm(count, generator=generator).split(config.batch_size):
            if steps == config.iterations:
                return
            yield rows
            steps += 1


def batches(split: Split, config: TrainConfig, generator: torch.Generator) -> Iterator[Split]:
    """A task's training batches (``batch_rows`` of its training split)."""
    x, y = split
    for rows in batch_rows(len(y), config, generator):
        yield x[rows], y[rows]


def _check_finite(loss: Tensor, what: str) -> None:
    if not bool(torch.isfinite(loss)):
        raise TrainingDiverged(
            f"training diverged on {what} (loss {float(loss)}); lower the learning rate or the penalty strength."
        )


def train_task(
    model: MaskedMLP,
    task: Task,
    config: TrainConfig,
    regularizers: list[Regularizer],
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> torch.optim.Optimizer:
    """Trains ``task`` with the regularizers' penalties, then lets them consolidate.

    Args:
        model: Grown to the task's output units first.
        task: What to learn.
        config: How.
        regularizers: Their penalties join the loss; each consolidates after the task.
        generator: Shuffles the batches.
        optimizer: The previous task's optimizer, continued unless ``config.reset_optimizer``.

    Returns:
        The optimizer that trained the task (pass it to the next one).
    """
    model.train()
    model.grow(task.outputs)
    model.active = task.active
    optimizer = continued_optimizer(model, config, optimizer)
    for regularizer in regularizers:
        regularizer.begin_task(optimizer)
    for x, y in batches(task.train, config, generator):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        for regularizer in regularizers:
            loss = loss + regularizer.penalty()
        _check_finite(loss, f"task {task.name!r}")
        loss.backward()
        optimizer.step()
    consolidation = SplitBatches(task.train, config.fisher_samples, CONSOLIDATION_ROWS)
    for regularizer in regularizers:
        regularizer.end_task(consolidation)
    return optimizer


class SplitBatches:
    """The first ``count`` samples of a split (all for None) as consecutive batches of ``rows``,
    each read (and permuted, for a Permuted task) only when it is reached, so consolidating on or
    evaluating 60,000 samples never holds them all at once. Iterable more than once."""

    def __init__(self, split: Split, count: int | None, rows: int) -> None:
        self.split, self.rows = split, rows
        self.count = len(split[1]) if count is None else min(count, len(split[1]))

    def __len__(self) -> int:
        return -(-self.count // self.rows)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.split
        for start in range(0, self.count, self.rows):
            part = slice(start, min(start + self.rows, self.count))
            yield x[part], y[part]


class UnionSplit:
    """The training data of several tasks as one indexable set (the inputs are not copied): row r
    of the union is row ``rows[r]`` of task ``owners[r]``."""

    def __init__(self, tasks: list[Task]) -> None:
        sizes = [len(task.train[1]) for task in tasks]
        self.tasks = tasks
        self.owners = torch.cat([torch.full((n,), t) for t, n in enumerate(sizes)])
        self.rows = torch.cat([torch.arange(n) for n in sizes])
        self.labels = torch.cat([task.train[1] for task in tasks])

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(inputs, labels, owners)`` of the union's rows ``key``, grouped by task."""
        key = key[self.owners[key].argsort(stable=True)]
        owners = self.owners[key]
        parts = [self.tasks[int(t)].train[0][self.rows[key[owners == t]]] for t in owners.unique()]
        return torch.cat(parts), self.labels[key], owners


def train_union(
    model: MaskedMLP,
    tasks: list[Task],
    config: TrainConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> torch.optim.Optimizer:
    """Joint training on the union of ``tasks``: batches mix every task's samples, each through its
    task's output units (``config.epochs`` passes over the union, or ``config.iterations`` steps).

    Returns:
        The optimizer that trained it.
    """
    model.train()
    model.grow(max(task.outputs for task in tasks))
    model.active = None
    optimizer = continued_optimizer(model, config, optimizer)
    union = UnionSplit(tasks)
    for key in batch_rows(len(union), config, generator):
        inputs, labels, owners = union.batch(key)
        logits = model(inputs)
        losses = []
        for t in owners.unique():
            mine = owners == t
            units = tasks[int(t)].active
            task_logits = logits[mine] if units is None else logits[mine][:, units]
            losses.append(nn.functional.cross_entropy(task_logits, labels[mine], reduction="sum"))
        loss = tensor_sum(losses) / len(key)
        _check_finite(loss, "the union of the tasks")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


@torch.no_grad()
def accuracy(model: MaskedMLP, task: Task, split: str = "test") -> float:
    """Accuracy on a task's ``"test"`` or ``"valid"`` split, through its output units."""
    model.eval()
    model.active = task.active
    data = getattr(task, split)
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in SplitBatches(data, None, EVALUATION_ROWS))
    return correct / len(data[1])


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
