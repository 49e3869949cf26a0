"""Continual-learning scenarios: Split (task-, domain- and class-incremental) and Permuted.

Settings (van de Ven & Tolias 2019):

- ``task``: the task identity is known; each task has its own output units (multi-head by masking
  the shared output layer to the task's classes) and labels are positions within them;
- ``domain``: one head of k outputs shared by all tasks (Split: the label's position within its
  task; Permuted: the original label, the input distribution changes);
- ``class``: one head over every class seen so far (it grows as classes arrive); labels are global.
"""

from __future__ import annotations

from collections.abc import Callable
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
        outputs: Output units the model has while it learns this task: the classes seen so far
            in the class-incremental setting (the head grows), every unit otherwise.
        active: Output units the task uses (task-incremental), or None for every unit.
    """

    name: str
    train: Split
    valid: Split
    test: Split
    outputs: int
    active: Tensor | None = None


@dataclass
class Scenario:
    """Tasks in order, and the shape of the model they need.

    Attributes:
        per_seed: Builds the scenario a seed trains on, where the protocol draws it per seed (the
            class order of a Split, the permutations of a Permuted scenario); None: one for all.
    """

    name: str
    setting: str
    tasks: list[Task]
    num_features: int
    num_outputs: int
    per_seed: Callable[[int], Scenario] | None = None

    def for_seed(self, seed: int) -> Scenario:
        """The tasks seed ``seed`` trains on."""
        return self if self.per_seed is None else self.per_seed(seed)


def _held_out(count: int, fraction: float) -> int:
    """Samples of ``count`` held out for validation: at least one unless ``fraction`` is 0."""
    return max(1, int(count * fraction)) if fraction > 0 else 0


def _hold_out(x: Tensor, y: Tensor, fraction: float, generator: torch.Generator) -> tuple[Split, Split]:
    order = torch.randperm(len(x), generator=generator)
    valid = _held_out(len(x), fraction)
    return (x[order[valid:]], y[order[valid:]]), (x[order[:valid]], y[order[:valid]])


def split_scenario(
    dataset: Dataset,
    setting: str = "task",
    num_tasks: int = 5,
    valid_fraction: float = 0.1,
    seed: int = 0,
    shuffle_classes: bool = False,
) -> Scenario:
    """Split: the classes in consecutive groups (10 classes, 5 tasks: {0,1}, {2,3}, …).

    Args:
        dataset: The images and labels.
        setting: ``"task"``, ``"domain"`` or ``"class"``.
        num_tasks: Groups of classes.
        valid_fraction: Share of each task's training data held out for validation (0: none).
        seed: Seeds the split (and the class order).
        shuffle_classes: Relabel the classes in a random order drawn from ``seed`` before grouping
            them (van de Ven & Tolias 2019 draw one per seed).

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
    order = torch.randperm(classes, generator=generator) if shuffle_classes else torch.arange(classes)
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(classes)  # class order[i] becomes label i
    tasks = []
    for index in range(num_tasks):
        task_labels = torch.arange(index * per_task, (index + 1) * per_task)

        def select(x: Tensor, y: Tensor, task_labels: Tensor = task_labels) -> tuple[Tensor, Tensor]:
            labels = relabel[y]
            keep = torch.isin(labels, task_labels)
            return x[keep], labels[keep] if setting == "class" else labels[keep] - int(task_labels[0])

        train, valid = _hold_out(*select(dataset.train_x, dataset.train_y), valid_fraction, generator)
        name = f"classes {','.join(str(int(c)) for c in order[task_labels])}"
        active = task_labels if setting == "task" else None
        outputs = {"task": classes, "domain": per_task, "class": (index + 1) * per_task}[setting]
        tasks.append(Task(name, train, valid, select(dataset.test_x, dataset.test_y), outputs, active))
    return Scenario(f"split-{dataset.name}", setting, tasks, dataset.num_features, tasks[-1].outputs)


def permuted_scenario(
    dataset: Dataset,
    num_tasks: int = 10,
    valid_fraction: float = 0.1,
    seed: int = 0,
    train_per_task: int | None = None,
    setting: str = "domain",
    permute_first: bool = False,
) -> Scenario:
    """Permuted: each task applies its own fixed pixel permutation to every image. The images are
    stored once; each task reads them through its permutation (``PermutedInputs``).

    Args:
        dataset: The images and labels.
        num_tasks: Tasks, each with its own permutation.
        valid_fraction: Share of each task's training data held out for validation (0: none).
        seed: Seeds the permutations and the split.
        train_per_task: Use only the first this many training samples per task (CPU budgets).
        setting: ``"domain"`` (one head of C classes), ``"task"`` (C output units of its own per
            task) or ``"class"`` (task t's classes are labels tC … tC + C − 1 of a head that grows).
        permute_first: Permute the first task too (van de Ven & Tolias 2019); else it sees the
            images as they are.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SETTINGS}.")
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    features, classes = dataset.num_features, dataset.num_classes
    count = len(dataset.train_x) if train_per_task is None else min(train_per_task, len(dataset.train_x))
    for index in range(num_tasks):
        permuted = index > 0 or permute_first
        permutation = torch.randperm(features, generator=generator) if permuted else None
        order = torch.randperm(count, generator=generator)
        held = _held_out(count, valid_fraction)
        offset = index * classes if setting == "class" else 0  # task-incremental labels index the task's units
        train_y, valid_y = dataset.train_y[order[held:]] + offset, dataset.train_y[order[:held]] + offset
        train = (PermutedInputs(dataset.train_x, order[held:], permutation), train_y)
        valid = (PermutedInputs(dataset.train_x, order[:held], permutation), valid_y)
        test_rows = torch.arange(len(dataset.test_x))
        test = (PermutedInputs(dataset.test_x, test_rows, permutation), dataset.test_y + offset)
        outputs = {"task": num_tasks * classes, "domain": classes, "class": (index + 1) * classes}[setting]
        active = torch.arange(index * classes, (index + 1) * classes) if setting == "task" else None
        tasks.append(Task(f"permutation {index}", train, valid, test, outputs, active))
    return Scenario(f"permuted-{dataset.name}", setting, tasks, features, tasks[-1].outputs)
