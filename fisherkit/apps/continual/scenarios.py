"""Continual-learning scenarios: Split (task-, domain- and class-incremental) and Permuted.

Settings (van de Ven & Tolias 2019):

- ``task``: the task identity is known; each task has its own output units (multi-head by masking
  the shared output layer to the task's classes) and labels are positions within them;
- ``domain``: one head of k outputs shared by all tasks (Split: the label's position within its
  task; Permuted: the original label, the input distribution changes);
- ``class``: one head over every class seen; labels are global.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fisherkit.apps.continual.datasets import Dataset

SETTINGS = ("task", "domain", "class")


class PermutedInputs:
    """Rows of an image tensor with a pixel permutation applied when they are read: every task of a
    Permuted scenario shares one copy of the images instead of holding its own permuted copy.

    ``inputs[key]`` (an index tensor or a slice) returns those rows, permuted, as a tensor.

    Args:
        images: ``(N, F)`` the shared images.
        rows: ``(n,)`` the rows of ``images`` this split holds.
        permutation: ``(F,)`` the task's pixel order, or None for the identity.
    """

    def __init__(self, images: Tensor, rows: Tensor, permutation: Tensor | None) -> None:
        self.images, self.rows, self.permutation = images, rows, permutation

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Tensor | slice) -> Tensor:
        selected = self.images[self.rows[key]]
        return selected if self.permutation is None else selected[:, self.permutation]


Inputs = Tensor | PermutedInputs
Split = tuple[Inputs, Tensor]


@dataclass
class Task:
    """One task of a scenario.

    Attributes:
        name: For reports.
        train: ``(inputs, labels)`` for training (labels in the setting's label space).
        valid: Held out from the training data, for choosing hyperparameters.
        test: For reporting.
        active: Output units the task uses (task-incremental), or None for every unit.
    """

    name: str
    train: Split
    valid: Split
    test: Split
    active: Tensor | None = None


@dataclass
class Scenario:
    """Tasks in order, and the shape of the model they need."""

    name: str
    setting: str
    tasks: list[Task]
    num_features: int
    num_outputs: int


def _hold_out(x: Tensor, y: Tensor, fraction: float, generator: torch.Generator) -> tuple[Split, Split]:
    order = torch.randperm(len(x), generator=generator)
    valid = max(1, int(len(x) * fraction))
    return (x[order[valid:]], y[order[valid:]]), (x[order[:valid]], y[order[:valid]])


def split_scenario(
    dataset: Dataset,
    setting: str = "task",
    num_tasks: int = 5,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> Scenario:
    """Split: the classes in consecutive groups (10 classes, 5 tasks: {0,1}, {2,3}, …).

    Raises:
        ValueError: Unknown setting, or classes that do not divide into ``num_tasks`` groups.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SETTINGS}.")
    classes = dataset.num_classes
    if classes % num_tasks:
        raise ValueError(f"{classes} classes do not split into {num_tasks} tasks of equal size.")
    per_task = classes // num_tasks
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for index in range(num_tasks):
        task_classes = torch.arange(index * per_task, (index + 1) * per_task)

        def select(x: Tensor, y: Tensor, task_classes: Tensor = task_classes) -> tuple[Tensor, Tensor]:
            keep = torch.isin(y, task_classes)
            labels = y[keep] if setting == "class" else y[keep] - int(task_classes[0])
            return x[keep], labels

        train, valid = _hold_out(*select(dataset.train_x, dataset.train_y), valid_fraction, generator)
        name = f"classes {','.join(str(int(c)) for c in task_classes)}"
        active = task_classes if setting == "task" else None
        tasks.append(Task(name, train, valid, select(dataset.test_x, dataset.test_y), active))
    outputs = per_task if setting == "domain" else classes
    return Scenario(f"split-{dataset.name}", setting, tasks, dataset.num_features, outputs)


def permuted_scenario(
    dataset: Dataset,
    num_tasks: int = 10,
    valid_fraction: float = 0.1,
    seed: int = 0,
    train_per_task: int | None = None,
) -> Scenario:
    """Permuted: each task applies its own fixed pixel permutation (the first none); domain-incremental.
    The images are stored once; each task reads them through its permutation (``PermutedInputs``).

    Args:
        dataset: The images and labels.
        num_tasks: Tasks, each with its own permutation.
        valid_fraction: Share of each task's training data held out for validation.
        seed: Seeds the permutations and the split.
        train_per_task: Use only the first this many training samples per task (CPU budgets).
    """
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    features = dataset.num_features
    count = len(dataset.train_x) if train_per_task is None else min(train_per_task, len(dataset.train_x))
    for index in range(num_tasks):
        permutation = None if index == 0 else torch.randperm(features, generator=generator)
        order = torch.randperm(count, generator=generator)
        held = max(1, int(count * valid_fraction))
        train_y, valid_y = dataset.train_y[order[held:]], dataset.train_y[order[:held]]
        train = (PermutedInputs(dataset.train_x, order[held:], permutation), train_y)
        valid = (PermutedInputs(dataset.train_x, order[:held], permutation), valid_y)
        test = (PermutedInputs(dataset.test_x, torch.arange(len(dataset.test_x)), permutation), dataset.test_y)
        tasks.append(Task(f"permutation {index}", train, valid, test))
    return Scenario(f"permuted-{dataset.name}", "domain", tasks, features, dataset.num_classes)
