"""Running methods through scenarios over seeds, choosing strengths on validation data, and tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fisherkit.apps.continual.model import MaskedMLP
from fisherkit.apps.continual.scenarios import Scenario
from fisherkit.apps.continual.training import (
    Metrics,
    TrainConfig,
    TrainingDiverged,
    accuracy_row,
    train_task,
    train_union,
)
from fisherkit.apps.output import Lines
from fisherkit.regularizers.ewc import EWC
from fisherkit.regularizers.mas import MAS
from fisherkit.regularizers.regularizer import Regularizer
from fisherkit.regularizers.si import SynapticIntelligence

METHODS = ("naive", "ewc", "online-ewc", "kfac-ewc", "si", "mas", "joint")
STRENGTH_GRIDS = {
    "ewc": (1.0, 10.0, 100.0, 1e3, 1e4, 1e5),
    "online-ewc": (1.0, 10.0, 100.0, 1e3, 1e4, 1e5),
    "kfac-ewc": (1.0, 10.0, 100.0, 1e3, 1e4, 1e5),
    "si": (0.01, 0.1, 1.0, 10.0, 100.0),
    "mas": (0.001, 0.01, 0.1, 1.0, 10.0),
}


@dataclass
class Method:
    """A continual-learning method and its hyperparameters.

    Attributes:
        name: One of ``METHODS``.
        strength: λ (EWC, MAS) or c (SI); ignored by naive and joint.
        fisher_type: EWC's Fisher type (``fisherkit.FISHER_TYPES``).
        decay: Online EWC's γ.
        damping: SI's ξ.
    """

    name: str
    strength: float = 0.0
    fisher_type: str = "mc"
    decay: float = 1.0
    damping: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose one of {METHODS}.")

    def regularizers(self, model: MaskedMLP, seed: int) -> list[Regularizer]:
        if self.name in ("ewc", "online-ewc", "kfac-ewc"):
            mode = "online" if self.name == "online-ewc" else "separate"
            structure = "kfac" if self.name == "kfac-ewc" else "diagonal"
            return [EWC(model, self.strength, mode, self.decay, structure, self.fisher_type, seed=seed)]
        if self.name == "si":
            return [SynapticIntelligence(model, self.strength, self.damping)]
        if self.name == "mas":
            return [MAS(model, self.strength)]
        return []

    @property
    def label(self) -> str:
        if self.name in ("naive", "joint"):
            return self.name
        extra = f", {self.fisher_type}" if "ewc" in self.name and self.fisher_type != "mc" else ""
        return f"{self.name} ({self.strength:g}{extra})"


def accuracy_matrix(
    scenario: Scenario,
    method: Method,
    config: TrainConfig,
    seed: int,
    split: str = "test",
    progress: Lines | None = None,
) -> Tensor:
    """R[j, i]: accuracy on task i (``split``) after training task j; one row (after the last
    task) for joint training. ``progress`` gets a line after each task."""
    scenario = scenario.for_seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MaskedMLP(scenario.num_features, config.hidden, scenario.tasks[0].outputs)
    optimizer = None
    if method.name == "joint":
        cumulative = config.joint == "cumulative"
        for end in range(1, len(scenario.tasks) + 1) if cumulative else [len(scenario.tasks)]:
            optimizer = train_union(model, scenario.tasks[:end], config, generator, optimizer)
            if progress is not None:
                progress(f"{method.label}, seed {seed}: tasks 1–{end} of {len(scenario.tasks)} trained jointly")
        row = accuracy_row(model, scenario, split)
        if progress is not None:
            progress(f"{method.label}, seed {seed}: mean {split} accuracy {100 * sum(row) / len(row):.1f}")
        return torch.tensor([row])
    regularizers = method.regularizers(model, seed)
    rows = []
    for index, task in enumerate(scenario.tasks):
        optimizer = train_task(model, task, config, regularizers, generator, optimizer)
        rows.append(accuracy_row(model, scenario, split))
        if progress is not None:
            seen = rows[-1][: index + 1]
            progress(f"{method.label}, seed {seed}: task {index + 1}/{len(scenario.tasks)} trained, mean {split} "
                     f"accuracy on tasks so far {100 * sum(seen) / len(seen):.1f}")  # fmt: skip
    return torch.tensor(rows)


def choose_strength(
    scenario: Scenario, method: Method, config: TrainConfig, seed: int = 0, progress: Lines | None = None
) -> tuple[Method, list]:
    """The strength from ``STRENGTH_GRIDS`` with the best average *validation* accuracy (one seed).
    A strength whose training diverges scores 0.

    Returns:
        The method with that strength, and ``(strength, validation average)`` for every candidate.
    """
    if method.name not in STRENGTH_GRIDS:
        return method, []
    results = []
    for strength in STRENGTH_GRIDS[method.name]:
        candidate = replace(method, strength=strength)
        try:
            score = Metrics.of(accuracy_matrix(scenario, candidate, config, seed, "valid", progress)).average
        except TrainingDiverged:
            score = 0.0
        results.append((strength, score))
    best = max(results, key=lambda r: r[1])[0]
    return replace(method, strength=best), results


@dataclass
class Summary:
    """A method's metrics over seeds (mean and standard deviation), and its matrices."""

    method: Method
    matrices: list[Tensor]

    def stat(self, field: str) -> tuple[float, float]:
        values = torch.tensor([getattr(Metrics.of(m), field) for m in self.matrices])
        spread = float(values.std()) if len(values) > 1 else 0.0
        return float(values.mean()), spread


def run_method(
    scenario: Scenario, method: Method, config: TrainConfig, seeds: list[int], progress: Lines | None = None
) -> Summary:
    """A method's accuracy matrices over ``seeds`` on ``scenario``."""
    return Summary(method, [accuracy_matrix(scenario, method, config, seed, "test", progress) for seed in seeds])


def run_methods(scenario: Scenario, methods: list[Method], config: TrainConfig, seeds: list[int]) -> list[Summary]:
    """Each method's accuracy matrices over ``seeds`` on ``scenario``."""
    return [run_method(scenario, m, config, seeds) for m in methods]


def format_summaries(scenario: Scenario, summaries: list[Summary], seeds: list[int]) -> str:
    """A Markdown table: average accuracy, backward transfer and forgetting, mean ± std over seeds."""

    def cell(mean: float, std: float) -> str:
        return "—" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"

    lines = [
        f"{scenario.name}, {scenario.setting}-incremental, {len(scenario.tasks)} tasks, seeds {seeds} "
        f"(test accuracy in %, mean ± std)",
        "",
        "| method | average accuracy | backward transfer | forgetting |",
        "|---|---:|---:|---:|",
    ]
    for summary in summaries:
        cells = [cell(*summary.stat(f)) for f in ("average", "backward_transfer", "forgetting")]
        lines.append(f"| {summary.method.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_matrix(matrix: Tensor, label: str) -> str:
    """An accuracy matrix as text (rows: after training task j; columns: task i)."""
    header = "after \\ on " + " ".join(f"{i:>6}" for i in range(matrix.shape[1]))
    rows = [f"{label}", header]
    for j, row in enumerate(matrix):
        rows.append(f"task {j:<6}" + " ".join(f"{100 * float(v):6.1f}" for v in row))
    return "\n".join(rows)
