"""``fisherkit demo``, the main job: continual learning on the bundled digits, and the Fisher behind EWC.

Permuted digits (5 tasks, domain-incremental, an MLP 64-256-256-10 trained 10 epochs per task with
Adam) on CPU in about a minute: naive fine-tuning, EWC
(separate and online), SI and MAS with strengths chosen on validation data, and joint training;
then the diagonal Fisher after the first task, as a log-scale histogram.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from fisherkit.apps.continual.command import add_arguments, run
from fisherkit.apps.continual.datasets import load_digits
from fisherkit.apps.continual.model import MaskedMLP
from fisherkit.apps.continual.scenarios import permuted_scenario
from fisherkit.apps.continual.training import TrainConfig, train_task
from fisherkit.apps.output import Lines
from fisherkit.estimators import diagonal_fisher

DEMO_DEFAULTS = {
    "scenario": "permuted-digits",
    "tasks": 5,
    "methods": ["naive", "ewc", "online-ewc", "si", "mas", "joint"],
    "search": True,
    "epochs": 10,
    "fisher_samples": None,
}


def demo_arguments(epochs: int, seeds: int, plot: Path | None) -> argparse.Namespace:
    """The ``cl`` options of the demo: its defaults with ``epochs``, ``seeds`` and ``plot``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.set_defaults(**DEMO_DEFAULTS)
    args = parser.parse_args([])
    args.epochs, args.seeds, args.plot = epochs, seeds, plot
    return args


def fisher_histogram(epochs: int, seed: int = 0, plot: Path | None = None) -> str:
    """The MC diagonal Fisher after the first task: decades of magnitude, zeros counted apart."""
    torch.manual_seed(seed)
    scenario = permuted_scenario(load_digits(), 1)
    task = scenario.tasks[0]
    model = MaskedMLP(scenario.num_features, TrainConfig.hidden, scenario.num_outputs)
    train_task(model, task, TrainConfig(epochs=epochs), [], torch.Generator().manual_seed(seed))
    x, y = task.train
    fisher = diagonal_fisher(model.eval(), (x[: len(x)], y), seed=seed, progress=False)
    values = torch.cat([d.reshape(-1) for d in fisher.diagonals])
    zeros = int((values == 0).sum())
    logs = values[values > 0].log10()
    low, high = math.floor(float(logs.min())), math.ceil(float(logs.max()))
    counts = torch.histc(logs, bins=high - low, min=low, max=high)
    widest = float(counts.max())
    lines = [
        f"diagonal Fisher (MC) after task 1: {values.numel()} entries, {zeros} exactly zero "
        f"(inputs that are always 0: border pixels), median {float(values.median()):.2e}, "
        f"max {float(values.max()):.2e}",
        "log10(F)   count",
    ]
    for index, count in enumerate(counts.tolist()):
        bar = "#" * max(1 if count else 0, round(50 * count / widest))
        lines.append(f"[{low + index:>3},{low + index + 1:>3}) {int(count):>7} {bar}")
    if plot is not None:
        _plot_histogram(logs, zeros, plot)
        lines.append(f"wrote {plot}")
    return "\n".join(lines)


def _plot_histogram(logs: torch.Tensor, zeros: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install 'fisherkit[plots]'") from error
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.hist(logs.numpy(), bins=60)
    axis.set_xlabel("log10 of the Fisher diagonal entry")
    axis.set_ylabel("parameters")
    axis.set_title(f"Fisher diagonal after task 1 ({zeros} exact zeros not shown)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_demo(emit: Lines, progress: Lines, epochs: int = 10, seeds: int = 3, plot: Path | None = None) -> None:
    """The main job: ``emit`` gets the report as it is made, ``progress`` a line per trained task;
    ``plot`` is a PNG path prefix for the figures (optional)."""
    matrices_plot = None if plot is None else plot.with_name(f"{plot.stem}-accuracy.png")
    histogram_plot = None if plot is None else plot.with_name(f"{plot.stem}-fisher.png")
    run(demo_arguments(epochs, seeds, matrices_plot), emit, progress)
    emit("")
    emit(fisher_histogram(epochs, plot=histogram_plot))
